"""The frozen VGG19 feature extractor: the five relu*_1 maps, frozen weights, loading and its failures."""
import pytest
import torch
from torch import nn

from model.vgg import VGG19_IMAGENET, VGGFeatures, build_vgg_features, perceptual_distance
from utils.config import LossConfig
from utils.errors import GlassError
from utils.pretrained import MissingWeightsError

torch.set_num_threads(1)

RELU_X_1_INDICES = (1, 6, 11, 20, 29)  # torchvision vgg19().features: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub cache for the test (the previous one is restored afterwards)."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    torch.hub.set_dir(str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.fixture(scope="module")
def random_vgg() -> VGGFeatures:
    torch.manual_seed(0)
    return build_vgg_features(LossConfig(), random_weights=True)


def _layers(vgg: VGGFeatures) -> list:
    return [layer for part in vgg.slices for layer in part]


def test_random_weights_need_no_file(empty_hub):
    vgg = build_vgg_features(LossConfig(), random_weights=True)
    assert isinstance(vgg, VGGFeatures)
    assert not any(empty_hub.rglob("*"))  # nothing was downloaded


def test_missing_weights_name_the_file_url_and_cache(empty_hub):
    with pytest.raises(MissingWeightsError) as raised:
        build_vgg_features(LossConfig())
    message = str(raised.value)
    assert "vgg19-dcbb9e9d.pth" in message
    assert "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in message
    assert str(empty_hub / "checkpoints") in message
    assert "loss.vgg_weights" in message
    assert not any(empty_hub.rglob("*"))  # and nothing was downloaded


def _vgg19_features_state(vgg: VGGFeatures) -> dict:
    """A state dict keyed as torchvision's vgg19 file (features.<index>.weight / .bias) from `vgg`'s layers."""
    return {f"features.{index}.{name}": tensor.clone()
            for index, layer in enumerate(_layers(vgg)) for name, tensor in layer.state_dict().items()}


def test_given_weights_file_loads(empty_hub, tmp_path, random_vgg):
    state = _vgg19_features_state(random_vgg)
    state["classifier.6.bias"] = torch.zeros(3)  # the file's other keys are ignored
    path = tmp_path / "my_vgg19.pth"
    torch.save(state, path)
    loaded = build_vgg_features(LossConfig(vgg_weights=str(path)))
    assert torch.equal(_layers(loaded)[28].weight, state["features.28.weight"])  # conv5_1
    assert torch.equal(_layers(loaded)[0].bias, state["features.0.bias"])


def test_cached_weights_file_loads(empty_hub, random_vgg):
    (empty_hub / "checkpoints").mkdir(parents=True)
    state = _vgg19_features_state(random_vgg)
    torch.save(state, empty_hub / "checkpoints" / VGG19_IMAGENET.name)
    loaded = build_vgg_features(LossConfig())
    assert torch.equal(_layers(loaded)[2].weight, state["features.2.weight"])


def test_wrong_state_dict_is_a_glass_error(empty_hub, tmp_path, random_vgg):
    state = _vgg19_features_state(random_vgg)
    state["features.28.weight"] = torch.zeros(3, 3)
    path = tmp_path / "not_vgg.pth"
    torch.save(state, path)
    with pytest.raises(GlassError, match="features.28.weight") as raised:
        build_vgg_features(LossConfig(vgg_weights=str(path)))
    assert str(path) in str(raised.value)
    del state["features.28.weight"]
    torch.save(state, path)
    with pytest.raises(GlassError, match="missing"):
        build_vgg_features(LossConfig(vgg_weights=str(path)))


def test_corrupt_weights_file_is_a_glass_error(empty_hub, tmp_path):
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    path.write_bytes(b"\x80\x02not really a pickle")
    with pytest.raises(GlassError) as raised:
        build_vgg_features(LossConfig(vgg_weights=str(path)))
    assert str(path) in str(raised.value)


def test_frozen_and_always_eval(random_vgg):
    assert all(not parameter.requires_grad for parameter in random_vgg.parameters())
    random_vgg.train()
    assert not random_vgg.training and not any(module.training for module in random_vgg.modules())


def test_five_maps_are_relu_x_1_of_torchvision_vgg19(random_vgg):
    torch.manual_seed(1)
    images = torch.rand(2, 3, 32, 48) * 2 - 1
    maps = random_vgg(images)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 32, 48), (2, 128, 16, 24), (2, 256, 8, 12), (2, 512, 4, 6),
                                               (2, 512, 2, 3)]
    # Independently: run the 30 layers one by one and keep the outputs of the ReLUs at the relu*_1 indices.
    layers = _layers(random_vgg)
    assert len(layers) == 30
    expected, features = [], images
    for index, layer in enumerate(layers):
        features = layer(features)
        if index in RELU_X_1_INDICES:
            assert isinstance(layer, nn.ReLU)
            expected.append(features)
    convs_before = [sum(isinstance(layer, nn.Conv2d) for layer in layers[:index]) for index in RELU_X_1_INDICES]
    assert convs_before == [1, 3, 5, 9, 13]  # conv1_1, conv2_1, conv3_1, conv4_1, conv5_1
    for actual, reference in zip(maps, expected):
        torch.testing.assert_close(actual, reference)


def test_imagenet_normalization_option(random_vgg):
    normalized = VGGFeatures(nn.Sequential(*_layers(random_vgg)), imagenet_normalization=True)
    torch.manual_seed(2)
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    by_hand = ((images + 1) / 2 - mean) / std
    for actual, reference in zip(normalized(images), random_vgg(by_hand)):
        torch.testing.assert_close(actual, reference)
    assert not LossConfig().vgg_imagenet_normalization  # the authors' default: [-1, 1] as it is


def test_perceptual_distance(random_vgg):
    torch.manual_seed(3)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert perceptual_distance(random_vgg, images, images.clone()).item() == 0.0
    other = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
    distance = perceptual_distance(random_vgg, images, other)
    expected = sum((a - b).abs().mean() for a, b in zip(random_vgg(images), random_vgg(other)))
    torch.testing.assert_close(distance, expected)
    assert distance.item() > 0
    distance.backward()
    assert other.grad is not None and other.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in random_vgg.parameters())


def test_too_small_images_are_refused(random_vgg):
    with pytest.raises(ValueError, match="at least 16"):
        random_vgg(torch.zeros(1, 3, 8, 32))
