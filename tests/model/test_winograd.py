"""Winograd F(4×4, 3×3) convolutions against the direct convolution, values and gradients."""
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.blocks import Conv2d, Res, enable_winograd
from model.vgg import build_vgg_features
from model.winograd import _transforms, winograd_conv3x3
from utils.config import LossConfig
from utils.errors import GlassError

torch.set_num_threads(1)


@pytest.fixture(params=["native", "torch"])
def transforms(request, monkeypatch):
    """Each test runs with the C transforms and with the PyTorch ones (the fallback without a compiler)."""
    import model.winograd as winograd

    monkeypatch.setenv(winograd.TRANSFORMS_VARIABLE, request.param)
    winograd.native_transforms.cache_clear()
    if request.param == "native" and winograd.native_transforms() is None:
        pytest.skip("the C transforms could not be built here (see the warning); the PyTorch ones are tested")
    yield request.param
    winograd.native_transforms.cache_clear()


def _reference(inputs, weight, bias, pool):
    outputs = F.conv2d(inputs, weight, bias, padding=1)
    return F.avg_pool2d(outputs, 2) if pool else outputs


@pytest.mark.parametrize("size, pool", [((8, 12), False), ((9, 11), False), ((1, 1), False), ((4, 4), False),
                                        ((5, 3), False), ((13, 6), False), ((8, 12), True), ((9, 11), True),
                                        ((2, 2), True), ((4, 4), True), ((5, 3), True), ((13, 6), True)])
@pytest.mark.parametrize("bias", [False, True])
def test_values_and_gradients_match_the_direct_convolution_in_float64(size, pool, bias, transforms):
    torch.manual_seed(0)
    inputs = torch.randn(2, 5, *size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    bias_tensor = torch.randn(7, dtype=torch.float64, requires_grad=True) if bias else None
    expected = _reference(inputs, weight, bias_tensor, pool)
    actual = winograd_conv3x3(inputs, weight, bias_tensor, pool=pool)
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, rtol=0, atol=1e-12)
    upstream = torch.randn_like(expected)
    wrt = [inputs, weight] + ([bias_tensor] if bias else [])
    for got, want in zip(torch.autograd.grad(actual, wrt, upstream), torch.autograd.grad(expected, wrt, upstream)):
        assert torch.allclose(got, want, rtol=0, atol=1e-12)


def test_gradcheck(transforms):
    torch.manual_seed(1)
    inputs = torch.randn(1, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: winograd_conv3x3(x, w, b), (inputs, weight, bias))
    assert torch.autograd.gradcheck(lambda x, w: winograd_conv3x3(x, w, pool=True), (inputs, weight))


def test_float32_error_is_of_the_order_of_the_direct_kernel(transforms):
    # 256 channels: the sums are long, as in the masking network; the error is measured against float64.
    torch.manual_seed(2)
    inputs = torch.randn(2, 256, 12, 16)
    weight = torch.randn(64, 256, 3, 3) / 48
    exact = F.conv2d(inputs.double(), weight.double(), padding=1)
    scale = exact.abs().max()
    winograd_error = (winograd_conv3x3(inputs, weight).double() - exact).abs().max() / scale
    direct_error = (F.conv2d(inputs, weight, padding=1).double() - exact).abs().max() / scale
    assert winograd_error < 5e-5 and winograd_error < 50 * direct_error


def test_transforms_are_an_exact_identity_on_a_single_tile():
    # Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A is the 4×4 correlation of a 6×6 tile d with a 3×3 kernel g.
    input_transform, kernel_transform, output_transform = _transforms(torch.float64, torch.device("cpu"), False)
    tile, kernel = torch.randn(6, 6, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    products = (input_transform @ tile.reshape(36)) * (kernel_transform @ kernel.reshape(9))
    expected = F.conv2d(tile[None, None], kernel[None, None])[0, 0]
    assert torch.allclose((output_transform @ products).view(4, 4), expected, atol=1e-12)


def test_output_is_channels_last_and_no_input_tiles_are_kept_for_a_frozen_weight(transforms):
    inputs = torch.randn(2, 4, 8, 8, requires_grad=True)
    weight = torch.randn(6, 4, 3, 3)
    outputs = winograd_conv3x3(inputs, weight)
    assert outputs.is_contiguous(memory_format=torch.channels_last)
    assert outputs.grad_fn.saved_tensors[0] is None  # only what the input gradient needs
    outputs = torch.relu_(outputs)  # not a view: in-place operations after it are allowed (VGG19's ReLUs)
    outputs.sum().backward()
    expected = torch.autograd.grad(torch.relu(F.conv2d(inputs, weight, padding=1)).sum(), inputs)[0]
    assert torch.allclose(inputs.grad, expected, atol=1e-4)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="winograd_conv3x3"):
        winograd_conv3x3(torch.randn(1, 3, 4, 4), torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match="winograd_conv3x3"):
        winograd_conv3x3(torch.randn(1, 4, 4, 4), torch.randn(2, 3, 3, 3))


def test_enable_winograd_picks_the_wide_3x3_layers_and_keeps_the_function(monkeypatch):
    import model.blocks as blocks

    monkeypatch.setattr(blocks, "WINOGRAD_MIN_CHANNELS", 4)
    monkeypatch.setattr(blocks, "WINOGRAD_POOLED_MIN_CHANNELS", 6)
    torch.manual_seed(3)
    block = Res(4, 6, down=2).double()  # conv3×3 4→6 ↓2 (pooled: needs 6), conv3×3 6→6, skip conv1×1
    plain = Res(4, 6, down=2).double()
    plain.load_state_dict(block.state_dict())
    assert enable_winograd(block) == 1
    layers = [layer for layer in block.modules() if isinstance(layer, Conv2d)]
    assert [layer.winograd for layer in layers] == [False, True, False]
    assert "winograd" in repr(block)
    monkeypatch.setattr(blocks, "WINOGRAD_POOLED_MIN_CHANNELS", 4)
    assert enable_winograd(block) == 2
    calls = []
    original = blocks.winograd_conv3x3
    monkeypatch.setattr(blocks, "winograd_conv3x3", lambda *a, **k: calls.append(k["pool"]) or original(*a, **k))
    inputs = torch.randn(2, 4, 10, 14, dtype=torch.float64)
    inputs_a, inputs_b = inputs.clone().requires_grad_(), inputs.clone().requires_grad_()
    actual, expected = block(inputs_a), plain(inputs_b)
    assert sorted(calls) == [False, True]
    assert torch.allclose(actual, expected, atol=1e-10)
    upstream = torch.randn_like(expected)
    (actual * upstream).sum().backward()
    (expected * upstream).sum().backward()
    assert torch.allclose(inputs_a.grad, inputs_b.grad, atol=1e-10)
    for (name, parameter), reference in zip(block.named_parameters(), plain.parameters()):
        assert torch.allclose(parameter.grad, reference.grad, atol=1e-10), name
    # NCHW inputs get NCHW outputs; outside the CPU (or under `enable_winograd(·, False)`) the direct kernel runs
    assert block(inputs).is_contiguous()
    assert enable_winograd(block, False) == 2 and not any(layer.winograd for layer in layers)


def test_vgg19_convolutions_are_project_convolutions_with_the_same_names():
    vgg = build_vgg_features(LossConfig(), random_weights=True)
    convolutions = [layer for layer in vgg.modules() if isinstance(layer, nn.Conv2d)]
    assert len(convolutions) == 13 and all(isinstance(layer, Conv2d) for layer in convolutions)
    # features[a:b] keeps torchvision's indices: relu5_1's convolution is features.28
    assert {"slices.0.0.weight", "slices.4.28.bias"} <= set(vgg.state_dict())
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    expected = [features.clone() for features in vgg(images)]
    assert enable_winograd(vgg) == 12  # all but 3→64
    for got, want in zip(vgg(images), expected):
        assert torch.allclose(got, want, atol=1e-4 * max(1.0, want.abs().max().item()))


def test_frozen_weights_keep_their_transformed_kernels_until_they_change():
    torch.manual_seed(4)
    layer = Conv2d(64, 64, 3, padding=1).requires_grad_(False)
    assert enable_winograd(layer) == 1
    inputs = torch.randn(1, 64, 5, 6)
    assert torch.allclose(layer(inputs), F.conv2d(inputs, layer.weight, layer.bias, padding=1), atol=1e-4)
    cached = layer._frozen_kernel_tiles[1][0]
    layer(inputs)
    assert layer._frozen_kernel_tiles[1][0] is cached
    with torch.no_grad():
        layer.weight.mul_(2)  # an in-place change (load_state_dict is one) recomputes them
    assert torch.allclose(layer(inputs), F.conv2d(inputs, layer.weight, layer.bias, padding=1), atol=1e-4)
    assert layer._frozen_kernel_tiles[1][0] is not cached
    with pytest.raises(ValueError, match="needs no gradient"):
        winograd_conv3x3(inputs, layer.weight.detach().requires_grad_(), kernel_tiles=layer._frozen_kernel_tiles[1])


@pytest.fixture
def fresh_transforms(tmp_path, monkeypatch):
    """native_transforms() built anew into an empty cache folder; the process's own is restored after."""
    import model.winograd as winograd

    monkeypatch.setenv(winograd.CACHE_VARIABLE, str(tmp_path / "cache"))
    winograd.native_transforms.cache_clear()
    yield winograd
    winograd.native_transforms.cache_clear()


def test_the_c_transforms_are_built_once_into_the_cache(fresh_transforms):
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine: the PyTorch transforms are tested instead")
    native = fresh_transforms.native_transforms()
    assert native is not None and native.path.startswith(os.environ[fresh_transforms.CACHE_VARIABLE])
    built = os.stat(native.path).st_mtime_ns
    fresh_transforms.native_transforms.cache_clear()
    assert fresh_transforms.native_transforms().path == native.path and os.stat(native.path).st_mtime_ns == built
    assert [name for name in os.listdir(os.path.dirname(native.path)) if name.startswith(".")] == []  # no temporaries


def test_without_a_compiler_a_warning_and_the_pytorch_transforms(fresh_transforms, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.warns(RuntimeWarning, match="could not build .*winograd_transforms.c.*PyTorch"):
        assert fresh_transforms.native_transforms() is None
    torch.manual_seed(5)
    inputs = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    assert torch.allclose(winograd_conv3x3(inputs, weight), F.conv2d(inputs, weight, padding=1), atol=1e-12)


def test_the_transforms_choice_is_checked(fresh_transforms, monkeypatch):
    monkeypatch.setenv(fresh_transforms.TRANSFORMS_VARIABLE, "torch")
    assert fresh_transforms.native_transforms() is None
    fresh_transforms.native_transforms.cache_clear()
    monkeypatch.setenv(fresh_transforms.TRANSFORMS_VARIABLE, "fast")
    with pytest.raises(GlassError, match="GLASS_WINOGRAD_TRANSFORMS must be 'native' or 'torch'"):
        fresh_transforms.native_transforms()


def test_a_corrupt_cached_library_is_built_again(fresh_transforms):
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine: the PyTorch transforms are tested instead")
    path = fresh_transforms.build_native_transforms()
    with open(path, "wb") as handle:
        handle.write(b"not a shared library")
    native = fresh_transforms.native_transforms()
    assert native is not None and native.path == path and os.path.getsize(path) > 1000
