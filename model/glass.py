"""The full GLASS model (SPEC §3): the GMA on the frames, then the LMA on the detached
foregrounds, shifts and actions.

    model = build_model(config)                       # config: utils.config.Config
    output = model(observations, num_ground_truth_steps=5)   # observations (B, T, 3, H, W)
    output.gma.reconstructed_frames                   # (B, T−1, 3, H, W)
    output.lma.generated_foregrounds[0]               # (B, T−1, 3, H, W)
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, replace
from typing import Dict, Iterable, Optional, Sequence

import torch
from torch import nn

from model.augmentation import inverse_orders, permute_colours
from model.blocks import assert_shape
from model.glimpse import GlimpseBoxes, crop, paste, window_boxes
from model.gma import GlobalMotionAnalysis, GMAOutput
from model.lma import LMAOutput, LocalMotionAnalysis
from utils.config import Config, ModelConfig


@dataclass
class GlassOutput:
    """The GMA's outputs (`GMAOutput`) and, unless the GMA ran alone, the LMA's (`LMAOutput`).

    Together they hold every intermediate of the SPEC §4.1 losses: observations Iₜ are the
    input; Îₜ₊₁ = gma.reconstructed_frames; fₜ = gma.foregrounds, f̃ₜ = gma.shifted_foregrounds;
    b̂ₜ = gma.inpainted_backgrounds, b̃ₜ = gma.shifted_backgrounds; mₜ = gma.masks;
    f̂ₜ₊₁ per scale = lma.generated_foregrounds; φₜ = lma.states, E(f̂ₜ₊₁) =
    lma.reencoded_states; the VQ loss = lma.action_vq_loss; m̂ₜ₊₁ = lma.generated_masks.
    """

    gma: GMAOutput
    lma: Optional[LMAOutput]


@dataclass
class LMAInputs:
    """What the LMA reads of a sequence: foregrounds f (B, T, 3, ·, ·), f̃ (B, T−1, 3, ·, ·), Δ_F (B, T−1, 2) and
    masks m (B, T, 1, ·, ·) — the whole frame, or with `model.lma.glimpse` each window's box (`boxes`; Δ_F in box
    units)."""

    foregrounds: torch.Tensor
    shifted_foregrounds: torch.Tensor
    foreground_shifts: torch.Tensor
    masks: torch.Tensor
    boxes: Optional[GlimpseBoxes] = None


class Glass(nn.Module):
    """GLASS: global motion analysis (`gma`) and local motion analysis (`lma`).

    Built for frames of `input_size` = [W, H]; the LMA state resolution is the frame size
    divided by the encoder downsampling (8 by default).
    """

    def __init__(self, config: ModelConfig, input_size: Sequence[int]):
        super().__init__()
        self.config = config
        self.frame_size = (int(input_size[1]), int(input_size[0]))  # (H, W)
        self.gma = GlobalMotionAnalysis(config.gma)
        self.lma = LocalMotionAnalysis(config.lma, config.state_resolution(input_size))
        # `glimpse` (h, w) of the LMA's box, None without one; box corners on a grid of two state cells
        self.glimpse = None if config.lma.glimpse is None else (int(config.lma.glimpse[1]), int(config.lma.glimpse[0]))
        self.glimpse_grid = 2 * config.lma.encoder_downsampling()

    def boxes(self, masks: torch.Tensor) -> Optional[GlimpseBoxes]:
        """With `model.lma.glimpse`, one box per window around its masks (B, T, 1, H, W) or (B, 1, H, W)
        (`model.glimpse.window_boxes`); None without a glimpse."""
        return None if self.glimpse is None else window_boxes(masks, self.glimpse, self.glimpse_grid)

    def lma_inputs(self, foregrounds: torch.Tensor, shifted_foregrounds: torch.Tensor,
                   foreground_shifts: torch.Tensor, masks: torch.Tensor) -> LMAInputs:
        """The GMA's f, f̃, Δ_F and m of a sequence as the LMA reads them: unchanged without a glimpse; with one, cut to
        each window's box around `masks`, with Δ_F in box units."""
        if self.glimpse is None:
            return LMAInputs(foregrounds, shifted_foregrounds, foreground_shifts, masks)
        boxes = self.boxes(masks)
        return LMAInputs(crop(foregrounds, boxes), crop(shifted_foregrounds, boxes),
                         boxes.to_box_shifts(foreground_shifts), crop(masks, boxes), boxes)

    def forward(self, observations: torch.Tensor, num_ground_truth_steps: int, run_lma: bool = True,
                gumbel_temperature: Optional[float] = None, sample_noise: bool = False,
                colour_orders: Optional[torch.Tensor] = None, freeze_gma: bool = False) -> GlassOutput:
        """observations (B, T, 3, H, W) in [−1, 1], T ≥ 2 → `GlassOutput`.

        The LMA unrolls T−1 steps, the first `num_ground_truth_steps` (T_f, 1 ≤ T_f ≤ T−1)
        from the real foregrounds. Its inputs (fₜ, f̃ₜ, Δ_F) are detached, so no gradient from
        an LMA output reaches a GMA parameter. `run_lma=False` runs the GMA alone (warm-up;
        `lma` is None). `gumbel_temperature` is needed by the Gumbel ablation in training
        mode; `sample_noise` draws the dynamics noise from N(0, 1) instead of zeros. `colour_orders` (B, 3)
        (training.colour_permutation, training only): the LMA sees window b's foregrounds with their channels in
        the order colour_orders[b] and its foreground outputs are put back in the frames' order
        (model/augmentation.py); the GMA reads the frames as they are. `freeze_gma` (training.gma_freeze_step): the
        GMA runs without autograd (its outputs need no gradient; the LMA's inputs are detached anyway).
        """
        assert_shape(observations, (None, None, 3, *self.frame_size), "observations")
        with torch.no_grad() if freeze_gma else contextlib.nullcontext():
            gma = self.gma(observations)
        if not run_lma:
            return GlassOutput(gma=gma, lma=None)
        foregrounds, shifted_foregrounds = gma.foregrounds.detach(), gma.shifted_foregrounds.detach()
        if colour_orders is not None:
            foregrounds = permute_colours(foregrounds, colour_orders)
            shifted_foregrounds = permute_colours(shifted_foregrounds, colour_orders)
        inputs = self.lma_inputs(foregrounds, shifted_foregrounds, gma.foreground_shifts.detach(), gma.masks.detach())
        lma = self.lma(inputs.foregrounds, inputs.shifted_foregrounds, inputs.foreground_shifts,
                       num_ground_truth_steps, gumbel_temperature, sample_noise,
                       inputs.masks if self.config.lma.needs_masks else None)
        if inputs.boxes is not None:
            lma = paste_output(lma, inputs.boxes)
        if colour_orders is not None:
            lma = restore_colours(lma, colour_orders)
        return GlassOutput(gma=gma, lma=lma)

    @property
    def num_actions(self) -> int:
        """K, the number of local actions (rows of the action codebook)."""
        return int(self.lma.action_network.codebook.shape[0])

    def parameter_counts(self) -> Dict[str, int]:
        """Trainable parameters per module of SPEC §3 and in total."""
        modules = {
            "masking network": [self.gma.masking_network],
            "shift predictors": [self.gma.foreground_shift_predictor, self.gma.background_shift_predictor],
            "inpainter": [self.gma.inpainter],
            "encoder": [self.lma.encoder],
            "compressor": [self.lma.compressor],
            "action network": [self.lma.action_network] + ([self.lma.action_encoder]  # its own encoder
                                                           if self.lma.action_encoder is not None else []),
            "dynamics": [self.lma.dynamics],
            "decoder": [self.lma.decoder],
        }
        counts = {name: sum(p.numel() for m in parts for p in m.parameters() if p.requires_grad)
                  for name, parts in modules.items()}
        counts["total"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return counts


def restore_colours(lma: LMAOutput, colour_orders: torch.Tensor) -> LMAOutput:
    """An LMA output computed on foregrounds permuted by `colour_orders` (B, 3), with f̂ (every scale) and f̃ put back
    in the frames' channel order (the states stay the LMA's own: their loss compares two of them)."""
    inverse = inverse_orders(colour_orders)
    return replace(lma, generated_foregrounds=[permute_colours(scale, inverse) for scale in lma.generated_foregrounds],
                   shifted_foregrounds=None if lma.shifted_foregrounds is None else permute_colours(
                       lma.shifted_foregrounds, inverse))


def paste_output(lma: LMAOutput, boxes: GlimpseBoxes) -> LMAOutput:
    """An LMA output computed on glimpse boxes, in frame coordinates: f̂ (every scale), m̂ and f̃ pasted in place (zeros
    around), Δ_F in frame units, `glimpse` = the boxes; the states stay the box's (the losses cut the rest back)."""
    def pasted(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if tensor is None else paste(tensor, boxes)

    return replace(lma, generated_foregrounds=[paste(scale, boxes) for scale in lma.generated_foregrounds],
                   generated_masks=paste(lma.generated_masks, boxes),
                   shifted_foregrounds=pasted(lma.shifted_foregrounds),
                   foreground_shifts=None if lma.foreground_shifts is None else boxes.to_frame_shifts(
                       lma.foreground_shifts),
                   glimpse=boxes)


def build_model(config: Config) -> Glass:
    """The model for a whole run's configuration (frames of `data.input_size`)."""
    return Glass(config.model, config.data.input_size)


@torch.no_grad()
def refit_action_reader_statistics(model: Glass, observation_batches: Iterable[torch.Tensor]) -> int:
    """Recompute the BatchNorm running statistics of the LMA's action readers (`LocalMotionAnalysis.action_readers`)
    from the current weights, as the plain average over `observation_batches` (each (B, T, 3, H, W) in [−1, 1]) of
    the statistics each batch gives in training mode ("precise BatchNorm"). Training keeps running statistics as an
    exponential average over the last few batches of weights that kept changing; evaluation, play and
    `training.action_freeze_step` read them, and for the readers they move a lot between checkpoints. Everything
    else runs in evaluation mode and is left as it was; the readers read what `Glass.forward` gives the LMA in
    training (its `lma_inputs`: one glimpse box per window where there is a glimpse), from the GMA in evaluation
    mode. Only the readers' running statistics change. Returns the number of batches read (0 and nothing
    changed when the readers have no BatchNorm, as with `model.lma.action_reader_norm: group`)."""
    readers = model.lma.action_readers()
    norms = [layer for reader in readers for layer in reader.modules()
             if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    batches = iter(observation_batches)
    first = next(batches, None)
    if first is None:
        raise ValueError("refit_action_reader_statistics: no batch to read")
    modes = {module: module.training for module in model.modules()}
    momenta = {layer: layer.momentum for layer in norms}
    count = 0
    try:
        model.eval()
        for layer in norms:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average: every batch weighs the same
            layer.train()
        for observations in itertools.chain([first], batches):
            gma = model.gma(observations)
            inputs = model.lma_inputs(gma.foregrounds, gma.shifted_foregrounds, gma.foreground_shifts, gma.masks)
            model.lma.infer_motion(inputs.foregrounds, inputs.shifted_foregrounds, inputs.foreground_shifts,
                                   masks=inputs.masks if model.config.lma.needs_masks else None)
            count += 1
    finally:
        for module, training in modes.items():
            module.training = training
        for layer, momentum in momenta.items():
            layer.momentum = momentum
    return count
