"""The building blocks of SPEC §2: Res, Same, Up, Final, ModConv and ConvLSTM.

LReLU is LeakyReLU(0.2), BN is BatchNorm, every 3×3 convolution pads by 1 and
down-sampling is average pooling. A vector (B, F) that is concatenated with feature
maps is tiled over the spatial grid first (`tile_and_concatenate`).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from model.ops import CPU_KERNELS, FrozenKernelTiles, conv2d, pooled_kernel, winograd_eligible
from model.ops import batch_norm as fast_batch_norm

LEAKY_RELU_SLOPE = 0.2
DEMODULATION_EPSILON = 1e-8  # StyleGAN2's ε in w / √(Σ w² + ε)
LINEAR_INTERPOLATION_MODES = ("linear", "bilinear", "bicubic", "trilinear")

ConvLSTMState = Tuple[torch.Tensor, torch.Tensor]  # (h, c), each (B, out, H, W)


def assert_shape(tensor: torch.Tensor, expected: Sequence[Optional[int]], name: str) -> None:
    """Raise `ValueError` unless `tensor` has len(expected) dimensions matching `expected` (None = any size)."""
    if tensor.dim() != len(expected) or any(e is not None and e != s for e, s in zip(expected, tensor.shape)):
        shown = tuple("*" if e is None else e for e in expected)
        raise ValueError(f"{name}: expected shape {shown}, got {tuple(tensor.shape)}")


def tile_and_concatenate(feature_maps: torch.Tensor, *vectors: Optional[torch.Tensor]) -> torch.Tensor:
    """Concatenate vectors (B, F_i) to maps (B, C, H, W) along channels, each tiled over H×W.

    Returns (B, C + Σ F_i, H, W). `None` entries are skipped (an absent noise input).
    """
    batch_size, _, height, width = feature_maps.shape
    tiled = [v[:, :, None, None].expand(batch_size, v.shape[1], height, width) for v in vectors if v is not None]
    return torch.cat([feature_maps, *tiled], dim=1)


class Conv2d(nn.Conv2d):
    """nn.Conv2d, optionally followed by avgpool(down), computed by `model.ops.conv2d` (same parameters and function).

    - down > 1, k×k with k > 1: one convolution of stride `down` with the (k+down−1)² kernel
      `pooled_kernel(weight, down)` instead of a full-resolution convolution and a pooling —
      for 3×3 and down 2, 16 taps at a quarter of the positions instead of 9 at all of them:
      2.25× less work, forward and backward;
    - down > 1, 1×1: avgpool first, then the convolution (both are linear per pixel): 4× less;
    - `kernels` (set by `use_cpu_kernels`, training.cpu_kernels in the config) 'torch' or 'native': on
      CPU tensors, Winograd F(4×4, 3×3) for wide 3×3 layers and NCHW weight gradients for wide
      channels-last ones (model/ops/); 'plain' (the default) keeps PyTorch's kernels.
    Results agree with nn.Conv2d → nn.AvgPool2d to float rounding (tests/model/test_blocks.py,
    tests/model/ops/). (B, in, H, W) → (B, out, ⌊H'/down⌋, ⌊W'/down⌋), H', W' the plain convolution's output size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, bias: bool = True,
                 down: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        self.down = down
        self.kernels = "plain"
        self._frozen_kernel_tiles = FrozenKernelTiles()  # Winograd's transformed kernels while the weight is frozen

    def winograd_eligible(self) -> bool:
        """Whether 'torch' and 'native' kernels run this layer by Winograd (on CPU float inputs)."""
        return winograd_eligible(self.weight.shape, self.padding, self.down)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return conv2d(inputs, self.weight, self.bias, self.padding, self.down, self.kernels, self._frozen_kernel_tiles)

    def extra_repr(self) -> str:
        return (super().extra_repr() + (f", then avgpool({self.down})" if self.down != 1 else "")
                + (f", kernels={self.kernels}" if self.kernels != "plain" else ""))


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (same parameters, buffers and function) whose training-mode backward on narrow channels-last
    CPU tensors is `model.ops.batch_norm` when `kernels` (set by `use_cpu_kernels`) is 'torch' or 'native';
    'plain' (the default), evaluation mode and other inputs keep PyTorch's kernel."""

    def __init__(self, num_features: int):
        super().__init__(num_features)
        self.kernels = "plain"

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not (self.kernels != "plain" and self.training and fast_batch_norm.applies(inputs)):
            return super().forward(inputs)
        assert_shape(inputs, (None, self.num_features, None, None), "BatchNorm2d inputs")
        factor = 0.0 if self.momentum is None else self.momentum  # as nn.BatchNorm2d: None = cumulative average
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        return fast_batch_norm.batch_norm_channels_last(
            inputs, self.weight, self.bias, self.running_mean if self.track_running_stats else None,
            self.running_var if self.track_running_stats else None, factor, self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", kernels={self.kernels}" if self.kernels != "plain" else "")


def use_cpu_kernels(module: nn.Module, kernels: str) -> int:
    """Set `kernels` (one of CPU_KERNELS) on every Conv2d and BatchNorm2d of `module`; returns how many of the
    Conv2d Winograd then runs on CPU float inputs (0 with 'plain'). Other devices keep PyTorch's kernels."""
    if kernels not in CPU_KERNELS:
        raise ValueError(f"use_cpu_kernels: kernels must be one of {CPU_KERNELS}, got {kernels!r}")
    count = 0
    for layer in module.modules():
        if isinstance(layer, Conv2d):
            layer.kernels = kernels
            count += kernels != "plain" and layer.winograd_eligible()
        elif isinstance(layer, BatchNorm2d):
            layer.kernels = kernels
    return count


class Res(nn.Module):
    """Residual block: conv3×3 → avgpool(down) → BN → LReLU → conv3×3 → BN, plus the skip
    (identity, or conv1×1 → avgpool(down) → BN when the shape changes); sum → LReLU.

    (B, in, H, W) → (B, out, H/down, W/down).
    """

    def __init__(self, in_channels: int, out_channels: int, down: int = 1):
        super().__init__()
        self.residual = nn.Sequential(
            Conv2d(in_channels, out_channels, 3, padding=1, bias=False, down=down),
            nn.Identity(),  # the avgpool is inside Conv2d; kept as a slot so that parameter names stay
            BatchNorm2d(out_channels),
            nn.LeakyReLU(LEAKY_RELU_SLOPE),
            Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            BatchNorm2d(out_channels),
        )
        if down != 1 or in_channels != out_channels:
            self.skip = nn.Sequential(
                Conv2d(in_channels, out_channels, 1, bias=False, down=down),
                nn.Identity(),  # the avgpool is inside Conv2d
                BatchNorm2d(out_channels),
            )
        else:
            self.skip = nn.Identity()
        self.activation = nn.LeakyReLU(LEAKY_RELU_SLOPE)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.activation(self.residual(inputs) + self.skip(inputs))


class Same(nn.Sequential):
    """conv3×3 (no bias) → avgpool(down) → BN → LReLU: (B, in, H, W) → (B, out, H/down, W/down)."""

    def __init__(self, in_channels: int, out_channels: int, down: int = 1):
        super().__init__(
            Conv2d(in_channels, out_channels, 3, padding=1, bias=False, down=down),
            nn.Identity(),  # the avgpool is inside Conv2d
            BatchNorm2d(out_channels),
            nn.LeakyReLU(LEAKY_RELU_SLOPE),
        )


def group_norm_groups(channels: int, most: int = 8) -> int:
    """The largest divisor of `channels` that is at most `most`: the group count of `batch_norm_to_group_norm`."""
    return max(g for g in range(1, min(most, channels) + 1) if channels % g == 0)


def batch_norm_to_group_norm(module: nn.Module) -> int:
    """Replace, in place, every BatchNorm1d/2d inside `module` by GroupNorm(`group_norm_groups`(C), C) with a fresh
    affine (weight 1, bias 0, as a new BatchNorm starts): the layer then normalises each sample over its own channels
    (and positions), the same in training and evaluation, whatever else is in the batch. Returns how many it replaced.
    (B, C) inputs work as well as (B, C, H, W): GroupNorm reads dimension 1 as the channels."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            setattr(module, name, nn.GroupNorm(group_norm_groups(child.num_features), child.num_features,
                                               eps=child.eps, affine=True))
            count += 1
        else:
            count += batch_norm_to_group_norm(child)
    return count


class Interpolate(nn.Module):
    """Resize by `scale_factor` with `mode`; linear modes use align_corners=True (SPEC §2)."""

    def __init__(self, scale_factor: int, mode: str):
        super().__init__()
        self.scale_factor = scale_factor
        self.mode = mode

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        align_corners = True if self.mode in LINEAR_INTERPOLATION_MODES else None
        return F.interpolate(inputs, scale_factor=self.scale_factor, mode=self.mode, align_corners=align_corners)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}"


class Up(nn.Sequential):
    """interpolate ×scale → conv3×3 (no bias) → BN → LReLU; with `late` the interpolation comes last.

    (B, in, H, W) → (B, out, scale·H, scale·W).
    """

    def __init__(self, in_channels: int, out_channels: int, scale_factor: int = 2, mode: str = "bilinear",
                 late: bool = False):
        layers = [
            Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            BatchNorm2d(out_channels),
            nn.LeakyReLU(LEAKY_RELU_SLOPE),
        ]
        interpolation = Interpolate(scale_factor, mode)
        super().__init__(*(layers + [interpolation] if late else [interpolation] + layers))


class Final(nn.Sequential):
    """conv k×k (bias, pad k//2) → tanh: (B, in, H, W) → (B, out, H, W) in [-1, 1]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2), nn.Tanh())


def _normalise_rms(tensor: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    return tensor * torch.rsqrt(tensor.pow(2).mean(dim=tuple(dims), keepdim=True) + DEMODULATION_EPSILON)


def modulated_weights(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """StyleGAN2 modulation and demodulation of a conv weight, one weight per sample.

    weight (out, in, k, k), styles (B, in) → (B, out, in, k, k). Both are first divided by
    their RMS (over (in, k, k) per output channel, and over `in` per sample), which only
    guards the numerics; the result w·s / √(Σ_{in,k,k} (w·s)² + ε) does not depend on it
    except through ε.
    """
    weight = _normalise_rms(weight, dims=(1, 2, 3))
    styles = _normalise_rms(styles, dims=(1,))
    modulated = weight[None] * styles[:, None, :, None, None]  # (B, out, in, k, k)
    return modulated * torch.rsqrt(modulated.pow(2).sum(dim=(2, 3, 4), keepdim=True) + DEMODULATION_EPSILON)


class ModConv(nn.Module):
    """StyleGAN2 modulated 3×3 convolution (no bias) → avgpool(down) → BN → LReLU.

    The style vector (B, style) goes through Linear(style → in) to give the per-sample
    input scales s; the weight w (out, in, 3, 3) is initialised N(0, 1). The whole batch
    runs as one grouped convolution. (B, in, H, W), (B, style) → (B, out, H/down, W/down).
    The Linear keeps PyTorch's default initialisation (SPEC names no other).
    """

    def __init__(self, in_channels: int, out_channels: int, style_size: int, down: int = 1):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.style_projection = nn.Linear(style_size, in_channels)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.down = down
        self.norm = BatchNorm2d(out_channels)
        self.activation = nn.LeakyReLU(LEAKY_RELU_SLOPE)

    def forward(self, inputs: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        batch_size, _, height, width = inputs.shape
        assert_shape(inputs, (None, self.in_channels, None, None), "ModConv inputs")
        assert_shape(style, (batch_size, self.style_projection.in_features), "ModConv style")
        weights = modulated_weights(self.weight, self.style_projection(style))  # (B, out, in, 3, 3)
        weights = weights.reshape(batch_size * self.out_channels, self.in_channels, 3, 3)
        if self.down != 1:  # conv → avgpool as one strided convolution (see Conv2d)
            weights = pooled_kernel(weights, self.down)
        outputs = F.conv2d(inputs.reshape(1, batch_size * self.in_channels, height, width), weights,
                           padding=1, stride=self.down, groups=batch_size)
        outputs = outputs.reshape(batch_size, self.out_channels, outputs.shape[-2], outputs.shape[-1])
        return self.activation(self.norm(outputs))


class ConvLSTM(nn.Module):
    """Convolutional LSTM cell at a fixed resolution with a learnable initial state.

    The gates i, f, o, g come from one conv3×3 (bias) with 4·out outputs over
    concat[inputs, h_prev]; c = f·c + i·g, h = o·tanh(c). The initial h₀, c₀ (out, H, W)
    are parameters initialised to zero. The cell is functional: the caller starts every
    sequence from `initial_state(batch_size)`, so no state survives between sequences.
    """

    def __init__(self, in_channels: int, out_channels: int, resolution: Tuple[int, int]):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = tuple(resolution)
        self.gates = Conv2d(in_channels + out_channels, 4 * out_channels, 3, padding=1)
        self.initial_hidden = nn.Parameter(torch.zeros(out_channels, *self.resolution))
        self.initial_cell = nn.Parameter(torch.zeros(out_channels, *self.resolution))

    def initial_state(self, batch_size: int) -> ConvLSTMState:
        """(h₀, c₀) broadcast to the batch: each (B, out, H, W), differentiable w.r.t. the parameters."""
        shape = (batch_size, self.out_channels, *self.resolution)
        return self.initial_hidden.expand(shape), self.initial_cell.expand(shape)

    def forward(self, inputs: torch.Tensor, state: ConvLSTMState) -> ConvLSTMState:
        """inputs (B, in, H, W), state (h, c) each (B, out, H, W) → the new (h, c)."""
        hidden, cell = state
        assert_shape(inputs, (hidden.shape[0], self.in_channels, *self.resolution), "ConvLSTM inputs")
        input_gate, forget_gate, output_gate, candidate = self.gates(torch.cat([inputs, hidden], dim=1)).chunk(4, dim=1)
        cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(input_gate) * torch.tanh(candidate)
        hidden = torch.sigmoid(output_gate) * torch.tanh(cell)
        return hidden, cell

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, resolution={self.resolution}"
