"""The pictures of a training run: the reconstruction grid, real-vs-reconstructed GIFs and the action sheets
(`write_training_media`), built from the model's output and `model.generation`. The action sheets are built
by `action_matrices` alone, for training and for `play.py --grid`."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from model.generation import NAMED_SHIFTS, global_action_matrix, local_action_matrix, reconstruct
from model.glass import Glass, GlassOutput
from utils.media import IMAGE_RANGE, MASK_RANGE, blank_like, image_grid, save_gif, save_png, to_uint8_images


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


def action_matrices(model: Glass, start_frames: torch.Tensor, num_frames: int,
                    row_names: Optional[Sequence[str]] = None, local_action: int = 0,
                    local_action_shifts: Optional[torch.Tensor] = None,
                    local_column_names: Optional[Sequence[str]] = None,
                    ) -> Dict[str, Tuple[List[np.ndarray], np.ndarray]]:
    """The two figures of SPEC §3.3 from start frames (R, 3, H, W), each as `action_matrix_media` (GIF frames,
    contact sheet) with rows labelled by `row_names`: 'global_actions' (columns: the `NAMED_SHIFTS`, each with
    local action `local_action`) and 'local_actions' (columns: the K codebook actions, shift 'stay', or each with
    its own shift `local_action_shifts` (K, 2) in affine_grid units; columns labelled `local_column_names`, default
    'action k'), each `num_frames` generated frames after the start frame (`model.generation`)."""
    matrices = {
        "global_actions": (global_action_matrix(model, start_frames, num_frames, local_action=local_action),
                           list(NAMED_SHIFTS)),
        "local_actions": (local_action_matrix(model, start_frames, num_frames, action_shifts=local_action_shifts),
                          list(local_column_names or [f"action {k}" for k in range(model.num_actions)])),
    }
    return {name: action_matrix_media(matrix, start_frames, column_names, row_names)
            for name, (matrix, column_names) in matrices.items()}


def write_training_media(model: torch.nn.Module, batch_observations: torch.Tensor, output: GlassOutput, step: int,
                         folder: str, num_sequences: int = 2, matrix_frames: int = 6,
                         fps: float = 4.0) -> Dict[str, str]:
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

    for name, (video, sheet) in action_matrices(glass, sequences[:, 0], matrix_frames).items():
        paths[name + "_video"] = save_gif(video, prefix + name + "_video.gif", fps)
        paths[name + "_sheet"] = save_png(sheet, prefix + name + "_sheet.png")
    return paths
