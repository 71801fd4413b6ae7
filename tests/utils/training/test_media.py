"""The media of a training run (utils/training/media.py) on a small model."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from model.glass import Glass
from tests.small_model import SMALL_INPUT_SIZE, small_model_config
from utils.training.media import write_training_media

WIDTH, HEIGHT = SMALL_INPUT_SIZE
LENGTH = 4  # T of the test batch
GMA_ROWS, LMA_ROWS = 8, 2  # rows per sequence of the reconstruction grid


@pytest.fixture(scope="module")
def model_and_video():
    """A small model whose batch-norm running statistics are those of the video (an untrained
    model with the initial statistics generates near-constant frames in eval mode)."""
    torch.manual_seed(0)
    model = Glass(small_model_config(), SMALL_INPUT_SIZE)
    video = torch.rand(3, LENGTH, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        model(video, num_ground_truth_steps=1)
    return model.train(), video


def _expected_height(rows: int) -> int:
    return rows * HEIGHT + (rows + 1) * 2


def test_warm_up_output_writes_only_the_gma_grid(model_and_video, tmp_path):
    model, video = model_and_video
    with torch.no_grad():
        output = model(video, num_ground_truth_steps=LENGTH - 1, run_lma=False)
    paths = write_training_media(model, video, output, step=500, folder=str(tmp_path / "media"))
    assert paths == {"reconstruction_grid": str(tmp_path / "media" / "step_000500_reconstruction_grid.png")}
    assert sorted(os.listdir(tmp_path / "media")) == ["step_000500_reconstruction_grid.png"]
    with Image.open(paths["reconstruction_grid"]) as grid:
        width, height = grid.size
    assert height == _expected_height(2 * GMA_ROWS)  # 2 sequences (the default), rows = what, columns = time
    assert width > LENGTH * (WIDTH + 2) + 2


def test_full_output_writes_the_grid_the_videos_and_the_action_matrices(model_and_video, tmp_path):
    model, video = model_and_video
    with torch.no_grad():
        output = model(video, num_ground_truth_steps=2)
    paths = write_training_media(model, video, output, step=12, folder=str(tmp_path), num_sequences=2, matrix_frames=3)
    names = ["reconstruction_grid", "reconstruction_video", "global_actions_video", "global_actions_sheet",
             "local_actions_video", "local_actions_sheet"]
    assert sorted(paths) == sorted(names)
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths.values())
    assert all(os.path.basename(paths[n]).startswith("step_000012_" + n) for n in names)
    assert model.training  # generation ran in eval mode and restored the mode

    with Image.open(paths["reconstruction_grid"]) as grid:
        assert grid.size[1] == _expected_height(2 * (GMA_ROWS + LMA_ROWS))
    with Image.open(paths["reconstruction_video"]) as gif:
        assert gif.n_frames == LENGTH  # one GIF frame per time step: real | reconstructed
        assert gif.size[1] > _expected_height(2)  # 2 sequences below a header
    num_actions = model.lma.action_network.codebook.shape[0]
    for name, columns in (("global_actions", 5), ("local_actions", num_actions)):
        with Image.open(paths[name + "_video"]) as gif:
            assert gif.n_frames == 3 + 1  # the start frame, then the generated frames
            plain_width = columns * (WIDTH + 2) + 2
            assert gif.size[0] > plain_width and gif.size[1] > _expected_height(2)
        with Image.open(paths[name + "_sheet"]) as sheet:
            assert sheet.size[0] > (3 + 1) * (WIDTH + 2) + 2  # columns = time, plus labels
            assert sheet.size[1] > _expected_height(2 * columns)  # one row per (start, action), plus header


def test_action_matrices_are_the_two_figures_of_the_generation_api(model_and_video):
    """The one builder of the action sheets (training media and play.py --grid)."""
    from model.generation import NAMED_SHIFTS, global_action_matrix, local_action_matrix
    from utils.training.media import action_matrices, action_matrix_media

    model, video = model_and_video
    starts = video[:2, 0]
    built = action_matrices(model, starts, 2, row_names=["a", "b"], local_action=1)
    assert list(built) == ["global_actions", "local_actions"]
    expected = {
        "global_actions": action_matrix_media(global_action_matrix(model, starts, 2, local_action=1), starts,
                                              list(NAMED_SHIFTS), ["a", "b"]),
        "local_actions": action_matrix_media(local_action_matrix(model, starts, 2), starts,
                                             [f"action {k}" for k in range(model.num_actions)], ["a", "b"]),
    }
    for name, (video_frames, sheet) in built.items():
        assert len(video_frames) == 3  # the start frame and 2 generated ones
        assert all(np.array_equal(frame, other) for frame, other in zip(video_frames, expected[name][0]))
        assert np.array_equal(sheet, expected[name][1])
    assert model.training
