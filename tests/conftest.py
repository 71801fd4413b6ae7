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
