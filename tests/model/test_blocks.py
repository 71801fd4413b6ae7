"""The building blocks of SPEC §2 against hand computations."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.blocks import (
    Conv2d,
    ConvLSTM,
    Final,
    Interpolate,
    ModConv,
    Res,
    Same,
    Up,
    batch_norm_to_group_norm,
    group_norm_groups,
    modulated_weights,
    pooled_kernel,
    tile_and_concatenate,
)

torch.set_num_threads(1)


def test_res_same_up_final_shapes_and_skip():
    inputs = torch.randn(2, 4, 8, 12)
    assert Res(4, 6, down=2)(inputs).shape == (2, 6, 4, 6)
    assert isinstance(Res(4, 4).skip, nn.Identity)
    assert isinstance(Res(4, 4, down=2).skip, nn.Sequential)
    assert Same(4, 5, down=2)(inputs).shape == (2, 5, 4, 6)
    assert Up(4, 3)(inputs).shape == (2, 3, 16, 24)
    final = Final(4, 3, 7)(inputs * 100)
    assert final.shape == (2, 3, 8, 12) and final.abs().max() <= 1
    # Convolutions without bias where SPEC says so; Final has one.
    assert Res(4, 6).residual[0].bias is None and Same(4, 5)[0].bias is None and Final(4, 3, 3)[0].bias is not None


@pytest.mark.parametrize("kernel_size, padding, down, bias, size", [
    (3, 1, 2, False, (8, 12)), (3, 1, 2, True, (9, 7)), (1, 0, 2, False, (8, 12)), (1, 0, 2, True, (7, 9)),
    (3, 1, 3, False, (9, 12)), (5, 2, 2, False, (10, 6)), (3, 1, 1, False, (5, 6))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_is_conv_then_avgpool_forward_and_backward(kernel_size, padding, down, bias, size, channels_last):
    torch.manual_seed(0)
    layer = Conv2d(4, 6, kernel_size, padding=padding, bias=bias, down=down).double()
    reference = nn.Conv2d(4, 6, kernel_size, padding=padding, bias=bias).double()
    reference.load_state_dict(layer.state_dict())
    inputs = torch.randn(2, 4, *size, dtype=torch.float64)
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    inputs_a, inputs_b = inputs.clone().requires_grad_(), inputs.clone().requires_grad_()
    actual = layer(inputs_a)
    expected = F.avg_pool2d(reference(inputs_b), down)
    assert actual.shape == expected.shape and torch.allclose(actual, expected, atol=1e-12)
    upstream = torch.randn_like(expected)
    (actual * upstream).sum().backward()
    (expected * upstream).sum().backward()
    assert torch.allclose(inputs_a.grad, inputs_b.grad, atol=1e-12)
    assert torch.allclose(layer.weight.grad, reference.weight.grad, atol=1e-12)
    if bias:
        assert torch.allclose(layer.bias.grad, reference.bias.grad, atol=1e-12)


def test_pooled_kernel_of_a_single_tap_is_a_box():
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 1, 1] = 1.0  # the identity 3×3 kernel: conv then avgpool(2) = avgpool(2) itself
    kernel = pooled_kernel(weight, 2)
    expected = torch.zeros(4, 4)
    expected[1:3, 1:3] = 0.25
    assert torch.equal(kernel[0, 0], expected)


def test_blocks_keep_the_parameter_names_of_the_two_step_form():
    # Checkpoints name residual.0 (conv), residual.2 (BN), skip.0 (conv 1×1), skip.2 (BN); Same: 0 and 2.
    names = set(Res(4, 6, down=2).state_dict())
    assert {"residual.0.weight", "residual.2.weight", "residual.4.weight", "residual.5.weight", "skip.0.weight",
            "skip.2.weight"} <= names
    assert {"0.weight", "2.weight", "2.running_mean"} <= set(Same(4, 5, down=2).state_dict())


def test_up_interpolates_with_aligned_corners_first_or_last():
    ramp = torch.tensor([[[[0.0, 3.0]]]])  # (1, 1, 1, 2)
    resized = Interpolate(2, "bilinear")(ramp)
    # align_corners=True keeps the end points: 0, 1, 2, 3 (align_corners=False would give 0, 0.75, 2.25, 3).
    assert torch.allclose(resized[0, 0, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]))
    early, late = Up(2, 2), Up(2, 2, late=True)
    assert isinstance(early[0], Interpolate) and isinstance(early[1], nn.Conv2d)
    assert isinstance(late[-1], Interpolate) and isinstance(late[0], nn.Conv2d)


def test_tile_and_concatenate_tiles_vectors_and_skips_none():
    maps = torch.randn(2, 3, 4, 5)
    vector = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    combined = tile_and_concatenate(maps, vector, None)
    assert combined.shape == (2, 5, 4, 5)
    assert torch.equal(combined[:, :3], maps)
    assert torch.equal(combined[1, 4], torch.full((4, 5), 4.0))


def test_modconv_with_constant_style_is_a_plain_conv_with_the_demodulated_weight():
    torch.manual_seed(0)
    layer = ModConv(3, 5, style_size=4).eval()
    style = torch.randn(1, 4)
    inputs = torch.randn(2, 3, 6, 7)
    scales = layer.style_projection(style)[0]  # (in,)
    weight = layer.weight * scales[None, :, None, None]
    weight = weight / torch.sqrt(weight.pow(2).sum(dim=(1, 2, 3), keepdim=True))
    expected = layer.activation(layer.norm(F.conv2d(inputs, weight, padding=1)))
    actual = layer(inputs, style.expand(2, 4))
    assert torch.allclose(actual, expected, atol=1e-5)
    # Demodulated: every output channel's weight has unit L2 norm, whatever the style's scale.
    norms = modulated_weights(layer.weight, 10 * layer.style_projection(style)).pow(2).sum(dim=(2, 3, 4))
    assert torch.allclose(norms, torch.ones(1, 5), atol=1e-5)


def test_modconv_batches_samples_with_their_own_styles():
    torch.manual_seed(0)
    layer = ModConv(3, 4, style_size=2, down=2).eval()
    inputs, styles = torch.randn(3, 3, 8, 8), torch.randn(3, 2)
    batched = layer(inputs, styles)
    assert batched.shape == (3, 4, 4, 4)
    separately = torch.cat([layer(inputs[i:i + 1], styles[i:i + 1]) for i in range(3)])
    assert torch.allclose(batched, separately, atol=1e-5)
    # down 2 is the full-resolution modulated convolution followed by avgpool(2)
    full = ModConv(3, 4, style_size=2, down=1).eval()
    full.load_state_dict(layer.state_dict())
    weights = modulated_weights(full.weight, full.style_projection(styles))
    expected = torch.cat([F.avg_pool2d(F.conv2d(inputs[i:i + 1], weights[i], padding=1), 2) for i in range(3)])
    assert torch.allclose(batched, layer.activation(layer.norm(expected)), atol=1e-5)


def test_convlstm_cell_equations_and_learnable_zero_initial_state():
    torch.manual_seed(0)
    cell = ConvLSTM(2, 3, (4, 5))
    assert torch.equal(cell.initial_hidden, torch.zeros(3, 4, 5)) and cell.initial_hidden.requires_grad
    inputs = torch.randn(2, 2, 4, 5)
    previous_hidden, previous_cell = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    hidden, cell_state = cell(inputs, (previous_hidden, previous_cell))
    gates = F.conv2d(torch.cat([inputs, previous_hidden], 1), cell.gates.weight, cell.gates.bias, padding=1)
    i, f, o, g = gates.chunk(4, dim=1)
    expected_cell = torch.sigmoid(f) * previous_cell + torch.sigmoid(i) * torch.tanh(g)
    assert torch.allclose(cell_state, expected_cell, atol=1e-6)
    assert torch.allclose(hidden, torch.sigmoid(o) * torch.tanh(expected_cell), atol=1e-6)

    # The initial state is a parameter: a loss after a step from it reaches h0 and c0.
    hidden, cell_state = cell(inputs, cell.initial_state(2))
    (hidden.sum() + cell_state.sum()).backward()
    assert cell.initial_hidden.grad is not None and cell.initial_hidden.grad.abs().sum() > 0
    assert cell.initial_cell.grad is not None and cell.initial_cell.grad.abs().sum() > 0


def test_convlstm_rejects_inputs_at_another_resolution():
    cell = ConvLSTM(2, 3, (4, 5))
    with pytest.raises(ValueError, match="ConvLSTM inputs"):
        cell(torch.randn(1, 2, 4, 6), cell.initial_state(1))


@pytest.mark.parametrize("channels, groups", [(1, 1), (3, 3), (16, 8), (24, 8), (65, 5), (7, 7), (11, 1), (128, 8)])
def test_group_norm_groups_is_the_largest_divisor_up_to_eight(channels, groups):
    assert group_norm_groups(channels) == groups


def test_batch_norm_to_group_norm_replaces_every_batch_norm_and_makes_samples_independent():
    torch.manual_seed(0)
    module = nn.Sequential(Res(3, 16, down=2), nn.Flatten(), nn.Linear(16 * 4 * 4, 24), nn.BatchNorm1d(24))
    assert batch_norm_to_group_norm(module) == 4  # Res: two in the residual, one in the skip; then the BN1d
    assert not any(isinstance(layer, nn.modules.batchnorm._BatchNorm) for layer in module.modules())
    norms = [layer for layer in module.modules() if isinstance(layer, nn.GroupNorm)]
    assert [(n.num_groups, n.num_channels) for n in norms] == [(8, 16), (8, 16), (8, 16), (8, 24)]
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) and not n.bias.any() for n in norms)
    assert not list(module.buffers())  # no running statistics left
    inputs = torch.randn(5, 3, 8, 8)
    together = module(inputs)
    alone = torch.cat([module(inputs[i:i + 1]) for i in range(5)])
    assert torch.allclose(together, alone, atol=1e-5)  # a sample's output does not depend on the batch
    module.eval()
    assert torch.allclose(module(inputs), together, atol=1e-6)  # nor on training / evaluation mode
    # The last GroupNorm by hand: (B, C) in groups of 3 features, each normalised to mean 0 and variance 1.
    features = module[:3](inputs).view(5, 8, 3)
    by_hand = (features - features.mean(dim=2, keepdim=True)) / (features.var(dim=2, unbiased=False,
                                                                                keepdim=True) + 1e-5).sqrt()
    assert torch.allclose(module(inputs), by_hand.view(5, 24), atol=1e-5)
