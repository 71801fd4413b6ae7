"""The typed configuration schema and its loading from YAML and `key=value` overrides.

One dataclass per section; every field has a default (the paper's W-Sprites value
unless said) and a one-line comment. A YAML file overrides the defaults, then dotted
command-line overrides (`data.skip_frames=2`) override the file. A file may start from
another one with `base: ../wsprites.yaml` (a path relative to the file) and override its
values recursively. Unknown keys, wrong types and out-of-range values raise `ConfigError`
naming the key, before any work.

    config = load_config("configs/wsprites.yaml", ["data.observations_count=8"])
    print(dump_config(config))
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from utils.errors import ConfigError

DATA_STYLES = ("splitted", "flat")
SPLITS = ("train", "val", "test")


@dataclass
class DataConfig:
    """Where the videos are and how a training sample is cut from them (SPEC §1.1)."""

    root: str = "datasets/wsprites"  # dataset root: train/ val/ test/ (splitted) or one folder of videos (flat)
    style: str = "splitted"  # 'splitted' (train/val/test folders) or 'flat' (split by split_fractions)
    split_fractions: List[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # flat style: train/val/test shares
    split_seed: int = 0  # flat style: seed of the shuffle that assigns videos to splits
    # [left, upper, right, lower] in source pixels, applied before resizing; null = whole frame
    crop: Optional[List[int]] = None
    input_size: List[int] = field(default_factory=lambda: [128, 96])  # [W, H] the frames are resized to (bilinear)
    observations_count: int = 6  # T, frames per sample (the training curriculum changes it on the fly)
    # training: source frames skipped between consecutive observations (the authors' key: frame i·(skip_frames+1))
    skip_frames: int = 0
    observation_stacking: int = 1  # frames stacked per observation (3·stack channels, newest first)
    num_workers: int = 4  # DataLoader worker processes
    load_masks: bool = True  # read masks/ when a video has them (zeros and has_masks=False otherwise)

    def check(self, prefix: str) -> None:
        _require(self.style in DATA_STYLES, prefix + "style", f"must be one of {DATA_STYLES}, got {self.style!r}")
        _require(len(self.split_fractions) == 3 and all(f >= 0 for f in self.split_fractions)
                 and abs(sum(self.split_fractions) - 1.0) < 1e-6,
                 prefix + "split_fractions", f"must be 3 non-negative numbers summing to 1, got {self.split_fractions}")
        if self.crop is not None:
            _require(len(self.crop) == 4 and self.crop[0] < self.crop[2] and self.crop[1] < self.crop[3]
                     and min(self.crop) >= 0,
                     prefix + "crop",
                     f"must be [left, upper, right, lower] with left < right, upper < lower, got {self.crop}")
        _require(len(self.input_size) == 2 and min(self.input_size) > 0,
                 prefix + "input_size", f"must be [W, H] with positive sizes, got {self.input_size}")
        for name in ("observations_count", "observation_stacking"):
            _require(getattr(self, name) >= 1, prefix + name, f"must be >= 1, got {getattr(self, name)}")
        _require(self.skip_frames >= 0, prefix + "skip_frames", f"must be >= 0, got {self.skip_frames}")
        _require(self.num_workers >= 0, prefix + "num_workers", f"must be >= 0, got {self.num_workers}")

    def frame_spacing(self) -> int:
        """Source frames from one observation to the next: skip_frames + 1."""
        return self.skip_frames + 1


VQ_LOSS_FORMS = ("authors", "vqvae")
GUMBEL_EVAL_MODES = ("argmax", "sample")
ACTION_READER_NORMS = ("batch", "group")
# model.lma.action_reader → the flag that chooses it (none set: 'features', the authors')
ACTION_READER_KEYS = {"masks": "action_from_masks", "changes": "action_from_changes",
                      "colour_jitter": "action_colour_jitter"}


def _require_positive_list(values: List[int], key: str) -> None:
    _require(len(values) >= 1 and all(v >= 1 for v in values), key,
             f"must be a non-empty list of positive integers, got {values}")


def _require_downsampling(values: List[int], length: int, key: str) -> None:
    _require(len(values) == length and all(v in (1, 2) for v in values),
             key, f"must hold one factor (1 or 2) per block ({length} blocks), got {values}")


@dataclass
class GMAConfig:
    """Global motion analysis (SPEC §3.1): masking network, two shift predictors, inpainter."""

    mask_first_channels: int = 64  # masking network: width of the first conv3×3 (3→64)
    mask_middle_channels: int = 256  # masking network: width of the two ↓2 Res blocks and the middle blocks
    mask_middle_blocks: int = 9  # masking network: number of Res(256→256) blocks at 1/4 resolution
    mask_up_channels: int = 64  # masking network: width of the two Up + Res stages back to full size
    # P_f, P_b: Same block widths
    shift_predictor_channels: List[int] = field(default_factory=lambda: [16, 32, 32, 64, 128])
    # P_f, P_b: avgpool factor of each Same block
    shift_predictor_downsampling: List[int] = field(default_factory=lambda: [2, 2, 1, 2, 1])
    # P_f, P_b: hidden Linear+BN1d+LReLU widths before Linear(→2)
    shift_predictor_hidden: List[int] = field(default_factory=lambda: [64, 32])
    shift_predictor_bias_std: float = 1e-4  # P_f, P_b: last layer has zero weights and bias std·N(0, 1)
    # inpainter encoder Same widths
    inpainter_encoder_channels: List[int] = field(default_factory=lambda: [16, 32, 32, 64, 64])
    # inpainter encoder avgpool factors
    inpainter_encoder_downsampling: List[int] = field(default_factory=lambda: [2, 2, 1, 2, 1])
    # inpainter decoder: one Same, then one Up(×2) per further entry; Same(→3) last
    inpainter_decoder_channels: List[int] = field(default_factory=lambda: [64, 32, 32, 16])
    inpainter_fill_value: float = -1.1  # value written into the masked region before inpainting (outside [-1, 1])
    generation_mask_dilation: int = 3  # max-pool kernel dilating the mask before inpainting at generation (1 = none)
    # Ours, opt-in: the GMA's networks (masking network, shift predictors, inpainter) read the frames shrunk by this
    # factor (area averaging); masks and inpainted backgrounds are resized back (bilinear), so fₜ = mₜ·Iₜ, every GMA
    # output and loss stay at full size. 1 = the authors' model.
    input_scale: int = 1

    def check(self, prefix: str) -> None:
        _require(self.input_scale in (1, 2, 4), prefix + "input_scale", f"must be 1, 2 or 4, got {self.input_scale}")
        for name in ("mask_first_channels", "mask_middle_channels", "mask_up_channels"):
            _require(getattr(self, name) >= 1, prefix + name, f"must be >= 1, got {getattr(self, name)}")
        _require(self.mask_middle_blocks >= 0, prefix + "mask_middle_blocks",
                 f"must be >= 0, got {self.mask_middle_blocks}")
        _require_positive_list(self.shift_predictor_channels, prefix + "shift_predictor_channels")
        _require_downsampling(self.shift_predictor_downsampling, len(self.shift_predictor_channels),
                              prefix + "shift_predictor_downsampling")
        _require(all(v >= 1 for v in self.shift_predictor_hidden), prefix + "shift_predictor_hidden",
                 f"must hold positive integers, got {self.shift_predictor_hidden}")
        _require(self.shift_predictor_bias_std >= 0, prefix + "shift_predictor_bias_std",
                 f"must be >= 0, got {self.shift_predictor_bias_std}")
        _require_positive_list(self.inpainter_encoder_channels, prefix + "inpainter_encoder_channels")
        _require_downsampling(self.inpainter_encoder_downsampling, len(self.inpainter_encoder_channels),
                              prefix + "inpainter_encoder_downsampling")
        _require_positive_list(self.inpainter_decoder_channels, prefix + "inpainter_decoder_channels")
        encoder_downsampling = 2 ** sum(f == 2 for f in self.inpainter_encoder_downsampling)
        decoder_upsampling = 2 ** (len(self.inpainter_decoder_channels) - 1)
        _require(encoder_downsampling == decoder_upsampling, prefix + "inpainter_decoder_channels",
                 f"must have one entry plus one per ↓2 of the encoder ({encoder_downsampling}× down, "
                 f"{decoder_upsampling}× up), got {self.inpainter_decoder_channels}")
        _require(self.generation_mask_dilation >= 1 and self.generation_mask_dilation % 2 == 1,
                 prefix + "generation_mask_dilation",
                 f"must be an odd kernel size >= 1, got {self.generation_mask_dilation}")


@dataclass
class LMAConfig:
    """Local motion analysis (SPEC §3.2): encoder, compressor, action network, dynamics, decoder."""

    encoder_stem_channels: int = 16  # encoder: width of the first conv3×3 (↓2)
    # encoder: Res block widths after the stem
    encoder_block_channels: List[int] = field(default_factory=lambda: [16, 32, 32, 64, 64])
    # encoder: avgpool factor of each Res block
    encoder_block_downsampling: List[int] = field(default_factory=lambda: [1, 2, 1, 2, 1])
    encoder_state_channels: int = 64  # φ channels; the last Res block outputs these plus 1 attention channel
    state_size: int = 8  # s: compressor output channels (state_compressor.out_channels) and p_g, p_l sizes
    # action network: shared Res trunk widths
    action_trunk_channels: List[int] = field(default_factory=lambda: [128, 64])
    # action network: avgpool factor of each trunk block
    action_trunk_downsampling: List[int] = field(default_factory=lambda: [2, 1])
    # output sizes of the bilinear direction chain (last = trunk width)
    direction_sizes: List[int] = field(default_factory=lambda: [128, 128, 128, 64])
    # hidden Linear+BN1d+LReLU widths from the direction to the action
    action_mlp_hidden: List[int] = field(default_factory=lambda: [128, 64])
    action_dim: int = 16  # dimension of an action code (codebook row)
    num_actions: int = 6  # K, codebook size (number of local actions)
    vq_beta: float = 0.25  # β weighting the second term of the quantiser loss
    # Ours, opt-in: scales the quantiser term that pulls z towards its code (the first term of the 'authors'
    # form, the second of 'vqvae'); 1.0 is the authors' model.
    vq_commitment: float = 1.0
    # 'authors': mean((sg[e]−z)²) + β·mean((e−sg[z])²); 'vqvae': mean((sg[z]−e)²) + β·mean((z−sg[e])²)
    vq_loss_form: str = "authors"
    use_gumbel: bool = False  # ablation: Linear(→K) + Gumbel-softmax over the codebook instead of the VQ
    # Gumbel ablation in eval mode: 'argmax' (ours: the codebook row) or 'sample' (the authors': Gumbel-softmax at
    # gumbel_eval_temperature)
    gumbel_eval: str = "argmax"
    gumbel_eval_temperature: float = 0.4  # 'sample': the temperature (the authors' evaluation value)
    use_plain_direction: bool = False  # ablation: direction = v − u instead of the bilinear chain
    # Ours, opt-in: the action network's trunk reads the change of the attention-weighted states, φₜ₊₁ − φ̃ₜ, at
    # every state position, and its pooled output goes straight to the MLP (no u, v, no direction chain).
    action_state_difference: bool = False
    # Ours, opt-in: the action network also reads how the next frame differs from its mirror image: h(tₜ) − h(tₜ⁻),
    # tₜ the image its action encoder reads of fₜ₊₁ (its mask with action_from_masks), tₜ⁻ that image flipped left
    # to right, h the action encoder, trunk and pooling; through a Linear added to the direction. Exactly odd under
    # the flip: a left and a right view of a mirror-symmetric character give opposite vectors, a view facing the
    # viewer about zero. Needs an action encoder (action_from_masks, action_from_changes, action_colour_jitter).
    action_mirror_features: bool = False
    # Ours, opt-in: the action network reads the next frame alone (its pooled trunk v, no u and no direction chain):
    # a code then names the state a transition ends in (say, the view the character faces in fₜ₊₁) rather than
    # the change, so a turn and the walk that follows it share their code. Not with action_state_difference.
    action_target_only: bool = False
    # Ours, opt-in: S > 0 makes the action network also read the GMA's foreground shift Δ_F of the transition
    # (detached, in affine_grid units, times S) through a Linear(2 → 64) added to the direction. The moved current
    # frame f̃ₜ it reads otherwise hides which way the character went; on W-Sprites a walk's animation follows its
    # direction (walk-left moves left), so the codes can tell a walk to the left from one to the right, which the
    # masks' outlines do not; the term counts once it is as large as the trunk's (300 on the c2 recipe, where 10 is a
    # twenty-sixth of it; docs/local-actions.md, eighteenth round). 0 = off (the authors' network).
    action_shift_input: float = 0.0
    # Ours, opt-in: R > 0 refines each Δ_F the LMA uses by the integer offset in [−R, R]² pixels that best aligns
    # fₜ moved by it with fₜ₊₁ (least mean |·|, no gradient), so that the GMA's shift errors do not blur the LMA's
    # skip copy. Needs the next foreground: training and reconstruction, not play (the user's shift is exact).
    shift_refinement: int = 0
    hidden_size: int = 32  # h: hidden channels of the dynamics network (block 2 uses 2h)
    noise_size: int = 0  # channels of the noise vector concatenated to every dynamics input (zeros unless sampling)
    modulated_conv: bool = True  # false = ablation: Same/Up/Same with the conditioning concatenated instead of ModConv
    joint_input: bool = False  # ablation: conditioning = [p_l, p_g] in every block
    # Ours, opt-in (the authors' model has none): the decoder's full-size Final also sees f̃ₜ, the current
    # foreground moved by Δ_F, so copying the character is one conv away and the network learns the change.
    decoder_skip: bool = False
    # Ours, opt-in, with decoder_skip: the skip also carries m̃ₜ, the current mask moved by Δ_F (the GMA's
    # mask for real frames, m̂ₜ for generated ones), so the generated mask is as sharp as the copied foreground.
    decoder_skip_mask: bool = False
    # Ours, opt-in: the action code aₜ (D) is tiled and concatenated to the input of every decoder Up stage
    # (as p_l is to the dynamics' Up), so the code reaches the pixels through a short path.
    decoder_action: bool = False
    # Ours, opt-in, with decoder_action: the code also scales and shifts the channels of every Up stage's input and of
    # the full-size features (FiLM, Perez et al. 2018): x·(1 + γ(aₜ)) + β(aₜ), γ and β linear in the code and zero at
    # the start. A tiled code only adds a constant per channel; FiLM lets it choose which features are drawn.
    decoder_action_film: bool = False
    # Ours, opt-in, with decoder_skip (CDNA/DNA of Finn et al. 2016, Deep Voxel Flow): the full-size output also
    # gives a flow field, at most this many pixels per axis (tanh-bounded), and a blend weight; f̂ₜ₊₁ (and m̂ₜ₊₁
    # with decoder_skip_mask) = blend · (the skip warped by the flow) + (1 − blend) · what the decoder drew. A pose
    # change becomes a few pixels of motion of the current frame instead of a new drawing. 0 = off.
    decoder_warp: float = 0.0
    # Ours, with decoder_warp: false = f̂ₜ₊₁ (and m̂ₜ₊₁) is the warped skip alone, no drawing blended in: the code can
    # only move pixels, never tint them (the full-size drawing and blend channels are then unused).
    decoder_warp_draw: bool = True
    # Ours, opt-in, with decoder_warp and decoder_skip_mask: a second warped source, the skip mirrored left ↔ right
    # about its mask's centre (the mean column of m̃ₜ), with a flow of its own (same bound) and a gate g of its own:
    # f̂ₜ₊₁ = (1 − g)·(the output of decoder_warp) + g·(the mirrored skip warped). LPC's left- and right-facing rows are
    # mirror images of each other to the pixel, so a turn from one side to the other is a copy of the mirrored frame
    # instead of a new drawing of the character's other side. The gate starts almost shut (g ≈ 0.05).
    decoder_warp_mirror: bool = False
    # Ours, opt-in, with decoder_skip: the decoder paints with the current frame's colours. A 1×1 convolution sorts
    # the pixels of f̃ₜ into this many soft colour slots (weighted by m̃ₜ with decoder_skip_mask) and each slot's colour
    # is its pixels' weighted mean — the character's palette; a second head at the full-size stage chooses per pixel
    # among the slots and the drawn colour (softmax over K + 1), and f̂ₜ₊₁ is that mixture. A turned pose is then a
    # choice of which of the character's own colours goes where, the same choice for every character, instead of
    # colours the decoder must learn per character. With decoder_warp the painted colours are the drawing that the
    # warped skip is blended with. 0 = off (the decoder draws every colour).
    decoder_palette: int = 0
    # Ours, opt-in (ILPO; multiple-choice learning): in training every step is drawn with each of the K codes and
    # only the one closest to fₜ₊₁ is kept and trained; the action network learns to choose it (cross-entropy,
    # weight loss.action_choice_weight). Evaluation and play use the inferred codes as usual. K times the dynamics
    # and decoder work per training step.
    winner_take_all: bool = False
    # Ours, with winner_take_all: each code wins at most ⌈B/K⌉ of a step's B transitions (greedy, least error
    # first); without it the first code to win keeps winning and the others are never trained
    winner_take_all_balanced: bool = False
    # Ours, opt-in (PVG/CADDY's action matching, Menapace et al. 2021): in training the encoder and action network,
    # frozen for this term, also read the action of (f̃ₜ, f̂ₜ₊₁), and its distribution over the codes (softmax of
    # −‖z − eₖ‖²) must match the one of the real pair (KL, weight loss.action_matching_weight): what draws f̂ is
    # trained to draw what the action network reads as the inferred action. One more encoder pass and one more
    # action-network pass per training step.
    action_matching: bool = False
    # Ours, opt-in: in training a small network (model.lma.MaskPredictor, no normalisation) predicts the next mask
    # mₜ₊₁ from the shifted current mask m̃ₜ and the local action aₜ, both pooled by action_mask_predictor_scale (binary
    # cross-entropy, weight loss.action_mask_prediction_weight); its gradient reaches the action readers through the
    # straight-through code, so the code learns to carry how the silhouette changes beyond the shift before the
    # decoder has learned to draw it. Evaluation and play do not run it (unless decoder_mask_prediction).
    action_mask_predictor: bool = False
    # Ours, opt-in, with action_mask_predictor and decoder_skip_mask: the decoder's skip also carries the predictor's
    # next mask σ(P(m̃ₜ, aₜ)), brought to full size — a map of where the silhouette will be that the code changes, one
    # convolution from the output, instead of a 16-number code the decoder must learn to turn into a shape. The
    # predictor then runs in evaluation and play as well (on the generated masks in autoregressive steps).
    decoder_mask_prediction: bool = False
    # Ours, opt-in, with action_mask_predictor: the positions where the pooled next mask differs from the pooled
    # shifted current one by more than 0.1 (a few per cent of them: what only the code can tell) weigh 1 + this in the
    # predictor's cross-entropy (a mean weighted by these weights); 0: every position alike.
    action_mask_predictor_change_weight: float = 0.0
    # Ours, with action_mask_predictor: the predictor reads and predicts the masks average-pooled by this factor (4: a
    # quarter of the frame size; 1: full size, where a limb is visible, at 16 times the predictor's cost).
    action_mask_predictor_scale: int = 4
    # Ours, opt-in: the action network reads silhouettes instead of foregrounds — the shifted current mask m̃ₜ and the
    # next mask mₜ₊₁ as grey images (2m − 1), through an encoder of its own (the encoder's width, its own weights and
    # BatchNorm statistics): a code can tell how the outline changes, never what colours the character wears.
    action_from_masks: bool = False
    # Ours, opt-in: the action network reads the foregrounds f̃ₜ and fₜ₊₁ through an encoder of its own (as with
    # action_from_masks), and in training each transition's pair gets one random colour transform — its channels
    # permuted, each negated with probability 1/2 and scaled by a gain in [0.5, 1.5]: a code can tell how the
    # character's shape moves but cannot keep to what colours it wears (the codes otherwise follow the character).
    # Evaluation reads the colours as they are. Not with action_from_masks or action_matching.
    action_colour_jitter: bool = False
    # Ours, opt-in: the action network reads where the frame changes beyond the shift, through an encoder of its own:
    # the shifted current mask (2m̃ₜ − 1, where the character is) and the change map min(Σ_c |fₜ₊₁ − f̃ₜ|, 1)·2 − 1 (the
    # pixels that the global motion does not explain: a moving limb, a turn). What stays still — the character's
    # clothes and colours — cancels out of the change map. Not with action_from_masks, action_colour_jitter or
    # action_matching.
    action_from_changes: bool = False
    # Ours, opt-in: how the action readers normalise — the action network and, where one of the three keys above
    # gives it one, the action encoder. 'batch' (the authors' model): BatchNorm, whose running statistics are what
    # evaluation, play and training.action_freeze_step read, and which move between checkpoints. 'group': every one
    # of their BatchNorm layers is a GroupNorm (up to 8 groups), each sample normalised on its own, the same in
    # training and evaluation. The shared encoder keeps its BatchNorm (the dynamics and the decoder read it too).
    action_reader_norm: str = "batch"
    # Ours, opt-in: in training, this share of every batch (its first round(share·B) windows) unrolls with at most
    # autoregressive_ground_truth_steps ground-truth steps instead of the schedule's T_f, the rest with T_f; every
    # code is still read from the real pair. In those windows the later steps start from the model's own previous
    # frame, so the pose of fₜ₊₁ can come from the code rather than from a real fₜ. 0 = off.
    autoregressive_share: float = 0.0
    autoregressive_ground_truth_steps: int = 1
    # Ours, opt-in: [W, H] of a box the LMA works on instead of the whole frame (model.glimpse): one box per window
    # around the union of its (detached) GMA masks, corners on a grid of twice the encoder downsampling; the LMA's
    # outputs are pasted back in place (zeros around), its losses are taken inside the box. [64, 80] holds a 6-frame
    # W-Sprites window (the character is about 50 px tall) in 42 % of the 128 × 96 frame. null = off.
    glimpse: Optional[List[int]] = None
    # decoder: one Up(×2) per entry; Res + Final(→3) after all but the last, Final(→4, k7) after the last
    decoder_channels: List[int] = field(default_factory=lambda: [128, 64, 32])

    @property
    def action_reader(self) -> str:
        """What the action network reads: 'features' (the authors': the shared encoder's states of f̃ₜ and fₜ₊₁),
        or, through an action encoder of its own, 'masks', 'changes' or 'colour_jitter' (the keys of
        ACTION_READER_KEYS; `check` allows at most one of their flags)."""
        return next((reader for reader, name in ACTION_READER_KEYS.items() if getattr(self, name)), "features")

    @property
    def needs_masks(self) -> bool:
        """Whether the LMA reads the foregrounds' masks: the decoder's skip (`decoder_skip_mask`), the readers of
        silhouettes and of changes (both start from the moved current mask) or the mask predictor."""
        return self.decoder_skip_mask or self.action_mask_predictor or self.action_reader in ("masks", "changes")

    def check(self, prefix: str) -> None:
        _require(self.encoder_stem_channels >= 1, prefix + "encoder_stem_channels",
                 f"must be >= 1, got {self.encoder_stem_channels}")
        _require_positive_list(self.encoder_block_channels, prefix + "encoder_block_channels")
        _require_downsampling(self.encoder_block_downsampling, len(self.encoder_block_channels),
                              prefix + "encoder_block_downsampling")
        for name in ("encoder_state_channels", "state_size", "action_dim", "hidden_size"):
            _require(getattr(self, name) >= 1, prefix + name, f"must be >= 1, got {getattr(self, name)}")
        _require_positive_list(self.action_trunk_channels, prefix + "action_trunk_channels")
        _require_downsampling(self.action_trunk_downsampling, len(self.action_trunk_channels),
                              prefix + "action_trunk_downsampling")
        _require_positive_list(self.direction_sizes, prefix + "direction_sizes")
        _require(self.direction_sizes[-1] == self.action_trunk_channels[-1], prefix + "direction_sizes",
                 f"the last size must equal the trunk width {self.action_trunk_channels[-1]} (direction = x − u), "
                 f"got {self.direction_sizes}")
        _require(all(v >= 1 for v in self.action_mlp_hidden), prefix + "action_mlp_hidden",
                 f"must hold positive integers, got {self.action_mlp_hidden}")
        _require(self.num_actions >= 1, prefix + "num_actions", f"must be >= 1, got {self.num_actions}")
        _require(self.vq_beta >= 0, prefix + "vq_beta", f"must be >= 0, got {self.vq_beta}")
        _require(self.vq_commitment >= 0, prefix + "vq_commitment", f"must be >= 0, got {self.vq_commitment}")
        _require(self.vq_loss_form in VQ_LOSS_FORMS, prefix + "vq_loss_form",
                 f"must be one of {VQ_LOSS_FORMS}, got {self.vq_loss_form!r}")
        _require(self.noise_size >= 0, prefix + "noise_size", f"must be >= 0, got {self.noise_size}")
        _require(self.gumbel_eval in GUMBEL_EVAL_MODES, prefix + "gumbel_eval",
                 f"must be one of {GUMBEL_EVAL_MODES}, got {self.gumbel_eval!r}")
        _require(self.gumbel_eval_temperature > 0, prefix + "gumbel_eval_temperature",
                 f"must be > 0, got {self.gumbel_eval_temperature}")
        _require_positive_list(self.decoder_channels, prefix + "decoder_channels")
        _require(not (self.action_state_difference and (self.use_plain_direction or self.use_gumbel)),
                 prefix + "action_state_difference",
                 "replaces the direction: not with use_plain_direction or use_gumbel")
        _require(not (self.action_target_only and self.action_state_difference), prefix + "action_target_only",
                 "reads the next frame alone: not with action_state_difference")
        _require(not self.action_mirror_features or self.action_reader != "features",
                 prefix + "action_mirror_features",
                 "reads the flipped image through an action encoder of its own: needs action_from_masks, "
                 "action_from_changes or action_colour_jitter")
        _require(self.action_shift_input >= 0, prefix + "action_shift_input",
                 f"must be >= 0 (0 = off), got {self.action_shift_input}")
        _require(self.shift_refinement >= 0, prefix + "shift_refinement",
                 f"must be >= 0 pixels, got {self.shift_refinement}")
        _require(not (self.winner_take_all and self.use_gumbel), prefix + "winner_take_all",
                 "chooses among codebook rows: not with use_gumbel")
        _require(not (self.action_matching and self.use_gumbel), prefix + "action_matching",
                 "compares distances to codebook rows: not with use_gumbel")
        _require(0 <= self.autoregressive_share <= 1, prefix + "autoregressive_share",
                 f"must be in [0, 1], got {self.autoregressive_share}")
        _require(self.autoregressive_ground_truth_steps >= 1, prefix + "autoregressive_ground_truth_steps",
                 f"must be >= 1, got {self.autoregressive_ground_truth_steps}")
        _require(not (self.autoregressive_share and self.winner_take_all), prefix + "autoregressive_share",
                 "not with winner_take_all (its unrolling takes one T_f for the whole batch)")
        chosen = [name for name in ACTION_READER_KEYS.values() if getattr(self, name)]
        _require(len(chosen) <= 1, prefix + chosen[-1] if chosen else prefix,
                 f"{' and '.join(chosen)} are set: at most one of {', '.join(ACTION_READER_KEYS.values())} (each is "
                 "what the action encoder reads)")
        _require(not (self.action_matching and chosen), prefix + (chosen or ["action_matching"])[0],
                 "not with action_matching (the matching reads the generated frames through the shared encoder)")
        _require(self.action_reader_norm in ACTION_READER_NORMS, prefix + "action_reader_norm",
                 f"must be one of {ACTION_READER_NORMS}, got {self.action_reader_norm!r}")
        _require(self.decoder_warp >= 0, prefix + "decoder_warp", f"must be >= 0 pixels, got {self.decoder_warp}")
        _require(self.decoder_skip or not self.decoder_warp, prefix + "decoder_warp",
                 "needs decoder_skip: true (the warp moves the skip's current foreground)")
        _require(self.decoder_action or not self.decoder_action_film, prefix + "decoder_action_film",
                 "needs model.lma.decoder_action: true")
        _require(not self.decoder_warp_mirror or (self.decoder_warp > 0 and self.decoder_skip_mask),
                 prefix + "decoder_warp_mirror", "needs decoder_warp > 0 and decoder_skip_mask: true (the mirror's "
                 "axis is the centre of the skip's mask)")
        _require(self.decoder_warp_draw or self.decoder_warp > 0, prefix + "decoder_warp_draw",
                 "false needs decoder_warp > 0 (without the warp the decoder only draws)")
        _require(not self.decoder_mask_prediction or (self.action_mask_predictor and self.decoder_skip_mask),
                 prefix + "decoder_mask_prediction", "needs model.lma.action_mask_predictor: true and "
                 "decoder_skip_mask: true (the predictor reads the skip's moved mask)")
        _require(self.action_mask_predictor_change_weight >= 0, prefix + "action_mask_predictor_change_weight",
                 f"must be >= 0, got {self.action_mask_predictor_change_weight}")
        _require(self.action_mask_predictor_scale >= 1, prefix + "action_mask_predictor_scale",
                 f"must be >= 1, got {self.action_mask_predictor_scale}")
        _require(not self.action_mask_predictor_change_weight or self.action_mask_predictor,
                 prefix + "action_mask_predictor_change_weight", "needs model.lma.action_mask_predictor: true")
        _require(not (self.decoder_mask_prediction and self.decoder_warp), prefix + "decoder_mask_prediction",
                 "not with decoder_warp (the warp moves a skip of the foreground and the mask only)")
        _require(self.decoder_palette >= 0, prefix + "decoder_palette",
                 f"must be >= 0 slots, got {self.decoder_palette}")
        _require(self.decoder_skip or not self.decoder_palette, prefix + "decoder_palette",
                 "needs decoder_skip: true (the palette is taken from the skip's current foreground)")
        _require(self.decoder_skip or not self.decoder_skip_mask, prefix + "decoder_skip_mask",
                 "needs decoder_skip: true (the mask travels with the skip's foreground)")
        _require(self.glimpse is None or (len(self.glimpse) == 2 and min(self.glimpse) > 0), prefix + "glimpse",
                 f"must be null or [W, H] with positive sizes, got {self.glimpse}")
        _require(2 ** len(self.decoder_channels) == self.encoder_downsampling(), prefix + "decoder_channels",
                 f"must have one entry per ×2 up to full size ({self.encoder_downsampling()}× from the state), "
                 f"got {self.decoder_channels}")

    def encoder_downsampling(self) -> int:
        """Frame size / state size: the stem's ↓2 times the ↓2 Res blocks."""
        return 2 * 2 ** sum(f == 2 for f in self.encoder_block_downsampling)


@dataclass
class ModelConfig:
    """The GLASS networks (SPEC §2–3); the defaults are the paper's W-Sprites model."""

    gma: GMAConfig = field(default_factory=GMAConfig)
    lma: LMAConfig = field(default_factory=LMAConfig)

    def check(self, prefix: str) -> None:
        pass

    def state_resolution(self, input_size: Sequence[int]) -> Tuple[int, int]:
        """(H, W) of φ and of the dynamics state for frames of `input_size` = [W, H]: the frame size
        divided by the encoder downsampling (12×16 W-Sprites, 32×32 BAIR, 12×32 Tennis); with `lma.glimpse`
        the box's size divided by it.

        Raises `ConfigError` when the frames do not fit the networks: the encoder, masking network and
        inpainter must divide the frame size (the GMA's networks the frame shrunk by `gma.input_scale`), and the
        dynamics halve the state, so it must be even; a glimpse must fit the frame and the state grid.
        """
        width, height = input_size
        scale = self.gma.input_scale  # the GMA's networks see frames of (W, H) / scale
        required_divisors = {"the dynamics network (twice the encoder downsampling)":
                                 2 * self.lma.encoder_downsampling(),
                             "the masking network": 4 * scale,
                             "the inpainter": scale * 2 ** sum(f == 2 for f in self.gma.inpainter_encoder_downsampling)}
        for network, divisor in required_divisors.items():
            _require(height % divisor == 0 and width % divisor == 0, "data.input_size",
                     f"frames of {width}×{height} do not fit {network}: both sizes must be divisible by {divisor}")
        down = self.lma.encoder_downsampling()
        if self.lma.glimpse is not None:  # the LMA works on the box
            glimpse_width, glimpse_height = self.lma.glimpse
            _require(glimpse_width <= width and glimpse_height <= height, "model.lma.glimpse",
                     f"a box of {glimpse_width}×{glimpse_height} does not fit frames of {width}×{height}")
            _require(glimpse_height % (2 * down) == 0 and glimpse_width % (2 * down) == 0, "model.lma.glimpse",
                     f"both sizes must be divisible by {2 * down} (twice the encoder downsampling), "
                     f"got {glimpse_width}×{glimpse_height}")
            return glimpse_height // down, glimpse_width // down
        return height // down, width // down


WARMUP_MODES = ("gma_only", "authors")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class LossWeightsConfig:
    """Weights of the twelve loss terms of SPEC §4.1 (W-Sprites values); 0 switches a term off. The fields are
    the terms (`LOSS_NAMES`), the six that train the GMA first."""

    reconstruction_loss: float = 1.0  # L1(Iₜ₊₁, Îₜ₊₁), motion-weighted
    foreground_loss: float = 1.0  # MSE(fₜ₊₁, f̃ₜ)
    background_loss: float = 2.0  # L1(b̂ₜ₊₁, b̃ₜ)
    background_perceptual_loss: float = 0.02  # VGG19 L1 between b̂ₜ₊₁ (detached) and b̃ₜ (paper table: 0.01)
    binary_mask_loss: float = 0.5  # mean(min(m, 1 − m))
    mask_size_loss: float = 0.1  # mean over frames of |mean(m) − ρ|
    multiscale_global_reconstruction_loss: float = 1.0  # L1(fₜ₊₁, f̂ₜ₊₁) per scale, weights from |fₜ₊₁−fₜ| + |f̂ₜ₊₁−f̂ₜ|
    multiscale_local_reconstruction_loss: float = 1.0  # same, weights from |fₜ₊₁−f̃ₜ| + |fₜ₊₁−f̂ₜ₊₁|
    multiscale_local_perceptual_loss: float = 1.0  # VGG19 loss between fₜ₊₁ and f̂ₜ₊₁ per scale
    local_state_reconstruction_loss: float = 0.2  # L1(φₜ₊₁ detached, E(f̂ₜ₊₁))
    local_action_vq_loss: float = 0.1  # quantiser codebook + commitment loss (paper table: 0.25)
    mask_reconstruction_loss: float = 0.2  # L1(m̂ₜ₊₁, mₜ₊₁ detached)

    def check(self, prefix: str) -> None:
        for name in LOSS_NAMES:
            _require(getattr(self, name) >= 0, prefix + name, f"must be >= 0, got {getattr(self, name)}")


LOSS_NAMES = tuple(term.name for term in dataclasses.fields(LossWeightsConfig))  # the twelve terms, in SPEC order
GMA_LOSS_NAMES = LOSS_NAMES[:6]  # the terms that train the GMA; the others train the LMA


@dataclass
class LossConfig:
    """The training objective (SPEC §4.1)."""

    weights: LossWeightsConfig = field(default_factory=LossWeightsConfig)
    mask_size: float = 0.06  # ρ, the target share of foreground pixels (0.06 W-Sprites and BAIR, 0.01 Tennis)
    motion_weight_epsilon: float = 0.001  # added to the per-pixel motion weights of the reconstruction losses
    vgg_weights: Optional[str] = None  # VGG19 ImageNet weights file; null = the torch hub cache (vgg19-dcbb9e9d.pth)
    vgg_imagenet_normalization: bool = False  # the authors feed [-1, 1] images to VGG19 as they are (false)
    # Ours, with model.lma.winner_take_all: weight of the cross-entropy that trains the action network to choose
    # the winning code (an LMA term, scaled like the others during the warm-up)
    action_choice_weight: float = 1.0
    # Ours, with model.lma.action_matching: weight of KL(q(real pair) ‖ q(generated pair)) (an LMA term, scaled like
    # the others during the warm-up; PVG weighs its action term 0.15 on BAIR)
    action_matching_weight: float = 0.15
    # Ours, opt-in: added to the motion weights of multiscale_local_reconstruction_loss where the next foreground
    # differs from the shifted current one (Σ_c |fₜ₊₁ − f̃ₜ| > 0.1): the local change weighs more; 0 = the authors'
    local_change_weight: float = 0.0
    # Ours, opt-in: multiplies the motion weights of multiscale_local_reconstruction_loss on the transitions whose
    # inferred code differs from the previous transition's in the window (a switch as the action network sees it; the
    # labels are not read); 1 = the authors'
    code_switch_weight: float = 1.0
    # Ours, opt-in (slow feature analysis, Wiskott & Sejnowski 2002): weight of the slowness of the action vectors
    # z within each window, E‖zₜ₊₁ − zₜ‖² / (2·E‖z − z̄‖²) over the batch's transitions (an LMA term, scaled like
    # the others during the warm-up): 1 for z drawn independently per transition, 0 for z constant in each window.
    # A W-Sprites action lasts 8 frames while the pose changes every frame: a slow code follows the action, not the
    # pose. Needs the VQ (not model.lma.use_gumbel). 0 = off.
    action_slowness_weight: float = 0.0
    # Ours, with model.lma.action_mask_predictor: weight of the mask predictor's cross-entropy (an LMA term, scaled like
    # the others during the warm-up)
    action_mask_prediction_weight: float = 1.0

    def check(self, prefix: str) -> None:
        _require(self.action_mask_prediction_weight >= 0, prefix + "action_mask_prediction_weight",
                 f"must be >= 0, got {self.action_mask_prediction_weight}")
        _require(self.action_slowness_weight >= 0, prefix + "action_slowness_weight",
                 f"must be >= 0, got {self.action_slowness_weight}")
        _require(0.0 <= self.mask_size <= 1.0, prefix + "mask_size", f"must be in [0, 1], got {self.mask_size}")
        _require(self.local_change_weight >= 0, prefix + "local_change_weight",
                 f"must be >= 0, got {self.local_change_weight}")
        _require(self.code_switch_weight > 0, prefix + "code_switch_weight",
                 f"must be > 0, got {self.code_switch_weight}")
        _require(self.action_matching_weight >= 0, prefix + "action_matching_weight",
                 f"must be >= 0, got {self.action_matching_weight}")
        _require(self.action_choice_weight >= 0, prefix + "action_choice_weight",
                 f"must be >= 0, got {self.action_choice_weight}")
        _require(self.motion_weight_epsilon >= 0, prefix + "motion_weight_epsilon",
                 f"must be >= 0, got {self.motion_weight_epsilon}")


@dataclass
class LinearScheduleConfig:
    """A value that goes linearly from `start` to `end` over `steps` steps from step `start_step`."""

    start: float = 0.0  # value up to start_step
    end: float = 0.0  # value from start_step + steps on
    start_step: int = 0  # first step of the change
    steps: int = 0  # length of the change in steps (0 = jump at start_step)

    def check(self, prefix: str) -> None:
        _require(self.start_step >= 0, prefix + "start_step", f"must be >= 0, got {self.start_step}")
        _require(self.steps >= 0, prefix + "steps", f"must be >= 0, got {self.steps}")


CPU_KERNELS = ("plain", "torch", "native")  # training.cpu_kernels (model/ops/)


@dataclass
class TrainingConfig:
    """Optimisation, curricula, logging and checkpoints (SPEC §4.2, W-Sprites values)."""

    batch_size: int = 4  # sequences per GPU (per process)
    num_steps: int = 300_000  # optimiser steps of a run (SPEC names no length; the first LR milestone)
    learning_rate: float = 4e-4  # Adam
    weight_decay: float = 1e-6  # Adam's L2 weight decay
    lr_milestones: List[int] = field(default_factory=lambda: [300_000, 1_000_000])  # MultiStepLR steps
    lr_gamma: float = 0.3333  # MultiStepLR factor
    gma_warmup_steps: int = 3000  # the first steps train the GMA only
    # 'gma_only': the LMA is not run nor updated; 'authors': run with zero-weighted losses
    warmup_mode: str = "gma_only"
    # T, frames per training sequence: 6 until step 50k, then linear (floor) to 12 over 30k steps.
    observations_count: LinearScheduleConfig = field(
        default_factory=lambda: LinearScheduleConfig(start=6, end=12, start_step=50_000, steps=30_000))
    # T_f, ground-truth steps of the LMA unrolling: 5 → 1 linearly over 25k steps from step 0.
    ground_truth_steps: LinearScheduleConfig = field(
        default_factory=lambda: LinearScheduleConfig(start=5, end=1, start_step=0, steps=25_000))
    # Gumbel-softmax temperature (model.lma.use_gumbel only): SPEC leaves it to the config; the authors'
    # wsprites-ablations-gumbel.yaml anneals 1.0 → 0.4 from step 3,000 over 30,000 steps (linear, not floored).
    gumbel_temperature: LinearScheduleConfig = field(
        default_factory=lambda: LinearScheduleConfig(start=1.0, end=0.4, start_step=3_000, steps=30_000))
    # Ours, opt-in (model/codebook.py; the authors have neither): every N steps that train the LMA, codes that no
    # transition chose in those steps restart at current action vectors z, their Adam moments reset (0 = off) ...
    codebook_restart_every: int = 0
    # ... and the codebook set to the k-means centres of z after the first step that trains the LMA.
    codebook_kmeans_init: bool = False
    # Ours, opt-in: from this 0-based step on, what reads the local actions stops learning — the LMA's action
    # network with its codebook, and its own encoder where it has one (action_from_masks, action_from_changes,
    # action_colour_jitter): no optimiser step for their parameters, BatchNorm on their running statistics (eval
    # mode), no codebook restarts. The codes found by then stay a fixed function of (f̃ₜ, fₜ₊₁) while the dynamics
    # and decoder go on learning to draw them. 0 = off.
    action_freeze_step: int = 0
    # Ours, opt-in, with action_freeze_step: at the freeze, the frozen readers' BatchNorm running statistics are first
    # recomputed from this many batches of the training split (evaluation.batch_size windows of
    # evaluation.observations_count frames, seeded by evaluation.seed; model.glass.refit_action_reader_statistics),
    # so the fixed function is the one training used, not an exponential average of earlier weights. 0 = off.
    action_freeze_refit_batches: int = 0
    # Ours, opt-in: from this 0-based step on (at or after the GMA warm-up's end), the GMA stops learning and runs
    # without autograd — no gradient, no optimiser step for its parameters, its loss terms still computed and logged
    # (they then move nothing). The LMA reads the GMA's outputs detached in any case, so nothing else changes in what
    # it learns from; the step skips the GMA's backward and loss gradients (about a third of a W-Sprites step of the
    # CPU configs). The GMA stays in training mode: BatchNorm on batch statistics, as the LMA saw it before, its
    # running statistics still following the batches for evaluation. 0 = off (the authors').
    gma_freeze_step: int = 0
    # Ours, opt-in, with gma_freeze_step and weight_average_decay: at the freeze, the GMA first takes its moving
    # average's weights and BatchNorm statistics (rank 0's, given to every process), so what stays is the smoothed
    # GMA rather than the last step's; a run at the full learning rate until the freeze otherwise locks a noisier one.
    gma_freeze_average: bool = False
    # Ours, opt-in: keep an exponential moving average of the weights, with this decay at most (utils/training/
    # averaging.py: min(decay, (1 + step) / (10 + step)) after each step, so the average spans about the last tenth of
    # the run until that reaches 1 / (1 − decay) steps), saved in checkpoints; evaluation, generation and play read
    # the averaged weights by default (--trained-weights: the trained ones). 0 = off (the authors').
    weight_average_decay: float = 0.0
    # Ours, opt-in (model/augmentation.py): each training window, with this probability, is seen by the LMA with its
    # RGB channels in one of the five other orders (its foreground inputs permuted, its outputs put back before the
    # losses; the GMA, and so the masks, shifts and codes, read the frames as they are), so that the decoder learns
    # how a character's colours move in a turn instead of what each training character looks like from another
    # side. Evaluation, media and the frozen readers' refit read the frames as they are. 0 = off (the authors').
    colour_permutation: float = 0.0
    nan_gradient_value: float = 0.0  # non-finite gradients are replaced before each step: NaN → this
    inf_gradient_value: float = 1e5  # ±∞ → ±this
    log_every: int = 100  # steps between status lines and metrics.jsonl rows
    media_every: int = 5000  # steps between logged images and videos
    checkpoint_every: int = 5000  # steps between step_N.pth checkpoints (latest.pth too)
    seed: int = 0  # seeds are seed·world_size + rank
    channels_last: bool = True  # channels-last memory format for the convolutions
    flush_denormal: bool = True  # CPU: flush denormal floats (< 1.2e-38) to zero, torch.set_flush_denormal (speed)
    # CPU convolutions (model/ops/; other devices always use PyTorch's): 'plain' PyTorch's kernels; 'torch' wide 3×3
    # layers (model and VGG19) by Winograd F(4×4, 3×3) with its tile transforms as PyTorch operations, and NCHW weight
    # gradients for wide half-resolution layers (and, on 2+ threads, the channels-last backward of BatchNorm layers of
    # ≤ 8 channels: model/ops/batch_norm.py); 'native' the same with the transforms compiled from C on first use
    # ('torch', with one warning, where no C compiler is found). The same function: float32 results differ from the
    # plain kernels' at ~1e-5 relative. 'plain' by default: wsprites-tiny's step took 0.60 s with it and 0.75 s with
    # 'native' (2 threads, AVX-512; README "Benchmarks"); the paper configs set 'native'. Replaces `winograd: true /
    # false` (read as 'native' / 'plain').
    cpu_kernels: str = "plain"
    precision: str = "fp32"  # 'fp32', or autocast 'bf16' / 'fp16' on CUDA
    compile: bool = False  # torch.compile the model
    # VGG19 of the perceptual losses with random weights instead of ImageNet's (train.py --random-vgg-weights):
    # for tests and smoke runs only; the run is recorded as not comparable with the paper.
    random_vgg_weights: bool = False

    @staticmethod
    def read_renamed_keys(values: Dict[str, Any], prefix: str) -> Dict[str, Any]:
        """`values` with the keys of earlier versions (a run's stored config.yaml) read as today's, one warning line
        each: `winograd: true / false` → `cpu_kernels: native / plain` (ignored where cpu_kernels is given)."""
        if "winograd" not in values:
            return values
        values = dict(values)
        winograd = _convert(values.pop("winograd"), bool, prefix + "winograd")
        if "cpu_kernels" in values:
            reading = f"ignored: {prefix}cpu_kernels is given"
        else:
            values["cpu_kernels"] = "native" if winograd else "plain"
            reading = f"read as {prefix}cpu_kernels: {values['cpu_kernels']}"
        print(f"warning: {prefix}winograd: {str(winograd).lower()} is the old name of {prefix}cpu_kernels; {reading}",
              file=sys.stderr)
        return values

    def check(self, prefix: str) -> None:
        for name in ("batch_size", "num_steps", "log_every", "media_every", "checkpoint_every"):
            _require(getattr(self, name) >= 1, prefix + name, f"must be >= 1, got {getattr(self, name)}")
        _require(self.learning_rate > 0, prefix + "learning_rate", f"must be > 0, got {self.learning_rate}")
        _require(self.weight_decay >= 0, prefix + "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(all(m >= 1 for m in self.lr_milestones) and self.lr_milestones == sorted(self.lr_milestones),
                 prefix + "lr_milestones", f"must be increasing positive steps, got {self.lr_milestones}")
        _require(self.gma_warmup_steps >= 0, prefix + "gma_warmup_steps", f"must be >= 0, got {self.gma_warmup_steps}")
        _require(self.warmup_mode in WARMUP_MODES, prefix + "warmup_mode",
                 f"must be one of {WARMUP_MODES}, got {self.warmup_mode!r}")
        _require(self.action_freeze_step >= 0, prefix + "action_freeze_step",
                 f"must be >= 0 (0 = off), got {self.action_freeze_step}")
        _require(self.action_freeze_refit_batches >= 0, prefix + "action_freeze_refit_batches",
                 f"must be >= 0 (0 = off), got {self.action_freeze_refit_batches}")
        _require(self.gma_freeze_step >= 0, prefix + "gma_freeze_step",
                 f"must be >= 0 (0 = off), got {self.gma_freeze_step}")
        _require(not self.gma_freeze_step or self.gma_freeze_step >= self.gma_warmup_steps, prefix + "gma_freeze_step",
                 f"must be 0 (off) or >= training.gma_warmup_steps ({self.gma_warmup_steps}): a frozen GMA during the "
                 f"warm-up would leave the step nothing to learn, got {self.gma_freeze_step}")
        _require(not self.gma_freeze_average or (self.gma_freeze_step > 0 and self.weight_average_decay > 0),
                 prefix + "gma_freeze_average",
                 "needs training.gma_freeze_step > 0 and training.weight_average_decay > 0 (it loads the average at "
                 "the freeze)")
        _require(not self.action_freeze_refit_batches or self.action_freeze_step > 0,
                 prefix + "action_freeze_refit_batches",
                 "needs training.action_freeze_step > 0 (it refits at the freeze)")
        _require(0.0 <= self.weight_average_decay < 1.0, prefix + "weight_average_decay",
                 f"must be in [0, 1) (0 = off), got {self.weight_average_decay}")
        _require(0.0 <= self.colour_permutation <= 1.0, prefix + "colour_permutation",
                 f"must be a probability in [0, 1] (0 = off), got {self.colour_permutation}")
        _require(self.codebook_restart_every >= 0, prefix + "codebook_restart_every",
                 f"must be >= 0 (0 = off), got {self.codebook_restart_every}")
        _require(self.precision in PRECISIONS, prefix + "precision",
                 f"must be one of {PRECISIONS}, got {self.precision!r}")
        _require(self.cpu_kernels in CPU_KERNELS, prefix + "cpu_kernels",
                 f"must be one of {CPU_KERNELS}, got {self.cpu_kernels!r}")
        for name in ("observations_count", "ground_truth_steps"):
            schedule = getattr(self, name)
            _require(min(schedule.start, schedule.end) >= 1, prefix + name,
                     f"start and end must be >= 1, got {schedule.start} and {schedule.end}")
        _require(min(self.gumbel_temperature.start, self.gumbel_temperature.end) > 0, prefix + "gumbel_temperature",
                 "start and end must be > 0")


# Reconstruction protocols (model.generation, evaluation.protocol): name → description; their T_f comes from
# model.generation.num_ground_truth_steps.
RECONSTRUCTION_PROTOCOLS: Dict[str, str] = {
    "one_step": "T_f = T−1: every step starts from the real foreground (the authors' evaluation)",
    "single_image": "T_f = 1: from the first frame only, fully autoregressive afterwards",
}
EVALUATION_PROTOCOLS = tuple(RECONSTRUCTION_PROTOCOLS)


@dataclass
class EvaluationConfig:
    """evaluate.py, build_evaluation_dataset.py and evaluate_dataset.py (SPEC §5)."""

    split: str = "val"  # evaluate.py's default split (the authors' choice); the evaluation dataset uses 'test'
    observations_count: int = 12  # frames per evaluated sequence: 12 W-Sprites, 30 BAIR, 16 Tennis (SPEC §5.2)
    protocol: str = "one_step"  # reconstruction: 'one_step' (T_f = T−1, the authors') or 'single_image' (T_f = 1)
    batch_size: int = 16  # sequences per batch, for the model and the feature networks (FVD embeds 16 at a time)
    seed: int = 0  # evaluation is seeded: the random-id NMI floor and any sampling
    skip_frames: int = 0  # source frames skipped between evaluated observations (the authors: 0 everywhere, Tennis too)
    # Ours: evaluate.py reads only the split's first N videos (by folder name; null = all). With --split train it
    # measures training characters beside the validation split's unseen ones (W-Sprites names videos by character).
    max_videos: Optional[int] = None
    # Feature-network weights; null = the torch hub cache (~/.cache/torch/hub/checkpoints/<standard file name>).
    inception_weights: Optional[str] = None  # FID Inception-v3 (pt_inception-2015-12-05-6726825d.pth)
    i3d_weights: Optional[str] = None  # FVD I3D Kinetics-400 (see README "Feature networks")
    lpips_weights: Optional[str] = None  # LPIPS VGG16 backbone (vgg16-397923af.pth); the linear heads ship with `lpips`
    detector_weights: Optional[str] = None  # Tennis ADD/MDR person detector (fasterrcnn_resnet50_fpn_coco-258fb6c6.pth)
    detection_metrics: bool = False  # ADD and MDR (Tennis)

    def check(self, prefix: str) -> None:
        _require(self.split in SPLITS, prefix + "split", f"must be one of {SPLITS}, got {self.split!r}")
        _require(self.observations_count >= 2, prefix + "observations_count",
                 f"must be >= 2, got {self.observations_count}")
        _require(self.protocol in EVALUATION_PROTOCOLS, prefix + "protocol",
                 f"must be one of {EVALUATION_PROTOCOLS}, got {self.protocol!r}")
        _require(self.batch_size >= 1, prefix + "batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.skip_frames >= 0, prefix + "skip_frames", f"must be >= 0, got {self.skip_frames}")
        _require(self.max_videos is None or self.max_videos >= 1, prefix + "max_videos",
                 f"must be null or >= 1, got {self.max_videos}")


@dataclass
class Config:
    """A whole run: one YAML file in configs/ maps onto this."""

    name: str = "wsprites"  # a label for the configuration (the run name is given on the command line)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def check(self, prefix: str) -> None:
        _require(not (self.loss.action_slowness_weight > 0 and self.model.lma.use_gumbel),
                 prefix + "loss.action_slowness_weight", "is taken on the VQ's action vectors: not with "
                 "model.lma.use_gumbel")

    def evaluation_data(self) -> DataConfig:
        """The data section as evaluation reads it: `evaluation.skip_frames` instead of the training spacing."""
        return dataclasses.replace(self.data, skip_frames=self.evaluation.skip_frames)


# --------------------------------------------------------------------------- loading

def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against the type `annotation` and return it (ints widen to float)."""
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        non_none = [a for a in arguments if a is not type(None)]
        return _convert(value, non_none[0], key)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (section), got {type(value).__name__}")
        return _from_dict(annotation, value, key + ".")
    if origin in (list, List, tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_type = arguments[0] if arguments else Any
        return [_convert(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {k: _convert(v, arguments[1], f"{key}.{k}") for k, v in value.items()}
    if annotation is Any:
        return value
    if annotation is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads exponents without a dot (4e-4) as strings
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {_type_name(annotation)} for {key}")  # a schema bug, not user input


def _from_dict(cls: type, values: Dict[str, Any], prefix: str, base: Any = None) -> Any:
    """A `cls` instance: `base` (default: `cls()`) with `values` set into it, recursively.

    A nested section given partially keeps the defaults of the enclosing field for the keys
    it does not name (e.g. `training.ground_truth_steps.start=4` keeps its end 1).
    """
    hints = typing.get_type_hints(cls)
    if hasattr(cls, "read_renamed_keys"):  # a section that has renamed keys
        values = cls.read_renamed_keys(values, prefix)
    known = {f.name for f in dataclasses.fields(cls)}
    for name in values:
        if name not in known:
            raise ConfigError(f"unknown key '{prefix}{name}' (known: {', '.join(sorted(known))})")
    instance = copy.deepcopy(base) if base is not None else cls()
    for name, value in values.items():
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            setattr(instance, name, _from_dict(hints[name], value, prefix + name + ".", getattr(instance, name)))
        else:
            setattr(instance, name, _convert(value, hints[name], prefix + name))
    instance.check(prefix)
    return instance


def config_from_dict(values: Dict[str, Any]) -> Config:
    """Build and check a `Config` from nested plain values (as stored in a run folder)."""
    if not isinstance(values, dict):
        raise ConfigError(f"a configuration must be a mapping, got {type(values).__name__}")
    return _from_dict(Config, values, "")


def config_to_dict(config: Config) -> Dict[str, Any]:
    return dataclasses.asdict(config)


def _parse_override(text: str) -> Tuple[List[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.subkey=value")
    key, raw_value = text.split("=", 1)
    path = key.strip().split(".")
    if not all(part.strip() for part in path):
        raise ConfigError(f"override {text!r}: the key before '=' has an empty part; it must look like key.subkey")
    try:
        value = yaml.safe_load(raw_value) if raw_value != "" else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({error.__class__.__name__})") from None
    return path, value


def apply_overrides(values: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Set dotted `key=value` overrides into nested plain values; the value is parsed as YAML."""
    for text in overrides:
        path, value = _parse_override(text)
        node = values
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return values


def _merge_values(base: Dict[str, Any], override: Dict[str, Any]) -> Dict[str, Any]:
    """`base` with `override` set into it: mappings merge key by key, anything else (lists too) replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge_values(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_config_values(path: str, visited: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """The plain values of the YAML file `path`, on top of those of its `base:` file if it names one.

    `base: ../wsprites.yaml` (a path relative to the file) starts from that file's values, which
    this file then overrides recursively; bases may themselves have a base.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: " + ("a folder, not a configuration file" if os.path.isdir(path)
                                         else "configuration file not found"))
    try:
        with open(path, "r", encoding="utf-8") as handle:
            values = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None  # one line
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a configuration is UTF-8 YAML)") from None
    if values is None:  # nothing but comments and blank lines: more likely a mistake than a wish for all defaults
        raise ConfigError(f"{path}: the configuration file is empty (no settings, only comments or blank lines)")
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    if "base" not in values:
        return values
    base = values.pop("base")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base: expected the path of another configuration file, got {base!r}")
    base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
    if os.path.realpath(base_path) in visited + (os.path.realpath(path),):
        raise ConfigError(f"{path}: base: {base} leads back to a file already being read (a cycle of bases)")
    return _merge_values(_read_config_values(base_path, visited + (os.path.realpath(path),)), values)


def check_frames_fit(config: Config, path: str) -> Config:
    """`ModelConfig.state_resolution`'s checks — the frames fit the networks, a glimpse fits the frames — as a
    `ConfigError` naming the config file `path`; returns `config`. For the scripts that build the model of a config
    (train.py, and every script that reads a run's config.yaml), not for those that read a config for its data
    settings alone (evaluate_dataset.py, lma_alone.py --crop), whose model need not fit the frames."""
    try:
        config.model.state_resolution(config.data.input_size)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return config


def load_config(path: str, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config file (and its `base:` chain), apply dotted overrides, check everything, return the
    `Config`."""
    values = apply_overrides(_read_config_values(path), overrides)
    try:
        return config_from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def dump_config(config: Config) -> str:
    """The resolved configuration as YAML text (keys in schema order)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
