"""The NCHW weight gradient of channels-last CPU convolutions against F.conv2d, values and gradients."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import model.ops.nchw_weight_gradient as nchw
from model.blocks import Conv2d, use_cpu_kernels

torch.set_num_threads(1)


@pytest.fixture
def calls(monkeypatch, record_calls):
    """The calls of the NCHW path, with its size thresholds lowered so that small test tensors take it."""
    monkeypatch.setattr(nchw, "NCHW_WEIGHT_GRADIENT_MIN_PIXELS", 1)
    monkeypatch.setattr(nchw, "NCHW_WEIGHT_GRADIENT_MIN_CHANNELS", 1)
    return record_calls(nchw.ChannelsLastConvolution)


@pytest.mark.parametrize("kernels", ["torch", "native"])
@pytest.mark.parametrize("down, kernel_size, padding", [(1, 3, 1), (2, 3, 1), (2, 1, 0)])
def test_channels_last_cpu_training_path_matches_the_plain_convolution(calls, kernels, down, kernel_size, padding):
    # float32 channels-last inputs with gradients take the NCHW-weight-gradient path
    torch.manual_seed(0)
    layer = Conv2d(5, 7, kernel_size, padding=padding, bias=True, down=down).to(memory_format=torch.channels_last)
    use_cpu_kernels(layer, kernels)
    reference = nn.Conv2d(5, 7, kernel_size, padding=padding, bias=True)
    reference.load_state_dict(layer.state_dict())
    inputs = torch.randn(3, 5, 10, 14).contiguous(memory_format=torch.channels_last)
    inputs_a, inputs_b = inputs.clone().requires_grad_(), inputs.clone().requires_grad_()
    actual, expected = layer(inputs_a), F.avg_pool2d(reference(inputs_b), down)
    assert calls, "the channels-last training path was not taken"
    assert torch.allclose(actual, expected, atol=1e-5)
    upstream = torch.randn_like(expected)
    (actual * upstream).sum().backward()
    (expected * upstream).sum().backward()
    assert torch.allclose(inputs_a.grad, inputs_b.grad, atol=1e-4)
    assert torch.allclose(layer.weight.grad, reference.weight.grad, atol=1e-4)
    assert layer.weight.grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(layer.bias.grad, reference.bias.grad, atol=1e-4)
    # without gradients (evaluation), and with the 'plain' kernels, PyTorch's convolution runs
    calls.clear()
    with torch.no_grad():
        layer(inputs)
    use_cpu_kernels(layer, "plain")
    layer(inputs.clone().requires_grad_())
    assert not calls


def test_the_path_is_for_wide_channels_last_float32_training_only():
    weight = torch.randn(8, 128, 3, 3, requires_grad=True)
    wide = torch.randn(1, 128, 48, 64).contiguous(memory_format=torch.channels_last)
    assert nchw.applies(wide, weight, 1, (1, 1))
    assert not nchw.applies(wide, weight, 2, (1, 1))  # 24×32 output positions: fewer than 3072
    assert not nchw.applies(wide.contiguous(), weight, 1, (1, 1))  # NCHW inputs
    assert not nchw.applies(wide.double(), weight.double(), 1, (1, 1))
    assert not nchw.applies(wide, weight.detach(), 1, (1, 1))  # a frozen weight
    narrow = torch.randn(1, 127, 48, 64).contiguous(memory_format=torch.channels_last)
    assert not nchw.applies(narrow, weight[:, :127], 1, (1, 1))  # 127 input channels
    with torch.no_grad():
        assert not nchw.applies(wide, weight, 1, (1, 1))
