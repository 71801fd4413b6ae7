"""Global motion analysis, GMA (SPEC §3.1): masks, shifts of foreground and background,
inpainting, and the shifted recomposition of the next frame.

Shifts Δ = (dx, dy) are in `affine_grid` units: 2 units are the full frame width (dx) or
height (dy); a shift Δ moves the image content by +Δ (right / down for positive values).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from model.blocks import LEAKY_RELU_SLOPE, BatchNorm2d, Conv2d, Res, Same, Up, assert_shape
from utils.config import GMAConfig

FOREGROUND_PADDING = "zeros"  # foregrounds and masks: what enters from outside the frame is empty
BACKGROUND_PADDING = "border"  # backgrounds: what enters from outside repeats the border


def shift_images(images: torch.Tensor, shifts: torch.Tensor, padding_mode: str, mode: str = "bilinear") -> torch.Tensor:
    """Translate images so that their content moves by +shift.

    images (N, C, H, W), shifts (N, 2) as (dx, dy) in `affine_grid` units → (N, C, H, W).
    Uses `affine_grid` / `grid_sample` with align_corners=False and the translation negated
    (an output pixel at x samples the input at x − Δ). `padding_mode` is 'zeros' for
    foregrounds and masks, 'border' for backgrounds; `mode` 'bilinear' or 'nearest'.
    """
    assert_shape(shifts, (images.shape[0], 2), "shifts")
    identity = torch.eye(2, dtype=images.dtype, device=images.device).expand(images.shape[0], 2, 2)
    theta = torch.cat([identity, -shifts[:, :, None].to(images.dtype)], dim=2)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def dilate_masks(masks: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Max-pool dilation with a kernel_size × kernel_size window: (N, 1, H, W) → (N, 1, H, W)."""
    return F.max_pool2d(masks, kernel_size, stride=1, padding=kernel_size // 2)


class MaskingNetwork(nn.Module):
    """M: conv3×3 3→64 (bias) → BN → LReLU; Res(64→256, ↓2); Res(256→256, ↓2); 9 × Res(256→256);
    Up(256→64); Res(64→64); Up(64→64); Res(64→64); conv3×3 64→1 (bias); sigmoid.

    Frames (N, 3, H, W) → masks (N, 1, H, W) in (0, 1). Widths and the number of middle
    blocks come from the config.
    """

    def __init__(self, config: GMAConfig):
        super().__init__()
        first, middle, up = config.mask_first_channels, config.mask_middle_channels, config.mask_up_channels
        self.layers = nn.Sequential(
            Conv2d(3, first, 3, padding=1),
            BatchNorm2d(first),
            nn.LeakyReLU(LEAKY_RELU_SLOPE),
            Res(first, middle, down=2),
            Res(middle, middle, down=2),
            *[Res(middle, middle) for _ in range(config.mask_middle_blocks)],
            Up(middle, up, mode="bilinear"),
            Res(up, up),
            Up(up, up, mode="bilinear"),
            Res(up, up),
            Conv2d(up, 1, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        assert_shape(frames, (None, 3, None, None), "masking network frames")
        return self.layers(frames)


class ShiftPredictor(nn.Module):
    """P_f or P_b: Same(6→16, ↓2), Same(16→32, ↓2), Same(32→32), Same(32→64, ↓2), Same(64→128),
    global average pool, Linear(128→64), BN1d, LReLU, Linear(64→32), BN1d, LReLU, Linear(32→2).

    The pair (source (N, 3, H, W), target (N, 3, H, W)) → shift (N, 2) that moves the source
    content onto the target. The last layer starts with zero weights and a bias
    std·N(0, 1), so initial shifts are ~0.
    """

    def __init__(self, config: GMAConfig):
        super().__init__()
        widths = [6] + list(config.shift_predictor_channels)
        self.features = nn.Sequential(*[Same(widths[i], widths[i + 1], down=config.shift_predictor_downsampling[i])
                                        for i in range(len(widths) - 1)])
        hidden_layers: List[nn.Module] = []
        sizes = [widths[-1]] + list(config.shift_predictor_hidden)
        for size_in, size_out in zip(sizes[:-1], sizes[1:]):
            hidden_layers += [nn.Linear(size_in, size_out), nn.BatchNorm1d(size_out), nn.LeakyReLU(LEAKY_RELU_SLOPE)]
        self.hidden = nn.Sequential(*hidden_layers)
        self.output = nn.Linear(sizes[-1], 2)
        nn.init.zeros_(self.output.weight)
        with torch.no_grad():
            self.output.bias.normal_().mul_(config.shift_predictor_bias_std)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        assert_shape(source, (None, 3, None, None), "shift predictor source")
        assert_shape(target, tuple(source.shape), "shift predictor target")
        features = self.features(torch.cat([source, target], dim=1)).mean(dim=(2, 3))  # (N, C)
        return self.output(self.hidden(features))


class Inpainter(nn.Module):
    """Fills the masked region of a frame with background.

    The masked region is set to `fill_value` (−1.1, outside the image range) as
    I·(1−m) + fill·m with the soft mask; encoder Same(3→16, ↓2), Same(16→32, ↓2), Same(32→32),
    Same(32→64, ↓2), Same(64→64); decoder Same(64→64), Up(64→32), Up(32→32), Up(32→16), Same(16→3).
    The output is recombined as b̂ = I·(1−m) + inpainted·m.
    frames (N, 3, H, W), masks (N, 1, H, W) → inpainted backgrounds (N, 3, H, W).
    """

    def __init__(self, config: GMAConfig):
        super().__init__()
        self.fill_value = config.inpainter_fill_value
        encoder_widths = [3] + list(config.inpainter_encoder_channels)
        decoder_widths = list(config.inpainter_decoder_channels)
        self.layers = nn.Sequential(
            *[Same(encoder_widths[i], encoder_widths[i + 1], down=config.inpainter_encoder_downsampling[i])
              for i in range(len(encoder_widths) - 1)],
            Same(encoder_widths[-1], decoder_widths[0]),
            *[Up(decoder_widths[i], decoder_widths[i + 1], mode="bilinear") for i in range(len(decoder_widths) - 1)],
            Same(decoder_widths[-1], 3),
        )

    def forward(self, frames: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        assert_shape(frames, (None, 3, None, None), "inpainter frames")
        assert_shape(masks, (frames.shape[0], 1, *frames.shape[2:]), "inpainter masks")
        kept = frames * (1 - masks)
        inpainted = self.layers(kept + self.fill_value * masks)
        return kept + inpainted * masks


@dataclass
class GMAOutput:
    """Everything the GMA computes on a sequence of T frames (t = 0 … T−1).

    Per frame (B, T, ·, H, W): masks m (1 channel), foregrounds f = m·I, backgrounds
    b = (1−m)·I, inpainted backgrounds b̂. Per transition t → t+1 (B, T−1, ·): foreground and
    background shifts Δ_F, Δ_B (B, T−1, 2); f̃ₜ, m̃ₜ (fₜ, mₜ shifted by Δ_F,ₜ), b̃ₜ (b̂ₜ shifted by
    Δ_B,ₜ), and the recomposed next frames Îₜ₊₁ = m̃ₜ·f̃ₜ + (1−m̃ₜ)·b̃ₜ, all (B, T−1, C, H, W).
    """

    masks: torch.Tensor  # (B, T, 1, H, W)
    foregrounds: torch.Tensor  # (B, T, 3, H, W)
    backgrounds: torch.Tensor  # (B, T, 3, H, W)
    inpainted_backgrounds: torch.Tensor  # (B, T, 3, H, W)
    foreground_shifts: torch.Tensor  # (B, T−1, 2)
    background_shifts: torch.Tensor  # (B, T−1, 2)
    shifted_foregrounds: torch.Tensor  # (B, T−1, 3, H, W)
    shifted_masks: torch.Tensor  # (B, T−1, 1, H, W)
    shifted_backgrounds: torch.Tensor  # (B, T−1, 3, H, W)
    reconstructed_frames: torch.Tensor  # (B, T−1, 3, H, W): Î₁ … Î_{T−1}


class GlobalMotionAnalysis(nn.Module):
    """The GMA: masking network M, shift predictors P_f and P_b, inpainter (SPEC §3.1).

    Frames of a sequence are folded into the batch for the per-frame networks, so batch
    normalisation sees B·T frames (B·(T−1) pairs for the shift predictors).
    """

    def __init__(self, config: GMAConfig):
        super().__init__()
        self.masking_network = MaskingNetwork(config)
        self.foreground_shift_predictor = ShiftPredictor(config)
        self.background_shift_predictor = ShiftPredictor(config)
        self.inpainter = Inpainter(config)
        self.generation_mask_dilation = config.generation_mask_dilation
        self.input_scale = config.input_scale

    def shrink(self, images: torch.Tensor) -> torch.Tensor:
        """`input_scale` s > 1 (ours): images (N, C, H, W) → (N, C, H/s, W/s), the mean of each s × s block; s = 1
        returns them as they are."""
        return images if self.input_scale == 1 else F.avg_pool2d(images, self.input_scale)

    def enlarge(self, images: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The inverse resize, bilinear (align_corners=False), to the size of `like`; s = 1 returns them as they are."""
        if self.input_scale == 1:
            return images
        return F.interpolate(images, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def masks(self, frames: torch.Tensor) -> torch.Tensor:
        """The masking network's masks of frames (N, 3, H, W) → (N, 1, H, W), read at `input_scale`."""
        return self.enlarge(self.masking_network(self.shrink(frames)), frames)

    def forward(self, observations: torch.Tensor) -> GMAOutput:
        """observations (B, T, 3, H, W) in [−1, 1], T ≥ 2 → `GMAOutput`."""
        assert_shape(observations, (None, None, 3, None, None), "observations")
        batch_size, length = observations.shape[:2]
        if length < 2:
            raise ValueError(f"the GMA needs at least 2 frames per sequence, got T = {length}")
        frames = observations.flatten(0, 1)  # (B·T, 3, H, W)
        # `input_scale` (ours): the networks read smaller frames; what they return is resized back to full size
        small_frames = self.shrink(frames)
        small_masks = self.masking_network(small_frames)
        masks = self.enlarge(small_masks, frames)
        foregrounds = masks * frames
        backgrounds = (1 - masks) * frames
        inpainted = self.enlarge(self.inpainter(small_frames, small_masks), frames)

        def unfold(tensor: torch.Tensor) -> torch.Tensor:  # (B·T', ...) → (B, T', ...)
            return tensor.unflatten(0, (batch_size, -1))

        def pairs(tensor: torch.Tensor) -> tuple:  # (B·T, ...) → sources, targets, each (B·(T−1), ...)
            per_sequence = unfold(tensor)
            return per_sequence[:, :-1].flatten(0, 1), per_sequence[:, 1:].flatten(0, 1)

        foreground_sources, foreground_targets = pairs(foregrounds)
        background_sources, background_targets = pairs(inpainted)
        # The shift predictors read the frames at `input_scale` (each frame shrunk once); (B·(T−1), 2) in affine_grid
        # units, the same at every frame size
        foreground_shifts = self.foreground_shift_predictor(*pairs(self.shrink(foregrounds)))
        background_shifts = self.background_shift_predictor(*pairs(self.shrink(inpainted)))
        mask_sources = unfold(masks)[:, :-1].flatten(0, 1)
        shifted_foregrounds = shift_images(foreground_sources, foreground_shifts, FOREGROUND_PADDING)
        shifted_masks = shift_images(mask_sources, foreground_shifts, FOREGROUND_PADDING)
        shifted_backgrounds = shift_images(background_sources, background_shifts, BACKGROUND_PADDING)
        reconstructed = shifted_masks * shifted_foregrounds + (1 - shifted_masks) * shifted_backgrounds
        return GMAOutput(
            masks=unfold(masks),
            foregrounds=unfold(foregrounds),
            backgrounds=unfold(backgrounds),
            inpainted_backgrounds=unfold(inpainted),
            foreground_shifts=unfold(foreground_shifts),
            background_shifts=unfold(background_shifts),
            shifted_foregrounds=unfold(shifted_foregrounds),
            shifted_masks=unfold(shifted_masks),
            shifted_backgrounds=unfold(shifted_backgrounds),
            reconstructed_frames=unfold(reconstructed),
        )

    def generation_background(self, frames: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The background shown at generation: the frame inpainted under its mask dilated by a
        max-pool (`generation_mask_dilation`, 3×3). frames (N, 3, H, W), masks (N, 1, H, W) → (N, 3, H, W).
        """
        inpainted = self.inpainter(self.shrink(frames), self.shrink(dilate_masks(masks, self.generation_mask_dilation)))
        return self.enlarge(inpainted, frames)
