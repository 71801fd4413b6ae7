"""Images and videos as files: the small helpers that training media, play and evaluation share.

    frames = to_uint8_images(video)                  # (T, 3, H, W) in [−1, 1] → (T, H, W, 3) uint8
    save_gif(frames, "video.gif", fps=4)
    save_mp4(frames, "video.mp4", fps=4)           # with PyAV installed (the `video` extra)
    save_png(image_grid(cells, row_labels=["real", "generated"]), "grid.png")

Tensors are images (…, 3, H, W) in [−1, 1] or masks (…, 1, H, W) in [0, 1] until
`to_uint8_images` turns them into (…, H, W, 3) uint8 arrays. Every file is written under a
temporary name in its folder and moved into place with `os.replace`, so a viewer that
refreshes during training never reads half a file. The media of a training run are made in
`utils/training/media.py`.
"""
from __future__ import annotations

import fractions
import functools
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from utils.files import write_atomically

IMAGE_RANGE = (-1.0, 1.0)  # frames, foregrounds, backgrounds
MASK_RANGE = (0.0, 1.0)  # masks
PNG_COMPRESS_LEVEL = 1  # fast; the files are about 3 % larger than at the default level 6
GRID_PADDING = 2  # pixels between and around the cells of a grid
GRID_PAD_VALUE = 255  # white padding, labels and blank cells

ImageLike = Union[np.ndarray, Image.Image]


# --------------------------------------------------------------------------- helpers

def to_uint8_images(images: torch.Tensor, value_range: Tuple[float, float] = IMAGE_RANGE) -> np.ndarray:
    """(…, C, H, W) with C = 3 (or 1, repeated to grey) and values in `value_range` → (…, H, W, 3)
    uint8 on the CPU: `value_range[0]` ↦ 0, `value_range[1]` ↦ 255, rounded, clamped; NaN ↦ 0."""
    if images.dim() < 3 or images.shape[-3] not in (1, 3):
        raise ValueError(f"images: expected shape (…, 1 or 3, H, W), got {tuple(images.shape)}")
    low, high = value_range
    values = torch.nan_to_num(images.detach().float().cpu(), nan=low)
    values = ((values - low) * (255.0 / (high - low))).round().clamp(0, 255).to(torch.uint8)
    if values.shape[-3] == 1:
        values = values.expand(*values.shape[:-3], 3, *values.shape[-2:])
    return np.ascontiguousarray(values.movedim(-3, -1).numpy())


def _as_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
        raise ValueError(f"image: expected a uint8 array (H, W), (H, W, 1 | 3 | 4), got {image.dtype} {image.shape}")
    return Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)


def save_png(image: ImageLike, path: str) -> str:
    """Write a uint8 array (H, W) or (H, W, 3 | 4), or a PIL image, as a PNG file; returns `path`."""
    picture = _as_pil(image)
    return write_atomically(path, lambda temporary: picture.save(temporary, format="PNG",
                                                                  compress_level=PNG_COMPRESS_LEVEL))


def save_gif(frames: Union[np.ndarray, Sequence[np.ndarray]], path: str, fps: float = 4.0) -> str:
    """Write frames (N, H, W, 3) uint8 as a looping GIF at `fps` frames per second; returns `path`.

    GIF stores durations in hundredths of a second, so fps is rounded to that. Each frame gets
    its own 256-colour palette. Pillow merges identical consecutive frames into one longer frame
    (the total duration stays right), so a file read back can hold fewer than N frames then.
    """
    # Octree quantisation: ~20× faster than Pillow's default median cut here, with no larger colour error.
    pictures = [_as_pil(np.asarray(frame)).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
                for frame in frames]
    if not pictures:
        raise ValueError("save_gif: no frames")
    if fps <= 0:
        raise ValueError(f"save_gif: fps must be > 0, got {fps}")
    duration = max(10, int(round(100.0 / fps)) * 10)  # milliseconds, a multiple of 10
    return write_atomically(path, lambda temporary: pictures[0].save(
        temporary, format="GIF", save_all=True, append_images=pictures[1:], duration=duration, loop=0))


def save_mp4(frames: Union[np.ndarray, Sequence[np.ndarray]], path: str, fps: float = 4.0) -> str:
    """Write frames (N, H, W, 3) uint8 as an MP4 (H.264, or MPEG-4 part 2 where PyAV lacks libx264;
    yuv420p, so odd sizes are padded with white to even ones) at `fps`; returns `path`. Needs PyAV
    (the `video` extra): ImportError without it."""
    import av  # optional dependency

    pictures = [np.asarray(frame) for frame in frames]
    if not pictures:
        raise ValueError("save_mp4: no frames")
    height, width = pictures[0].shape[:2]
    even_height, even_width = height + height % 2, width + width % 2

    def write(temporary: str) -> None:
        with av.open(temporary, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4",
                                          rate=fractions.Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = even_width, even_height, "yuv420p"
            for picture in pictures:
                padded = np.full((even_height, even_width, 3), GRID_PAD_VALUE, dtype=np.uint8)
                padded[:height, :width] = picture[:, :, :3]
                container.mux(stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")))
            container.mux(stream.encode())

    return write_atomically(path, write)


@functools.lru_cache(maxsize=None)
def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _text_size(text: str) -> Tuple[int, int]:
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=_font())
    return right, bottom


def image_grid(cells: np.ndarray, padding: int = GRID_PADDING, pad_value: int = GRID_PAD_VALUE,
               row_labels: Optional[Sequence[str]] = None, column_labels: Optional[Sequence[str]] = None) -> np.ndarray:
    """Tile cells (R, C, H, W, 3) uint8 into one image, `padding` pixels of `pad_value` between and
    around them → (R·H + (R+1)·padding [+ header], C·W + (C+1)·padding [+ label column], 3) uint8.

    `row_labels` (R strings) adds a column on the left as wide as the longest label, and
    `column_labels` (C strings) a header row as tall as the tallest, both in PIL's default font.
    A blank cell is one filled with `pad_value` (see `blank_like`).
    """
    if cells.ndim != 5 or cells.shape[-1] != 3 or cells.dtype != np.uint8:
        raise ValueError(f"cells: expected a uint8 array (R, C, H, W, 3), got {cells.dtype} {cells.shape}")
    rows, columns, height, width, _ = cells.shape
    for labels, count, name in ((row_labels, rows, "row_labels"), (column_labels, columns, "column_labels")):
        if labels is not None and len(labels) != count:
            raise ValueError(f"{name}: expected {count} labels, got {len(labels)}")
    label_width = max(_text_size(label)[0] for label in row_labels) + 2 * padding if row_labels else 0
    header_height = max(_text_size(label)[1] for label in column_labels) + padding if column_labels else 0
    grid = np.full((header_height + rows * height + (rows + 1) * padding,
                    label_width + columns * width + (columns + 1) * padding, 3), pad_value, dtype=np.uint8)
    for row in range(rows):
        top = header_height + padding + row * (height + padding)
        for column in range(columns):
            left = label_width + padding + column * (width + padding)
            grid[top:top + height, left:left + width] = cells[row, column]
    if not (row_labels or column_labels):
        return grid
    picture = Image.fromarray(grid)
    draw = ImageDraw.Draw(picture)
    ink = (0, 0, 0) if pad_value >= 128 else (255, 255, 255)
    for row, label in enumerate(row_labels or []):
        top = header_height + padding + row * (height + padding)
        draw.text((padding, top + max(0, (height - _text_size(label)[1]) // 2)), label, fill=ink, font=_font())
    for column, label in enumerate(column_labels or []):
        left = label_width + padding + column * (width + padding)
        draw.text((left + max(0, (width - _text_size(label)[0]) // 2), padding), label, fill=ink, font=_font())
    return np.asarray(picture).copy()


def blank_like(images: np.ndarray, pad_value: int = GRID_PAD_VALUE) -> np.ndarray:
    """An array shaped like `images` (…, H, W, 3) filled with `pad_value`: empty grid cells."""
    return np.full_like(images, pad_value)


def confusion_image(counts: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str],
                    cell_size: Tuple[int, int] = (24, 44)) -> np.ndarray:
    """A count matrix (R, C) as a picture: each cell shaded by its share of its row (white 0 → dark blue 1) with
    the count written in it, the labels on the left and on top → (H, W, 3) uint8 (see `image_grid`)."""
    counts = np.asarray(counts)
    height, width = cell_size
    totals = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    cells = np.empty((*counts.shape, height, width, 3), dtype=np.uint8)
    for row in range(counts.shape[0]):
        for column in range(counts.shape[1]):
            share = counts[row, column] / totals[row, 0]
            colour = tuple(int(round(255 - share * (255 - dark))) for dark in (20, 60, 140))
            cell = Image.new("RGB", (width, height), colour)
            text = str(int(counts[row, column]))
            text_width, text_height = _text_size(text)
            ImageDraw.Draw(cell).text(((width - text_width) // 2, (height - text_height) // 2), text,
                                      fill=(255, 255, 255) if share > 0.5 else (0, 0, 0), font=_font())
            cells[row, column] = np.asarray(cell)
    return image_grid(cells, row_labels=list(row_labels), column_labels=list(column_labels))
