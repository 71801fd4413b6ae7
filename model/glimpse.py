"""`model.lma.glimpse` (ours, opt-in): the LMA works on a box around the character instead of the whole frame.

Every window gets one box of the glimpse's size (the same for all its frames), placed over the union of its masks
(m > 0.5) and kept inside the frame. Box corners lie on a grid of `GlimpseBoxes.grid` pixels, twice the encoder's
downsampling, so that a box that moves while playing moves every dynamics state (the ConvLSTMs at 1/8 and 1/16 of
the box) by whole cells, and so that the decoder's smaller scales are cut where the full-size box is. Shifts Δ_F in
`affine_grid` units of the frame become units of the box (the same pixels, another normaliser).

    boxes = window_boxes(gma.masks.detach(), size=(64, 48), grid=16)   # (B, T, 1, H, W) masks, size (h, w)
    crop(frames, boxes)            # (B, …, H, W) → (B, …, h, w)
    paste(crop(frames, boxes), boxes)          # the box's pixels back in place, zeros elsewhere
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F


@dataclass
class GlimpseBoxes:
    """One box per window: `tops`, `lefts` (Python ints, pixels of the full-size frame, multiples of `grid`), the
    box size (h, w) and the frame size (H, W)."""

    tops: List[int]
    lefts: List[int]
    size: Tuple[int, int]
    frame_size: Tuple[int, int]
    grid: int

    def scale_factors(self) -> Tuple[float, float]:
        """(x, y) factors from frame `affine_grid` units to box units: W / w and H / h."""
        return self.frame_size[1] / self.size[1], self.frame_size[0] / self.size[0]

    def to_box_shifts(self, shifts: torch.Tensor) -> torch.Tensor:
        """Δ (…, 2) as (dx, dy) in frame units → box units (the same pixels)."""
        x, y = self.scale_factors()
        return shifts * shifts.new_tensor([x, y])

    def to_frame_shifts(self, shifts: torch.Tensor) -> torch.Tensor:
        """Δ (…, 2) in box units → frame units."""
        x, y = self.scale_factors()
        return shifts / shifts.new_tensor([x, y])

    def select(self, rows: Sequence[int]) -> "GlimpseBoxes":
        """The boxes of some windows, in the given order."""
        return GlimpseBoxes([self.tops[i] for i in rows], [self.lefts[i] for i in rows], self.size, self.frame_size,
                            self.grid)


def _place(first: torch.Tensor, last: torch.Tensor, present: torch.Tensor, box: int, frame: int,
           grid: int) -> List[int]:
    """Corner per window on one axis: the box centred on [first, last] (or on the frame without a pixel), rounded to
    the grid and kept inside the frame."""
    centre = torch.where(present, (first + last + 1).float() / 2, torch.full_like(first, frame).float() / 2)
    highest = (frame - box) // grid * grid
    corners = torch.round((centre - box / 2) / grid) * grid
    return [int(c) for c in corners.clamp(0, highest).long().tolist()]


def window_boxes(masks: torch.Tensor, size: Sequence[int], grid: int) -> GlimpseBoxes:
    """A box of `size` (h, w) per window around the union of its masks m > 0.5; masks (B, T, 1, H, W) or
    (B, 1, H, W) (one frame per window)."""
    if masks.dim() == 4:
        masks = masks[:, None]
    height, width = int(size[0]), int(size[1])
    frame_height, frame_width = masks.shape[-2:]
    if height > frame_height or width > frame_width:
        raise ValueError(f"a glimpse of {width}×{height} does not fit frames of {frame_width}×{frame_height}")
    union = (masks > 0.5).any(dim=1)[:, 0]  # (B, H, W)
    rows, columns = union.any(dim=2), union.any(dim=1)  # (B, H), (B, W)

    def extent(present_at: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        length = present_at.shape[1]
        first = present_at.float().argmax(dim=1)
        last = length - 1 - present_at.flip(1).float().argmax(dim=1)
        return first, last, present_at.any(dim=1)

    tops = _place(*extent(rows), height, frame_height, grid)
    lefts = _place(*extent(columns), width, frame_width, grid)
    return GlimpseBoxes(tops, lefts, (height, width), (frame_height, frame_width), grid)


def _scaled(boxes: GlimpseBoxes, tensor: torch.Tensor) -> int:
    """The factor between the full-size frame and `tensor`'s last two dimensions (1 for full size)."""
    height, width = boxes.frame_size
    factor = height // tensor.shape[-2]
    if factor < 1 or tensor.shape[-2] * factor != height or tensor.shape[-1] * factor != width:
        raise ValueError(f"a tensor of {tensor.shape[-1]}×{tensor.shape[-2]} is not the frame ({width}×{height}) "
                         "at an integer scale")
    return factor


def crop(tensor: torch.Tensor, boxes: GlimpseBoxes) -> torch.Tensor:
    """Each window's box of (B, …, H/s, W/s) (the frame at scale 1/s; the box corners must be multiples of s) →
    (B, …, h/s, w/s)."""
    factor = _scaled(boxes, tensor)
    height, width = boxes.size[0] // factor, boxes.size[1] // factor
    return torch.stack([window[..., top // factor:top // factor + height, left // factor:left // factor + width]
                        for window, top, left in zip(tensor, boxes.tops, boxes.lefts)])


def paste(tensor: torch.Tensor, boxes: GlimpseBoxes) -> torch.Tensor:
    """The inverse of `crop`: (B, …, h/s, w/s) → (B, …, H/s, W/s) with each window's box in place and zeros (an empty
    foreground, a zero mask) around it; differentiable."""
    factor = boxes.size[0] // tensor.shape[-2]
    frame_height, frame_width = boxes.frame_size[0] // factor, boxes.frame_size[1] // factor
    height, width = tensor.shape[-2:]
    return torch.stack([F.pad(window, (left // factor, frame_width - width - left // factor,
                                       top // factor, frame_height - height - top // factor))
                        for window, top, left in zip(tensor, boxes.tops, boxes.lefts)])


def translate_states(states: List[Tuple[torch.Tensor, torch.Tensor]],
                     initial: List[Tuple[torch.Tensor, torch.Tensor]], old: GlimpseBoxes,
                     new: GlimpseBoxes) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Move the dynamics memory with its box: every ConvLSTM's (h, c) (B, C, h', w') is translated by the boxes'
    offset in its own cells (box size / h' pixels per cell; the offset is a multiple of it), and the cells the old box
    did not cover take the learnt initial state `initial` (the same layout)."""
    moved = []
    for (hidden, cell), (hidden_0, cell_0) in zip(states, initial):
        pixels = new.size[0] // hidden.shape[-2]
        pair = []
        for tensor, start in ((hidden, hidden_0), (cell, cell_0)):
            out = start.expand_as(tensor).clone()
            rows, columns = tensor.shape[-2:]
            for i in range(tensor.shape[0]):
                dy = (new.tops[i] - old.tops[i]) // pixels  # the old cell r is the new cell r − dy
                dx = (new.lefts[i] - old.lefts[i]) // pixels
                if abs(dy) >= rows or abs(dx) >= columns:
                    continue
                out[i, :, max(0, -dy):rows - max(0, dy), max(0, -dx):columns - max(0, dx)] = \
                    tensor[i, :, max(0, dy):rows - max(0, -dy), max(0, dx):columns - max(0, -dx)]
            pair.append(out)
        moved.append((pair[0], pair[1]))
    return moved
