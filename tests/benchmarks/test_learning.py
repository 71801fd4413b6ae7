"""benchmarks/learning.py on a copy of the tiny trained run: it evaluates every checkpoint once, keeps the records
with the code effect and the code difference, and draws every panel with issue 21's targets as grey lines."""
import json
import math
import shutil

import pytest
from PIL import Image

from benchmarks import learning
from utils.errors import GlassError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_learning_evaluates_each_checkpoint_and_draws_the_code_effect(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runs = tmp_path / "runs"
    shutil.copytree(trained_run["run_folder"], runs / "tiny")
    steps = trained_run["steps"]  # 4, checkpoints at 2 and 4: nothing left to train
    arguments = ["--run-name", "tiny", "--runs-dir", str(runs), "--steps", str(steps), "--eval-every", "2",
                 "--refit-reader-norm", "1"]
    assert learning.main(arguments) == 0
    with open(runs / "tiny" / "learning.json", encoding="utf-8") as handle:
        summary = json.load(handle)
    assert [record["step"] for record in summary["records"]] == [2, 4]
    last = summary["records"][-1]
    for key in ("gt/mask_iou", "gt/local_action_nmi", "gt/code_effect_db", "gt/code_difference_ratio",
                "gt/code_character_nmi"):
        assert key in last["eval"], key
    assert "lma_code_effect_db" in last["train"]
    with open(runs / "tiny" / "metrics" / "evaluate-val-one_step.jsonl", encoding="utf-8") as handle:
        assert [json.loads(line)["reader_norm_refit_batches"] for line in handle] == [1, 1]
    printed = capsys.readouterr().out
    assert f"code effect {last['eval']['gt/code_effect_db']:.3f}" in printed
    image = Image.open(runs / "tiny" / "learning.png")
    assert image.size == (1040, 24 + 260 * 4)  # 7 panels, two per row
    # The evaluations are not run again: a second call evaluates nothing (the JSON lines keep one line per step).
    assert learning.main(arguments) == 0
    with open(runs / "tiny" / "metrics" / "evaluate-val-one_step.jsonl", encoding="utf-8") as handle:
        assert len(handle.readlines()) == 2
    assert "evaluate.py" not in capsys.readouterr().out
    # Evaluations made on other statistics are not reused: without the refit both checkpoints are evaluated again.
    assert learning.main(arguments[:-2] + ["--refit-reader-norm", "0"]) == 0
    with open(runs / "tiny" / "metrics" / "evaluate-val-one_step.jsonl", encoding="utf-8") as handle:
        assert [json.loads(line)["reader_norm_refit_batches"] for line in handle] == [1, 1, 0, 0]
    with open(runs / "tiny" / "learning.json", encoding="utf-8") as handle:
        assert [record["eval"] for record in json.load(handle)["records"]] != [record["eval"] for record in
                                                                               summary["records"]]


def test_targets_are_drawn_as_grey_lines_at_their_values(tmp_path):
    """One panel's target line sits where its value falls between the panel's lowest and highest value."""
    records = [{"step": step, "eval": {"gt/mask_iou": value}, "train": {}} for step, value in ((0, 0.5), (10, 0.9))]
    path = str(tmp_path / "curves.png")
    learning.draw_curves(records, path, "test")
    image = Image.open(path).convert("RGB")
    # Panel 0 (top left): y0 = 24 + 22, y1 = 24 + 260 − 30; values 0.5 … 0.9, so the 0.7 target is halfway up.
    top, bottom = 24 + 22, 24 + 260 - 30
    target_y = round(bottom - (0.7 - 0.5) / (0.9 - 0.5) * (bottom - top))
    row = [image.getpixel((x, target_y)) for x in range(60, 400)]
    assert row.count(learning.TARGET_COLOUR) > 100  # dashed: half of the pixels
    assert learning.TARGET_COLOUR not in [image.getpixel((x, target_y - 20)) for x in range(60, 400)]


def test_the_interval_over_characters_is_drawn_as_a_bar_through_its_point(tmp_path):
    """The code-effect panel (the fifth: left column, third row) draws evaluate.py's interval of the switches as a
    vertical bar in the switches' colour at the step that has one, and none where a step has no interval."""
    records = [{"step": 0, "eval": {"gt/code_effect_switch_db": 1.0}, "train": {}},
               {"step": 10, "eval": {"gt/code_effect_switch_db": 1.0, "gt/code_effect_switch_low_db": 0.5,
                                     "gt/code_effect_switch_high_db": 1.5}, "train": {}}]
    path = str(tmp_path / "curves.png")
    learning.draw_curves(records, path, "test")
    image = Image.open(path).convert("RGB")
    top, bottom = 24 + 2 * 260 + 22, 24 + 3 * 260 - 30  # values 0.5 … 1.5 (the bounds set the panel's range)
    left, right = 46, 520 - 12  # steps 0 and 10
    switches = learning.COLOURS[1]
    quarter = round(bottom - 0.25 * (bottom - top))  # 0.75 dB: on the bar, away from the point at 1.0
    assert image.getpixel((right, quarter)) == switches
    assert image.getpixel((right, bottom)) == switches and image.getpixel((right, top)) == switches  # the caps
    assert image.getpixel((left, quarter)) != switches


def test_training_values_are_averaged_over_the_interval_since_the_previous_evaluation():
    nan = float("nan")
    rows = {25: {"lma_code_effect_switch_db": 1.0, "lma_trained": True, "lma_code_histogram": [1.0, 0.0], "loss": 9},
            50: {"lma_code_effect_switch_db": nan, "lma_trained": True, "lma_code_histogram": [0.5, 0.5], "loss": 9},
            75: {"lma_code_effect_switch_db": 3.0, "lma_trained": True, "lma_code_histogram": [0.0, 1.0], "loss": 9},
            100: {"lma_code_effect_switch_db": 7.0, "lma_trained": True, "lma_code_histogram": [0.2, 0.8]}}
    # 25 < step <= 75: the NaN span (no switch) is left out of the mean; flags and histograms from the last row
    assert learning.interval_means(rows, 25, 75) == {"lma_code_effect_switch_db": 3.0, "lma_trained": True,
                                                     "lma_code_histogram": [0.0, 1.0]}
    assert learning.interval_means(rows, 0, 75)["lma_code_effect_switch_db"] == 2.0
    assert learning.interval_means(rows, 100, 200) == {}
    assert math.isnan(learning.interval_means(rows, 25, 50)["lma_code_effect_switch_db"])


def test_a_corrupt_log_line_is_a_one_line_error_naming_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 25, "lma_trained": true}\n{broken\n', encoding="utf-8")
    with pytest.raises(GlassError, match=r"metrics\.jsonl: line 2 is not JSON"):
        learning.records_by_step(str(path))
    path.write_text('{"lma_trained": true}\n', encoding="utf-8")
    with pytest.raises(GlassError, match=r"metrics\.jsonl: line 1 is not a JSON record with a step"):
        learning.records_by_step(str(path))
    path.write_text('{"step": 25}\n\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(GlassError, match=r"metrics\.jsonl: line 3 is not a JSON object"):
        learning.records_by_step(str(path))
