"""A run trained before the layout change of issue 15 (commit 'Issue 15, first steps', packages by role) still
loads and resumes.

tests/fixtures/pre_layout_run/ was written by train.py before the move, on an AVX-512 CPU: configs/wsprites-tiny.yaml
with the small test model (tests/small_model.py, no perceptual losses), batch 2, 4 steps past a 2-step GMA warm-up,
codebook k-means and restarts every step, on the W-Sprites set of the `dataset_root` fixture (5 characters,
2 videos, 12 frames). It holds the run's config.yaml, checkpoints/step_2.pth, and expected_step_4.pth, the
checkpoint the same run wrote after step 4 without stopping.

What holds on any CPU is checked exactly; what was recorded on another CPU, with a stated tolerance:
- bit-identical, both sides computed here: resuming the old step 2 to step 4 in one go, and to step 3, then
  again from step 3 to step 4;
- the data position and the number of codes counted: equal to the recording (no floating point in them);
- the weights after step 4 against the recording: PyTorch, oneDNN and the CPU kernels pick their code by the
  instruction set, so another CPU rounds otherwise. The distance ‖resumed − recorded‖ / ‖recorded − step 2‖
  (how far the two resumed steps moved the weights) must stay under WEIGHT_TOLERANCE. Measured: 0 on the AVX-512
  machine that wrote it, 5e-5 on an AVX2 CPU, 2.5e-3 with ATEN_CPU_CAPABILITY=default; a resume that lost Adam's
  moments gives 0.037.
"""
import os
import shutil

import pytest
import torch

import train
from model.trained import load_trained_model
from utils.checkpoint import load_checkpoint

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "pre_layout_run")
WEIGHT_TOLERANCE = 0.01
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def old_run(tmp_path):
    folder = tmp_path / "runs" / "pre-layout"
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("expected_*"))
    return str(folder)


def _resume(run_folder: str, step: int, dataset_root: str) -> None:
    assert train.main(["--run-name", os.path.basename(run_folder), "--runs-dir", os.path.dirname(run_folder),
                       "--resume-step", str(step), "--device", "cpu", "--no-progress", f"data.root={dataset_root}",
                       "training.checkpoint_every=1"]) == 0


def _relative_distance(got: dict, want: dict, start: dict) -> float:
    """‖got − want‖ / ‖want − start‖ over every floating-point tensor of the model."""
    difference = movement = 0.0
    for name, value in want.items():
        if value.is_floating_point():
            difference += (got[name].double() - value.double()).pow(2).sum().item()
            movement += (value.double() - start[name].double()).pow(2).sum().item()
    return (difference / movement) ** 0.5


@pytest.mark.determinism
def test_a_checkpoint_written_before_the_move_loads(old_run, dataset_root):
    trained = load_trained_model(old_run, 2, "cpu", [f"data.root={dataset_root}"])
    assert trained.step == 2 and trained.model.num_actions == 3


@pytest.mark.determinism
def test_a_run_trained_before_the_move_resumes(old_run, dataset_root, tmp_path):
    _resume(old_run, 2, dataset_root)
    straight = load_checkpoint(os.path.join(old_run, "checkpoints", "step_4.pth"))

    # Bit-identical where both sides are computed here: step 3 written by this resume, resumed again to step 4.
    again = str(tmp_path / "again" / "pre-layout")
    shutil.copytree(old_run, again, ignore=shutil.ignore_patterns("step_4.pth", "latest.pth"))
    _resume(again, 3, dataset_root)
    in_two = load_checkpoint(os.path.join(again, "checkpoints", "step_4.pth"))
    assert straight["model"].keys() == in_two["model"].keys()
    for name, value in straight["model"].items():
        assert torch.equal(in_two["model"][name], value), name
    for index, state in straight["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(in_two["optimizer"]["state"][index][key], value), (index, key)
    assert torch.equal(in_two["code_usage"], straight["code_usage"]) and in_two["data"] == straight["data"]

    # Against the run recorded on another CPU: exact where no rounding enters, within a tolerance where it does.
    expected = load_checkpoint(os.path.join(FIXTURE, "expected_step_4.pth"))
    start = load_checkpoint(os.path.join(FIXTURE, "checkpoints", "step_2.pth"))
    assert straight["model"].keys() == expected["model"].keys()
    assert straight["optimizer"]["state"].keys() == expected["optimizer"]["state"].keys()
    assert straight["step"] == expected["step"] == 4 and straight["data"] == expected["data"]
    assert straight["code_usage"].sum() == expected["code_usage"].sum()
    for name, value in expected["model"].items():
        if not value.is_floating_point():
            assert torch.equal(straight["model"][name], value), name
    distance = _relative_distance(straight["model"], expected["model"], start["model"])
    assert distance < WEIGHT_TOLERANCE, f"weights {distance:.2g} of a step's movement away from the recording"


def test_the_base_layer_never_imports_the_model_or_the_data():
    """utils/*.py (not its sub-packages) is what model/ and data/ build on: it must not import them back."""
    import ast
    import glob

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    offenders = []
    for path in sorted(glob.glob(os.path.join(root, "utils", "*.py"))):
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{os.path.basename(path)}: {name}" for name in names
                          if name.split(".")[0] in ("model", "data")]
    assert offenders == []
