"""The frozen VGG19 feature extractor of the perceptual losses (SPEC §4.1).

torchvision's VGG19 `features[0:30]`, split into `[0:2]`, `[2:7]`, `[7:12]`, `[12:21]`,
`[21:30]`: the five maps relu1_1 … relu5_1. Weights are the torchvision ImageNet file
`vgg19-dcbb9e9d.pth`, found through `utils.pretrained` (the torch hub cache or
`loss.vgg_weights`); nothing is downloaded. Parameters are frozen and the module stays in
eval mode. Images in [−1, 1] are fed as they are (the authors' choice); ImageNet
normalisation is the `loss.vgg_imagenet_normalization` option.

    vgg = build_vgg_features(config.loss)                  # or random_weights=True for tests and smoke runs
    distance = perceptual_distance(vgg, images_a, images_b)   # (N, 3, H, W) each → scalar
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from model.blocks import Conv2d, assert_shape
from utils.checkpoint import state_dict_mismatch
from utils.config import LossConfig
from utils.errors import GlassError
from utils.pretrained import PretrainedFile, find_pretrained, load_state_dict_file

VGG19_IMAGENET = PretrainedFile(name="vgg19-dcbb9e9d.pth", url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
                                description="VGG19 ImageNet weights (torchvision)")
VGG19_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))  # features[a:b] ending at relu1_1 … relu5_1
VGG19_MIN_SIZE = 16  # relu5_1 follows four 2×2 max-pools: smaller images pool down to nothing
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGFeatures(nn.Module):
    """The five VGG19 feature maps relu1_1 … relu5_1 of images; frozen, always in eval mode.

    images (N, 3, H, W) in [−1, 1], H, W ≥ 16 → [(N, 64, H, W), (N, 128, H/2, W/2),
    (N, 256, H/4, W/4), (N, 512, H/8, W/8), (N, 512, H/16, W/16)] (sizes floored).
    Gradients flow to the images, never to the VGG parameters.
    """

    def __init__(self, features: nn.Sequential, imagenet_normalization: bool):
        super().__init__()
        features = _with_project_convolutions(features)
        self.slices = nn.ModuleList(features[start:end] for start, end in VGG19_SLICES)
        self.imagenet_normalization = imagenet_normalization
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGGFeatures":
        """Stays in eval mode whatever `mode` is (a frozen feature extractor)."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        assert_shape(images, (None, 3, None, None), "VGG19 images")
        if min(images.shape[2:]) < VGG19_MIN_SIZE:
            raise ValueError(f"VGG19 features need images of at least {VGG19_MIN_SIZE}×{VGG19_MIN_SIZE} pixels, got "
                             f"{images.shape[3]}×{images.shape[2]}; switch the perceptual losses off "
                             f"(loss.weights.*_perceptual_loss=0) for smaller frames")
        features = images
        if self.imagenet_normalization:
            features = ((features + 1) / 2 - self.mean.to(features.dtype)) / self.std.to(features.dtype)
        maps = []
        for layers in self.slices:
            features = layers(features)
            maps.append(features)
        return maps


def _with_project_convolutions(features: nn.Sequential) -> nn.Sequential:
    """The same layers with each nn.Conv2d as a `model.blocks.Conv2d` holding the same parameters (same
    names and function), so that `use_cpu_kernels` reaches VGG19's convolutions too."""
    layers = []
    for layer in features:
        if type(layer) is nn.Conv2d:
            with torch.device("meta"):
                convolution = Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size[0],
                                     padding=layer.padding[0], bias=layer.bias is not None)
            convolution.weight, convolution.bias = layer.weight, layer.bias
            layer = convolution
        layers.append(layer)
    return nn.Sequential(*layers)


def _initialise_randomly(features: nn.Sequential) -> None:
    """torchvision's VGG initialisation of the convolutions (Kaiming normal, fan-out; zero bias)."""
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)


def build_vgg_features(config: LossConfig, random_weights: bool = False) -> VGGFeatures:
    """The frozen VGG19 of the perceptual losses, with ImageNet weights from
    `find_pretrained(VGG19_IMAGENET, config.vgg_weights)`.

    `random_weights=True` is the explicit option for tests and smoke runs: torchvision's
    random initialisation, no file needed. A missing file raises `MissingWeightsError`; a
    file that is not a torchvision VGG19 state dict raises `GlassError` naming it.
    """
    # Imported here: torchvision loads torch._dynamo (1.3 s of every start of train.py, evaluate.py and play.py,
    # which need it only for the perceptual losses).
    import torchvision

    # Built on the meta device: only features[0:30] is ever materialised, not the 120M-parameter classifier.
    with torch.device("meta"):
        features = torchvision.models.vgg19().features[:VGG19_SLICES[-1][1]]
    features = features.to_empty(device="cpu")
    if random_weights:
        _initialise_randomly(features)
    else:
        path = find_pretrained(VGG19_IMAGENET, config.vgg_weights, option="loss.vgg_weights")
        state_dict = load_state_dict_file(path)
        expected = {"features." + name: tensor for name, tensor in features.state_dict().items()}
        problem = state_dict_mismatch(expected, state_dict, ignore_unexpected=True)  # the classifier is not used
        if problem is not None:
            raise GlassError(f"{path}: not a torchvision VGG19 state dict ({problem})")
        features.load_state_dict({name[len("features."):]: state_dict[name] for name in expected})
    return VGGFeatures(features, config.vgg_imagenet_normalization)


def perceptual_distance(vgg: VGGFeatures, images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
    """Σ over the five VGG19 maps of the mean L1 distance between the features of two image batches.

    images_a, images_b (N, 3, H, W) → scalar. A side that needs no gradient (a detached
    target) runs without building a graph; the result is the same.
    """
    assert_shape(images_b, tuple(images_a.shape), "perceptual distance images")
    maps_a = _features_of(vgg, images_a)
    maps_b = _features_of(vgg, images_b)
    return sum((map_a - map_b).abs().mean() for map_a, map_b in zip(maps_a, maps_b))


def _features_of(vgg: VGGFeatures, images: torch.Tensor) -> List[torch.Tensor]:
    if images.requires_grad:
        return vgg(images)
    with torch.no_grad():
        return vgg(images)
