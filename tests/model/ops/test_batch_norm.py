"""The channels-last BatchNorm backward (model/ops/batch_norm.py) against nn.BatchNorm2d: outputs, running
statistics and gradients, in float32 and against float64."""
import pytest
import torch
from torch import nn

import model.ops.batch_norm as fast
from model.blocks import BatchNorm2d, Res, use_cpu_kernels

torch.set_num_threads(1)


@pytest.fixture
def calls(monkeypatch, record_calls):
    """The calls of the channels-last path, with its size threshold lowered so that small test tensors take it."""
    monkeypatch.setattr(fast, "BATCH_NORM_MIN_POSITIONS", 1)
    monkeypatch.setattr(fast, "BATCH_NORM_MIN_THREADS", 1)  # these tests run on one thread
    return record_calls(fast.BatchNormChannelsLast)


def _pair(channels, momentum=0.1):
    torch.manual_seed(0)
    layer = BatchNorm2d(channels)
    layer.momentum = momentum
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    use_cpu_kernels(layer, "native")
    reference = nn.BatchNorm2d(channels, momentum=momentum)
    reference.load_state_dict(layer.state_dict())
    return layer, reference


@pytest.mark.parametrize("momentum", [0.1, None])  # None: the cumulative average of the readers' refit
@pytest.mark.parametrize("channels, shape", [(8, (3, 8, 10, 14)), (3, (5, 3, 7, 6))])
def test_the_channels_last_path_is_batch_norm(calls, momentum, channels, shape):
    layer, reference = _pair(channels, momentum)
    for batch in range(2):  # two batches: the running statistics' update twice
        inputs = (torch.randn(*shape) * 2 + 1).contiguous(memory_format=torch.channels_last)
        inputs_a, inputs_b = inputs.clone().requires_grad_(), inputs.clone().requires_grad_()
        actual, expected = layer(inputs_a), reference(inputs_b)
        assert torch.equal(actual, expected)  # PyTorch's own forward kernel
        upstream = torch.randn_like(expected)
        (actual * upstream).sum().backward()
        (expected * upstream).sum().backward()
        assert torch.allclose(inputs_a.grad, inputs_b.grad, atol=1e-5)
        assert inputs_a.grad.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(layer.weight.grad, reference.weight.grad, atol=1e-4)
        assert torch.allclose(layer.bias.grad, reference.bias.grad, atol=1e-4)
    assert len(calls) == 2
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(layer, name), getattr(reference, name)), name


def test_the_gradients_are_as_close_to_float64_as_pytorchs_on_offset_inputs(calls):
    # activations far from 0 with a small spread: computed from the centred inputs, the gradients lose no more
    # to float32 than PyTorch's kernel does (the batch statistics' own rounding bounds both)
    layer, plain = _pair(4)
    inputs = (torch.randn(4, 4, 16, 16) * 0.01 + 100).contiguous(memory_format=torch.channels_last)
    reference = nn.BatchNorm2d(4).double()
    reference.load_state_dict(layer.state_dict())
    upstream = torch.randn(4, 4, 16, 16)
    gradients = []
    for module, dtype in ((layer, torch.float32), (plain, torch.float32), (reference, torch.float64)):
        leaf = inputs.to(dtype).clone().requires_grad_()
        (module(leaf) * upstream.to(dtype)).sum().backward()
        gradients.append((leaf.grad.double(), module.weight.grad.double()))
    assert len(calls) == 1
    (ours, ours_weight), (pytorchs, pytorchs_weight), (exact, exact_weight) = gradients
    assert (ours - exact).abs().max() <= 1.5 * (pytorchs - exact).abs().max()
    assert (ours_weight - exact_weight).abs().max() <= 1.5 * (pytorchs_weight - exact_weight).abs().max() + 1e-6


def test_only_the_gradients_asked_for(calls):
    layer, reference = _pair(8)
    layer.weight.requires_grad_(False)
    inputs = torch.randn(3, 8, 6, 6).contiguous(memory_format=torch.channels_last)  # no gradient for the input
    layer(inputs).sum().backward()
    reference(inputs).sum().backward()
    assert calls and layer.weight.grad is None
    assert torch.allclose(layer.bias.grad, reference.bias.grad, atol=1e-4)


def test_the_path_is_for_narrow_channels_last_float32_training_only(calls):
    narrow = torch.randn(4, 8, 32, 32).contiguous(memory_format=torch.channels_last)
    fast.BATCH_NORM_MIN_POSITIONS = 4096  # the module's values (the fixture restores whatever they were)
    assert fast.applies(narrow)
    fast.BATCH_NORM_MIN_THREADS = 2
    assert not fast.applies(narrow)  # one thread (torch.set_num_threads(1) above): PyTorch's kernel is as fast
    fast.BATCH_NORM_MIN_THREADS = 1
    assert not fast.applies(narrow[:1, :, :16])  # 512 positions
    assert not fast.applies(narrow.contiguous())  # NCHW
    assert not fast.applies(narrow[:, :1].contiguous(memory_format=torch.channels_last))  # 1 channel: NCHW too
    assert not fast.applies(narrow.double())
    assert not fast.applies(torch.randn(4, 16, 32, 32).contiguous(memory_format=torch.channels_last))  # wide
    with torch.no_grad():
        assert not fast.applies(narrow)
    # evaluation mode, and the 'plain' kernels, keep PyTorch's kernel
    layer, _ = _pair(8)
    layer.eval()
    layer(narrow.clone().requires_grad_())
    layer.train()
    use_cpu_kernels(layer, "plain")
    layer(narrow.clone().requires_grad_())
    assert not calls
    use_cpu_kernels(layer, "torch")
    layer(narrow.clone().requires_grad_())
    assert calls


def test_the_blocks_use_it_and_keep_their_parameter_names():
    block = Res(4, 8, down=2)
    norms = [layer for layer in block.modules() if isinstance(layer, nn.BatchNorm2d)]
    assert norms and all(isinstance(layer, BatchNorm2d) for layer in norms)
    assert "residual.2.running_var" in block.state_dict()
    use_cpu_kernels(block, "native")
    assert all(layer.kernels == "native" for layer in norms)
