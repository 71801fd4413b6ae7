"""BatchNorm2d in training mode on channels-last CPU tensors, with the input gradient computed by wide-row tensor
operations.

PyTorch's CPU kernel for the channels-last BatchNorm backward is slow on the narrow full-resolution layers of the
CPU configs (8 channels at 96×128), and slower on two threads than on one (28 ms against 11 ms for 24 × 8 × 96 ×
128): in a `configs/wsprites-c2.yaml` training step on two threads it took 19 % of the step, almost as long as every
convolution's backward together (README "Benchmarks"). `BatchNormChannelsLast` runs PyTorch's own forward kernel
(same outputs, same running statistics) and computes the backward from the textbook formula on an (M/k, k·C) view of
the channels-last tensors (M = N·H·W positions, k·C about 256 wide), so that every elementwise pass is a long
contiguous row and both per-channel sums are column sums of it:

    x̂ = (x − μ)·σ⁻¹,  ∂L/∂β = Σ g,  ∂L/∂γ = Σ g·x̂,  ∂L/∂x = γσ⁻¹·(g − Σ g / M − x̂·Σ g·x̂ / M)

(sums over the M positions of each channel). It is the same function as `F.batch_norm`; its gradients agree with
PyTorch's to float rounding and, computed from the centred x, are no further from float64's than PyTorch's float32
ones, also for inputs far from 0 (tests/model/ops/test_batch_norm.py). `model.blocks.BatchNorm2d` takes it with
`training.cpu_kernels` 'torch' or 'native', where `applies` says so.
"""
from __future__ import annotations

from typing import Optional

import torch

# The layers that take this path: at most this many channels (wider ones are as fast in PyTorch's kernel; README
# "Benchmarks") and at least this many positions N·H·W (smaller ones cost less than the Python around them); and
# only with at least this many threads (on one, PyTorch's kernel is as fast: the step took 4 % longer with this path).
BATCH_NORM_MAX_CHANNELS = 8
BATCH_NORM_MIN_POSITIONS = 4096
BATCH_NORM_MIN_THREADS = 2
ROW_WIDTH = 256  # the width k·C of the rows the backward works on


def applies(inputs: torch.Tensor) -> bool:
    """Whether `batch_norm_channels_last` runs a training-mode BatchNorm2d of `inputs`: channels-last float32 CPU
    tensors (not plain NCHW ones) with at most `BATCH_NORM_MAX_CHANNELS` channels and at least
    `BATCH_NORM_MIN_POSITIONS` positions, gradients enabled, `BATCH_NORM_MIN_THREADS` threads or more, not under
    torch.compile."""
    return (inputs.device.type == "cpu" and inputs.dtype == torch.float32 and inputs.dim() == 4
            and torch.get_num_threads() >= BATCH_NORM_MIN_THREADS
            and torch.is_grad_enabled() and inputs.shape[1] <= BATCH_NORM_MAX_CHANNELS
            and inputs.shape[0] * inputs.shape[2] * inputs.shape[3] >= BATCH_NORM_MIN_POSITIONS
            and inputs.is_contiguous(memory_format=torch.channels_last) and not inputs.is_contiguous()
            and not torch.compiler.is_compiling())


def _rows_per_position(positions: int, channels: int) -> int:
    """k: the most positions per row, with k·C ≤ ROW_WIDTH and k dividing the number of positions."""
    k = max(1, ROW_WIDTH // channels)
    while positions % k:
        k -= 1
    return k


def _wide_rows(tensor: torch.Tensor, k: int) -> torch.Tensor:
    """A channels-last (N, C, H, W) tensor as its (N·H·W/k, k·C) view: k consecutive positions per row."""
    batch_size, channels, height, width = tensor.shape
    return tensor.permute(0, 2, 3, 1).reshape(batch_size * height * width // k, k * channels)


def _channel_sums(rows: torch.Tensor, k: int, channels: int) -> torch.Tensor:
    return rows.sum(0).view(k, channels).sum(0)


class BatchNormChannelsLast(torch.autograd.Function):
    """`F.batch_norm(inputs, running_mean, running_var, weight, bias, training=True, momentum, eps)` for channels-last
    CPU inputs, with the backward above. Updates the running statistics in place, as F.batch_norm does."""

    @staticmethod
    def forward(ctx, inputs, weight, bias, running_mean, running_var, momentum, eps):  # type: ignore[override]
        outputs, mean, inverse_std = torch.native_batch_norm(inputs, weight, bias, running_mean, running_var, True,
                                                             momentum, eps)
        ctx.save_for_backward(inputs, weight, mean, inverse_std)
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        inputs, weight, mean, inverse_std = ctx.saved_tensors
        batch_size, channels, height, width = inputs.shape
        positions = batch_size * height * width
        k = _rows_per_position(positions, channels)
        gradient = _wide_rows(grad_output.contiguous(memory_format=torch.channels_last), k)
        centred = _wide_rows(inputs, k) - mean.repeat(k)
        sum_gradient = _channel_sums(gradient, k, channels)                   # Σ g
        product = gradient * centred
        sum_gradient_normalised = _channel_sums(product, k, channels) * inverse_std  # Σ g·x̂
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_input = grad_weight = grad_bias = None
        if need_input:
            scale = inverse_std if weight is None else inverse_std * weight  # γσ⁻¹
            torch.mul(gradient, scale.repeat(k), out=product)
            product.addcmul_(centred, (scale * inverse_std * sum_gradient_normalised / positions).repeat(k), value=-1)
            product.sub_((scale * sum_gradient / positions).repeat(k))
            grad_input = product.view(batch_size, height, width, channels).permute(0, 3, 1, 2)
        if need_weight and weight is not None:
            grad_weight = sum_gradient_normalised
        if need_bias:
            grad_bias = sum_gradient
        return grad_input, grad_weight, grad_bias, None, None, None, None


def batch_norm_channels_last(inputs: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                             running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                             momentum: float, eps: float) -> torch.Tensor:
    """Training-mode batch normalisation of channels-last CPU `inputs` (N, C, H, W) over (N, H, W), as
    `F.batch_norm(..., training=True)`; see the module's docstring."""
    return BatchNormChannelsLast.apply(inputs, weight, bias, running_mean, running_var, momentum, eps)
