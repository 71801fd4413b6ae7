"""train.py on the CPU: the command line, the GMA warm-up, exact resumption, two-process DDP,
a learning smoke test and stopping on SIGTERM. A small model on tiny generated W-Sprites
(128×96 frames); perceptual losses off, except where the random-VGG flag is tested."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import train
from tests.small_model import NO_PERCEPTUAL_LOSSES, SMALL_MODEL
from utils.cli import run_main
from utils.config import config_from_dict, load_config
from utils.distributed import DistributedContext
from utils.errors import GlassError
from utils.training.trainer import Trainer

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WSPRITES = os.path.join(REPOSITORY, "configs", "wsprites.yaml")
# T goes 3 → 5 and T_f 3 → 1 over the first steps, so that short runs cross every curriculum change.
SHORT_CURRICULA = ["training.observations_count={start: 3, end: 5, start_step: 0, steps: 6}",
                   "training.ground_truth_steps={start: 3, end: 1, start_step: 0, steps: 4}"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def arguments(dataset_root: str, runs: str, name: str, *extra: str, config: bool = True) -> list:
    """train.py arguments for a small CPU run (dotted overrides after the options, as a user types them)."""
    return [*(["--config", WSPRITES] if config else []), "--run-name", name, "--runs-dir", runs, "--device", "cpu",
            "--no-progress", *SMALL_MODEL, *NO_PERCEPTUAL_LOSSES, f"data.root={dataset_root}", "data.num_workers=0",
            "training.batch_size=2", "training.log_every=1", "training.media_every=1000", *extra]


def metrics(runs: str, name: str) -> list:
    with open(os.path.join(runs, name, "metrics.jsonl"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def checkpoint(runs: str, name: str, file: str = "latest.pth") -> dict:
    return torch.load(os.path.join(runs, name, "checkpoints", file), weights_only=True)


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# --------------------------------------------------------------------------- the command line

def test_dry_run_prints_the_config_and_the_summary_and_writes_nothing(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    assert train.main(["--config", WSPRITES, "--run-name", "dry", "--runs-dir", runs, "--dry-run", "--random-seed", "7",
                       "model.lma.num_actions=9"]) == 0
    printed = capsys.readouterr().out
    config_text, summary = printed.split("wsprites: frames", 1)
    config = config_from_dict(yaml.safe_load(config_text))
    assert config.model.lma.num_actions == 9 and config.training.seed == 7
    assert "128×96, 9 local actions" in summary and "total" in summary and "18,163,100" in summary
    assert not os.path.exists(runs)


@pytest.mark.parametrize("argv, message", [
    (["--config", WSPRITES, "--run-name", "bad", "model.lma.num_action=9"], "unknown key 'model.lma.num_action'"),
    (["--config", WSPRITES, "--run-name", "bad", "training.batch_size=two"],
     "training.batch_size: expected an integer"),
    (["--run-name", "bad"], "--config is required"),
    (["--config", WSPRITES, "--run-name", "bad", "--device", "cpu", "training.precision=bf16"], "needs a CUDA device"),
    (["--config", WSPRITES, "--run-name", "a/b"], "--run-name: expected a folder name"),
    (["--config", WSPRITES, "--run-name", "bad", "training.cpu_kernels=fast"],
     "training.cpu_kernels: must be one of ('plain', 'torch', 'native'), got 'fast'"),
    (["--config", WSPRITES, "--run-name", "bad", "model.lma.glimpse=[60, 80]"],
     f"{WSPRITES}: model.lma.glimpse: both sizes must be divisible by 16"),
    (["--config", WSPRITES, "--run-name", "bad", "data.input_size=[100, 96]"],
     f"{WSPRITES}: data.input_size: frames of 100×96 do not fit"),
])
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        run_main(train.main, [*argv, "--runs-dir", str(tmp_path / "runs"), "--dry-run"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in error and error.count("\n") == 1


def test_a_new_run_is_refused_where_checkpoints_exist_and_resuming_needs_them(dataset_root, tmp_path):
    runs = str(tmp_path / "runs")
    with pytest.raises(GlassError, match="no such run folder"):
        train.main(arguments(dataset_root, runs, "run", "--resume-step", "latest", config=False))
    assert train.main(arguments(dataset_root, runs, "run", "training.num_steps=1")) == 0
    with pytest.raises(GlassError, match="already holds checkpoints: continue it with --resume-step latest"):
        train.main(arguments(dataset_root, runs, "run", "training.num_steps=1"))
    with pytest.raises(GlassError, match="a resumed run uses the config.yaml of its folder"):
        train.main(arguments(dataset_root, runs, "run", "--resume-step", "1"))
    with pytest.raises(GlassError, match=r"step_5.pth: no such checkpoint \(steps available: 1\)"):
        train.main(arguments(dataset_root, runs, "run", "--resume-step", "5", config=False))
    config_path = os.path.join(runs, "run", "config.yaml")
    with open(config_path, encoding="utf-8") as handle:
        stored = handle.read()
    with pytest.raises(GlassError, match=r"step_1.pth: its weights do not fit the model of the run's config.yaml with "
                                         r"this command's overrides \(lma\.action_network\.quantizer\.codebook: "
                                         r"\(3, \d+\) in the file, \(9, \d+\) here\)$"):
        train.main(arguments(dataset_root, runs, "run", "--resume-step", "1", "model.lma.num_actions=9",
                             "training.num_steps=2", config=False))
    with open(config_path, encoding="utf-8") as handle:
        assert handle.read() == stored, "a refused resume leaves the run's config.yaml as it was"
    with open(os.path.join(runs, "run", "checkpoints", "step_1.pth"), "wb") as handle:
        handle.write(b"not a checkpoint")
    with pytest.raises(GlassError, match="step_1.pth: cannot be loaded"):
        train.main(arguments(dataset_root, runs, "run", "--resume-step", "1", config=False))


def test_a_runs_dir_that_is_a_file_is_refused_before_any_work(dataset_root, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for runs in (str(a_file), str(a_file / "deeper")):
        with pytest.raises(GlassError, match=f"run folder {runs}/run: {a_file} is a file, not a folder"):
            train.main(arguments(dataset_root, runs, "run", "training.num_steps=1"))
    assert a_file.read_text() == "mine"


def test_a_truncated_frame_stops_a_new_run_and_leaves_no_run_folder(dataset_root, tmp_path):
    broken = tmp_path / "data"
    shutil.copytree(dataset_root, broken)
    for frame in (broken / "train").glob("*/0000[0-5].png"):  # every window of the first batch reads one
        frame.write_bytes(frame.read_bytes()[:100])
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "other").mkdir()  # a folder of the user's beside it stays
    with pytest.raises(GlassError, match=r"train/sprite_\d+_video_\d+/0000\d.png: unreadable image"):
        train.main(arguments(str(broken), str(runs), "run", "training.num_steps=1"))
    assert os.listdir(runs) == ["other"], "a new run stopped by bad data leaves no half-made folder"
    (runs / "kept").mkdir()  # a folder that was there before is not removed
    with pytest.raises(GlassError, match="unreadable image"):
        train.main(arguments(str(broken), str(runs), "kept", "training.num_steps=1"))
    assert (runs / "kept").is_dir()


def test_random_vgg_weights_are_explicit_and_recorded(dataset_root, tmp_path, capsys):
    runs = str(tmp_path / "runs")
    overrides = [argument for argument in arguments(dataset_root, runs, "vgg", "training.num_steps=1",
                                                    "training.observations_count={start: 2, end: 2}")
                 if argument not in NO_PERCEPTUAL_LOSSES]
    assert train.main(overrides + ["--random-vgg-weights"]) == 0
    assert "warning: comparable: false" in capsys.readouterr().err
    with open(os.path.join(runs, "vgg", "config.yaml"), encoding="utf-8") as handle:
        text = handle.read()
    assert text.startswith("# comparable: false") and "random_vgg_weights: true" in text
    row, = metrics(runs, "vgg")
    assert row["comparable"] is False and row["background_perceptual_loss"] > 0
    assert checkpoint(runs, "vgg")["comparable"] is False


# --------------------------------------------------------------------------- the training step

def small_trainer(*overrides: str) -> Trainer:
    """A Trainer of the small model for 32×16 frames (no data needed)."""
    config = load_config(WSPRITES, [*SMALL_MODEL, *NO_PERCEPTUAL_LOSSES, "data.input_size=[32, 16]", *overrides])
    torch.manual_seed(0)
    return Trainer(config, DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))


def random_batch(step: int) -> dict:
    """(B=2, T=6, 3, 16, 32) observations, T as the default curriculum wants it."""
    return {"observations": torch.rand(2, 6, 3, 16, 32, generator=torch.Generator().manual_seed(step)) * 2 - 1}


def _snapshot(module: torch.nn.Module) -> dict:
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


@pytest.mark.determinism
def test_gma_only_warmup_leaves_the_lma_bit_identical():
    trainer = small_trainer("training.gma_warmup_steps=3")
    lma_before, gma_before = _snapshot(trainer.model.lma), _snapshot(trainer.model.gma)
    for step in range(3):
        assert trainer.training_step(random_batch(step), step).ran_lma is False
    lma_after, gma_after = _snapshot(trainer.model.lma), _snapshot(trainer.model.gma)
    assert all(torch.equal(lma_before[name], lma_after[name]) for name in lma_before), "LMA parameters and buffers"
    assert not any(parameter in trainer.optimizer.state for parameter in trainer.model.lma.parameters())
    gma_parameters = [name for name, _ in trainer.model.gma.named_parameters()]
    unchanged = [name for name in gma_parameters if torch.equal(gma_before[name], gma_after[name])]
    assert unchanged == [], f"every GMA parameter is trained, unchanged: {unchanged}"
    assert trainer.training_step(random_batch(3), 3).ran_lma is True
    now = _snapshot(trainer.model.lma)
    trained = [name for name, _ in trainer.model.lma.named_parameters() if not torch.equal(lma_after[name], now[name])]
    assert len(trained) == len(list(trainer.model.lma.parameters())), "after the warm-up the LMA is trained"


def _pictures(files: dict) -> dict:
    """The PNG media of `Trainer.write_media`'s answer as pixel arrays, by name."""
    import numpy as np
    from PIL import Image
    return {name: np.asarray(Image.open(path)) for name, path in files.items() if path.endswith(".png")}


def test_training_media_draw_the_moving_average_and_leave_the_trained_weights(tmp_path):
    trainer = small_trainer("training.gma_warmup_steps=1", "training.weight_average_decay=0.5")
    for step in range(3):
        trainer.training_step(random_batch(step), step)
    trained = _snapshot(trainer.model)
    average = {name: tensor.clone() for name, tensor in trainer.weight_average.state_dict().items()}
    assert any(not torch.equal(average[name], trained[name]) for name in trained)
    observations = random_batch(9)["observations"]
    drawn = _pictures(trainer.write_media(observations, 2, str(tmp_path / "averaged")))
    assert drawn and all(torch.equal(tensor, trained[name]) for name, tensor in trainer.model.state_dict().items())
    # the same pictures as a model that holds the average; other pictures than the trained weights draw
    trainer.weight_average = None
    with_trained = _pictures(trainer.write_media(observations, 2, str(tmp_path / "trained")))
    trainer.model.load_state_dict(average)
    with_average = _pictures(trainer.write_media(observations, 2, str(tmp_path / "loaded")))
    assert drawn.keys() == with_average.keys() == with_trained.keys()
    assert all((drawn[name] == with_average[name]).all() for name in drawn)
    assert any(drawn[name].shape != with_trained[name].shape or (drawn[name] != with_trained[name]).any()
               for name in drawn)


def test_only_rank_0_keeps_the_moving_average():
    config = load_config(WSPRITES, [*SMALL_MODEL, *NO_PERCEPTUAL_LOSSES, "data.input_size=[32, 16]",
                                    "training.weight_average_decay=0.9"])
    ranks = [Trainer(config, DistributedContext(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu")))
             for rank in (0, 1)]
    assert ranks[0].weight_average is not None and ranks[1].weight_average is None  # the checkpoint: the DDP test


def test_authors_warmup_runs_the_lma_and_weight_decay_moves_it():
    trainer = small_trainer("training.gma_warmup_steps=3", "training.warmup_mode=authors")
    before = {name: parameter.detach().clone() for name, parameter in trainer.model.lma.named_parameters()}
    for step in range(3):
        result = trainer.training_step(random_batch(step), step)
        assert result.ran_lma and "multiscale_global_reconstruction_loss" in result.loss.terms
    after = dict(trainer.model.lma.named_parameters())
    moved = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(moved) > len(before) // 2, "the LMA losses count 0, yet weight decay moves the weights"
    for name in before:
        large = before[name].abs() > 1e-2  # Adam normalises the decay gradient: steps of about lr, towards zero
        assert (after[name].detach().abs()[large] < before[name].abs()[large]).all(), name


def test_authors_warmup_decay_takes_the_lma_to_zero():
    """The authors' warm-up gives the LMA zero loss gradients, so Adam sees only the weight decay's
    wd·p: normalised, it moves each weight by about lr per step towards zero (linear phase), and
    once wd·|p| is near Adam's ε it shrinks p geometrically. Measured here on the Trainer's own
    optimiser (lr 4e-4, wd 1e-6) for 400 steps; over the paper's 3,000 warm-up steps the same decay
    takes the codebook from 1/6 to about 4e-13 and linear weights to about 2e-18 (README)."""
    trainer = small_trainer("training.warmup_mode=authors", "training.learning_rate=4e-4")
    assert trainer.training.weight_decay == 1e-6
    parameters = list(trainer.model.lma.parameters())
    start = [parameter.detach().clone() for parameter in parameters]
    trajectory = []
    for step in range(400):
        for parameter in parameters:  # what the zero-weighted LMA losses give: exact zeros
            parameter.grad = torch.zeros_like(parameter)
        trainer.optimizer.step()
        if step + 1 in (100, 400):
            trajectory.append([parameter.detach().clone() for parameter in parameters])
    after_100, after_400 = trajectory
    large = torch.cat([p0.flatten() for p0 in start]).abs() > 0.1
    shrink = (torch.cat([p0.flatten() for p0 in start]).abs()
              - torch.cat([p.flatten() for p in after_100]).abs())[large]
    assert ((shrink > 0.8 * 100 * 4e-4) & (shrink < 1.0 * 100 * 4e-4)).all()  # about lr per step, never more
    small = torch.cat([p0.flatten() for p0 in start]).abs() < 1e-2
    assert small.any() and (torch.cat([p.flatten() for p in after_400]).abs()[small] < 1e-4).all()
    codebook = trainer.model.lma.action_network.codebook.detach()  # U(−1/K, 1/K) at the start, K = 3
    assert codebook.abs().max() < 1 / 3 - 0.8 * 400 * 4e-4


def test_codebook_options_restart_unused_codes_and_start_from_kmeans():
    trainer = small_trainer("training.gma_warmup_steps=1", "training.codebook_kmeans_init=true",
                            "training.codebook_restart_every=2", "model.lma.num_actions=6")
    codebook = trainer.model.lma.action_network.codebook
    initial = codebook.detach().clone()
    assert trainer.training_step(random_batch(0), 0).lma_statistics is None  # warm-up: nothing happens
    assert torch.equal(codebook.detach(), initial)
    first = trainer.training_step(random_batch(1), 1)  # the first LMA step: k-means of its z
    assert first.lma_statistics["codes_restarted"].item() == 6
    assert not torch.equal(codebook.detach(), initial) and trainer.code_usage.sum() == 0
    moved = codebook.detach().clone()
    result = trainer.training_step(random_batch(2), 2)  # lma step 1: a check; codes unused in it restart
    dead = (result.lma_statistics["code_counts"] == 0).nonzero().flatten().tolist()
    assert len(dead) > 0, "with 6 codes and 10 transitions some code is unused (seeded)"
    assert result.lma_statistics["codes_restarted"].item() == len(dead) and trainer.code_usage.sum() == 0
    state = trainer.optimizer.state[codebook]
    assert torch.equal(state["exp_avg"][dead], torch.zeros_like(state["exp_avg"][dead]))
    assert not torch.equal(codebook.detach()[dead], moved[dead])
    trainer.training_step(random_batch(3), 3)  # lma step 2: counted until the next check
    assert trainer.code_usage.sum() == 2 * 5  # B·(T−1) transitions


# --------------------------------------------------------------------------- runs

@pytest.mark.determinism
@pytest.mark.parametrize("num_workers, resume_step, codebook_options", [
    (0, "latest", []),
    # k-means after step 2, restarts after steps 3 and 5: the usage counted in step 4 crosses the resume; the
    # moving average of the weights (copying the codebook when a restart moves it) and the colour orders the LMA
    # sees (drawn from the seed and the step) continue exactly too.
    (1, "4", ["training.codebook_kmeans_init=true", "training.codebook_restart_every=2",
              "training.weight_average_decay=0.9", "training.colour_permutation=0.5"])])
def test_resuming_gives_bit_identical_weights(dataset_root, tmp_path, num_workers, resume_step, codebook_options):
    """7 steps in one go, and 4 steps + resume + 3 steps: the same weights, optimiser, data position and
    generators. The runs cross the end of the warm-up, changes of T and T_f, epochs (3 steps each) and
    media steps (3, 6)."""
    runs = str(tmp_path / "runs")
    common = [f"data.num_workers={num_workers}", "training.gma_warmup_steps=2", "training.checkpoint_every=4",
              "training.media_every=3", *SHORT_CURRICULA, *codebook_options]
    assert train.main(arguments(dataset_root, runs, "whole", *common, "training.num_steps=7")) == 0
    assert train.main(arguments(dataset_root, runs, "parts", *common, "training.num_steps=4")) == 0
    assert train.main(arguments(dataset_root, runs, "parts", "--resume-step", resume_step, *common,
                                "training.num_steps=7", config=False)) == 0
    whole, parts = checkpoint(runs, "whole"), checkpoint(runs, "parts")
    # Media every 3 steps and after the last one; the LMA's health in every row after the warm-up.
    assert sorted({name.split("_")[1] for name in os.listdir(os.path.join(runs, "whole", "media"))}) == [
        "000003", "000006", "000007"]
    rows = metrics(runs, "whole")
    assert "lma_codes_used" not in rows[0] and all("lma_codes_used" in row for row in rows[2:])
    assert all(1 <= row["lma_codes_used"] <= 3 and 1.0 <= row["lma_code_perplexity"] <= 3.0 + 1e-9
               and "lma_foreground_psnr_gt" in row for row in rows[2:])
    # the code effect on the logged batch (measured in eval mode: it must leave the training bit-identical)
    assert "lma_code_effect_db" not in rows[0] and all(math.isfinite(row["lma_code_effect_db"]) for row in rows[2:])
    assert whole["step"] == parts["step"] == 7 and whole["data"] == parts["data"]
    assert whole["model"].keys() == parts["model"].keys()
    assert all(torch.equal(whole["model"][name], parts["model"][name]) for name in whole["model"])
    assert whole.keys() == parts.keys() and ("averaged_model" in whole) == bool(codebook_options)
    if "averaged_model" in whole:
        assert all(torch.equal(whole["averaged_model"][name], parts["averaged_model"][name])
                   for name in whole["averaged_model"])
        assert any(not torch.equal(whole["averaged_model"][name], whole["model"][name]) for name in whole["model"])
    for state_whole, state_parts in zip(whole["optimizer"]["state"].values(), parts["optimizer"]["state"].values()):
        assert all(torch.equal(state_whole[key], state_parts[key]) for key in state_whole)
    assert whole["scheduler"] == parts["scheduler"]
    assert (torch.equal(whole["rng"][0]["torch"], parts["rng"][0]["torch"])
            and whole["rng"][0]["numpy"] == parts["rng"][0]["numpy"])
    losses = [{name: value for name, value in row.items() if name.endswith("loss")} for row in metrics(runs, "whole")]
    assert losses == [{name: value for name, value in row.items() if name.endswith("loss")}
                      for row in metrics(runs, "parts")]
    assert [row["observations_count"] for row in metrics(runs, "whole")] == [3, 3, 3, 4, 4, 4, 5]


def test_a_few_dozen_steps_lower_the_gma_loss(dataset_root, tmp_path):
    runs = str(tmp_path / "runs")
    assert train.main(arguments(dataset_root, runs, "learn", "training.num_steps=40", "training.gma_warmup_steps=40",
                                "training.learning_rate=0.001", "training.checkpoint_every=1000",
                                "training.observations_count={start: 4, end: 4}")) == 0
    losses = [row["loss"] for row in metrics(runs, "learn")]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, f"mean loss of the first 5 steps {first:.4f}, of the last 5 {last:.4f}"


def test_a_glimpse_run_trains_logs_the_code_effect_and_draws_its_media(dataset_root, tmp_path):
    """`model.lma.glimpse` with `model.gma.input_scale` 2 through train.py: the LMA steps on boxes, the training-batch
    code effect (generation in a box per step), and the media (the reconstruction grid from pasted outputs, the
    action sheets through play), the GMA on half-size frames; `loss.action_slowness_weight` logs its term."""
    runs = str(tmp_path / "runs")
    assert train.main(arguments(dataset_root, runs, "glimpse", "training.num_steps=3", "training.gma_warmup_steps=1",
                                "training.media_every=3", "training.checkpoint_every=3", "model.lma.glimpse=[64, 80]",
                                "model.gma.input_scale=2", "loss.action_slowness_weight=1",
                                "model.lma.decoder_skip=true", "model.lma.decoder_skip_mask=true",
                                "training.observations_count={start: 4, end: 4}",
                                "training.ground_truth_steps={start: 3, end: 3}")) == 0
    rows = metrics(runs, "glimpse")
    lma_rows = [row for row in rows if "multiscale_local_reconstruction_loss" in row]
    assert len(lma_rows) == 2 and all(math.isfinite(row["multiscale_local_reconstruction_loss"]) for row in lma_rows)
    assert all(0 <= row["action_slowness_loss"] < 10 for row in lma_rows)
    assert any("lma_code_effect_db" in row for row in rows)
    media = os.listdir(os.path.join(runs, "glimpse", "media"))
    assert {"step_000003_reconstruction_grid.png", "step_000003_local_actions_sheet.png"} <= set(media)
    stored = load_config(os.path.join(runs, "glimpse", "config.yaml")).model
    assert stored.lma.glimpse == [64, 80] and stored.gma.input_scale == 2


def _wait_for_rows(process: subprocess.Popen, path: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"train.py ended early: {process.communicate()[1][-2000:]}")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                if sum(1 for _ in handle) >= count:
                    return
        time.sleep(0.2)
    pytest.fail(f"no {count} metrics rows after {timeout} s")


def _stop_with_sigterm(command: list, metrics_path: str, rows: int) -> tuple:
    """Start `command` in its own process group, SIGTERM it (only the launcher) after `rows` metrics rows;
    returns (exit status, stdout, stderr). Whatever is left of the group is killed if the test fails."""
    process = subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=environment(), start_new_session=True)
    try:
        _wait_for_rows(process, metrics_path, rows, timeout=120)
        process.send_signal(signal.SIGTERM)
        output, errors = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and the training processes it spawned
            process.communicate()
    return process.returncode, output, errors


@pytest.mark.determinism
def test_sigterm_finishes_the_step_saves_and_exits(dataset_root, tmp_path):
    runs = str(tmp_path / "runs")
    command = [sys.executable, "train.py", *arguments(dataset_root, runs, "stop", "training.num_steps=1000",
                                                      "training.gma_warmup_steps=1000",
                                                      "training.checkpoint_every=1000")]
    status, output, errors = _stop_with_sigterm(command, os.path.join(runs, "stop", "metrics.jsonl"), rows=2)
    assert status == 128 + signal.SIGTERM, errors
    saved = checkpoint(runs, "stop")
    assert "stopped by SIGTERM after step" in output and "--resume-step latest" in output
    assert saved["step"] == metrics(runs, "stop")[-1]["step"] >= 2
    assert train.main(arguments(dataset_root, runs, "stop", "--resume-step", "latest",
                                f"training.num_steps={saved['step'] + 1}", config=False)) == 0
    assert checkpoint(runs, "stop")["step"] == saved["step"] + 1


@pytest.mark.determinism
def test_two_cpu_processes_keep_identical_replicas_and_stop_together(dataset_root, tmp_path):
    """--num-gpus 2 --device cpu: two gloo processes (one thread each on 2 cores) on a fresh localhost port.
    Every checkpoint first checks that the replicas are bit-identical (the run fails otherwise), the
    codebook's k-means start and restarts included, and the GMA frozen at rank 0's average from the warm-up's
    end stays so; SIGTERM
    to the launcher reaches both processes, which finish the step and save."""
    runs = str(tmp_path / "runs")
    command = [sys.executable, "train.py", *arguments(
        dataset_root, runs, "ddp", "--num-gpus", "2", "training.batch_size=1", "training.num_steps=1000",
        "training.gma_warmup_steps=2", "training.checkpoint_every=2", "training.media_every=3", *SHORT_CURRICULA,
        # the codebook options change the codebook in place on every process: the replicas must stay identical
        "training.codebook_kmeans_init=true", "training.codebook_restart_every=1",
        "training.weight_average_decay=0.9",  # kept by rank 0 alone, which saves it and draws the media with it
        # the GMA's parameters idle from the warm-up's end (DDP must not wait for them), at rank 0's average
        "training.gma_freeze_step=2", "training.gma_freeze_average=true")]
    status, output, errors = _stop_with_sigterm(command, os.path.join(runs, "ddp", "metrics.jsonl"), rows=4)
    assert status == 128 + signal.SIGTERM, errors
    assert "2 process(es) × batch 1" in output and "stopped by SIGTERM" in output
    rows = metrics(runs, "ddp")
    final, after_warmup = checkpoint(runs, "ddp"), checkpoint(runs, "ddp", "step_2.pth")
    assert final["world_size"] == 2 and len(final["rng"]) == 2 and final["step"] == rows[-1]["step"] >= 4
    assert not torch.equal(final["rng"][0]["torch"], final["rng"][1]["torch"]), "seeds are seed·world + rank"
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in rows) and rows[-1]["lma_trained"]
    assert final["averaged_model"].keys() == final["model"].keys()
    assert any(not torch.equal(tensor, final["model"][name]) for name, tensor in final["averaged_model"].items())
    assert any(not torch.equal(tensor, final["model"][name]) for name, tensor in after_warmup["model"].items()
               if name.startswith("lma.decoder.")), "the LMA's decoder trained"
    buffers = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm's: they follow the batches
    gma_parameters = [name for name in final["model"] if name.startswith("gma.") and not name.endswith(buffers)]
    assert gma_parameters and all(torch.equal(after_warmup["averaged_model"][name], final["model"][name])
                                  for name in gma_parameters), "the GMA frozen from step 2 at the average of step 1"
    assert any(not torch.equal(after_warmup["model"][name], final["model"][name]) for name in gma_parameters)


@pytest.fixture
def wandb_without_login(tmp_path, monkeypatch):
    """wandb with no stored login and no key; its in-process state is reset afterwards."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield monkeypatch
    wandb.teardown()


def test_wandb_logs_offline_into_the_run_folder(dataset_root, tmp_path, wandb_without_login):
    wandb_without_login.setenv("WANDB_MODE", "offline")
    runs = str(tmp_path / "runs")
    assert train.main(arguments(dataset_root, runs, "logged", "--wandb", "training.num_steps=2",
                                "training.media_every=2", "training.observations_count={start: 3, end: 3}")) == 0
    offline_runs = [name for name in os.listdir(os.path.join(runs, "logged", "wandb"))
                    if name.startswith("offline-run")]
    with open(os.path.join(runs, "logged", "wandb_id.txt"), encoding="utf-8") as handle:
        assert len(offline_runs) == 1 and offline_runs[0].endswith(handle.read().strip())


def test_wandb_online_without_a_login_fails_before_training(dataset_root, tmp_path, wandb_without_login):
    wandb_without_login.setenv("WANDB_MODE", "online")
    runs = str(tmp_path / "runs")
    with pytest.raises(GlassError, match="wandb could not start .* WANDB_MODE=offline") as error:
        train.main(arguments(dataset_root, runs, "online", "--wandb", "training.num_steps=1"))
    assert "\n" not in str(error.value) and not os.path.exists(os.path.join(runs, "online", "checkpoints"))
