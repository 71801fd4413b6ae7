"""Winograd F(4×4, 3×3) convolutions against the direct convolution (F.conv2d), values and gradients."""
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import model.ops as ops
import model.ops.winograd as winograd
from model.blocks import Conv2d, Res, use_cpu_kernels
from model.ops.winograd import _transforms, winograd_conv3x3
from model.vgg import build_vgg_features
from utils.config import LossConfig

torch.set_num_threads(1)
HAS_COMPILER = shutil.which("cc") is not None or shutil.which("gcc") is not None


@pytest.fixture(params=[True, False], ids=["native", "torch"])
def native(request):
    """Each test runs with the C transforms and with the PyTorch ones (the fallback without a compiler)."""
    if request.param and winograd.native_transforms() is None:
        pytest.skip("the C transforms could not be built here (see the warning); the PyTorch ones are tested")
    return request.param


def _reference(inputs, weight, bias, pool):
    outputs = F.conv2d(inputs, weight, bias, padding=1)
    return F.avg_pool2d(outputs, 2) if pool else outputs


@pytest.mark.parametrize("size, pool", [((8, 12), False), ((9, 11), False), ((1, 1), False), ((4, 4), False),
                                        ((5, 3), False), ((13, 6), False), ((8, 12), True), ((9, 11), True),
                                        ((2, 2), True), ((4, 4), True), ((5, 3), True), ((13, 6), True)])
@pytest.mark.parametrize("bias", [False, True])
def test_values_and_gradients_match_the_direct_convolution_in_float64(size, pool, bias, native):
    torch.manual_seed(0)
    inputs = torch.randn(2, 5, *size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    bias_tensor = torch.randn(7, dtype=torch.float64, requires_grad=True) if bias else None
    expected = _reference(inputs, weight, bias_tensor, pool)
    actual = winograd_conv3x3(inputs, weight, bias_tensor, pool=pool, native=native)
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, rtol=0, atol=1e-12)
    upstream = torch.randn_like(expected)
    wrt = [inputs, weight] + ([bias_tensor] if bias else [])
    for got, want in zip(torch.autograd.grad(actual, wrt, upstream), torch.autograd.grad(expected, wrt, upstream)):
        assert torch.allclose(got, want, rtol=0, atol=1e-12)


def test_gradcheck(native):
    torch.manual_seed(1)
    inputs = torch.randn(1, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: winograd_conv3x3(x, w, b, native=native), (inputs, weight, bias))
    assert torch.autograd.gradcheck(lambda x, w: winograd_conv3x3(x, w, pool=True, native=native), (inputs, weight))


def test_float32_error_is_of_the_order_of_the_direct_kernel(native):
    # 256 channels: the sums are long, as in the masking network; the error is measured against float64.
    torch.manual_seed(2)
    inputs = torch.randn(2, 256, 12, 16)
    weight = torch.randn(64, 256, 3, 3) / 48
    exact = F.conv2d(inputs.double(), weight.double(), padding=1)
    scale = exact.abs().max()
    winograd_error = (winograd_conv3x3(inputs, weight, native=native).double() - exact).abs().max() / scale
    direct_error = (F.conv2d(inputs, weight, padding=1).double() - exact).abs().max() / scale
    assert winograd_error < 5e-5 and winograd_error < 50 * direct_error


def test_transforms_are_an_exact_identity_on_a_single_tile():
    # Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A is the 4×4 correlation of a 6×6 tile d with a 3×3 kernel g.
    input_transform, kernel_transform, output_transform = _transforms(torch.float64, torch.device("cpu"), False)
    tile, kernel = torch.randn(6, 6, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    products = (input_transform @ tile.reshape(36)) * (kernel_transform @ kernel.reshape(9))
    expected = F.conv2d(tile[None, None], kernel[None, None])[0, 0]
    assert torch.allclose((output_transform @ products).view(4, 4), expected, atol=1e-12)


def test_output_is_channels_last_and_no_input_tiles_are_kept_for_a_frozen_weight(native):
    inputs = torch.randn(2, 4, 8, 8, requires_grad=True)
    weight = torch.randn(6, 4, 3, 3)
    outputs = winograd_conv3x3(inputs, weight, native=native)
    assert outputs.is_contiguous(memory_format=torch.channels_last)
    assert outputs.grad_fn.saved_tensors[0] is None  # only what the input gradient needs
    outputs = torch.relu_(outputs)  # not a view: in-place operations after it are allowed (VGG19's ReLUs)
    outputs.sum().backward()
    expected = torch.autograd.grad(torch.relu(F.conv2d(inputs, weight, padding=1)).sum(), inputs)[0]
    assert torch.allclose(inputs.grad, expected, atol=1e-4)


def test_the_pytorch_transforms_never_touch_the_c_library(monkeypatch):
    def unavailable():
        raise AssertionError("native_transforms() called with native=False")

    monkeypatch.setattr(winograd, "native_transforms", unavailable)
    inputs, weight = torch.randn(1, 3, 5, 6, dtype=torch.float64), torch.randn(2, 3, 3, 3, dtype=torch.float64)
    assert torch.allclose(winograd_conv3x3(inputs, weight, native=False), F.conv2d(inputs, weight, padding=1),
                          atol=1e-12)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="winograd_conv3x3"):
        winograd_conv3x3(torch.randn(1, 3, 4, 4), torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match="winograd_conv3x3"):
        winograd_conv3x3(torch.randn(1, 4, 4, 4), torch.randn(2, 3, 3, 3))


@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_cpu_kernels_run_the_wide_3x3_layers_by_winograd_and_keep_the_function(monkeypatch, kernels):
    monkeypatch.setattr(winograd, "WINOGRAD_MIN_CHANNELS", 4)
    monkeypatch.setattr(winograd, "WINOGRAD_POOLED_MIN_CHANNELS", 6)
    torch.manual_seed(3)
    block = Res(4, 6, down=2).double()  # conv3×3 4→6 ↓2 (pooled: needs 6), conv3×3 6→6, skip conv1×1
    plain = Res(4, 6, down=2).double()
    plain.load_state_dict(block.state_dict())
    assert use_cpu_kernels(block, kernels) == 1
    layers = [layer for layer in block.modules() if isinstance(layer, Conv2d)]
    assert [layer.winograd_eligible() for layer in layers] == [False, True, False]
    assert all(layer.kernels == kernels for layer in layers) and f"kernels={kernels}" in repr(block)
    monkeypatch.setattr(winograd, "WINOGRAD_POOLED_MIN_CHANNELS", 4)
    assert use_cpu_kernels(block, kernels) == 2
    calls = []
    original = winograd.winograd_conv3x3
    monkeypatch.setattr(winograd, "winograd_conv3x3",
                        lambda *a, **k: calls.append((k["pool"], k["native"])) or original(*a, **k))
    inputs = torch.randn(2, 4, 10, 14, dtype=torch.float64)
    inputs_a, inputs_b = inputs.clone().requires_grad_(), inputs.clone().requires_grad_()
    actual, expected = block(inputs_a), plain(inputs_b)
    assert sorted(calls) == [(False, kernels == "native"), (True, kernels == "native")]
    assert torch.allclose(actual, expected, atol=1e-10)
    upstream = torch.randn_like(expected)
    (actual * upstream).sum().backward()
    (expected * upstream).sum().backward()
    assert torch.allclose(inputs_a.grad, inputs_b.grad, atol=1e-10)
    for (name, parameter), reference in zip(block.named_parameters(), plain.parameters()):
        assert torch.allclose(parameter.grad, reference.grad, atol=1e-10), name
    # NCHW inputs get NCHW outputs; with 'plain' (and on other devices) PyTorch's kernels run
    assert block(inputs).is_contiguous()
    calls.clear()
    assert use_cpu_kernels(block, "plain") == 0 and all(layer.kernels == "plain" for layer in layers)
    block(inputs)
    assert calls == [] and "kernels" not in repr(block)
    with pytest.raises(ValueError, match="kernels must be one of"):
        use_cpu_kernels(block, "fast")


def test_the_entry_point_takes_winograd_only_where_its_rule_accepts():
    # 64 channels: 3×3 padding 1 only; pooled needs 128; CPU float32 / float64 only
    assert ops.winograd_eligible((64, 64, 3, 3), (1, 1), 1) and not ops.winograd_eligible((64, 63, 3, 3), (1, 1), 1)
    assert not ops.winograd_eligible((64, 64, 3, 3), (0, 0), 1) and not ops.winograd_eligible((64, 64, 1, 1), (0, 0), 1)
    assert not ops.winograd_eligible((64, 64, 3, 3), (1, 1), 2) and ops.winograd_eligible((128, 128, 3, 3), (1, 1), 2)
    assert not ops.winograd_eligible((128, 128, 3, 3), (1, 1), 3)
    assert winograd.applies(torch.zeros(1)) and not winograd.applies(torch.zeros(1, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="kernels must be one of"):
        ops.conv2d(torch.zeros(1, 64, 4, 4), torch.zeros(64, 64, 3, 3), padding=(1, 1), kernels="winograd")


def test_vgg19_convolutions_are_project_convolutions_with_the_same_names():
    vgg = build_vgg_features(LossConfig(), random_weights=True)
    convolutions = [layer for layer in vgg.modules() if isinstance(layer, nn.Conv2d)]
    assert len(convolutions) == 13 and all(isinstance(layer, Conv2d) for layer in convolutions)
    # features[a:b] keeps torchvision's indices: relu5_1's convolution is features.28
    assert {"slices.0.0.weight", "slices.4.28.bias"} <= set(vgg.state_dict())
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    expected = [features.clone() for features in vgg(images)]
    assert use_cpu_kernels(vgg, "native") == 12  # all but 3→64
    for got, want in zip(vgg(images), expected):
        assert torch.allclose(got, want, atol=1e-4 * max(1.0, want.abs().max().item()))


def test_frozen_weights_keep_their_transformed_kernels_until_they_change():
    torch.manual_seed(4)
    layer = Conv2d(64, 64, 3, padding=1).requires_grad_(False)
    assert use_cpu_kernels(layer, "native") == 1
    inputs = torch.randn(1, 64, 5, 6)
    assert torch.allclose(layer(inputs), F.conv2d(inputs, layer.weight, layer.bias, padding=1), atol=1e-4)
    cached = layer._frozen_kernel_tiles.get(layer.weight)[0]
    layer(inputs)
    assert layer._frozen_kernel_tiles.get(layer.weight)[0] is cached
    with torch.no_grad():
        layer.weight.mul_(2)  # an in-place change (load_state_dict is one) recomputes them
    assert torch.allclose(layer(inputs), F.conv2d(inputs, layer.weight, layer.bias, padding=1), atol=1e-4)
    assert layer._frozen_kernel_tiles.get(layer.weight)[0] is not cached
    assert layer._frozen_kernel_tiles.get(layer.weight.detach().requires_grad_()) is None  # a trained weight
    with pytest.raises(ValueError, match="needs no gradient"):
        winograd_conv3x3(inputs, layer.weight.detach().requires_grad_(),
                         kernel_tiles=layer._frozen_kernel_tiles.get(layer.weight))


@pytest.fixture
def fresh_transforms(tmp_path, monkeypatch):
    """native_transforms() built anew into an empty cache folder; the process's own is restored after."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    winograd.native_transforms.cache_clear()
    yield winograd
    winograd.native_transforms.cache_clear()


def test_the_c_transforms_are_built_once_into_the_cache(fresh_transforms, tmp_path):
    if not HAS_COMPILER:
        pytest.skip("no C compiler on this machine: the PyTorch transforms are tested instead")
    native = fresh_transforms.native_transforms()
    assert native is not None and os.path.dirname(native.path) == str(tmp_path / "cache" / "glass")
    built = os.stat(native.path).st_mtime_ns
    fresh_transforms.native_transforms.cache_clear()
    assert fresh_transforms.native_transforms().path == native.path and os.stat(native.path).st_mtime_ns == built
    assert [name for name in os.listdir(os.path.dirname(native.path)) if name.startswith(".")] == []  # no temporaries


def test_the_default_cache_folder_is_in_the_home_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert winograd.cache_folder() == str(tmp_path / ".cache" / "glass")


def test_without_a_compiler_a_warning_and_the_pytorch_transforms(fresh_transforms, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.warns(RuntimeWarning, match="could not build .*winograd_transforms.c.*PyTorch"):
        assert fresh_transforms.native_transforms() is None
    torch.manual_seed(5)
    inputs = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    assert torch.allclose(winograd_conv3x3(inputs, weight, native=True), F.conv2d(inputs, weight, padding=1),
                          atol=1e-12)


def test_a_corrupt_cached_library_is_built_again(fresh_transforms):
    if not HAS_COMPILER:
        pytest.skip("no C compiler on this machine: the PyTorch transforms are tested instead")
    path = fresh_transforms.build_native_transforms()
    with open(path, "wb") as handle:
        handle.write(b"not a shared library")
    native = fresh_transforms.native_transforms()
    assert native is not None and native.path == path and os.path.getsize(path) > 1000
