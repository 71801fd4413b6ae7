"""The weight gradient of a channels-last CPU convolution, computed from NCHW copies.

oneDNN's channels-last kernels win the forward pass and the input gradient on an AVX2 CPU, but
its channels-last weight-gradient kernel is slower than the NCHW one for wide layers at half
frame resolution (the figures are in README "Benchmarks"); copying the input and the output
gradient to NCHW costs less than that there. `ChannelsLastConvolution` is F.conv2d whose weight
(and bias) gradient is the same `aten.convolution_backward` on those copies, so results agree
with F.conv2d to float rounding (tests/model/ops/test_nchw_weight_gradient.py). `model.ops.conv2d`
takes it, with `training.cpu_kernels` 'torch' or 'native', where `applies` says so.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

# The smallest layers that take this path: input channels, and output positions (48×64). Below them the copies
# cost about what the layout saves (README "Benchmarks").
NCHW_WEIGHT_GRADIENT_MIN_CHANNELS = 128
NCHW_WEIGHT_GRADIENT_MIN_PIXELS = 3072


def applies(inputs: torch.Tensor, weight: torch.Tensor, stride: int, padding: Tuple[int, int]) -> bool:
    """Whether `conv2d` of these arguments computes its weight gradient from NCHW copies: training (a weight
    that needs a gradient) on channels-last float32 CPU inputs, not under torch.compile, with at least
    `NCHW_WEIGHT_GRADIENT_MIN_CHANNELS` input channels and `NCHW_WEIGHT_GRADIENT_MIN_PIXELS` output positions."""
    if not (inputs.device.type == "cpu" and inputs.dtype == torch.float32 and inputs.dim() == 4
            and torch.is_grad_enabled() and weight.requires_grad and not inputs.is_contiguous()
            and inputs.is_contiguous(memory_format=torch.channels_last) and not torch.compiler.is_compiling()):
        return False
    output_pixels = ((inputs.shape[-2] + 2 * padding[0] - weight.shape[-2]) // stride + 1) * (
        (inputs.shape[-1] + 2 * padding[1] - weight.shape[-1]) // stride + 1)
    return inputs.shape[1] >= NCHW_WEIGHT_GRADIENT_MIN_CHANNELS and output_pixels >= NCHW_WEIGHT_GRADIENT_MIN_PIXELS


class ChannelsLastConvolution(torch.autograd.Function):
    """F.conv2d on channels-last CPU tensors whose weight gradient is computed in NCHW layout."""

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


def nchw_weight_gradient_conv2d(inputs: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int,
                                padding: Sequence[int], groups: int = 1) -> torch.Tensor:
    """`F.conv2d(inputs, weight, bias, stride, padding, groups=groups)`, its weight gradient from NCHW copies."""
    return ChannelsLastConvolution.apply(inputs, weight, bias, (stride, stride), tuple(padding), groups)
