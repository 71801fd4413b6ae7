"""evaluate.py on the tiny trained run: the table, the JSON lines, unlabelled data, one-line errors, and two
gloo processes giving the single-process result."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

import evaluate
from utils.cli import run_main

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the trained run (evaluate.py writes into the run folder)."""
    runs = tmp_path / "runs"
    shutil.copytree(trained_run["run_folder"], runs / "tiny")
    return {**trained_run, "runs_dir": str(runs), "run_folder": str(runs / "tiny")}


def evaluate_arguments(run, *extra):
    return ["--run-name", run["run_name"], "--runs-dir", run["runs_dir"], "--device", "cpu", "--no-progress", *extra]


def lines(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_prints_the_table_and_appends_one_line_per_run(run_copy, capsys):
    assert evaluate.main(evaluate_arguments(run_copy)) == 0
    printed = capsys.readouterr().out
    for text in ("local action NMI", "sprite shift error mean (px)", "soft mask IoU", "GT", "RE", "CO", "FLOOR"):
        assert text in printed
    path = os.path.join(run_copy["run_folder"], "metrics", "evaluate-val-one_step.jsonl")
    assert evaluate.main(evaluate_arguments(run_copy, "--step", "2")) == 0
    first, second = lines(path)
    assert (first["step"], second["step"]) == (4, 2) and first["checkpoint"].endswith("latest.pth")
    assert first["split"] == "val" and first["protocol"] == "one_step" and first["num_ground_truth_steps"] == 5
    assert first["metric"] == "glass_action_metrics" and first["comparable"] is True and "time" in first
    results = first["results"]
    for variant in ("gt", "re", "co"):
        for key in ("local_action_nmi", "local_action_nmi_per_character", "sprite_shift_error_mean",
                    "sprite_shift_error_min", "sprite_shift_error_max", "sprite_shift_direction_match",
                    "background_shift_error_mean", "background_shift_direction_match", "mask_iou"):
            assert f"{variant}/{key}" in results, (variant, key)
    assert "random/local_action_nmi" in results and "all_foreground/mask_iou" in results and first["skipped"] == {}
    assert all(0.0 <= results[f"{v}/mask_iou"] <= 1.0 for v in ("gt", "re", "co"))
    assert first["counts"]["windows"] == 4  # 1 val character × 2 videos of 12 frames, 2 windows of 6 each
    assert first["max_videos"] is None
    # the local half: the code effect (all transitions, and switches where the labels change) and the codes per
    # true local action, as numbers in the line and as a picture beside it
    assert "code effect, all transitions (dB)" in printed and "codes per true local action" in printed
    assert math.isfinite(results["gt/code_effect_db"])
    # the renderer's ceiling: the best codebook row per transition draws at least as well as the inferred one
    assert results["gt/code_effect_best_db"] >= results["gt/code_effect_db"] - 1e-6
    if first["counts"]["switch_transitions"]:
        assert math.isfinite(results["gt/code_effect_switch_db"])
        assert results["gt/code_effect_best_switch_db"] >= results["gt/code_effect_switch_db"] - 1e-6
    # how different two codes' next frames are, against the real change, in the character's region
    assert "two codes' next frames differ by" in printed and "ratio (codes / real)" in printed
    assert results["gt/code_difference"] >= 0 and results["gt/real_change"] > 0
    assert results["gt/code_difference_ratio"] == results["gt/code_difference"] / results["gt/real_change"]
    confusion = first["local_action_confusion"]
    assert sum(map(sum, confusion)) == first["counts"]["transitions"] and all(len(row) == 3 for row in confusion)
    # the code effect per true local action: one entry per confusion row, its transitions those of the row
    per_label = first["local_action_code_effect"]
    assert [entry["transitions"] for entry in per_label] == [sum(row) for row in confusion]
    assert "code effect per true local action" in printed
    # per kind of switch: the three kinds' transitions are the switches
    kinds = first["switch_kind_code_effect"]
    assert [entry["kind"] for entry in kinds] == ["turn front <-> side", "turn side <-> side", "same view"]
    assert sum(entry["transitions"] for entry in kinds) == first["counts"]["switch_transitions"]
    assert "code effect per kind of switch" in printed
    picture = os.path.join(run_copy["run_folder"], "metrics", "evaluate-val-one_step-step_000004-confusion.png")
    assert os.path.getsize(picture) > 0
    # each code's usual shift over the real transitions, and the local-action sheet drawn with it
    usual = first["code_usual_shift"]
    assert [entry["transitions"] for entry in usual] == first["histograms"]["gt"]
    assert all((entry["dx"] is None) == (entry["transitions"] == 0) for entry in usual)
    assert all(entry["direction"] in (None, "still", "right", "left", "down", "up") for entry in usual)
    assert all((entry["direction"] is None) == (entry["transitions"] == 0) and 0.0 <= entry["share"] <= 1.0
               for entry in usual)
    assert "each code's usual foreground shift" in printed
    sheet = os.path.join(run_copy["run_folder"], "metrics", "evaluate-val-one_step-step_000004-local-actions.png")
    assert os.path.getsize(sheet) > 0 and sheet in printed
    assert "play.py steps, each code with its usual shift: " in printed
    # the test split and the single-image protocol go to their own file
    assert evaluate.main(evaluate_arguments(run_copy, "--split", "test", "--protocol", "single_image")) == 0
    (record,) = lines(os.path.join(run_copy["run_folder"], "metrics", "evaluate-test-single_image.jsonl"))
    assert record["num_ground_truth_steps"] == 1 and record["split"] == "test"


def test_max_videos_evaluates_the_first_videos_of_the_training_split(run_copy, capsys):
    """--split train --max-videos 2: the training split's first two videos by name (of its six), said in the
    output and the record; its own file and pictures, so the validation split's are left as they are."""
    assert evaluate.main(evaluate_arguments(run_copy, "--split", "train", "--max-videos", "2")) == 0
    printed = capsys.readouterr().out
    assert "split train (its first 2 videos)" in printed
    (record,) = lines(os.path.join(run_copy["run_folder"], "metrics", "evaluate-train-one_step.jsonl"))
    assert record["split"] == "train" and record["max_videos"] == 2
    assert record["counts"]["windows"] == 4  # 2 videos of 12 frames, 2 windows of 6 each
    metrics = os.listdir(os.path.join(run_copy["run_folder"], "metrics"))
    assert "evaluate-train-one_step-step_000004-local-actions.png" in metrics
    assert not any(name.startswith("evaluate-val") for name in metrics)
    # more than the split holds: all of them
    assert evaluate.main(evaluate_arguments(run_copy, "--split", "train", "--max-videos", "100")) == 0
    _, whole = lines(os.path.join(run_copy["run_folder"], "metrics", "evaluate-train-one_step.jsonl"))
    assert whole["counts"]["windows"] == 12  # the training split's 6 videos


def test_data_without_labels_reports_what_it_skipped(run_copy, tmp_path, capsys):
    # a flat dataset of plain frames: no glactions.pkl, no masks/, no sprite ids in the names
    source = os.path.join(run_copy["dataset_root"], "val")
    flat = tmp_path / "flat"
    for index, name in enumerate(sorted(os.listdir(source))):
        os.makedirs(flat / f"clip{index}")
        for frame in sorted(os.listdir(os.path.join(source, name))):
            if frame.endswith(".png"):
                shutil.copy(os.path.join(source, name, frame), flat / f"clip{index}" / frame)
    assert evaluate.main(evaluate_arguments(run_copy, f"data.root={flat}", "data.style=flat",
                                            "data.split_fractions=[0, 1, 0]")) == 0
    printed = capsys.readouterr().out
    assert "skipped gt, re, random: local_action_nmi: no window has action labels" in printed
    assert "skipped gt: mask_iou: no ground-truth masks" in printed
    (record,) = lines(os.path.join(run_copy["run_folder"], "metrics", "evaluate-val-one_step.jsonl"))
    assert "gt/mask_iou" not in record["results"] and "co/mask_iou" in record["results"]
    assert record["data_root"] == str(flat) and len(record["skipped"]) >= 3


def test_refit_reader_norm_evaluates_with_refitted_statistics_and_writes_nothing_back(run_copy, capsys):
    """--refit-reader-norm 2: the readers' statistics from the training split's 6 videos (batches of 4 and 2), said
    in the output and the record; the checkpoint is untouched, so a plain evaluation afterwards gives the plain
    evaluation's values again."""
    checkpoint = os.path.join(run_copy["run_folder"], "checkpoints", "latest.pth")
    with open(checkpoint, "rb") as handle:
        stored = handle.read()
    assert evaluate.main(evaluate_arguments(run_copy)) == 0
    assert evaluate.main(evaluate_arguments(run_copy, "--refit-reader-norm", "2")) == 0
    assert evaluate.main(evaluate_arguments(run_copy)) == 0
    assert "refitted from 2 training batch(es)" in capsys.readouterr().out
    plain, refitted, again = lines(os.path.join(run_copy["run_folder"], "metrics", "evaluate-val-one_step.jsonl"))
    assert (plain["reader_norm_refit_batches"], refitted["reader_norm_refit_batches"]) == (0, 2)
    assert again["results"] == plain["results"]
    # The readers' codes do change: after two LMA steps from the initial statistics (momentum 0.1) the checkpoint's
    # running statistics put every validation transition on one code; refitted ones on two (measured: perplexity
    # 1.0 against 1.75).
    assert refitted["histograms"]["gt"] != plain["histograms"]["gt"]
    # the GMA's half does not read the action readers: its numbers are the same with refitted statistics
    assert refitted["results"]["gt/mask_iou"] == plain["results"]["gt/mask_iou"]
    with open(checkpoint, "rb") as handle:
        assert handle.read() == stored


@pytest.mark.parametrize("extra, message", [
    (["--step", "3"], "step_3.pth: no such checkpoint"),
    (["evaluation.observations_count=1"], "evaluation.observations_count"),
    (["evaluation.observations_count=50"], "no video has the 50 frames"),
    (["--num-gpus", "0"], "--num-gpus"),
    (["--num-threads", "0"], "--num-threads: must be >= 1"),
    (["--refit-reader-norm", "-1"], "--refit-reader-norm: must be >= 0"),
    (["--max-videos", "0"], "evaluation.max_videos"),
])
def test_bad_input_is_one_line(run_copy, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        run_main(evaluate.main, evaluate_arguments(run_copy, *extra))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error


@pytest.mark.determinism
def test_two_cpu_processes_give_the_single_process_result(run_copy):
    """--num-gpus 2 --device cpu: two gloo processes, one thread each (--num-threads 2 shared by the two),
    batches of 1 alternate between them (fresh localhost port per launch); the one-process run also has one
    thread."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "evaluate.py", *evaluate_arguments(run_copy), "--split", "test",
               "evaluation.batch_size=1"]
    for extra in (["--num-threads", "1"], ["--num-gpus", "2", "--num-threads", "2"]):
        completed = subprocess.run(command + extra, cwd=REPOSITORY, env=environment, capture_output=True, text=True,
                                   timeout=120)
        assert completed.returncode == 0, completed.stderr
    single, double = lines(os.path.join(run_copy["run_folder"], "metrics", "evaluate-test-one_step.jsonl"))
    assert (single["world_size"], double["world_size"]) == (1, 2) and single["counts"] == double["counts"]
    # each window runs in the same batch as in one process and rank 0 reduces in window order: bit-identical
    assert double["results"] == single["results"]


def test_one_process_reads_the_checkpoint_and_lists_the_windows_once(run_copy, monkeypatch, capsys):
    import model.trained
    import utils.evaluation.action_metrics

    calls = {"checkpoint": 0, "windows": 0}
    read_checkpoint, list_windows = model.trained.load_checkpoint, utils.evaluation.action_metrics.evaluation_dataset

    def counted_checkpoint(*args, **kwargs):
        calls["checkpoint"] += 1
        return read_checkpoint(*args, **kwargs)

    def counted_windows(*args, **kwargs):
        calls["windows"] += 1
        return list_windows(*args, **kwargs)

    monkeypatch.setattr(model.trained, "load_checkpoint", counted_checkpoint)
    monkeypatch.setattr(utils.evaluation.action_metrics, "evaluation_dataset", counted_windows)
    monkeypatch.setattr(evaluate, "evaluation_dataset", counted_windows)
    assert evaluate.main(evaluate_arguments(run_copy)) == 0
    assert calls == {"checkpoint": 1, "windows": 1}
    capsys.readouterr()
