"""The run folder: atomic checkpoints readable with weights_only=True, resume paths, metrics rows."""
import json
import os
import re

import pytest
import torch

from utils.checkpoint import (
    CHECKPOINT_FORMAT,
    LATEST_CHECKPOINT,
    checkpoint_folder,
    checkpoint_path,
    checkpoint_steps,
    has_checkpoints,
    keep_metrics_up_to,
    load_checkpoint,
    parse_resume_step,
    prepare_run_folder,
    read_run_config,
    resume_checkpoint_path,
    save_checkpoint,
    state_dict_mismatch,
)
from utils.config import Config
from utils.errors import GlassError


def _state(step: int) -> dict:
    return {"format": CHECKPOINT_FORMAT, "step": step, "model": {"weight": torch.full((2, 3), float(step))},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0]}]},
            "scheduler": {"milestones": {10: 1}}, "grad_scaler": {}, "data": {"epoch": 1, "position": 4},
            "rng": [{"python": {"version": 3, "internal": [1, 2], "gauss_next": None}, "torch": torch.get_rng_state()}]}


def test_save_writes_step_and_latest_readable_with_weights_only(tmp_path):
    run = str(tmp_path / "run")
    assert not has_checkpoints(run)
    path = save_checkpoint(run, _state(5))
    save_checkpoint(run, _state(10))
    assert path == checkpoint_path(run, 5) and checkpoint_steps(run) == [5, 10] and has_checkpoints(run)
    latest = torch.load(os.path.join(checkpoint_folder(run), LATEST_CHECKPOINT), weights_only=True)
    assert latest["step"] == 10 and torch.equal(latest["model"]["weight"], torch.full((2, 3), 10.0))
    assert load_checkpoint(path)["data"] == {"epoch": 1, "position": 4}
    assert sorted(os.listdir(checkpoint_folder(run))) == ["latest.pth", "step_10.pth", "step_5.pth"], \
        "no temporary files"


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    save_checkpoint(run, _state(5))

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(run, {**_state(5), "step": 5})
    assert load_checkpoint(checkpoint_path(run, 5))["step"] == 5
    assert sorted(os.listdir(checkpoint_folder(run))) == ["latest.pth", "step_5.pth"]


def test_broken_checkpoints_are_one_line_errors(tmp_path):
    run = str(tmp_path / "run")
    path = save_checkpoint(run, _state(5))
    with open(path, "rb") as handle:
        content = handle.read()
    with open(path, "wb") as handle:
        handle.write(content[: len(content) // 2])
    with pytest.raises(GlassError, match="cannot be loaded") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value) and str(error.value).endswith("with --resume-step N")
    with pytest.raises(GlassError, match=r"cannot be loaded .*with --step N$"):
        load_checkpoint(path, step_option="--step")
    for content in (b"hello\n", b"", b"\x80\x02}q\x00."):  # text, an empty file, a bare pickle of {}
        with open(path, "wb") as handle:
            handle.write(content)
        with pytest.raises(GlassError, match=r"step_5.pth: cannot be loaded .*with --resume-step N$") as error:
            load_checkpoint(path)
        assert "\n" not in str(error.value)
    other = str(tmp_path / "other.pth")
    torch.save({"weight": torch.zeros(1)}, other)
    with pytest.raises(GlassError, match="not a GLASS training checkpoint"):
        load_checkpoint(other)
    torch.save({**_state(1), "format": CHECKPOINT_FORMAT + 1}, other)
    with pytest.raises(GlassError, match="checkpoint format"):
        load_checkpoint(other)


def test_resume_step_and_path(tmp_path):
    assert parse_resume_step("latest") is None and parse_resume_step("-1") is None and parse_resume_step("40") == 40
    for bad in ("last", "-2", "1.5"):
        with pytest.raises(GlassError, match="--resume-step"):
            parse_resume_step(bad)
    run = str(tmp_path / "run")
    with pytest.raises(GlassError, match="no such run folder"):
        resume_checkpoint_path(run, None)
    os.makedirs(run)
    with pytest.raises(GlassError, match="the run has no checkpoints"):
        resume_checkpoint_path(run, None)
    save_checkpoint(run, _state(5))
    assert resume_checkpoint_path(run, None).endswith("latest.pth")
    assert resume_checkpoint_path(run, 5) == checkpoint_path(run, 5)
    with pytest.raises(GlassError, match="steps available: 5"):
        resume_checkpoint_path(run, 6)


def test_run_folder_config_and_metrics(tmp_path):
    run = str(tmp_path / "run")
    config = Config()
    config.training.num_steps = 123
    prepare_run_folder(run, config, first_step=0, header="comparable: false")
    with open(os.path.join(run, "config.yaml"), encoding="utf-8") as handle:
        assert handle.readline() == "# comparable: false\n"
    assert read_run_config(run, ["training.log_every=7"]).training.num_steps == 123
    with pytest.raises(GlassError, match=re.escape(os.path.join(run, "config.yaml")) + ": model.lma.glimpse: a box"):
        read_run_config(run, ["model.lma.glimpse=[256, 80]"])  # the model of a run must fit its frames
    metrics = os.path.join(run, "metrics.jsonl")
    with open(metrics, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"step": step}) + "\n" for step in (1, 2, 3, 4))
        handle.write('{"step": 5, "lo')  # cut by a crash
    keep_metrics_up_to(metrics, 2)
    with open(metrics, encoding="utf-8") as handle:
        assert [json.loads(line)["step"] for line in handle] == [1, 2]
    os.remove(os.path.join(run, "config.yaml"))
    with pytest.raises(GlassError, match="config.yaml: missing"):
        read_run_config(run, [])
    with pytest.raises(GlassError, match="no such run folder"):
        read_run_config(str(tmp_path / "elsewhere"), [])


def test_load_trained_model_rebuilds_the_run_model_in_eval_mode(trained_run):
    from model.trained import load_trained_model

    trained = load_trained_model(trained_run["run_folder"])
    assert trained.step == trained_run["steps"] and trained.path.endswith("latest.pth")
    assert not trained.model.training and trained.config.evaluation.observations_count == 6
    earlier = load_trained_model(trained_run["run_folder"], step=2)
    assert earlier.step == 2
    differs = any(not torch.equal(a, b) for a, b in zip(trained.model.state_dict().values(),
                                                          earlier.model.state_dict().values()))
    assert differs, "two checkpoints of a training run hold different weights"


def test_load_trained_model_names_the_file_when_the_weights_do_not_fit(trained_run):
    from model.trained import load_trained_model

    with pytest.raises(GlassError, match=r"latest\.pth: its weights do not fit the model of .*config\.yaml with "
                                         r"model\.lma\.num_actions=5 \(lma\.action_network\.quantizer\.codebook: "
                                         r"\(\d+, \d+\) in the file, \(5, \d+\) here\)$"):
        load_trained_model(trained_run["run_folder"], overrides=["model.lma.num_actions=5"])


def test_state_dict_mismatch_names_the_first_differences_and_counts_the_rest():
    expected = {"a": torch.zeros(2, 3), "b": torch.zeros(4), "c": torch.zeros(1), "d": torch.zeros(1)}
    assert state_dict_mismatch(expected, dict(expected)) is None
    assert state_dict_mismatch(expected, {**expected, "e": torch.zeros(1)}, ignore_unexpected=True) is None
    assert state_dict_mismatch(expected, {**expected, "e": torch.zeros(1)}) == "e: in the file, not here"
    found = {"a": torch.zeros(3, 3), "b": [0.0] * 4, "d": torch.zeros(1), "e": torch.zeros(1)}
    assert state_dict_mismatch(expected, found) == ("a: (3, 3) in the file, (2, 3) here; b: not a tensor in the file; "
                                                    "c: missing in the file; 1 more entry differs")
    assert state_dict_mismatch(expected, found, shown=5).endswith("c: missing in the file; e: in the file, not here")
    assert state_dict_mismatch(expected, [torch.zeros(1)]) == "the file holds a list, not a state dict"
