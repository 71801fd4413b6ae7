"""Local motion analysis, LMA (SPEC §3.2): encoder E, compressor C, action network A with
its quantiser, the recurrent dynamics network and the multi-scale decoder D.

Notation: φ are the encoder's state channels (`encoder_state_channels`, 64) at the state
resolution (h, w) = frame size / 8; s is `state_size`, h `hidden_size`, D `action_dim`,
K `num_actions`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from model.blocks import (
    LEAKY_RELU_SLOPE,
    BatchNorm2d,
    Conv2d,
    ConvLSTM,
    ConvLSTMState,
    Final,
    ModConv,
    Res,
    Same,
    Up,
    assert_shape,
    batch_norm_to_group_norm,
    tile_and_concatenate,
)
from model.glimpse import GlimpseBoxes
from model.gma import FOREGROUND_PADDING, shift_images
from utils.config import LMAConfig

DynamicsState = List[ConvLSTMState]  # the (h, c) of the three ConvLSTMs, blocks 1–3


class Encoder(nn.Module):
    """E: conv3×3 3→16 (no bias) → avgpool 2 → BN → LReLU; Res(16→16); Res(16→32, ↓2); Res(32→32);
    Res(32→64, ↓2); Res(64→64); Res(64→65).

    Frames (N, 3, H, W) → states φ (N, 64, H/8, W/8) and attention (N, 1, H/8, W/8) (the
    65th channel, raw).
    """

    def __init__(self, config: LMAConfig):
        super().__init__()
        widths = [config.encoder_stem_channels] + list(config.encoder_block_channels)
        self.state_channels = config.encoder_state_channels
        self.layers = nn.Sequential(
            Same(3, config.encoder_stem_channels, down=2),
            *[Res(widths[i], widths[i + 1], down=config.encoder_block_downsampling[i]) for i in range(len(widths) - 1)],
            Res(widths[-1], config.encoder_state_channels + 1),
        )

    def forward(self, frames: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        assert_shape(frames, (None, 3, None, None), "encoder frames")
        outputs = self.layers(frames)
        return outputs[:, :self.state_channels], outputs[:, self.state_channels:]


@dataclass
class ActionOutput:
    """Local actions of N transitions: codes (N, D) (straight-through for the VQ), ids (N,) in
    [0, K), the quantiser loss (a scalar; None for the Gumbel ablation, which has none) and the
    action network's outputs before quantisation (N, D) — z of the VQ, the logits (N, K) of
    the Gumbel ablation — detached, for monitoring. `choice_logits` (N, K), with gradient to z only: the
    action network's preference over the codes, −‖z − sg[eₖ]‖² for the VQ, the logits for Gumbel (what
    `winner_take_all` trains). `source_features`: what the action network read of f̃ₜ, E(f̃ₜ) times its attention,
    detached (set by `LocalMotionAnalysis.infer_actions`; `action_matching` reuses it)."""

    codes: torch.Tensor
    ids: torch.Tensor
    vq_loss: Optional[torch.Tensor]
    vectors: Optional[torch.Tensor] = None
    choice_logits: Optional[torch.Tensor] = None
    source_features: Optional[torch.Tensor] = None


class VectorQuantizer(nn.Module):
    """Nearest-codebook-row quantiser with the straight-through estimator.

    Codebook (K, D) initialised U(−1/K, 1/K). Loss, `loss_form` 'authors' (the default, the
    authors' code): mean((sg[e]−z)²) + β·mean((e−sg[z])²); 'vqvae' (the VQ-VAE paper):
    mean((sg[z]−e)²) + β·mean((z−sg[e])²). `commitment` (ours, 1 = the authors') scales the
    term that pulls z, mean((sg[e]−z)²). vectors z (N, D) → `ActionOutput`.
    """

    def __init__(self, num_codes: int, code_dim: int, beta: float, loss_form: str, commitment: float = 1.0):
        super().__init__()
        self.codebook = nn.Parameter(torch.empty(num_codes, code_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes))
        self.beta = beta
        self.loss_form = loss_form
        self.commitment = commitment

    def forward(self, vectors: torch.Tensor) -> ActionOutput:
        assert_shape(vectors, (None, self.codebook.shape[1]), "quantiser inputs")
        squared_distances = (vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ self.codebook.t()
                             + self.codebook.pow(2).sum(1)[None])  # (N, K)
        ids = squared_distances.argmin(dim=1)
        nearest = self.codebook[ids]  # (N, D)
        if self.loss_form == "authors":
            loss = (self.commitment * F.mse_loss(vectors, nearest.detach())
                    + self.beta * F.mse_loss(nearest, vectors.detach()))
        else:
            loss = (F.mse_loss(nearest, vectors.detach())
                    + self.commitment * self.beta * F.mse_loss(vectors, nearest.detach()))
        codebook = self.codebook.detach()
        choice_logits = -(vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ codebook.t()
                          + codebook.pow(2).sum(1)[None])
        return ActionOutput(codes=vectors + (nearest - vectors).detach(), ids=ids, vq_loss=loss,
                            vectors=vectors.detach(), choice_logits=choice_logits)


class GumbelQuantizer(nn.Module):
    """Ablation `use_gumbel`: logits (N, K) → Gumbel-softmax probabilities at the given
    temperature in training; code = probabilities @ codebook (K, D), codebook U(−1/K, 1/K).

    Eval mode, `eval_mode` 'argmax' (ours): no noise, the probabilities are the one-hot argmax,
    so a code is a codebook row as when playing; 'sample' (the authors' evaluation): the
    Gumbel-softmax sample at `eval_temperature`, as in training. ids are the argmax of the
    probabilities used. No quantiser loss.
    """

    def __init__(self, num_codes: int, code_dim: int, eval_mode: str = "argmax", eval_temperature: float = 0.4):
        super().__init__()
        self.codebook = nn.Parameter(torch.empty(num_codes, code_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes))
        self.eval_mode = eval_mode
        self.eval_temperature = eval_temperature

    def forward(self, logits: torch.Tensor, temperature: Optional[float]) -> ActionOutput:
        assert_shape(logits, (None, self.codebook.shape[0]), "Gumbel logits")
        if self.training or self.eval_mode == "sample":
            if self.training and temperature is None:
                raise ValueError("the Gumbel-softmax ablation needs gumbel_temperature in training mode")
            probabilities = F.gumbel_softmax(logits, tau=temperature if self.training else self.eval_temperature,
                                             hard=False)
            ids = probabilities.argmax(dim=1)
        else:
            ids = logits.argmax(dim=1)
            probabilities = F.one_hot(ids, self.codebook.shape[0]).to(logits.dtype)
        return ActionOutput(codes=probabilities @ self.codebook, ids=ids, vq_loss=None, vectors=logits.detach(),
                            choice_logits=logits)


class DirectionLayer(nn.Module):
    """One link of the direction chain: x ← Bilinear(Linear(u), x), then BN1d + LReLU unless last.
    u (N, U), x (N, X) → (N, out)."""

    def __init__(self, u_size: int, x_size: int, out_size: int, last: bool):
        super().__init__()
        self.linear = nn.Linear(u_size, u_size)
        self.bilinear = nn.Bilinear(u_size, x_size, out_size)
        self.post = nn.Identity() if last else nn.Sequential(nn.BatchNorm1d(out_size), nn.LeakyReLU(LEAKY_RELU_SLOPE))

    def forward(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.post(bilinear(self.linear(u), x, self.bilinear.weight, self.bilinear.bias))


def bilinear(first: torch.Tensor, second: torch.Tensor, weight: torch.Tensor,
             bias: Optional[torch.Tensor]) -> torch.Tensor:
    """F.bilinear as two matrix products: y[n, o] = Σ_ij first[n, i]·weight[o, i, j]·second[n, j] + bias[o].

    first (N, I), second (N, J), weight (O, I, J) → (N, O). The same function as F.bilinear,
    whose CPU kernel (aten::_trilinear) took 1.3 s per call on the W-Sprites step at 2·N·O·I·J
    = 42 MFLOP (20% of a whole training step); this takes milliseconds.
    """
    out_size, first_size, second_size = weight.shape
    projected = first @ weight.permute(1, 0, 2).reshape(first_size, out_size * second_size)  # (N, O·J)
    output = torch.bmm(projected.view(-1, out_size, second_size), second.unsqueeze(2)).squeeze(2)  # (N, O)
    return output if bias is None else output + bias


class ActionNetwork(nn.Module):
    """A: from the attention-weighted states of f̃ₜ and fₜ₊₁ to the local action aₜ.

    Shared trunk Res(64→128, ↓2), Res(128→64), global average pool → u (source), v (target);
    direction = chain(u, v) − u with the 4 bilinear layers (or v − u with
    `use_plain_direction`); MLP Linear(64→128), BN1d, LReLU, Linear(128→64), BN1d, LReLU,
    Linear(64→16) → VQ (or, with `use_gumbel`, the direction → Linear(64→K) → Gumbel-softmax).
    With `action_state_difference` (ours, opt-in) the trunk reads target − source and its pooled
    output goes to the MLP directly; with `action_target_only` (ours, opt-in) v alone does. With
    `action_mirror_features` (ours, opt-in) Linear(v − v⁻) is added to
    the MLP's input, v⁻ the pooled trunk of the mirrored target's reading. With `action_shift_input` S > 0
    (ours, opt-in) Linear(S·Δ_F) is added too, Δ_F the transition's foreground shift. source, target
    (N, 64, h, w) → `ActionOutput`.
    """

    def __init__(self, config: LMAConfig):
        super().__init__()
        trunk_widths = [config.encoder_state_channels] + list(config.action_trunk_channels)
        self.trunk = nn.Sequential(*[Res(trunk_widths[i], trunk_widths[i + 1], down=config.action_trunk_downsampling[i])
                                     for i in range(len(trunk_widths) - 1)])
        vector_size = trunk_widths[-1]
        self.state_difference = config.action_state_difference
        self.target_only = config.action_target_only
        if config.use_plain_direction or config.action_state_difference or config.action_target_only:
            self.direction_layers = nn.ModuleList()
        else:
            sizes = [vector_size] + list(config.direction_sizes)
            self.direction_layers = nn.ModuleList([
                DirectionLayer(vector_size, sizes[k], sizes[k + 1], last=k == len(sizes) - 2)
                for k in range(len(sizes) - 1)])
        mlp_layers: List[nn.Module] = []
        # The Gumbel ablation's head is one Linear(64→K) (SPEC, the authors' code); the VQ's the MLP.
        mlp_sizes = [vector_size] + ([] if config.use_gumbel else list(config.action_mlp_hidden))
        for size_in, size_out in zip(mlp_sizes[:-1], mlp_sizes[1:]):
            mlp_layers += [nn.Linear(size_in, size_out), nn.BatchNorm1d(size_out), nn.LeakyReLU(LEAKY_RELU_SLOPE)]
        output_size = config.num_actions if config.use_gumbel else config.action_dim
        self.mlp = nn.Sequential(*mlp_layers, nn.Linear(mlp_sizes[-1], output_size))
        self.mirror = nn.Linear(vector_size, vector_size, bias=False) if config.action_mirror_features else None
        self.shift_scale = config.action_shift_input
        self.shift_input = nn.Linear(2, vector_size) if self.shift_scale > 0 else None
        if config.use_gumbel:
            self.quantizer: nn.Module = GumbelQuantizer(config.num_actions, config.action_dim, config.gumbel_eval,
                                                        config.gumbel_eval_temperature)
        else:
            self.quantizer = VectorQuantizer(config.num_actions, config.action_dim, config.vq_beta, config.vq_loss_form,
                                             config.vq_commitment)

    @property
    def codebook(self) -> torch.Tensor:
        """(K, D): row k is the code of local action k."""
        return self.quantizer.codebook

    def vectors(self, source_states: torch.Tensor, target_states: torch.Tensor,
                mirrored_target_states: Optional[torch.Tensor] = None,
                shifts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The outputs before quantisation, with gradient: z (N, D) for the VQ, the logits (N, K) for Gumbel.
        `mirrored_target_states`: with `action_mirror_features` (needed then), the reading of the target image
        flipped left to right. `shifts` (N, 2): with `action_shift_input` (needed then), the transitions' Δ_F."""
        assert_shape(target_states, tuple(source_states.shape), "action network target states")
        if self.mirror is not None and mirrored_target_states is None:
            raise ValueError("model.lma.action_mirror_features: the mirrored target states are needed")
        if self.shift_input is not None:
            if shifts is None:
                raise ValueError("model.lma.action_shift_input: the foreground shifts are needed")
            assert_shape(shifts, (source_states.shape[0], 2), "action network shifts")
        v = None
        if self.state_difference:
            direction = self.trunk(target_states - source_states).mean(dim=(2, 3))
        elif self.target_only:  # action_target_only: the state the transition ends in
            v = direction = self.trunk(target_states).mean(dim=(2, 3))
        else:
            u = self.trunk(source_states).mean(dim=(2, 3))  # (N, 64)
            v = self.trunk(target_states).mean(dim=(2, 3))
            x = v
            for layer in self.direction_layers:
                x = layer(u, x)
            direction = x - u
        if self.shift_input is not None:  # action_shift_input: which way the transition moved the character
            direction = direction + self.shift_input(shifts.detach().to(direction.dtype) * self.shift_scale)
        if self.mirror is None:
            return self.mlp(direction)
        assert_shape(mirrored_target_states, tuple(target_states.shape), "action network mirrored target states")
        if v is None:
            v = self.trunk(target_states).mean(dim=(2, 3))
        return self.mlp(direction + self.mirror(v - self.trunk(mirrored_target_states).mean(dim=(2, 3))))

    def forward(self, source_states: torch.Tensor, target_states: torch.Tensor,
                gumbel_temperature: Optional[float] = None,
                mirrored_target_states: Optional[torch.Tensor] = None,
                shifts: Optional[torch.Tensor] = None) -> ActionOutput:
        outputs = self.vectors(source_states, target_states, mirrored_target_states, shifts)
        if isinstance(self.quantizer, GumbelQuantizer):
            return self.quantizer(outputs, gumbel_temperature)
        return self.quantizer(outputs)


class DynamicsNetwork(nn.Module):
    """The recurrent dynamics: three blocks of ConvLSTM + BN + a conditioned layer.

    p_g = Linear(2→s)(Δ_F), p_l = Linear(D→s)(a). Block 1: ConvLSTM(s + s → h) at (h, w), BN,
    ModConv(h → 2h, style p_g, ↓2). Block 2: ConvLSTM(2h + s → 2h) at (h/2, w/2), BN,
    Up(2h + s → h, late) with p_l tiled. Block 3: ConvLSTM(h + s → h), BN, ModConv(h → h,
    style p_l). Each ConvLSTM gets its block's conditioning (p_g; p_l; p_l) tiled and
    concatenated to its input. With `joint_input` every conditioning is [p_l, p_g] (2s);
    with `modulated_conv: false` the ModConvs become Same blocks that take the
    conditioning concatenated instead. The noise vector (`noise_size`) is concatenated
    wherever a conditioning vector is concatenated to maps (the three ConvLSTM inputs, the
    Up, and the Same blocks of the ablation) and to the input maps of both ModConvs (as the
    authors' code does); it is zeros unless sampling.

    inputs C(φ) (B, s, h, w), Δ_F (B, 2), a (B, D), state → hidden (B, h, h, w), new state.
    """

    def __init__(self, config: LMAConfig, resolution: Tuple[int, int]):
        super().__init__()
        s, hidden, noise = config.state_size, config.hidden_size, config.noise_size
        self.state_size = s
        self.noise_size = noise
        self.joint_input = config.joint_input
        self.modulated_conv = config.modulated_conv
        self.resolution = tuple(resolution)
        half_resolution = (resolution[0] // 2, resolution[1] // 2)
        conditioning = 2 * s if config.joint_input else s
        self.global_projection = nn.Linear(2, s)
        self.local_projection = nn.Linear(config.action_dim, s)

        self.lstm_1 = ConvLSTM(s + conditioning + noise, hidden, self.resolution)
        self.norm_1 = BatchNorm2d(hidden)
        self.lstm_2 = ConvLSTM(2 * hidden + conditioning + noise, 2 * hidden, half_resolution)
        self.norm_2 = BatchNorm2d(2 * hidden)
        self.up_2 = Up(2 * hidden + conditioning + noise, hidden, mode="bilinear", late=True)
        self.lstm_3 = ConvLSTM(hidden + conditioning + noise, hidden, self.resolution)
        self.norm_3 = BatchNorm2d(hidden)
        if config.modulated_conv:  # the noise joins the modulated convolutions' input maps, as in the authors' code
            self.transform_1: nn.Module = ModConv(hidden + noise, 2 * hidden, conditioning, down=2)
            self.transform_3: nn.Module = ModConv(hidden + noise, hidden, conditioning)
        else:
            self.transform_1 = Same(hidden + conditioning + noise, 2 * hidden, down=2)
            self.transform_3 = Same(hidden + conditioning + noise, hidden)

    def initial_state(self, batch_size: int) -> DynamicsState:
        """The learnable initial (h₀, c₀) of the three ConvLSTMs for a new sequence."""
        return [lstm.initial_state(batch_size) for lstm in (self.lstm_1, self.lstm_2, self.lstm_3)]

    def _conditioned(self, transform: nn.Module, maps: torch.Tensor, conditioning: torch.Tensor,
                     noise: Optional[torch.Tensor]) -> torch.Tensor:
        if self.modulated_conv:
            return transform(tile_and_concatenate(maps, noise), conditioning)
        return transform(tile_and_concatenate(maps, conditioning, noise))

    def forward(self, inputs: torch.Tensor, foreground_shift: torch.Tensor, action_code: torch.Tensor,
                state: DynamicsState, noise: Optional[torch.Tensor]) -> Tuple[torch.Tensor, DynamicsState]:
        batch_size = inputs.shape[0]
        assert_shape(inputs, (batch_size, self.state_size, *self.resolution), "dynamics inputs")
        assert_shape(foreground_shift, (batch_size, 2), "dynamics foreground shift")
        assert_shape(action_code, (batch_size, self.local_projection.in_features), "dynamics action code")
        if noise is not None:
            assert_shape(noise, (batch_size, self.noise_size), "dynamics noise")
        global_conditioning = self.global_projection(foreground_shift)  # p_g (B, s)
        local_conditioning = self.local_projection(action_code)  # p_l (B, s)
        if self.joint_input:
            global_conditioning = local_conditioning = torch.cat([local_conditioning, global_conditioning], dim=1)

        state_1 = self.lstm_1(tile_and_concatenate(inputs, global_conditioning, noise), state[0])
        features = self._conditioned(self.transform_1, self.norm_1(state_1[0]), global_conditioning, noise)
        state_2 = self.lstm_2(tile_and_concatenate(features, local_conditioning, noise), state[1])
        features = self.up_2(tile_and_concatenate(self.norm_2(state_2[0]), local_conditioning, noise))
        state_3 = self.lstm_3(tile_and_concatenate(features, local_conditioning, noise), state[2])
        features = self._conditioned(self.transform_3, self.norm_3(state_3[0]), local_conditioning, noise)
        return features, [state_1, state_2, state_3]


PALETTE_SLOT_INIT_STD = 5.0  # `decoder_palette`: the slots' 1×1 weights at the start (colours in [−1, 1])
PALETTE_EPSILON = 1e-3  # `decoder_palette`: added to each slot's total weight
MIRROR_GATE_INIT_LOGIT = -1.5  # `decoder_warp_mirror`: the gate's bias at the start, g = (tanh(−1.5) + 1)/2 ≈ 0.047
MIRROR_MASK_EPSILON = 1e-3  # `decoder_warp_mirror`: below this total mask the axis is the image's middle column


class Decoder(nn.Module):
    """D: Up(h→128) + Res(128→128) → Final(128→3, k3) at 1/4; Up(128→64) + Res(64→64) →
    Final(64→3, k3) at 1/2; Up(64→32) → Final(32→4, k7) at full size.

    hidden (N, h, H/8, W/8) → [(N, 4, H, W), (N, 3, H/2, W/2), (N, 3, H/4, W/4)], full size first;
    the full-size output's channels are f̂ (3) and the mask logit x, m̂ = (x + 1)/2.
    With `decoder_skip` (ours, opt-in) the full-size Final takes 3 more input channels, `skip`
    (N, 3, H, W): the current foreground moved by Δ_F; with `decoder_skip_mask` as well 4, `skip`
    (N, 4, H, W): that foreground and the current mask moved alike; with `decoder_mask_prediction` 5, the mask
    predictor's next mask after them (`LocalMotionAnalysis.decoder_skip`). With `decoder_action` (ours,
    opt-in) every Up stage's input has the action code `action` (N, D) tiled and concatenated; with
    `decoder_action_film` as well, every Up stage's input and the full-size features x become x·(1 + γ) + β, (γ, β)
    a linear map of the code (zero at the start: the identity). With `decoder_warp`
    r > 0 (ours, opt-in) the full-size Final gives 3 more channels, a flow (r·tanh, pixels) and a blend weight b
    ((tanh + 1)/2): the full-size output becomes b·warp(skip) + (1 − b)·drawn (`warp_skip`), the skip's mask read
    as the logit 2m − 1; the flow channels start at zero (the warp starts as the copy). With `decoder_warp_draw`
    false, b = 1: the warped skip alone (without a mask in the skip, the drawn mask logit). With `decoder_warp_mirror`
    the full-size Final gives 3 more channels, a second flow and a gate g: the output becomes (1 − g)·(the above) +
    g·warp(the skip mirrored about its mask's centre column) (`warp_skip`). With `decoder_palette`
    K > 0 (ours, opt-in) f̂ at full size is painted from the skip's colours (`paint`): `palette_slots` (1×1, 3 → K)
    sorts the skip's pixels into K soft colour slots whose means are the palette, and `palette_choice` (3×3 on the
    full-size features and skip → K + 1) chooses per pixel among the K colours and the drawn one (with
    `decoder_warp` this painted f̂ is the drawing that the warped skip is blended with).
    """

    def __init__(self, config: LMAConfig):
        super().__init__()
        widths = [config.hidden_size] + list(config.decoder_channels)
        self.action_channels = config.action_dim if config.decoder_action else 0
        # f̃ₜ; m̃ₜ with decoder_skip_mask; the predicted next mask with decoder_mask_prediction
        self.skip_channels = (3 + config.decoder_skip_mask + config.decoder_mask_prediction
                              if config.decoder_skip else 0)
        self.warp_pixels = float(config.decoder_warp)
        self.warp_draw = config.decoder_warp_draw
        self.warp_mirror = config.decoder_warp_mirror
        # the full-size Final's channels: f̂ and the mask logit; with the warp its flow and blend; with the mirror the
        # mirror's flow and gate
        full_channels = 4 + 3 * bool(self.warp_pixels) + 3 * self.warp_mirror
        self.stages = nn.ModuleList()
        self.finals = nn.ModuleList()
        # `decoder_action_film`: one (γ, β) map per stage input (widths[:-1]) and one for the full-size features
        self.films = nn.ModuleList([nn.Linear(config.action_dim, 2 * width) for width in widths]
                                   if config.decoder_action and config.decoder_action_film else [])
        for film in self.films:
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)
        for i in range(1, len(widths)):
            last = i == len(widths) - 1
            up = Up(widths[i - 1] + self.action_channels, widths[i], mode="bilinear")
            self.stages.append(up if last else nn.Sequential(up, Res(widths[i], widths[i])))
            self.finals.append(Final(widths[i] + self.skip_channels, full_channels, 7) if last
                               else Final(widths[i], 3, 3))
        if self.warp_pixels:
            with torch.no_grad():
                self.finals[-1][0].weight[4:6].zero_()
                self.finals[-1][0].bias[4:6].zero_()
                if self.warp_mirror:  # the mirror's flow starts at zero, its gate almost shut
                    self.finals[-1][0].weight[7:10].zero_()
                    self.finals[-1][0].bias[7:9].zero_()
                    self.finals[-1][0].bias[9].fill_(MIRROR_GATE_INIT_LOGIT)
        self.palette_size = config.decoder_palette
        if self.palette_size:
            self.palette_slots = Conv2d(3, self.palette_size, 1)
            with torch.no_grad():  # sharp slots from the start: random planes that cut the colour cube into cells
                self.palette_slots.weight.normal_(0.0, PALETTE_SLOT_INIT_STD)
            self.palette_choice = Conv2d(widths[-1] + self.skip_channels, self.palette_size + 1, 3, padding=1)

    def forward(self, hidden: torch.Tensor, skip: Optional[torch.Tensor] = None,
                action: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        if (skip is not None) != bool(self.skip_channels):
            raise ValueError("the decoder takes a skip input exactly when built with decoder_skip")
        if (action is not None) != bool(self.action_channels):
            raise ValueError("the decoder takes the action code exactly when built with decoder_action")
        outputs = []
        features = hidden
        for index, (stage, final) in enumerate(zip(self.stages, self.finals)):
            if self.films:
                features = self._film(index, features, action)
            if action is not None:
                # tiled before the stage: interpolating a constant map leaves it unchanged
                features = tile_and_concatenate(features, action.to(features.dtype))
            features = stage(features)
            if index == len(self.stages) - 1:  # the full-size features
                if self.films:
                    features = self._film(index + 1, features, action)
                if skip is not None:
                    features = torch.cat([features, skip.to(features.dtype)], dim=1)
            outputs.append(final(features))
        if self.palette_size or self.warp_pixels:
            skip = skip.to(outputs[-1].dtype)
        if self.palette_size:  # paints the drawn colours, which the warp then blends with the warped skip
            outputs[-1] = self.paint(outputs[-1], self.palette_choice(features), skip)
        if self.warp_pixels:
            outputs[-1] = self.warp_skip(outputs[-1], skip)
        return outputs[::-1]

    def palette(self, skip: torch.Tensor) -> torch.Tensor:
        """`decoder_palette`: the skip (N, 3+, H, W) → the K slot colours (N, K, 3): each slot's mean colour of f̃ₜ,
        weighted by the slot's share of each pixel (softmax over the slots of `palette_slots`) and, where the skip
        carries it, by the mask m̃ₜ (a slot without weight gets colour 0)."""
        colours = skip[:, :3]
        shares = torch.softmax(self.palette_slots(colours), dim=1)  # (N, K, H, W)
        if skip.shape[1] > 3:  # decoder_skip_mask: the character's pixels only
            shares = shares * skip[:, 3:4]
        totals = torch.einsum("nkhw,nchw->nkc", shares, colours)
        return totals / (shares.sum(dim=(2, 3))[:, :, None] + PALETTE_EPSILON)

    def paint(self, output: torch.Tensor, choice_logits: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """`decoder_palette`: the Final's output (N, C ≥ 4, H, W), the choice logits (N, K + 1, H, W) and the skip →
        (N, C, H, W): f̂ = Σₖ wₖ·paletteₖ + w_K·drawn f̂, w = softmax of the logits; the other channels (the mask
        logit, and with `decoder_warp` the flow and blend) as drawn."""
        choice = torch.softmax(choice_logits, dim=1)
        painted = torch.einsum("nkhw,nkc->nchw", choice[:, :self.palette_size], self.palette(skip))
        return torch.cat([painted + choice[:, self.palette_size:] * output[:, :3], output[:, 3:]], dim=1)

    def _film(self, index: int, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """`decoder_action_film`: features (N, C, h, w) → features·(1 + γ) + β, (γ, β) = films[index](action)."""
        scale, shift = self.films[index](action.to(features.dtype)).chunk(2, dim=1)
        return features * (1 + scale[:, :, None, None]) + shift[:, :, None, None]

    def warp_skip(self, output: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """`decoder_warp`: the Final's 7 channels (drawn f̂ 3, mask logit 1, flow 2, blend 1) (N, 7, H, W) and the
        skip (N, 3 or 4, H, W) → (N, 4, H, W): blend · skip warped by the flow + (1 − blend) · drawn. The flow
        (dx, dy) in pixels says where each output pixel reads the skip (backward warp, zero padding, bilinear).
        With `decoder_warp_mirror` 10 channels, the last three the mirror's flow and gate g: (1 − g) · that + g ·
        the skip mirrored about its mask's centre column (`mirror_grid`) and warped by the mirror's flow."""
        drawn, flow, blend = output[:, :4], output[:, 4:6] * self.warp_pixels, (output[:, 6:7] + 1) / 2
        if not self.warp_draw:  # `decoder_warp_draw: false`: the warped skip alone (kept in the graph, zero gradient)
            blend = blend * 0 + 1
        batch_size, _, height, width = output.shape
        identity = torch.eye(2, 3, dtype=output.dtype, device=output.device).expand(batch_size, 2, 3)
        grid = F.affine_grid(identity, [batch_size, 1, height, width], align_corners=False)  # pixel centres, (x, y)
        scale = torch.tensor([2.0 / width, 2.0 / height], dtype=output.dtype, device=output.device)
        blended = blend * self._sample(skip, grid + flow.permute(0, 2, 3, 1) * scale, drawn) + (1 - blend) * drawn
        if not self.warp_mirror:
            return blended
        mirror_flow, gate = output[:, 7:9] * self.warp_pixels, (output[:, 9:10] + 1) / 2
        mirrored = self._sample(skip, mirror_grid(grid, skip[:, 3]) + mirror_flow.permute(0, 2, 3, 1) * scale, drawn)
        return (1 - gate) * blended + gate * mirrored

    @staticmethod
    def _sample(skip: torch.Tensor, grid: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
        """The skip (N, 3 or 4, H, W) read at `grid` (N, H, W, 2; bilinear, zero padding) → (N, 4, H, W): its mask
        m in [0, 1] as the mask logit 2m − 1, or without a mask in the skip the drawn mask logit (drawn[:, 3])."""
        warped = F.grid_sample(skip, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if warped.shape[1] == 4:
            return torch.cat([warped[:, :3], 2 * warped[:, 3:] - 1], dim=1)
        return torch.cat([warped, drawn[:, 3:]], dim=1)


def mirror_grid(grid: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """`decoder_warp_mirror`: the identity sampling grid (N, H, W, 2; x, y in [−1, 1], pixel centres) mirrored left ↔
    right about each mask's centre column: x → 2c − x, c the mask-weighted mean of x over masks (N, H, W) (the
    middle column where a mask is empty). Reading an image at this grid draws it mirrored in place."""
    weights = masks.to(grid.dtype)
    total = weights.sum(dim=(1, 2))
    centre = (weights * grid[..., 0]).sum(dim=(1, 2)) / total.clamp_min(MIRROR_MASK_EPSILON)
    centre = torch.where(total > MIRROR_MASK_EPSILON, centre, torch.zeros_like(centre))
    return torch.stack([2 * centre[:, None, None] - grid[..., 0], grid[..., 1]], dim=-1)


MASK_PREDICTOR_WIDTH = 32  # its hidden channels
MASK_CHANGE_THRESHOLD = 0.1  # `action_mask_predictor_change_weight`: a pooled position changes beyond this


class MaskPredictor(nn.Module):
    """`action_mask_predictor` (ours, opt-in): a small network that predicts the next mask from the shifted current
    mask and the local action, P(m̃ₜ, aₜ) ≈ mₜ₊₁, both masks average-pooled by `scale` (`action_mask_predictor_scale`,
    4 by default).
    The code is tiled over the positions and concatenated to the input of its first two 3×3 convolutions; no
    normalisation (its output does not depend on the batch). What m̃ₜ does not tell about mₜ₊₁ — a limb that starts to
    move, a turn — can only come from the code, so the code learns to carry the silhouette's change through a short
    path, before the decoder has learned to draw it.

    masks m̃ₜ (N, 1, H, W) and codes (N, D) → logits of mₜ₊₁ (N, 1, H/s, W/s)."""

    def __init__(self, action_dim: int, scale: int = 4):
        super().__init__()
        self.scale = scale
        width = MASK_PREDICTOR_WIDTH
        self.first = nn.Conv2d(1 + action_dim, width, 3, padding=1)
        self.second = nn.Conv2d(width + action_dim, width, 3, padding=1)
        self.third = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, masks: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        hidden = F.avg_pool2d(masks, self.scale) * 2 - 1
        hidden = F.leaky_relu(self.first(tile_and_concatenate(hidden, codes)), LEAKY_RELU_SLOPE)
        hidden = F.leaky_relu(self.second(tile_and_concatenate(hidden, codes)), LEAKY_RELU_SLOPE)
        hidden = F.leaky_relu(self.third(hidden), LEAKY_RELU_SLOPE)
        return self.out(hidden)

    def loss(self, shifted_masks: torch.Tensor, next_masks: torch.Tensor, codes: torch.Tensor,
             change_weight: float = 0.0) -> torch.Tensor:
        """Binary cross-entropy between P(m̃ₜ, aₜ) and mₜ₊₁ pooled alike (a soft target in [0, 1]), the mean over
        positions and transitions: m̃ₜ, mₜ₊₁ (N, 1, H, W), codes (N, D) → scalar. With `change_weight` α > 0
        (`action_mask_predictor_change_weight`) the mean is weighted, 1 + α where the pooled mₜ₊₁ and m̃ₜ differ by
        more than MASK_CHANGE_THRESHOLD, 1 elsewhere."""
        target = F.avg_pool2d(next_masks, self.scale).clamp(0, 1).float()
        losses = F.binary_cross_entropy_with_logits(self(shifted_masks, codes).float(), target, reduction="none")
        if not change_weight:
            return losses.mean()
        current = F.avg_pool2d(shifted_masks, self.scale).float()
        weights = 1 + change_weight * ((target - current).abs() > MASK_CHANGE_THRESHOLD).float()
        return (weights * losses).sum() / weights.sum()


@dataclass
class LMAOutput:
    """What the LMA computes on a sequence of T frames with T_f ground-truth steps.

    generated_foregrounds[k] is f̂₁ … f̂_{T−1} at scale 1/2^k, (B, T−1, 3, H/2^k, W/2^k), full
    size first; generated_masks m̂₁ … m̂_{T−1} (B, T−1, 1, H, W); states φ₀ … φ_{T−1} of the
    real foregrounds (B, T, 64, h, w); reencoded_states E(f̂₁) … E(f̂_{T−1}) (B, T−1, 64, h, w);
    the local actions a₀ … a_{T−2} (B, T−1, D) and their ids (B, T−1).
    """

    states: torch.Tensor  # (B, T, 64, h, w)
    action_codes: torch.Tensor  # (B, T−1, D)
    action_ids: torch.Tensor  # (B, T−1)
    action_vq_loss: Optional[torch.Tensor]  # scalar; None for the Gumbel ablation
    generated_foregrounds: List[torch.Tensor]  # full size first: (B, T−1, 3, H/2^k, W/2^k)
    generated_masks: torch.Tensor  # (B, T−1, 1, H, W)
    reencoded_states: torch.Tensor  # (B, T−1, 64, h, w)
    num_ground_truth_steps: int  # T_f used for the unrolling (with autoregressive_share: of the windows not chosen)
    action_vectors: Optional[torch.Tensor] = None  # (B, T−1, D) z before quantisation (Gumbel: logits), detached
    # f̃ₜ and Δ_F the LMA used: the GMA's, or refined with `shift_refinement` (B, T−1, 3, H, W), (B, T−1, 2)
    shifted_foregrounds: Optional[torch.Tensor] = None
    foreground_shifts: Optional[torch.Tensor] = None
    # `winner_take_all` in training only: the code each step was drawn with, the one of the K that drew fₜ₊₁ best
    # (B, T−1), and the cross-entropy that trains the action network to choose it (scalar); None otherwise.
    winner_ids: Optional[torch.Tensor] = None
    action_choice_loss: Optional[torch.Tensor] = None
    # `action_matching` in training only: KL(q(f̃ₜ, fₜ₊₁) ‖ q(f̃ₜ, f̂ₜ₊₁)) (scalar); None otherwise.
    action_matching_loss: Optional[torch.Tensor] = None
    # `action_mask_predictor` in training only: the mask predictor's cross-entropy (`MaskPredictor.loss`, scalar,
    # its gradient reaching the action readers through the straight-through code); None otherwise.
    mask_prediction_loss: Optional[torch.Tensor] = None
    # `model.lma.glimpse`: the windows' boxes (`model.glimpse.GlimpseBoxes`) when `model.glass.paste_output` has put
    # the box's outputs back into frames (the losses cut them out again); None otherwise.
    glimpse: Optional[GlimpseBoxes] = None


@dataclass
class InferredMotion:
    """What the LMA reads from a real sequence before unrolling: the shifted foregrounds f̃ (B, T−1, 3, H, W) and
    shifts Δ_F (B, T−1, 2) it uses (refined with `shift_refinement`), the states φ (B, T, 64, h, w) of the real
    foregrounds and the local actions (`ActionOutput`, (B, T−1) ids)."""

    shifted_foregrounds: torch.Tensor
    foreground_shifts: torch.Tensor
    states: torch.Tensor
    actions: ActionOutput


def split_full_output(full_output: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The decoder's full-size output (N, 4, H, W) → foreground f̂ (N, 3, H, W), mask m̂ = (x+1)/2 (N, 1, H, W)."""
    return full_output[:, :3], (full_output[:, 3:] + 1) / 2


def colour_jitter(source: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One random colour transform per pair (sₜ, tₜ) of images (B, T−1, 3, H, W) in [−1, 1], the same for both images of
    a pair (`model.lma.action_colour_jitter`): the channels permuted, each then negated with probability 1/2 and
    multiplied by a gain drawn uniformly from [0.5, 1.5]. Zero (a foreground's empty surround) stays zero, shapes and
    their motion stay, absolute colours do not. Draws from torch's global generator."""
    assert_shape(target, tuple(source.shape), "colour_jitter target")
    pairs, channels = source.shape[0] * source.shape[1], source.shape[2]
    order = torch.argsort(torch.rand(pairs, channels, device=source.device), dim=1)
    signs = torch.where(torch.rand(pairs, channels, device=source.device) < 0.5, -1.0, 1.0)
    factors = (signs * (0.5 + torch.rand(pairs, channels, device=source.device))).to(source.dtype)

    def transform(images: torch.Tensor) -> torch.Tensor:
        flat = images.flatten(0, 1)
        permuted = torch.gather(flat, 1, order[:, :, None, None].expand_as(flat))
        return (permuted * factors[:, :, None, None]).unflatten(0, images.shape[:2])

    return transform(source), transform(target)


def balanced_assignment(errors: torch.Tensor) -> torch.Tensor:
    """`winner_take_all_balanced`: each of N items gets one of K codes, each code at most ⌈N/K⌉ items, greedily
    by the least error first (errors (N, K) → codes (N,)): within a batch no code can win everything, so every
    code is trained on the items it draws best among those left to it. Ties: the lower item, then code."""
    num_items, num_codes = errors.shape
    capacity = -(-num_items // num_codes)
    order = torch.argsort(errors.flatten().float().cpu(), stable=True).tolist()
    chosen = [-1] * num_items
    load = [0] * num_codes
    for flat in order:
        item, code = divmod(flat, num_codes)
        if chosen[item] < 0 and load[code] < capacity:
            chosen[item] = code
            load[code] += 1
    return torch.tensor(chosen, dtype=torch.long, device=errors.device)


class LocalMotionAnalysis(nn.Module):
    """The LMA: encoder, compressor C = conv1×1 64→s (bias), action network, dynamics, decoder."""

    def __init__(self, config: LMAConfig, state_resolution: Tuple[int, int]):
        super().__init__()
        self.state_resolution = tuple(state_resolution)
        self.noise_size = config.noise_size
        self.shift_refinement = config.shift_refinement
        self.winner_take_all = config.winner_take_all
        self.winner_take_all_balanced = config.winner_take_all_balanced
        self.action_matching = config.action_matching
        self.autoregressive_share = config.autoregressive_share
        self.autoregressive_ground_truth_steps = config.autoregressive_ground_truth_steps
        self.encoder = Encoder(config)
        # `action_reader` 'masks' / 'changes' / 'colour_jitter': the action network's own encoder (of silhouettes / of
        # the moved mask and the change map / of colour-jittered foregrounds; `infer_motion`)
        self.action_reader = config.action_reader
        self.action_encoder = Encoder(config) if self.action_reader != "features" else None
        self.compressor = Conv2d(config.encoder_state_channels, config.state_size, 1)
        self.action_network = ActionNetwork(config)
        if config.action_reader_norm == "group":  # ours, opt-in: readers whose outputs do not depend on the batch
            for reader in self.action_readers():
                batch_norm_to_group_norm(reader)
        self.dynamics = DynamicsNetwork(config, state_resolution)
        self.decoder = Decoder(config)
        self.mask_predictor = (MaskPredictor(config.action_dim, config.action_mask_predictor_scale)
                               if config.action_mask_predictor else None)
        self.mask_change_weight = config.action_mask_predictor_change_weight

    @torch.no_grad()
    def refine_shifts(self, foregrounds: torch.Tensor, shifted_foregrounds: torch.Tensor,
                      foreground_shifts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """`shift_refinement` R > 0: each Δ_F moved by the integer pixel offset δ ∈ [−R, R]² whose fₜ moved by Δ_F + δ
        is closest to fₜ₊₁ (mean absolute difference; δ = 0 wins ties), and f̃ₜ recomputed; R = 0 returns the inputs.

        foregrounds f (B, T, 3, H, W), f̃ (B, T−1, 3, H, W), Δ_F (B, T−1, 2) in affine_grid units → (f̃, Δ_F),
        no gradient.
        """
        radius = self.shift_refinement
        if radius == 0:
            return shifted_foregrounds, foreground_shifts
        steps = foreground_shifts.shape[:2]
        sources, targets = foregrounds[:, :-1].flatten(0, 1), foregrounds[:, 1:].flatten(0, 1)
        shifts = foreground_shifts.flatten(0, 1)
        height, width = foregrounds.shape[-2:]
        # One pixel in affine_grid units and every offset δ (row (dy + R)(2R + 1) + dx + R), made on the device by
        # fills and an arange: a tensor from Python values would be a host copy that waits for the GPU.
        pixel = shifts.new_full((2,), 2.0 / width)
        pixel[1] = 2.0 / height
        span = torch.arange(-radius, radius + 1, dtype=shifts.dtype, device=shifts.device)
        grid_dy, grid_dx = torch.meshgrid(span, span, indexing="ij")
        offsets = torch.stack([grid_dx.flatten(), grid_dy.flatten()], dim=1) * pixel

        def error(moved: torch.Tensor) -> torch.Tensor:  # Σ |·| per image (l1_loss: far faster here on strided views)
            return F.l1_loss(moved, targets, reduction="none").sum(dim=(1, 2, 3))

        # fₜ moved by Δ_F + δ is f̃ₜ translated by the integer δ (inside the frame; compared that way, cheaply).
        current = shifted_foregrounds.flatten(0, 1)
        padded = F.pad(current, (radius, radius, radius, radius))
        best_error, best_offset = error(current), torch.zeros_like(shifts)
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                if dx == dy == 0:
                    continue
                moved = padded[:, :, radius - dy:radius - dy + height, radius - dx:radius - dx + width]
                candidate = error(moved)
                better = candidate < best_error
                best_error = torch.where(better, candidate, best_error)
                best_offset = torch.where(better[:, None], offsets[(dy + radius) * (2 * radius + 1) + dx + radius],
                                          best_offset)
        refined = shifts + best_offset
        return shift_images(sources, refined, FOREGROUND_PADDING).unflatten(0, steps), refined.unflatten(0, steps)

    def encode(self, frames: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """frames (B, T, 3, H, W) → states φ (B, T, 64, h, w), attention (B, T, 1, h, w); frames folded into
        the batch."""
        states, attention = self.encoder(frames.flatten(0, 1))
        return states.unflatten(0, frames.shape[:2]), attention.unflatten(0, frames.shape[:2])

    def action_readers(self) -> List[nn.Module]:
        """The modules that read the local actions from a transition: the action network (with its codebook), and the
        action encoder where `action_from_masks`, `action_from_changes` or `action_colour_jitter` gives it one (what
        `training.action_freeze_step` holds fixed)."""
        return [module for module in (self.action_encoder, self.action_network) if module is not None]

    def infer_actions(self, shifted_foregrounds: torch.Tensor, states: torch.Tensor, attention: torch.Tensor,
                      gumbel_temperature: Optional[float] = None,
                      reader_images: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                      foreground_shifts: Optional[torch.Tensor] = None) -> ActionOutput:
        """Local actions aₜ = A(E(f̃ₜ), φₜ₊₁), each state multiplied by its own attention channel.

        shifted_foregrounds f̃ (B, T−1, 3, H, W); states φ (B, T, 64, h, w) and attention
        (B, T, 1, h, w) of the real foregrounds → codes (B, T−1, D), ids (B, T−1), loss.
        With an action encoder E_A (`action_from_masks`, `action_from_changes`, `action_colour_jitter`),
        `reader_images` = (sₜ, tₜ), each (B, T−1, C, H, W) in [−1, 1] with C = 1 or 3, are read instead:
        aₜ = A(E_A(sₜ), E_A(tₜ)) (f̃ and φ are then not read); `infer_motion` makes them. `foreground_shifts`
        Δ_F (B, T−1, 2): read with `action_shift_input` (needed then).
        """
        batch_size, steps = shifted_foregrounds.shape[:2]
        assert_shape(states, (batch_size, steps + 1, None, *self.state_resolution), "LMA states")
        mirrored = None
        if self.action_encoder is not None:
            if reader_images is None:
                raise ValueError("model.lma.action_from_masks and action_from_changes need the masks of every frame")
            source, target = [self.action_encoder(images.flatten(0, 1).expand(-1, 3, -1, -1))
                              for images in reader_images]
            source_features, target_states = source[0] * source[1], target[0] * target[1]
            if self.action_network.mirror is not None:  # action_mirror_features: the target image flipped
                flipped = self.action_encoder(reader_images[1].flatten(0, 1).flip(-1).expand(-1, 3, -1, -1))
                mirrored = flipped[0] * flipped[1]
        else:
            shifted_states, shifted_attention = self.encoder(shifted_foregrounds.flatten(0, 1))
            source_features = shifted_states * shifted_attention
            target_states = (states[:, 1:] * attention[:, 1:]).flatten(0, 1)
        shifts = None if foreground_shifts is None else foreground_shifts.flatten(0, 1)
        actions = self.action_network(source_features, target_states, gumbel_temperature, mirrored, shifts)
        return ActionOutput(codes=actions.codes.unflatten(0, (batch_size, steps)),
                            ids=actions.ids.unflatten(0, (batch_size, steps)), vq_loss=actions.vq_loss,
                            vectors=actions.vectors.unflatten(0, (batch_size, steps)),
                            choice_logits=actions.choice_logits.unflatten(0, (batch_size, steps)),
                            source_features=source_features.detach().unflatten(0, (batch_size, steps)))

    def infer_motion(self, foregrounds: torch.Tensor, shifted_foregrounds: torch.Tensor,
                     foreground_shifts: torch.Tensor, gumbel_temperature: Optional[float] = None,
                     masks: Optional[torch.Tensor] = None) -> InferredMotion:
        """Refine the GMA's f̃ and Δ_F (`refine_shifts`), encode the foregrounds f (B, T, 3, H, W) and infer the local
        actions: what training, reconstruction and evaluation all read from a real sequence. `masks` m
        (B, T, 1, H, W), the foregrounds' masks, are read with `action_from_masks` (2m̃ₜ − 1 and 2mₜ₊₁ − 1, m̃ₜ = mₜ
        moved by the refined Δ_F) and `action_from_changes` (2m̃ₜ − 1 and 2·min(Σ_c |fₜ₊₁ − f̃ₜ|, 1) − 1). With
        `action_colour_jitter` the action encoder reads (f̃ₜ, fₜ₊₁), in training through `colour_jitter`."""
        shifted_foregrounds, foreground_shifts = self.refine_shifts(foregrounds, shifted_foregrounds, foreground_shifts)
        states, attention = self.encode(foregrounds)
        reader_images = None
        if self.action_reader == "colour_jitter":
            reader_images = (shifted_foregrounds, foregrounds[:, 1:])
            if self.training:
                reader_images = colour_jitter(*reader_images)
        elif self.action_encoder is not None and masks is not None:
            shifted_masks = shift_images(masks[:, :-1].flatten(0, 1), foreground_shifts.flatten(0, 1),
                                         FOREGROUND_PADDING).unflatten(0, foreground_shifts.shape[:2])
            if self.action_reader == "changes":
                changes = (foregrounds[:, 1:] - shifted_foregrounds).abs().sum(dim=2, keepdim=True).clamp(max=1)
                reader_images = (shifted_masks * 2 - 1, changes * 2 - 1)
            else:
                reader_images = (shifted_masks * 2 - 1, masks[:, 1:] * 2 - 1)
        actions = self.infer_actions(shifted_foregrounds, states, attention, gumbel_temperature, reader_images,
                                     foreground_shifts)
        return InferredMotion(shifted_foregrounds, foreground_shifts, states, actions)

    def noise(self, batch_size: int, sample: bool, like: torch.Tensor) -> Optional[torch.Tensor]:
        """The dynamics noise (B, noise_size): N(0, 1) when sampling, else zeros; None without noise."""
        if self.noise_size == 0:
            return None
        shape = (batch_size, self.noise_size)
        return torch.randn(shape, dtype=like.dtype, device=like.device) if sample else like.new_zeros(shape)

    def decoder_skip(self, foregrounds: Optional[torch.Tensor], shifts: torch.Tensor,
                     masks: Optional[torch.Tensor] = None, codes: Optional[torch.Tensor] = None
                     ) -> Optional[torch.Tensor]:
        """The decoder's skip input (`decoder_skip`): foregrounds (N, 3, H, W) moved by Δ_F (N, 2), and with
        `decoder_skip_mask` the masks (N, 1, H, W) moved alike, concatenated after them; with
        `decoder_mask_prediction` also the mask predictor's next mask σ(P(m̃ₜ, aₜ)) from those moved masks and the
        codes (N, D), brought to full size (bilinear). None without `decoder_skip`."""
        if not self.decoder.skip_channels:
            return None
        if foregrounds is None:
            raise ValueError("model.lma.decoder_skip needs the current foreground of every step")
        if self.decoder.skip_channels >= 4:
            if masks is None:
                raise ValueError("model.lma.decoder_skip_mask needs the current mask of every step")
            foregrounds = torch.cat([foregrounds, masks.to(foregrounds.dtype)], dim=1)
        skip = shift_images(foregrounds, shifts, FOREGROUND_PADDING)
        if self.decoder.skip_channels == 5:
            if codes is None:
                raise ValueError("model.lma.decoder_mask_prediction needs the action code of every step")
            predicted = torch.sigmoid(self.mask_predictor(skip[:, 3:4], codes.to(skip.dtype)))
            predicted = F.interpolate(predicted, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            skip = torch.cat([skip, predicted], dim=1)
        return skip

    def decoder_action(self, codes: torch.Tensor) -> Optional[torch.Tensor]:
        """The decoder's action input (`decoder_action`): the codes (N, D) themselves; None without it."""
        return codes if self.decoder.action_channels else None

    def step(self, states: torch.Tensor, foreground_shift: torch.Tensor, action_code: torch.Tensor,
             dynamics_state: DynamicsState, sample_noise: bool = False,
             foreground: Optional[torch.Tensor] = None,
             mask: Optional[torch.Tensor] = None) -> Tuple[List[torch.Tensor], DynamicsState]:
        """One recurrent step from encoder states φ (B, 64, h, w) of the current foreground, the
        shift Δ_F (B, 2) and the action code (B, D) → the decoder outputs for the next frame
        (full size first, see `Decoder`) and the new dynamics state. `foreground` (B, 3, H, W),
        the current foreground itself, is needed with `decoder_skip` only; `mask` (B, 1, H, W),
        the current mask, with `decoder_skip_mask` only."""
        noise = self.noise(states.shape[0], sample_noise, states)
        hidden, dynamics_state = self.dynamics(self.compressor(states), foreground_shift, action_code, dynamics_state,
                                               noise)
        return (self.decoder(hidden, self.decoder_skip(foreground, foreground_shift, mask, action_code),
                             self.decoder_action(action_code)),
                dynamics_state)

    def unroll(self, ground_truth_states: torch.Tensor, foreground_shifts: torch.Tensor, action_codes: torch.Tensor,
               sample_noise: bool = False,
               ground_truth_foregrounds: Optional[torch.Tensor] = None,
               ground_truth_masks: Optional[torch.Tensor] = None) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Run the dynamics over S steps from a fresh state, with T_f = ground_truth_states.shape[1] ground-truth steps.

        ground_truth_states φ₀ … φ_{T_f−1} (B, T_f, 64, h, w), 1 ≤ T_f ≤ S; Δ_F (B, S, 2); codes
        (B, S, D). Step t < T_f reads φₜ of the real foreground, later steps E(f̂ₜ) of the model's
        own previous output (with gradient). Returns the foregrounds f̂₁ … f̂_S per scale, full
        size first, each (B, S, 3, H/2^k, W/2^k), and the masks m̂₁ … m̂_S (B, S, 1, H, W).

        `ground_truth_foregrounds` f₀ … f_{T_f−1} (B, T_f, 3, H, W), whose states are
        `ground_truth_states`, are needed with `decoder_skip` only, and their masks m₀ … m_{T_f−1}
        (B, T_f, 1, H, W), `ground_truth_masks`, with `decoder_skip_mask` only; a later step's
        skip carries the model's own previous f̂ₜ (and m̂ₜ).

        As in the authors' code, the T_f ground-truth steps run the dynamics one by one and are
        then decoded in one call (in training one BatchNorm batch of B·T_f); each later step is
        decoded alone (batch B), since the next step needs its output.
        """
        batch_size, num_ground_truth_steps = ground_truth_states.shape[:2]
        steps = foreground_shifts.shape[1]
        if not 1 <= num_ground_truth_steps <= steps:
            raise ValueError(f"the number of ground-truth steps must be in [1, {steps}], got {num_ground_truth_steps}")
        assert_shape(foreground_shifts, (batch_size, steps, 2), "foreground shifts")
        assert_shape(action_codes, (batch_size, steps, None), "action codes")
        dynamics_state = self.dynamics.initial_state(batch_size)
        hidden_states = []
        for t in range(num_ground_truth_steps):
            noise = self.noise(batch_size, sample_noise, ground_truth_states)
            hidden, dynamics_state = self.dynamics(self.compressor(ground_truth_states[:, t]), foreground_shifts[:, t],
                                                   action_codes[:, t], dynamics_state, noise)
            hidden_states.append(hidden)
        skip = self.decoder_skip(None if ground_truth_foregrounds is None else ground_truth_foregrounds.flatten(0, 1),
                                 foreground_shifts[:, :num_ground_truth_steps].flatten(0, 1),
                                 None if ground_truth_masks is None else ground_truth_masks.flatten(0, 1),
                                 action_codes[:, :num_ground_truth_steps].flatten(0, 1))
        decoded = self.decoder(torch.stack(hidden_states, dim=1).flatten(0, 1), skip,
                               self.decoder_action(action_codes[:, :num_ground_truth_steps].flatten(0, 1)))
        # per chunk, per scale
        chunks = [[scale.unflatten(0, (batch_size, num_ground_truth_steps)) for scale in decoded]]
        for t in range(num_ground_truth_steps, steps):
            previous_foreground, previous_mask = split_full_output(chunks[-1][0][:, -1])
            decoded, dynamics_state = self.step(self.encoder(previous_foreground)[0], foreground_shifts[:, t],
                                                action_codes[:, t], dynamics_state, sample_noise, previous_foreground,
                                                previous_mask)
            chunks.append([scale[:, None] for scale in decoded])
        full, *smaller = [torch.cat(scale, dim=1) for scale in zip(*chunks)]
        foregrounds, masks = split_full_output(full.flatten(0, 1))
        return [foregrounds.unflatten(0, (batch_size, steps))] + smaller, masks.unflatten(0, (batch_size, steps))

    def autoregressive_windows(self, batch_size: int, num_ground_truth_steps: int) -> Tuple[int, int]:
        """(n, T_f') for `autoregressive_share`: in training the first n windows of a batch of `batch_size` unroll
        with T_f' = min(autoregressive_ground_truth_steps, T_f) ground-truth steps; n = 0 when off, in eval mode, or
        when T_f' would be T_f."""
        count = round(self.autoregressive_share * batch_size) if self.training else 0
        steps = min(self.autoregressive_ground_truth_steps, num_ground_truth_steps)
        return (count, steps) if count and steps < num_ground_truth_steps else (0, num_ground_truth_steps)

    def unroll_batch(self, states: torch.Tensor, foreground_shifts: torch.Tensor, action_codes: torch.Tensor,
                     num_ground_truth_steps: int, sample_noise: bool = False,
                     foregrounds: Optional[torch.Tensor] = None,
                     masks: Optional[torch.Tensor] = None) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """`unroll` with T_f = `num_ground_truth_steps` from the states φ (B, T, 64, h, w) of a whole window, its
        foregrounds f and masks m (B, T, ·, H, W; needed as `unroll` says), as training and evaluation run it. With
        `autoregressive_share` in training, the batch's first n windows (`autoregressive_windows`) are unrolled on
        their own with fewer ground-truth steps, and the outputs are joined back in batch order."""
        def window(rows: slice, steps: int) -> Tuple[List[torch.Tensor], torch.Tensor]:
            def ground_truth(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
                return None if tensor is None else tensor[rows, :steps]
            return self.unroll(ground_truth(states), foreground_shifts[rows], action_codes[rows], sample_noise,
                               ground_truth(foregrounds), ground_truth(masks))

        batch_size = states.shape[0]
        count, steps = self.autoregressive_windows(batch_size, num_ground_truth_steps)
        if count in (0, batch_size):
            return window(slice(None), steps)
        (scales_a, masks_a), (scales_b, masks_b) = (window(slice(0, count), steps),
                                                    window(slice(count, None), num_ground_truth_steps))
        return [torch.cat(pair) for pair in zip(scales_a, scales_b)], torch.cat([masks_a, masks_b])

    def forward(self, foregrounds: torch.Tensor, shifted_foregrounds: torch.Tensor, foreground_shifts: torch.Tensor,
                num_ground_truth_steps: int, gumbel_temperature: Optional[float] = None,
                sample_noise: bool = False, masks: Optional[torch.Tensor] = None) -> LMAOutput:
        """foregrounds f (B, T, 3, H, W), f̃ (B, T−1, 3, H, W), Δ_F (B, T−1, 2), T_f → `LMAOutput`.
        `masks` m (B, T, 1, H, W), the foregrounds' masks, are needed with `decoder_skip_mask` or `action_from_masks`
        only.

        The caller detaches these inputs (no gradient reaches the GMA). With `shift_refinement` f̃ and Δ_F
        are first refined (`infer_motion`). With `autoregressive_share` part of a training batch unrolls with fewer
        ground-truth steps (`unroll_batch`); `LMAOutput.num_ground_truth_steps` stays T_f.
        """
        motion = self.infer_motion(foregrounds, shifted_foregrounds, foreground_shifts, gumbel_temperature, masks)
        states, actions = motion.states, motion.actions
        winner_ids = choice_loss = None
        if self.winner_take_all and self.training:
            generated_foregrounds, generated_masks, winner_ids = self.unroll_winner_take_all(
                states[:, :num_ground_truth_steps], motion.foreground_shifts, foregrounds[:, 1:],
                None if masks is None else masks[:, 1:], sample_noise, foregrounds[:, :num_ground_truth_steps],
                None if masks is None else masks[:, :num_ground_truth_steps])
            choice_loss = F.cross_entropy(actions.choice_logits.flatten(0, 1).float(), winner_ids.flatten())
        else:
            generated_foregrounds, generated_masks = self.unroll_batch(
                states, motion.foreground_shifts, actions.codes, num_ground_truth_steps, sample_noise, foregrounds,
                masks)
        reencoded_states, _ = self.encode(generated_foregrounds[0])
        matching = None
        if self.action_matching and self.training:
            matching = self.action_matching_loss(actions.source_features, actions.choice_logits,
                                                 generated_foregrounds[0])
        mask_prediction = None
        if self.mask_predictor is not None and self.training:
            if masks is None:
                raise ValueError("model.lma.action_mask_predictor needs the masks of every frame")
            shifted_masks = shift_images(masks[:, :-1].flatten(0, 1), motion.foreground_shifts.flatten(0, 1),
                                         FOREGROUND_PADDING)
            mask_prediction = self.mask_predictor.loss(shifted_masks, masks[:, 1:].flatten(0, 1),
                                                       actions.codes.flatten(0, 1), self.mask_change_weight)
        return LMAOutput(states=states, action_codes=actions.codes, action_ids=actions.ids,
                         action_vq_loss=actions.vq_loss, generated_foregrounds=generated_foregrounds,
                         generated_masks=generated_masks, reencoded_states=reencoded_states,
                         num_ground_truth_steps=num_ground_truth_steps, action_vectors=actions.vectors,
                         shifted_foregrounds=motion.shifted_foregrounds, foreground_shifts=motion.foreground_shifts,
                         winner_ids=winner_ids, action_choice_loss=choice_loss, action_matching_loss=matching,
                         mask_prediction_loss=mask_prediction)

    def action_matching_loss(self, source_features: torch.Tensor, real_choice_logits: torch.Tensor,
                             generated_foregrounds: torch.Tensor) -> torch.Tensor:
        """`action_matching` (ours, opt-in; PVG/CADDY's action matching): KL(q_real ‖ q_generated), the mean over
        transitions, where q is the action network's distribution over the K codes, softmax(−‖z − eₖ‖²): q_real from
        the real pair (f̃ₜ, fₜ₊₁) (`real_choice_logits` (B, T−1, K), taken as a fixed target) and q_generated from
        (f̃ₜ, f̂ₜ₊₁), `generated_foregrounds` (B, T−1, 3, H, W); f̃ₜ as the real pair's reading saw it,
        `source_features` (B, T−1, C, h, w) (`ActionOutput.source_features`, not encoded again). The encoder and the
        action network read the generated frames with their weights detached and on copies of their BatchNorm
        statistics: the gradient goes
        through f̂ₜ₊₁ only, into what drew it (as the reconstruction losses' does), never into the reading of it.
        It is 0 when f̂ₜ₊₁ = fₜ₊₁ and both sides see the same BatchNorm statistics."""
        batch_size, steps = generated_foregrounds.shape[:2]
        assert_shape(real_choice_logits, (batch_size, steps, self.action_network.codebook.shape[0]),
                     "action matching logits")

        def frozen(module: nn.Module, *inputs: torch.Tensor):
            parameters = {name: value.detach() for name, value in module.named_parameters()}
            buffers = {name: value.clone() for name, value in module.named_buffers()}  # running statistics kept
            return torch.func.functional_call(module, (parameters, buffers), inputs)

        target_states, target_attention = frozen(self.encoder, generated_foregrounds.flatten(0, 1))
        generated = frozen(self.action_network, source_features.detach().flatten(0, 1),
                           target_states * target_attention)
        target = F.softmax(real_choice_logits.detach().flatten(0, 1).float(), dim=1)
        return F.kl_div(F.log_softmax(generated.choice_logits.float(), dim=1), target, reduction="batchmean")

    def unroll_winner_take_all(self, ground_truth_states: torch.Tensor, foreground_shifts: torch.Tensor,
                               targets: torch.Tensor, target_masks: Optional[torch.Tensor], sample_noise: bool = False,
                               ground_truth_foregrounds: Optional[torch.Tensor] = None,
                               ground_truth_masks: Optional[torch.Tensor] = None
                               ) -> Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor]:
        """`winner_take_all` (ours, opt-in; ILPO, Edwards et al. 2019; multiple-choice learning): `unroll`, but
        every step is drawn with each of the K codebook rows, and the one whose full-size f̂ₜ₊₁ (and m̂ₜ₊₁, when
        `target_masks` are given) is closest to the target (mean |·|, no gradient) is kept: its output is the
        step's output (so the reconstruction losses train the decoder through the best code only) and its
        dynamics state carries on. Nothing that sees fₜ₊₁ chooses the code, so the codes cannot carry appearance;
        the action network learns to pick the winner (the caller's cross-entropy).

        Arguments as `unroll`, with the targets fₜ₊₁ (B, S, 3, H, W) and mₜ₊₁ (B, S, 1, H, W) instead of codes.
        Every step, ground-truth ones included, is decoded on its own (one BatchNorm batch of B·K per step).
        Returns the foregrounds per scale and the masks as `unroll`, and the winners' ids (B, S).
        """
        batch_size, num_ground_truth_steps = ground_truth_states.shape[:2]
        steps = foreground_shifts.shape[1]
        codebook = self.action_network.codebook
        num_codes = codebook.shape[0]
        assert_shape(targets, (batch_size, steps, 3, None, None), "winner-take-all targets")
        codes = codebook.repeat(batch_size, 1)  # row b·K + k is code k for sample b

        def each_code(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if tensor is None else tensor.repeat_interleave(num_codes, dim=0)

        first = torch.arange(batch_size, device=codebook.device) * num_codes
        dynamics_state = self.dynamics.initial_state(batch_size * num_codes)
        outputs: List[List[torch.Tensor]] = []
        winners = []
        for t in range(steps):
            if t < num_ground_truth_steps:
                states = ground_truth_states[:, t]
                foreground = None if ground_truth_foregrounds is None else ground_truth_foregrounds[:, t]
                mask = None if ground_truth_masks is None else ground_truth_masks[:, t]
            else:
                foreground, mask = split_full_output(outputs[-1][0])
                states = self.encoder(foreground)[0]
            shift = each_code(foreground_shifts[:, t])
            noise = self.noise(batch_size * num_codes, sample_noise, states)
            hidden, candidate_state = self.dynamics(self.compressor(each_code(states)), shift, codes, dynamics_state,
                                                    noise)
            decoded = self.decoder(hidden, self.decoder_skip(each_code(foreground), shift, each_code(mask), codes),
                                   self.decoder_action(codes))
            with torch.no_grad():
                drawn, drawn_mask = split_full_output(decoded[0].detach())
                error = (drawn - each_code(targets[:, t])).abs().mean(dim=(1, 2, 3))
                if target_masks is not None:
                    error = error + (drawn_mask - each_code(target_masks[:, t])).abs().mean(dim=(1, 2, 3))
                error = error.view(batch_size, num_codes)
                best = balanced_assignment(error) if self.winner_take_all_balanced else error.argmin(dim=1)
            chosen = first + best
            outputs.append([scale[chosen] for scale in decoded])
            dynamics_state = [(each_code(h[chosen]), each_code(c[chosen])) for h, c in candidate_state]
            winners.append(best)
        full, *smaller = [torch.stack(scale, dim=1) for scale in zip(*outputs)]
        foregrounds, masks = split_full_output(full.flatten(0, 1))
        return ([foregrounds.unflatten(0, (batch_size, steps))] + smaller, masks.unflatten(0, (batch_size, steps)),
                torch.stack(winners, dim=1))
