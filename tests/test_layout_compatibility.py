"""A run trained before the layout change of issue 15 (commit 'Issue 15, first steps', packages by role) still
loads and resumes bit-identically.

tests/fixtures/pre_layout_run/ was written by train.py before the move: configs/wsprites-tiny.yaml with the
small test model (tests/small_model.py, no perceptual losses), batch 2, 4 steps past a 2-step GMA warm-up,
codebook k-means and restarts every step, on the W-Sprites set of the `dataset_root` fixture (5 characters,
2 videos, 12 frames). It holds the run's config.yaml, checkpoints/step_2.pth, and expected_step_4.pth, the
checkpoint the same run wrote after step 4 without stopping.
"""
import os
import shutil

import pytest
import torch

import train
from model.trained import load_trained_model
from utils.checkpoint import load_checkpoint

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "pre_layout_run")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def old_run(tmp_path):
    folder = tmp_path / "runs" / "pre-layout"
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("expected_*"))
    return str(folder)


def test_a_checkpoint_written_before_the_move_loads(old_run, dataset_root):
    trained = load_trained_model(old_run, 2, "cpu", [f"data.root={dataset_root}"])
    assert trained.step == 2 and trained.model.num_actions == 3


def test_a_run_trained_before_the_move_resumes_bit_identically(old_run, dataset_root):
    assert train.main(["--run-name", "pre-layout", "--runs-dir", os.path.dirname(old_run), "--resume-step", "2",
                       "--device", "cpu", "--no-progress", f"data.root={dataset_root}"]) == 0
    resumed = load_checkpoint(os.path.join(old_run, "checkpoints", "step_4.pth"))
    expected = load_checkpoint(os.path.join(FIXTURE, "expected_step_4.pth"))
    assert resumed["model"].keys() == expected["model"].keys()
    for name, value in expected["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    for index, state in expected["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(resumed["optimizer"]["state"][index][key], value), (index, key)
    assert torch.equal(resumed["code_usage"], expected["code_usage"])
    assert resumed["data"] == expected["data"]


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
