"""The feature networks: shapes and key names with random weights; weights from files; missing files."""
import os

import pytest
import torch

from utils.config import Config
from utils.evaluation import feature_networks
from utils.evaluation.feature_networks import (
    InceptionI3d,
    build_fid_inception,
    build_i3d,
    build_lpips,
    check_feature_weights,
)
from utils.pretrained import MissingWeightsError

pytestmark = pytest.mark.usefixtures("two_torch_threads")


def test_i3d_gives_400_logits_and_has_the_pytorch_i3d_key_names():
    i3d = build_i3d(None)
    with torch.no_grad():
        logits = i3d(torch.rand(2, 4, 3, 40, 30))  # (N, T, 3, H, W), resized to 224×224 inside
    assert logits.shape == (2, 400) and torch.isfinite(logits).all()
    keys = set(i3d.i3d.state_dict())
    for key in ("Conv3d_1a_7x7.conv3d.weight", "Conv3d_1a_7x7.bn.running_mean", "Mixed_3b.b0.conv3d.weight",
                "Mixed_3b.b1a.conv3d.weight", "Mixed_3b.b1b.bn.running_var", "Mixed_3b.b2a.conv3d.weight",
                "Mixed_3b.b2b.conv3d.weight", "Mixed_3b.b3b.conv3d.weight", "Mixed_5c.b3b.bn.bias",
                "logits.conv3d.weight", "logits.conv3d.bias"):
        assert key in keys, key
    assert i3d.i3d.Conv3d_1a_7x7.conv3d.weight.shape == (64, 3, 7, 7, 7)


def test_i3d_same_padding_keeps_tf_output_sizes():
    net = InceptionI3d(400)
    x = torch.zeros(1, 3, 8, 224, 224)
    with torch.no_grad():
        x = net.Conv3d_1a_7x7(x)
        assert x.shape == (1, 64, 4, 112, 112)
        x = net.MaxPool3d_2a_3x3(x)
        assert x.shape == (1, 64, 4, 56, 56)


def test_i3d_loads_its_state_dict_from_a_file_without_step_counters(tmp_path):
    source = InceptionI3d(400)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = str(tmp_path / "rgb_imagenet.pt")
    torch.save(state, path)
    loaded = build_i3d(path)
    assert torch.equal(loaded.i3d.Mixed_4b.b1b.conv3d.weight, source.Mixed_4b.b1b.conv3d.weight)


def test_fid_inception_gives_2048_features():
    inception = build_fid_inception(None)
    with torch.no_grad():
        features = inception(torch.rand(2, 3, 40, 50))
    assert features.shape == (2, 2048) and (features >= 0).all()


def test_lpips_is_zero_for_identical_images_and_positive_otherwise():
    lpips_distance = build_lpips(None)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert lpips_distance(images, images).abs().max().item() == 0.0
        assert (lpips_distance(images, torch.rand(2, 3, 32, 32)) > 0).all()


def test_lpips_backbone_loads_a_torchvision_vgg16_file(tmp_path):
    import torchvision

    features = torchvision.models.vgg16().features
    path = str(tmp_path / "vgg16-397923af.pth")
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    lpips_distance = build_lpips(path)
    assert torch.equal(lpips_distance.model.net.slice3.state_dict()["10.weight"], features[10].weight)


def test_missing_weights_are_listed_in_one_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    config = Config()
    config.evaluation.i3d_weights = str(tmp_path / "nowhere.pt")
    with pytest.raises(MissingWeightsError) as error:
        check_feature_weights(config, list(feature_networks.NETWORK_NAMES))
    message = str(error.value)
    for name in ("pt_inception-2015-12-05-6726825d.pth", "rgb_imagenet.pt", "vgg16-397923af.pth",
                 "vgg19-dcbb9e9d.pth", "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth", "evaluation.i3d_weights",
                 os.path.join(str(tmp_path / "torch"), "hub", "checkpoints")):
        assert name in message, name
    assert message.startswith("5 feature-network weight file(s) missing")
