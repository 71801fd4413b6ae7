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

from model.winograd import kernel_tiles_of, winograd_conv3x3

LEAKY_RELU_SLOPE = 0.2
DEMODULATION_EPSILON = 1e-8  # StyleGAN2's ε in w / √(Σ w² + ε)
LINEAR_INTERPOLATION_MODES = ("linear", "bilinear", "bicubic", "trilinear")
# Conv2d computes CPU channels-last weight gradients from NCHW copies for layers with at least this many
# input channels and output positions (48×64): measured 2–3× faster there (256→256 at 48×64: 0.74–1.1 s
# instead of 1.6–2.3 s); with fewer channels or positions the copies cost about what the layout saves.
NCHW_WEIGHT_GRADIENT_MIN_CHANNELS = 128
NCHW_WEIGHT_GRADIENT_MIN_PIXELS = 3072
# `enable_winograd` switches 3×3 convolutions with at least this many input and output channels to
# Winograd F(4×4, 3×3) (model/winograd.py), and conv3×3 → avgpool(2) ones with at least the second number.
# Measured per layer on the 2-core reference CPU, forward + backward against this module's direct path
# (batch 24 of W-Sprites' sizes): 256→256 at 24×32 2.4× faster, at 48×64 1.9×, 256→64 at 48×64 2.0×,
# 64→64 at 96×128 1.8×, VGG19's 512→512 at 12×16 2.2× (batch 20), pooled 256→256 at 48×64 1.7×; with
# 32 channels the transforms cost more than the products saved (32→32 at 96×128: 0.5×), and the pooled
# 64→256 one is 0.9× (the direct strided kernel does 16 taps at a quarter of the positions).
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_POOLED_MIN_CHANNELS = 128

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


def pooled_kernel(weight: torch.Tensor, factor: int) -> torch.Tensor:
    """The kernel of "conv with `weight`, then avgpool(factor)" as one convolution of stride `factor`.

    weight (out, in, k, k) → (out, in, k+factor−1, k+factor−1): the full convolution of each k×k
    kernel with a factor×factor box of 1/factor². Differentiable in `weight`.
    """
    out_channels, in_channels, height, width = weight.shape
    box = torch.full((1, 1, factor, factor), 1.0 / factor ** 2, dtype=weight.dtype, device=weight.device)
    padded = F.pad(weight.reshape(out_channels * in_channels, 1, height, width), (factor - 1,) * 4)
    return F.conv2d(padded, box).reshape(out_channels, in_channels, height + factor - 1, width + factor - 1)


def _contiguous_weight_gradient(inputs: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `Conv2d` computes this convolution's weight gradient from NCHW copies (see there)."""
    return (inputs.device.type == "cpu" and inputs.dtype == torch.float32 and inputs.dim() == 4
            and torch.is_grad_enabled() and weight.requires_grad and not inputs.is_contiguous()
            and inputs.is_contiguous(memory_format=torch.channels_last) and not torch.compiler.is_compiling())


class _ChannelsLastConvolution(torch.autograd.Function):
    """F.conv2d on channels-last CPU tensors whose weight gradient is computed in NCHW layout.

    oneDNN's channels-last kernels win the forward pass and the input gradient on this CPU
    (AVX2), but its channels-last weight-gradient kernel is 2–3× slower than the NCHW one for
    wide layers at half frame resolution (README "Benchmarks"); copying the input and the
    output gradient to NCHW costs far less than that there. The
    arithmetic is the same convolution_backward: results agree to float rounding.
    """

    @staticmethod
    def forward(ctx, inputs, weight, bias, stride, padding, groups):  # type: ignore[override]
        ctx.save_for_backward(inputs, weight)
        ctx.configuration = (list(stride), list(padding), groups, bias is not None)
        return F.conv2d(inputs, weight, bias, stride, padding, 1, groups)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        inputs, weight = ctx.saved_tensors
        stride, padding, groups, has_bias = ctx.configuration
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_input = grad_weight = grad_bias = None
        if need_input:
            grad_input = torch.ops.aten.convolution_backward(
                grad_output, inputs, weight, None, stride, padding, [1, 1], False, [0, 0], groups,
                [True, False, False])[0]
        if need_weight or need_bias:
            _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad_output.contiguous(), inputs.contiguous(), weight.contiguous(),
                [weight.shape[0]] if has_bias else None, stride, padding, [1, 1], False, [0, 0], groups,
                [False, need_weight, need_bias and has_bias])
            if grad_weight is not None:
                grad_weight = grad_weight.contiguous(memory_format=torch.channels_last)
        return grad_input, grad_weight, grad_bias, None, None, None


class Conv2d(nn.Conv2d):
    """nn.Conv2d, optionally followed by avgpool(down), computed the cheap way (same parameters and function).

    - down > 1, k×k with k > 1: one convolution of stride `down` with the (k+down−1)² kernel
      `pooled_kernel(weight, down)` instead of a full-resolution convolution and a pooling —
      for 3×3 and down 2, 16 taps at a quarter of the positions instead of 9 at all of them:
      2.25× less work, forward and backward;
    - down > 1, 1×1: avgpool first, then the convolution (both are linear per pixel): 4× less;
    - training on the CPU in channels-last: the weight gradient is computed from NCHW copies
      for layers with at least `NCHW_WEIGHT_GRADIENT_MIN_CHANNELS` input channels and
      `NCHW_WEIGHT_GRADIENT_MIN_PIXELS` output positions (`_ChannelsLastConvolution`).
    - with `winograd` set (by `enable_winograd`, training.winograd in the config): a 3×3, padding 1
      convolution on CPU floats, and its avgpool(2), by Winograd F(4×4, 3×3) (model/winograd.py).
    Results agree with nn.Conv2d → nn.AvgPool2d to float rounding (tests/model/test_model_blocks.py).
    (B, in, H, W) → (B, out, ⌊H'/down⌋, ⌊W'/down⌋), H', W' the plain convolution's output size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, bias: bool = True,
                 down: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        self.down = down
        self.winograd = False
        self._frozen_kernel_tiles: Optional[Tuple[Tuple[int, int, torch.dtype], Tuple[torch.Tensor, ...]]] = None

    def winograd_eligible(self) -> bool:
        """Whether `enable_winograd` switches this layer: 3×3, padding 1, avgpool 1 or 2, wide enough."""
        if self.kernel_size != (3, 3) or self.padding != (1, 1) or self.stride != (1, 1) or self.groups != 1 \
                or self.dilation != (1, 1) or self.down not in (1, 2):
            return False
        minimum = WINOGRAD_MIN_CHANNELS if self.down == 1 else WINOGRAD_POOLED_MIN_CHANNELS
        return min(self.in_channels, self.out_channels) >= minimum

    def _kernel_tiles_if_frozen(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """`kernel_tiles_of(weight)` for a weight without gradient (VGG19's), kept until the weight changes."""
        if self.weight.requires_grad:
            return None
        key = (self.weight._version, self.weight.data_ptr(), self.weight.dtype)
        if self._frozen_kernel_tiles is None or self._frozen_kernel_tiles[0] != key:
            self._frozen_kernel_tiles = (key, kernel_tiles_of(self.weight))
        return self._frozen_kernel_tiles[1]

    def _winograd_applies(self, inputs: torch.Tensor) -> bool:
        return (self.winograd and inputs.device.type == "cpu" and inputs.dtype in (torch.float32, torch.float64)
                and not torch.compiler.is_compiling())

    def _convolve(self, inputs: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
        output_pixels = ((inputs.shape[-2] + 2 * self.padding[0] - weight.shape[-2]) // stride + 1) * (
            (inputs.shape[-1] + 2 * self.padding[1] - weight.shape[-1]) // stride + 1)
        if (output_pixels >= NCHW_WEIGHT_GRADIENT_MIN_PIXELS and inputs.shape[1] >= NCHW_WEIGHT_GRADIENT_MIN_CHANNELS
                and _contiguous_weight_gradient(inputs, self.weight)):
            return _ChannelsLastConvolution.apply(inputs, weight, self.bias, (stride, stride), self.padding,
                                                  self.groups)
        return F.conv2d(inputs, weight, self.bias, stride, self.padding, 1, self.groups)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self._winograd_applies(inputs):
            outputs = winograd_conv3x3(inputs, self.weight, self.bias, pool=self.down == 2,
                                       kernel_tiles=self._kernel_tiles_if_frozen())
            return outputs if inputs.is_contiguous(memory_format=torch.channels_last) else outputs.contiguous()
        if self.down == 1:
            return self._convolve(inputs, self.weight, 1)
        if self.kernel_size == (1, 1) and self.padding == (0, 0):
            return self._convolve(F.avg_pool2d(inputs, self.down), self.weight, 1)
        kernel = pooled_kernel(self.weight, self.down)
        if inputs.is_contiguous(memory_format=torch.channels_last) and not inputs.is_contiguous():
            kernel = kernel.contiguous(memory_format=torch.channels_last)
        return self._convolve(inputs, kernel, self.down)

    def extra_repr(self) -> str:
        return (super().extra_repr() + (f", then avgpool({self.down})" if self.down != 1 else "")
                + (", winograd" if self.winograd else ""))


def enable_winograd(module: nn.Module, enabled: bool = True) -> int:
    """Set `Conv2d.winograd` on every eligible layer of `module` (see `Conv2d.winograd_eligible`);
    returns how many layers it set. Only CPU float inputs use it; elsewhere the layers stay direct."""
    count = 0
    for layer in module.modules():
        if isinstance(layer, Conv2d) and layer.winograd_eligible():
            layer.winograd = enabled
            count += 1
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
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(LEAKY_RELU_SLOPE),
            Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        if down != 1 or in_channels != out_channels:
            self.skip = nn.Sequential(
                Conv2d(in_channels, out_channels, 1, bias=False, down=down),
                nn.Identity(),  # the avgpool is inside Conv2d
                nn.BatchNorm2d(out_channels),
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
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(LEAKY_RELU_SLOPE),
        )


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
            nn.BatchNorm2d(out_channels),
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
        self.norm = nn.BatchNorm2d(out_channels)
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
