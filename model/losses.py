"""The training objective of GLASS: the twelve weighted terms of SPEC §4.1.

Notation: Iₜ observations (real frames), t = 0 … T−1; transitions t → t+1 for t = 0 … T−2.
From the GMA: masks mₜ, foregrounds fₜ, inpainted backgrounds b̂ₜ, shifted f̃ₜ and b̃ₜ,
reconstructions Îₜ₊₁. From the LMA: generated foregrounds f̂ₜ₊₁ at every decoder scale,
generated masks m̂ₜ₊₁, states φₜ and re-encoded states E(f̂ₜ₊₁), the quantiser loss.
Means run over all elements unless said.

    loss = GlassLoss(config.loss, build_vgg_features(config.loss) if GlassLoss.needs_vgg(config.loss) else None)
    result = loss(observations, model(observations, T_f), lma_loss_scale=1.0)
    result.total.backward(); log(result.terms)

Choices where SPEC leaves room (each documented at its function):
- downsampling to the decoder's smaller scales (targets fₜ₊₁ and the motion weights) uses
  `F.interpolate(mode="bilinear", align_corners=False)` without antialiasing, as the authors'
  code does: at 1/2 the mean of each 2×2 block, at 1/4 the mean of the central 2×2 of each 4×4 block;
- the motion weights of the two multiscale reconstruction terms have no ε (SPEC §4.1 adds
  0.001 only to those of `reconstruction_loss`);
- every GMA tensor used by an LMA term is detached, so the LMA terms train the LMA only;
- with `model.lma.glimpse` (ours) the LMA terms are taken inside each window's box (`box_view`): the means run over
  the box's pixels, as if the box were the frame.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from model.blocks import assert_shape
from model.glass import GlassOutput
from model.glimpse import crop
from model.gma import GMAOutput
from model.lma import LMAOutput
from model.vgg import VGGFeatures, perceptual_distance
from utils.config import GMA_LOSS_NAMES, LOSS_NAMES, LossConfig
from utils.metrics import switch_transitions

PERCEPTUAL_LOSS_NAMES = tuple(name for name in LOSS_NAMES if "perceptual" in name)  # the terms that need VGG19
LMA_LOSS_NAMES = tuple(name for name in LOSS_NAMES if name not in GMA_LOSS_NAMES)
# Σ_c |fₜ₊₁ − f̃ₜ| above this (images in [−1, 1]): a pixel that changes beyond the global shift
# (loss.local_change_weight, and the changed-pixel PSNR of benchmarks/lma_alone.py)
CHANGED_PIXEL_THRESHOLD = 0.1
RESIZE_MODE = "bilinear"  # targets and weights at the decoder's 1/2, 1/4 scales (align_corners=False), the authors'


def code_switches(action_ids: torch.Tensor) -> torch.Tensor:
    """The transitions where the inferred local action changes: code ids (B, T−1) → (B, T−1) bool, True at
    transition t ≥ 1 when its id differs from transition t − 1's (the first transition of a window has no previous
    one: False). The label-free counterpart of `utils.metrics.switch_transitions` (`loss.code_switch_weight`)."""
    if action_ids.dim() != 2:
        raise ValueError(f"action ids must be (B, T-1), got {tuple(action_ids.shape)}")
    switches = torch.zeros_like(action_ids, dtype=torch.bool)
    if action_ids.shape[1] > 1:  # the same comparison as the labels', shifted by one transition
        switches[:, 1:] = switch_transitions(action_ids)
    return switches


def action_slowness(codes: torch.Tensor, vectors: torch.Tensor) -> Optional[torch.Tensor]:
    """`loss.action_slowness_weight` (ours, opt-in; slow feature analysis): E‖zₜ₊₁ − zₜ‖² / (2·E‖z − z̄‖²), the
    squared change of the action vectors z between consecutive transitions of a window over twice their spread in
    the batch: about 1 when z is drawn independently per transition, 0 when z is constant in each window. The ratio
    does not change with z's scale, so it cannot be lowered by shrinking the vectors together. `codes` (B, T−1, D)
    are the VQ's straight-through codes (value eₖ, gradient to z), `vectors` the same transitions' z, detached:
    z = codes − sg[codes − z] carries the gradient. None with fewer than two transitions per window."""
    if codes.dim() != 3 or vectors.shape != codes.shape:
        raise ValueError(f"action codes and vectors must both be (B, T-1, D), got {tuple(codes.shape)} and "
                         f"{tuple(vectors.shape)}")
    if codes.shape[1] < 2:
        return None
    z = (codes - (codes.detach() - vectors)).float()  # the value of z, the gradient of the codes
    change = (z[:, 1:] - z[:, :-1]).pow(2).sum(dim=2).mean()
    spread = (z - z.flatten(0, 1).mean(dim=0)).pow(2).sum(dim=2).mean()
    return change / (2 * spread + 1e-8)


def extra_lma_terms(lma: LMAOutput, config: LossConfig) -> List[Tuple[str, float, torch.Tensor]]:
    """Our opt-in LMA terms, not among the twelve, that `lma` carries, each as (name, weight, value): the
    winner-take-all choice (model.lma.winner_take_all), action matching (model.lma.action_matching) and mask
    prediction (model.lma.action_mask_predictor). The name is both the LMAOutput field and the logged term."""
    weights = (("action_choice_loss", config.action_choice_weight),
               ("action_matching_loss", config.action_matching_weight),
               ("mask_prediction_loss", config.action_mask_prediction_weight))
    return [(name, weight, getattr(lma, name)) for name, weight in weights if getattr(lma, name) is not None]


def box_view(gma: GMAOutput, lma: LMAOutput) -> Tuple[GMAOutput, LMAOutput]:
    """What the LMA terms read, inside each window's glimpse box when the LMA worked on one (`lma.glimpse`): the
    GMA's f, m and f̃ and the LMA's f̂ (every scale), m̂ and f̃ cut to the box; unchanged without a glimpse."""
    boxes = lma.glimpse
    if boxes is None:
        return gma, lma

    def cut(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if tensor is None else crop(tensor, boxes)

    return (replace(gma, foregrounds=cut(gma.foregrounds), masks=cut(gma.masks),
                    shifted_foregrounds=cut(gma.shifted_foregrounds)),
            replace(lma, generated_foregrounds=[cut(scale) for scale in lma.generated_foregrounds],
                    generated_masks=cut(lma.generated_masks), shifted_foregrounds=cut(lma.shifted_foregrounds)))


@dataclass
class LossResult:
    """The weighted objective and its parts."""

    total: torch.Tensor  # scalar: Σ weight·term over the GMA terms + lma_loss_scale · Σ weight·term over the LMA terms
    terms: Dict[str, torch.Tensor]  # unweighted, detached scalar of every computed term, keyed by LOSS_NAMES


def motion_weighted_l1(targets: torch.Tensor, predictions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mean(weights · |targets − predictions|): (N, C, H, W), (N, C, H, W), (N, 1, H, W) broadcast over C."""
    return (weights * (targets - predictions).abs()).mean()


def resize(images: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """(..., C, H, W) → (..., C, *size) with `F.interpolate(mode="bilinear", align_corners=False)`; identity at
    the same size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    resized = F.interpolate(images.flatten(0, -4), size=tuple(size), mode=RESIZE_MODE, align_corners=False)
    return resized.unflatten(0, images.shape[:-3])


def _with_first(first: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
    """The predecessors of a predicted sequence x₁ … x_{T−1}: x₀ := `first` (B, 1, ...), then x₁ … x_{T−2}."""
    return torch.cat([first, sequence[:, :-1]], dim=1)


class GlassLoss(nn.Module):
    """The twelve loss terms of SPEC §4.1 with the weights of `config.weights`.

    A term with weight 0 is not computed (no VGG pass for a zero-weighted perceptual term)
    and is absent from `LossResult.terms`. `vgg` is needed when a perceptual weight is > 0.
    """

    def __init__(self, config: LossConfig, vgg: Optional[VGGFeatures]):
        super().__init__()
        if vgg is None and self.needs_vgg(config):
            raise ValueError("a perceptual loss weight is > 0 but no VGG19 was given (see GlassLoss.needs_vgg)")
        self.config = config
        self.weights = {name: float(getattr(config.weights, name)) for name in LOSS_NAMES}
        self.vgg = vgg

    @staticmethod
    def needs_vgg(config: LossConfig) -> bool:
        """Whether a perceptual term has a weight > 0 (and the VGG19 must be built)."""
        return any(getattr(config.weights, name) > 0 for name in PERCEPTUAL_LOSS_NAMES)

    def forward(self, observations: torch.Tensor, output: GlassOutput, lma_loss_scale: float = 1.0) -> LossResult:
        """observations Iₜ (B, T, 3, H, W), the model's output → `LossResult`.

        Without LMA output (`output.lma` is None, the GMA warm-up) only the six GMA terms are
        computed. The LMA terms enter the total multiplied by `lma_loss_scale` (0 reproduces
        the authors' warm-up: the LMA runs, its terms are logged, its gradients are zero).
        """
        gma = output.gma
        batch_size, length = observations.shape[:2]
        assert_shape(observations, (batch_size, length, 3, *gma.masks.shape[-2:]), "loss observations")
        assert_shape(gma.masks, (batch_size, length, 1, None, None), "loss masks")
        gma_terms: Dict[str, Callable[[], torch.Tensor]] = {
            "reconstruction_loss": lambda: self.reconstruction_loss(observations, gma),
            "foreground_loss": lambda: self.foreground_loss(gma),
            "background_loss": lambda: self.background_loss(gma),
            "background_perceptual_loss": lambda: self.background_perceptual_loss(gma),
            "binary_mask_loss": lambda: self.binary_mask_loss(gma),
            "mask_size_loss": lambda: self.mask_size_loss(gma),
        }
        terms: Dict[str, torch.Tensor] = {}
        gma_total = self._weighted_sum(gma_terms, terms)
        total = gma_total
        if output.lma is not None:
            seen, lma = box_view(gma, output.lma)  # the GMA tensors the LMA terms read (with a glimpse: boxes)
            lma_terms: Dict[str, Callable[[], Optional[torch.Tensor]]] = {
                "multiscale_global_reconstruction_loss": lambda: self.multiscale_global_reconstruction_loss(seen, lma),
                "multiscale_local_reconstruction_loss": lambda: self.multiscale_local_reconstruction_loss(seen, lma),
                "multiscale_local_perceptual_loss": lambda: self.multiscale_local_perceptual_loss(seen, lma),
                "local_state_reconstruction_loss": lambda: self.local_state_reconstruction_loss(lma),
                "local_action_vq_loss": lambda: lma.action_vq_loss,  # None for the Gumbel ablation: no term
                "mask_reconstruction_loss": lambda: self.mask_reconstruction_loss(seen, lma),
            }
            lma_total = self._weighted_sum(lma_terms, terms)
            for name, weight, value in extra_lma_terms(lma, self.config):
                terms[name] = value.detach()
                lma_total = weight * value if lma_total is None else lma_total + weight * value
            if self.config.action_slowness_weight > 0:  # ours, opt-in: not one of the twelve
                slowness = action_slowness(lma.action_codes, lma.action_vectors)
                if slowness is not None:
                    terms["action_slowness_loss"] = slowness.detach()
                    slowness = self.config.action_slowness_weight * slowness
                    lma_total = slowness if lma_total is None else lma_total + slowness
            # Added even when the scale is 0, so the LMA parameters stay in the graph (zero gradients, as the authors').
            if lma_total is not None:
                total = lma_loss_scale * lma_total if total is None else total + lma_loss_scale * lma_total
        if total is None:
            total = observations.new_zeros(())
        return LossResult(total=total, terms=terms)

    def _weighted_sum(self, computations: Dict[str, Callable[[], Optional[torch.Tensor]]],
                      terms: Dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
        """Σ weight·term over the terms with a weight > 0 (None if none); records each unweighted term in `terms`."""
        total: Optional[torch.Tensor] = None
        for name, compute in computations.items():
            weight = self.weights[name]
            if weight == 0:
                continue
            value = compute()
            if value is None:
                continue
            terms[name] = value.detach()
            total = weight * value if total is None else total + weight * value
        return total

    # ------------------------------------------------------------------ GMA terms

    def reconstruction_loss(self, observations: torch.Tensor, gma: GMAOutput) -> torch.Tensor:
        """mean(w · |Iₜ₊₁ − Îₜ₊₁|), w = Σ_c(|Iₜ₊₁ − Iₜ| + |Îₜ₊₁ − Îₜ|) + ε detached, with Î₀ := I₀."""
        targets = observations[:, 1:]
        reconstructed = gma.reconstructed_frames  # Î₁ … Î_{T−1}
        previous_reconstructed = _with_first(observations[:, :1], reconstructed)
        weights = ((targets - observations[:, :-1]).abs() + (reconstructed - previous_reconstructed).abs()).sum(
            dim=2, keepdim=True).detach() + self.config.motion_weight_epsilon  # (B, T−1, 1, H, W)
        return motion_weighted_l1(targets, reconstructed, weights)

    @staticmethod
    def foreground_loss(gma: GMAOutput) -> torch.Tensor:
        """MSE(fₜ₊₁, f̃ₜ)."""
        return F.mse_loss(gma.shifted_foregrounds, gma.foregrounds[:, 1:])

    @staticmethod
    def background_loss(gma: GMAOutput) -> torch.Tensor:
        """L1(b̂ₜ₊₁, b̃ₜ)."""
        return F.l1_loss(gma.shifted_backgrounds, gma.inpainted_backgrounds[:, 1:])

    def background_perceptual_loss(self, gma: GMAOutput) -> torch.Tensor:
        """VGG19 perceptual distance between b̂ₜ₊₁ (detached) and b̃ₜ."""
        return perceptual_distance(self.vgg, gma.inpainted_backgrounds[:, 1:].detach().flatten(0, 1),
                                   gma.shifted_backgrounds.flatten(0, 1))

    @staticmethod
    def binary_mask_loss(gma: GMAOutput) -> torch.Tensor:
        """mean(min(m, 1 − m)) over the masks of all T frames."""
        return torch.minimum(gma.masks, 1 - gma.masks).mean()

    def mask_size_loss(self, gma: GMAOutput) -> torch.Tensor:
        """Mean over frames (and sequences) of |mean over pixels(mₜ) − ρ|."""
        return (gma.masks.mean(dim=(2, 3, 4)) - self.config.mask_size).abs().mean()

    # ------------------------------------------------------------------ LMA terms (GMA tensors detached)

    def multiscale_global_reconstruction_loss(self, gma: GMAOutput, lma: LMAOutput) -> torch.Tensor:
        """Per decoder scale mean(w · |resize(fₜ₊₁) − f̂ₜ₊₁|), averaged over scales.

        w = Σ_c(|fₜ₊₁ − fₜ| + |f̂ₜ₊₁ − f̂ₜ|) at full size with f̂₀ := f₀, detached, then resized.
        """
        foregrounds = gma.foregrounds.detach()
        generated = lma.generated_foregrounds[0]
        weights = ((foregrounds[:, 1:] - foregrounds[:, :-1]).abs()
                   + (generated - _with_first(foregrounds[:, :1], generated)).abs()).sum(dim=2, keepdim=True)
        return self._multiscale_weighted_l1(foregrounds[:, 1:], lma.generated_foregrounds, weights.detach())

    def multiscale_local_reconstruction_loss(self, gma: GMAOutput, lma: LMAOutput,
                                             transition_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """As the global one, with w = Σ_c(|fₜ₊₁ − f̃ₜ| + |fₜ₊₁ − f̂ₜ₊₁|); with `loss.local_change_weight` α > 0
        (ours) plus α where Σ_c |fₜ₊₁ − f̃ₜ| > CHANGED_PIXEL_THRESHOLD (the local change). `transition_weights`
        (B, T−1), experiments only (benchmarks/lma_alone.py `--switch-weight`): w multiplied per transition. With
        `loss.code_switch_weight` β ≠ 1 (ours) w is multiplied by β on the transitions `code_switches` marks."""
        targets = gma.foregrounds[:, 1:].detach()
        # f̃ the LMA used
        shifted = gma.shifted_foregrounds if lma.shifted_foregrounds is None else lma.shifted_foregrounds
        change = (targets - shifted.detach()).abs().sum(dim=2, keepdim=True)
        weights = change + (targets - lma.generated_foregrounds[0]).abs().sum(dim=2, keepdim=True)
        if self.config.local_change_weight > 0:  # ours, opt-in: the pixels that change beyond the shift weigh more
            weights = weights + self.config.local_change_weight * (change > CHANGED_PIXEL_THRESHOLD).to(weights.dtype)
        if self.config.code_switch_weight != 1.0:  # ours, opt-in: where the inferred code changes weighs more
            factors = 1.0 + (self.config.code_switch_weight - 1.0) * code_switches(lma.action_ids).to(weights.dtype)
            transition_weights = factors if transition_weights is None else transition_weights * factors
        if transition_weights is not None:
            weights = weights * transition_weights[:, :, None, None, None].to(weights.dtype)
        return self._multiscale_weighted_l1(targets, lma.generated_foregrounds, weights.detach())

    @staticmethod
    def _multiscale_weighted_l1(targets: torch.Tensor, generated: List[torch.Tensor],
                                weights: torch.Tensor) -> torch.Tensor:
        """targets (B, T−1, 3, H, W) and weights (B, T−1, 1, H, W) at full size; generated per scale → mean over
        scales."""
        per_scale = [motion_weighted_l1(resize(targets, scale.shape[-2:]), scale, resize(weights, scale.shape[-2:]))
                     for scale in generated]
        return sum(per_scale) / len(per_scale)

    def multiscale_local_perceptual_loss(self, gma: GMAOutput, lma: LMAOutput) -> torch.Tensor:
        """VGG19 perceptual distance between resize(fₜ₊₁) (detached) and f̂ₜ₊₁ per decoder scale, averaged."""
        targets = gma.foregrounds[:, 1:].detach()
        per_scale = [perceptual_distance(self.vgg, resize(targets, scale.shape[-2:]).flatten(0, 1), scale.flatten(0, 1))
                     for scale in lma.generated_foregrounds]
        return sum(per_scale) / len(per_scale)

    @staticmethod
    def local_state_reconstruction_loss(lma: LMAOutput) -> torch.Tensor:
        """L1(φₜ₊₁ detached, E(f̂ₜ₊₁)): the re-encoded generated foregrounds against the real states."""
        return F.l1_loss(lma.reencoded_states, lma.states[:, 1:].detach())

    @staticmethod
    def mask_reconstruction_loss(gma: GMAOutput, lma: LMAOutput) -> torch.Tensor:
        """L1(m̂ₜ₊₁, mₜ₊₁ detached)."""
        return F.l1_loss(lma.generated_masks, gma.masks[:, 1:].detach())
