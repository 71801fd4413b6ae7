"""Fixtures shared across the test packages."""
import pytest

from data.wsprites import generate


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory) -> str:
    """A tiny W-Sprites set (built-in sprites): 6 training videos of 12 frames (3 batches of 2 per epoch).

    Shared by the whole session; tests read it and never write into it.
    """
    root = str(tmp_path_factory.mktemp("wsprites") / "data")
    assert generate.main(["--out", root, "--num-characters", "5", "--videos-per-character", "2", "--frames", "12",
                          "--workers", "1"]) == 0
    return root


TRAINED_RUN_STEPS = 4


def _torch_threads(count: int):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def one_torch_thread():
    """PyTorch on one CPU thread for the test (restored after): steady timings beside other processes."""
    yield from _torch_threads(1)


@pytest.fixture
def two_torch_threads():
    """PyTorch on two CPU threads for the test (restored after)."""
    yield from _torch_threads(2)


@pytest.fixture(scope="session")
def trained_run(dataset_root, tmp_path_factory) -> dict:
    """A tiny run of train.py on `dataset_root` (the small test model, 4 steps past a 2-step GMA warm-up,
    checkpoints at steps 2 and 4). Returns {'runs_dir', 'run_name', 'run_folder', 'dataset_root', 'steps'}.

    Shared by the whole session; tests read it and never write into it (copy it first).
    """
    import os

    import torch

    import train
    from tests.small_model import NO_PERCEPTUAL_LOSSES, SMALL_MODEL

    runs = str(tmp_path_factory.mktemp("runs"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train.main([
            "--config", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                     "wsprites.yaml"),
            "--run-name", "tiny", "--runs-dir", runs, "--device", "cpu", "--no-progress", *SMALL_MODEL,
            *NO_PERCEPTUAL_LOSSES, f"data.root={dataset_root}", "data.num_workers=0", "training.batch_size=2",
            f"training.num_steps={TRAINED_RUN_STEPS}", "training.gma_warmup_steps=2", "training.checkpoint_every=2",
            "training.log_every=1", "training.media_every=1000", "evaluation.observations_count=6",
            "evaluation.batch_size=4"]) == 0
    finally:
        torch.set_num_threads(threads)
    return {"runs_dir": runs, "run_name": "tiny", "run_folder": os.path.join(runs, "tiny"),
            "dataset_root": dataset_root, "steps": TRAINED_RUN_STEPS}
