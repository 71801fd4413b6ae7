"""Fixtures shared across the test packages, and the `--device` option.

    python -m pytest -q                                  # everything on the CPU (the default)
    python -m pytest -q --device cuda -m "device or cuda" tests/model   # the device tests of a package on a GPU

Tests that take the `device` fixture build their models and tensors there; they are marked
`device` automatically, so `-m device` selects them. Tests marked `cuda` only make sense on a
GPU (autocast, GradScaler) and are skipped, with the reason, unless `--device cuda` finds one.
"""
import pytest

from data.wsprites import generate

DEVICE_CHOICES = ("cpu", "cuda")
NO_GPU_REASON = "--device cuda: no CUDA GPU visible"
CUDA_ONLY_REASON = "CUDA only: run pytest with --device cuda on a machine with a GPU"


def pytest_addoption(parser):
    parser.addoption("--device", choices=DEVICE_CHOICES, default="cpu",
                     help="where tests taking the `device` fixture build models and tensors: cpu (default) or cuda "
                          "(skipped with a reason where no GPU is visible); tests marked `cuda` run only with cuda")


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Mark the tests that use the `device` fixture `device`; skip those marked `cuda` unless a GPU was asked for and
    is there."""
    wants_cuda = config.getoption("--device") == "cuda"
    cuda_skip = None
    if not wants_cuda:
        cuda_skip = pytest.mark.skip(reason=CUDA_ONLY_REASON)
    elif not _cuda_visible():
        cuda_skip = pytest.mark.skip(reason=NO_GPU_REASON)
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker("device")
        if cuda_skip is not None and item.get_closest_marker("cuda") is not None:
            item.add_marker(cuda_skip)


@pytest.fixture(scope="session")
def device(request):
    """The torch.device of `--device`: cpu (default), or the current CUDA GPU (the test is skipped with
    NO_GPU_REASON where there is none).

    On CUDA, TF32 is turned off for the session (cuDNN convolutions and cuBLAS products otherwise round
    their inputs to 10-bit mantissas), so that the float32 tolerances of the tests hold there too.
    """
    import torch

    if request.config.getoption("--device") == "cpu":
        return torch.device("cpu")
    if not _cuda_visible():
        pytest.skip(NO_GPU_REASON)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch.device("cuda", torch.cuda.current_device())


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
