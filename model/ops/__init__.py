"""How the building blocks' convolutions are computed: one entry point, `conv2d`, and the CPU fast paths.

`conv2d` is "convolution, then avgpool(down)" (SPEC's down-sampling blocks), computed as
`kernels` (`training.cpu_kernels`; `model.blocks.use_cpu_kernels` sets it on the layers) allows:

- 'plain' — PyTorch's own kernels: with down > 1 one convolution of stride `down` with the pooled
  kernel (`pooled_kernel`), or avgpool first for a 1×1 convolution; the same function reordered,
  on every device.
- 'torch' and 'native' — on CPU tensors, the two fast paths of this package where their layer
  rules accept the layer, each the same function as the plain path (tested against it):
  `winograd.py`, wide 3×3 convolutions by Winograd F(4×4, 3×3), its tile transforms as PyTorch
  operations ('torch') or compiled from `winograd_transforms.c` on first use ('native'; 'torch'
  with one warning where no C compiler is found); and `nchw_weight_gradient.py`, the weight
  gradient of wide channels-last layers at half resolution computed from NCHW copies. Other
  layers, devices and dtypes take the plain path.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from model.ops import nchw_weight_gradient, winograd
from model.ops.winograd import FrozenKernelTiles, native_transforms
from utils.config import CPU_KERNELS

__all__ = ["CPU_KERNELS", "FrozenKernelTiles", "conv2d", "native_transforms", "pooled_kernel", "winograd_eligible"]


def pooled_kernel(weight: torch.Tensor, factor: int) -> torch.Tensor:
    """The kernel of "conv with `weight`, then avgpool(factor)" as one convolution of stride `factor`.

    weight (out, in, k, k) → (out, in, k+factor−1, k+factor−1): the full convolution of each k×k
    kernel with a factor×factor box of 1/factor². Differentiable in `weight`.
    """
    out_channels, in_channels, height, width = weight.shape
    box = torch.full((1, 1, factor, factor), 1.0 / factor ** 2, dtype=weight.dtype, device=weight.device)
    padded = F.pad(weight.reshape(out_channels * in_channels, 1, height, width), (factor - 1,) * 4)
    return F.conv2d(padded, box).reshape(out_channels, in_channels, height + factor - 1, width + factor - 1)


def winograd_eligible(weight_shape: Sequence[int], padding: Sequence[int], down: int) -> bool:
    """Whether `conv2d` with 'torch' or 'native' runs this layer by Winograd on CPU float inputs
    (`winograd.eligible`)."""
    return winograd.eligible(weight_shape, tuple(padding), down)


def _convolve(inputs: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int,
              padding: Sequence[int], fast: bool) -> torch.Tensor:
    if fast and nchw_weight_gradient.applies(inputs, weight, stride, tuple(padding)):
        return nchw_weight_gradient.nchw_weight_gradient_conv2d(inputs, weight, bias, stride, padding)
    return F.conv2d(inputs, weight, bias, stride, tuple(padding))


def conv2d(inputs: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           padding: Sequence[int] = (0, 0), down: int = 1, kernels: str = "plain",
           frozen_kernel_tiles: Optional[FrozenKernelTiles] = None) -> torch.Tensor:
    """`F.avg_pool2d(F.conv2d(inputs, weight, bias, padding=padding), down)` by the path `kernels` allows.

    inputs (B, C, H, W), weight (K, C, k, k), bias (K) or None → (B, K, ⌊H'/down⌋, ⌊W'/down⌋), H', W' the
    convolution's output size; channels-last inputs give channels-last outputs. `kernels`: one of
    CPU_KERNELS (see the module's docstring). `frozen_kernel_tiles`: the layer's cache of Winograd-transformed
    kernels, used while its weight needs no gradient (VGG19's).
    """
    if kernels not in CPU_KERNELS:
        raise ValueError(f"conv2d: kernels must be one of {CPU_KERNELS}, got {kernels!r}")
    fast = kernels != "plain"
    if fast and winograd.applies(inputs) and winograd_eligible(weight.shape, padding, down):
        tiles = None if frozen_kernel_tiles is None else frozen_kernel_tiles.get(weight)
        outputs = winograd.winograd_conv3x3(inputs, weight, bias, pool=down == 2, kernel_tiles=tiles,
                                            native=kernels == "native")
        return outputs if inputs.is_contiguous(memory_format=torch.channels_last) else outputs.contiguous()
    if down == 1:
        return _convolve(inputs, weight, bias, 1, padding, fast)
    if weight.shape[-2:] == (1, 1) and tuple(padding) == (0, 0):  # both linear per pixel: pooling first is 4× less
        return _convolve(F.avg_pool2d(inputs, down), weight, bias, 1, padding, fast)
    kernel = pooled_kernel(weight, down)
    if inputs.is_contiguous(memory_format=torch.channels_last) and not inputs.is_contiguous():
        kernel = kernel.contiguous(memory_format=torch.channels_last)
    return _convolve(inputs, kernel, bias, down, padding, fast)
