"""Training media and image helpers (utils/media.py): conversions, grid geometry, GIF and PNG
files read back with PIL, and which files a training step writes."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.small_model import SMALL_INPUT_SIZE
from utils.files import write_atomically
from utils.media import blank_like, image_grid, save_gif, save_png, to_uint8_images

WIDTH, HEIGHT = SMALL_INPUT_SIZE
LENGTH = 4  # T of the test batch
GMA_ROWS, LMA_ROWS = 8, 2  # rows per sequence of the reconstruction grid


def test_to_uint8_images_maps_the_range_ends_and_moves_channels_last():
    images = torch.tensor([-1.0, 0.0, 1.0, -3.0, 2.0, float("nan")]).reshape(1, 1, 6).expand(2, 3, 1, 6)
    converted = to_uint8_images(images)
    assert converted.shape == (2, 1, 6, 3) and converted.dtype == np.uint8
    assert converted[0, 0, :, 0].tolist() == [0, 128, 255, 0, 255, 0]  # 127.5 rounds to 128; clamped; NaN → 0


def test_to_uint8_images_repeats_a_mask_channel_in_its_own_range():
    masks = torch.tensor([0.0, 0.5, 1.0]).reshape(1, 1, 3)
    converted = to_uint8_images(masks, value_range=(0.0, 1.0))
    assert converted.shape == (1, 3, 3)
    assert converted[0].tolist() == [[0, 0, 0], [128, 128, 128], [255, 255, 255]]
    with pytest.raises(ValueError, match="1 or 3"):
        to_uint8_images(torch.zeros(2, 2, 4, 4))


def test_image_grid_places_cells_with_padding():
    cells = np.arange(2 * 3, dtype=np.uint8).reshape(2, 3, 1, 1, 1) * 10 + np.zeros((1, 1, 5, 7, 3), np.uint8)
    grid = image_grid(cells, padding=2, pad_value=255)
    assert grid.shape == (2 * 5 + 3 * 2, 3 * 7 + 4 * 2, 3)
    for row in range(2):
        for column in range(3):
            top, left = 2 + row * 7, 2 + column * 9
            assert (grid[top:top + 5, left:left + 7] == 10 * (3 * row + column)).all()
    assert (grid[:2] == 255).all() and (grid[:, 9:11] == 255).all() and (grid[:, -2:] == 255).all()  # around, between


def test_image_grid_labels_add_a_column_and_a_header_and_keep_the_cells():
    cells = np.zeros((2, 3, 16, 32, 3), np.uint8)
    plain = image_grid(cells)
    labelled = image_grid(cells, row_labels=["first", "second row"], column_labels=["a", "b", "c"])
    header, label_width = labelled.shape[0] - plain.shape[0], labelled.shape[1] - plain.shape[1]
    assert header > 0 and label_width > 0
    assert (labelled[header:, label_width:] == plain).all()
    assert (labelled[header:, :label_width] < 255).any()  # some ink in the label column
    with pytest.raises(ValueError, match="row_labels"):
        image_grid(cells, row_labels=["one"])


def test_save_gif_writes_every_frame_at_its_size_and_rate(tmp_path):
    frames = np.stack([np.full((10, 12, 3), 40 * k, np.uint8) for k in range(5)])  # distinct frames
    path = save_gif(frames, str(tmp_path / "sub" / "video.gif"), fps=4)
    with Image.open(path) as gif:
        assert gif.n_frames == 5 and gif.size == (12, 10)
        assert gif.info["duration"] == 250 and gif.info["loop"] == 0
        gif.seek(3)
        assert np.abs(np.asarray(gif.convert("RGB")).astype(int) - 120).max() <= 1
    assert os.listdir(tmp_path / "sub") == ["video.gif"]  # no temporary file left


def test_save_png_round_trips_exactly(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    path = save_png(image, str(tmp_path / "image.png"))
    with Image.open(path) as png:
        assert (np.asarray(png) == image).all()
    assert (blank_like(image) == 255).all()


def test_an_interrupted_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    def failing_write(temporary):
        with open(temporary, "wb") as handle:
            handle.write(b"half a fi")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_atomically(str(tmp_path / "media.gif"), failing_write)
    assert os.listdir(tmp_path) == []


def test_confusion_image_shades_each_cell_by_its_share_of_the_row():
    from utils.media import confusion_image

    picture = confusion_image(np.array([[3, 0], [1, 1]]), ["walk", "slash"], ["code 0", "code 1"], cell_size=(20, 30))
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert picture.shape[0] > 2 * 20 and picture.shape[1] > 2 * 30  # the cells and the labels
    assert picture.min() < 100  # the full cell (share 1) is dark
