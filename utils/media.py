"""Images and videos of what the model does: the media written during training every
`training.media_every` steps, and the small helpers the play and evaluation scripts share.

    paths = write_training_media(model, observations, output, step=500, folder="runs/x/media")
    # {'reconstruction_grid': 'runs/x/media/step_000500_reconstruction_grid.png', ...}

    frames = to_uint8_images(video)                  # (T, 3, H, W) in [−1, 1] → (T, H, W, 3) uint8
    save_gif(frames, "video.gif", fps=4)
    save_mp4(frames, "video.mp4", fps=4)           # with PyAV installed (the `video` extra)
    save_png(image_grid(cells, row_labels=["real", "generated"]), "grid.png")

Tensors are images (…, 3, H, W) in [−1, 1] or masks (…, 1, H, W) in [0, 1] until
`to_uint8_images` turns them into (…, H, W, 3) uint8 arrays. Every file is written under a
temporary name in its folder and moved into place with `os.replace`, so a viewer that
refreshes during training never reads half a file.
"""
from __future__ import annotations

import fractions
import functools
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from model.generation import NAMED_SHIFTS, global_action_matrix, local_action_matrix, reconstruct
from model.glass import Glass, GlassOutput
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


# --------------------------------------------------------------------------- training media

def _unwrap(model: torch.nn.Module) -> Glass:
    """The `Glass` inside a DistributedDataParallel (`.module`) or torch.compile (`._orig_mod`) wrapper."""
    while not isinstance(model, Glass):
        inner = getattr(model, "module", None)
        inner = getattr(model, "_orig_mod", None) if inner is None else inner
        if not isinstance(inner, torch.nn.Module):
            raise TypeError(f"expected a Glass model (possibly wrapped), got {type(model).__name__}")
        model = inner
    return model


def _transitions_row(images: torch.Tensor, value_range: Tuple[float, float] = IMAGE_RANGE) -> np.ndarray:
    """Per-transition images (T−1, C, H, W), item t predicting frame t+1 → a row of T cells with
    item t under column t+1 and column 0 blank."""
    cells = to_uint8_images(images, value_range)
    return np.concatenate([blank_like(cells[:1]), cells], axis=0)


def reconstruction_grid(observations: torch.Tensor, output: GlassOutput, num_sequences: int) -> np.ndarray:
    """The training forward of the first `num_sequences` sequences as one labelled image.

    For each sequence, rows: frames I, masks m, foregrounds f, backgrounds b, inpainted
    backgrounds b̂, shifted foregrounds f̃ and backgrounds b̃, reconstructions Î, and (when the
    LMA ran) the generated foregrounds f̂ and masks m̂; columns: time. Per-transition rows put the
    prediction of frame t+1 under frame t+1; their column 0 is blank.
    """
    gma, lma = output.gma, output.lma
    rows: List[np.ndarray] = []
    labels: List[str] = []
    for index in range(min(num_sequences, observations.shape[0])):
        sequence_rows = [
            ("frame", to_uint8_images(observations[index])),
            ("mask", to_uint8_images(gma.masks[index], MASK_RANGE)),
            ("foreground", to_uint8_images(gma.foregrounds[index])),
            ("background", to_uint8_images(gma.backgrounds[index])),
            ("inpainted", to_uint8_images(gma.inpainted_backgrounds[index])),
            ("shifted fg", _transitions_row(gma.shifted_foregrounds[index])),
            ("shifted bg", _transitions_row(gma.shifted_backgrounds[index])),
            ("reconstructed", _transitions_row(gma.reconstructed_frames[index])),
        ]
        if lma is not None:
            sequence_rows += [
                (f"LMA fg T_f={lma.num_ground_truth_steps}", _transitions_row(lma.generated_foregrounds[0][index])),
                ("LMA mask", _transitions_row(lma.generated_masks[index], MASK_RANGE)),
            ]
        for name, row in sequence_rows:
            labels.append(f"{index}: {name}")
            rows.append(row)
    return image_grid(np.stack(rows), row_labels=labels)


def action_matrix_media(matrix: torch.Tensor, start_frames: torch.Tensor, column_names: Sequence[str],
                        row_names: Optional[Sequence[str]] = None) -> Tuple[List[np.ndarray], np.ndarray]:
    """An action matrix (R, A, N, 3, H, W) from start frames (R, 3, H, W) → the N+1 frames of its
    GIF (each an R × A grid, the start frames first) and its contact sheet (one row per (start,
    action) pair, columns = time 0 … N). Rows are labelled by `row_names` (default 'start 0', …)."""
    rows, actions = matrix.shape[:2]
    starts = start_frames[:, None, None].expand(rows, actions, 1, *start_frames.shape[1:])
    cells = to_uint8_images(torch.cat([starts, matrix], dim=2))  # (R, A, N+1, H, W, 3)
    row_labels = list(row_names) if row_names is not None else [f"start {row}" for row in range(rows)]
    video = [image_grid(cells[:, :, t], row_labels=row_labels, column_labels=column_names)
             for t in range(cells.shape[2])]
    sheet = image_grid(cells.reshape(rows * actions, *cells.shape[2:]),
                       row_labels=[f"{row_labels[row]}: {name}" for row in range(rows) for name in column_names],
                       column_labels=[f"t={t}" for t in range(cells.shape[2])])
    return video, sheet


def write_training_media(model: torch.nn.Module, batch_observations: torch.Tensor, output: GlassOutput, step: int,
                         folder: str, num_sequences: int = 2, matrix_frames: int = 6, fps: float = 4.0) -> Dict[str, str]:
    """Write the media of one training step into `folder` (created if needed); returns {name: path}.

    batch_observations (B, T, 3, H, W) in [−1, 1], on any device (generation moves them to the
    model's); `output` is the model's training forward on them. Files, named
    `step_{step:06d}_{name}.{png|gif}`:
    - reconstruction_grid (PNG, always): `reconstruction_grid` of the first `num_sequences`
      sequences (train-mode outputs, as the losses saw them);
    - only when the LMA ran (`output.lma` is not None; during the GMA warm-up it is None and
      generation would show an untrained LMA):
      reconstruction_video (GIF): real | reconstructed video of those sequences side by side,
        `model.generation.reconstruct` with protocol 'one_step' (T_f = T−1), eval mode;
      global_actions_video / local_actions_video (GIF): the global- and local-action matrices
        (rows = the first frames of those sequences, columns = the `NAMED_SHIFTS` with local
        action 0 / the K codebook actions with shift 'stay'), `matrix_frames` generated frames
        after the start frame; global_actions_sheet / local_actions_sheet (PNG): the same as
        contact sheets, one row per (start, action) pair.
    Generation runs in eval mode without gradients and restores the training mode; `model` may
    be wrapped by DistributedDataParallel or torch.compile.
    """
    glass = _unwrap(model)
    if batch_observations.dim() != 5 or batch_observations.shape[2] != 3:
        raise ValueError(f"batch_observations: expected (B, T, 3, H, W), got {tuple(batch_observations.shape)}")
    device = next(glass.parameters()).device
    sequences = batch_observations[:num_sequences].detach().to(device)
    prefix = os.path.join(folder, f"step_{step:06d}_")
    paths = {"reconstruction_grid": save_png(reconstruction_grid(sequences, output, num_sequences),
                                             prefix + "reconstruction_grid.png")}
    if output.lma is None:
        return paths

    generated = reconstruct(glass, sequences, protocol="one_step").frames  # (n, T, 3, H, W)
    pairs = to_uint8_images(torch.stack([sequences, generated], dim=2))  # (n, T, 2, H, W, 3)
    row_labels = [f"sequence {index}" for index in range(sequences.shape[0])]
    paths["reconstruction_video"] = save_gif(
        [image_grid(pairs[:, t], row_labels=row_labels, column_labels=["real", "T_f = T-1"])
         for t in range(pairs.shape[1])], prefix + "reconstruction_video.gif", fps)

    start_frames = sequences[:, 0]
    num_actions = glass.num_actions
    matrices = {
        "global_actions": (global_action_matrix(glass, start_frames, matrix_frames), list(NAMED_SHIFTS)),
        "local_actions": (local_action_matrix(glass, start_frames, matrix_frames),
                          [f"action {k}" for k in range(num_actions)]),
    }
    for name, (matrix, column_names) in matrices.items():
        video, sheet = action_matrix_media(matrix, start_frames, column_names)
        paths[name + "_video"] = save_gif(video, prefix + name + "_video.gif", fps)
        paths[name + "_sheet"] = save_png(sheet, prefix + name + "_sheet.png")
    return paths
