"""Video-quality metrics of generated test sequences against the real ones (SPEC §5.2).

Videos are (N, T, 3, H, W) in [0, 1]; position 0 is the real first frame in both (the
evaluation dataset prepends it), positions 1 … T−1 are the reconstruction.

- Per-frame metrics (`mse`, `motion_mse`, `psnr`, `ssim`, `lpips_vgg`, `vgg19_cosine`) give
  one value per sequence and position, (N, T). They are reported per position (`name/i`,
  mean over sequences, and `name/var/i`, its population variance), and averaged
  (`name/avg`, mean over sequences and positions 1 … T−1 — position 0 is the given real
  frame, reported but not averaged — and `name/var`, population variance of those values).
- Distribution metrics (`fid_inception_frames`, `fvd_i3d_k400`) compare feature statistics.
- Detection metrics (`tennis_add`, `tennis_mdr`) compare person detections, positions 1 … T−1.

REGISTRY maps each metric name to a `Metric` (kind, feature network it needs, function).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

FVD_BATCH = 16  # the TF-Hub FVD embeds 16 videos at a time; the sequence count is cut to a multiple of it
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
PSNR_EPSILON = 1e-8
FRECHET_EPSILON = 1e-6  # pytorch-fid's offset on the diagonals when the product of covariances is near-singular


def _check_videos(real: torch.Tensor, generated: torch.Tensor) -> None:
    if real.dim() != 5 or real.shape[2] != 3 or real.shape != generated.shape:
        raise ValueError(f"videos must both be (N, T, 3, H, W), got {tuple(real.shape)} and {tuple(generated.shape)}")


# --------------------------------------------------------------------------- per-frame metrics


def mse(real: torch.Tensor, generated: torch.Tensor, networks: Dict = None) -> torch.Tensor:
    """Mean squared error over C×H×W of each frame: (N, T, 3, H, W) ×2 → (N, T). Reference: PVG evaluate_dataset."""
    _check_videos(real, generated)
    return ((real - generated) ** 2).mean(dim=(2, 3, 4))


def motion_weights(real: torch.Tensor) -> torch.Tensor:
    """Mean over channels of |I_t − I_{t−1}| of the real video, 0 for the first frame: (N, T, 3, H, W) →
    (N, T, H, W)."""
    weights = torch.zeros_like(real[:, :, 0])
    weights[:, 1:] = (real[:, 1:] - real[:, :-1]).abs().mean(dim=2)
    return weights


def motion_mse(real: torch.Tensor, generated: torch.Tensor, networks: Dict = None) -> torch.Tensor:
    """Motion-masked MSE (GLASS, SPEC §5.2): per frame the weighted mean Σ w·e / Σ w of the squared
    error e (mean over channels) with weights w = mean over channels of |I_t − I_{t−1}| of the
    real video. A frame without real motion (Σ w = 0, always the first one) scores 0.
    (N, T, 3, H, W) ×2 → (N, T)."""
    _check_videos(real, generated)
    weights = motion_weights(real)
    errors = ((real - generated) ** 2).mean(dim=2)
    total = weights.sum(dim=(2, 3))
    return torch.where(total > 0, (weights * errors).sum(dim=(2, 3)) / total.clamp_min(1e-12),
                       torch.zeros_like(total))


def psnr(real: torch.Tensor, generated: torch.Tensor, networks: Dict = None) -> torch.Tensor:
    """PSNR of each frame, −10·log10(MSE + 1e-8), data range 1 (PVG evaluate_dataset's form): → (N, T)."""
    return -10 * torch.log10(mse(real, generated) + PSNR_EPSILON)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """The normalised 1-D Gaussian (size,)."""
    coordinates = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    window = torch.exp(-coordinates ** 2 / (2 * sigma ** 2))
    return window / window.sum()


def ssim_images(images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
    """SSIM (Wang et al. 2004) of image pairs (M, C, H, W) in [0, 1] → (M,): 11×11 Gaussian window σ 1.5,
    K1 0.01, K2 0.03, data range 1, statistics over the valid positions only (no padding; as
    pytorch-msssim and the TF `tf.image.ssim`), averaged over channels and positions."""
    channels = images_a.shape[1]
    window_1d = gaussian_window().to(images_a.device, images_a.dtype)
    horizontal = window_1d.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = window_1d.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, horizontal, groups=channels), vertical, groups=channels)

    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    mu_a, mu_b = blur(images_a), blur(images_b)
    var_a = blur(images_a * images_a) - mu_a ** 2
    var_b = blur(images_b * images_b) - mu_b ** 2
    covariance = blur(images_a * images_b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * covariance + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean(dim=(1, 2, 3))


def ssim(real: torch.Tensor, generated: torch.Tensor, networks: Dict = None) -> torch.Tensor:
    """SSIM of each frame (see `ssim_images`; reference: Wang et al. 2004, pytorch-msssim): → (N, T)."""
    _check_videos(real, generated)
    n, t = real.shape[:2]
    return ssim_images(real.flatten(0, 1).double(), generated.flatten(0, 1).double()).float().view(n, t)


def lpips_vgg(real: torch.Tensor, generated: torch.Tensor, networks: Dict) -> torch.Tensor:
    """LPIPS v0.1, VGG backbone (Zhang et al. 2018, the `lpips` package), inputs mapped from [0, 1]
    to [−1, 1]: → (N, T)."""
    _check_videos(real, generated)
    n, t = real.shape[:2]
    return networks["lpips_vgg"](real.flatten(0, 1), generated.flatten(0, 1)).view(n, t)


def vgg19_cosine(real: torch.Tensor, generated: torch.Tensor, networks: Dict) -> torch.Tensor:
    """Cosine similarity of VGG19 features (model/vgg.py: relu1_1 … relu5_1, images in [−1, 1] as
    in the perceptual losses): each map flattened per frame, the five cosines averaged. No
    published reference fixes the layers; this is the project's choice. → (N, T)."""
    _check_videos(real, generated)
    n, t = real.shape[:2]
    maps_real = networks["vgg19"](2 * real.flatten(0, 1) - 1)
    maps_generated = networks["vgg19"](2 * generated.flatten(0, 1) - 1)
    cosines = [F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-8)
               for a, b in zip(maps_real, maps_generated)]
    return torch.stack(cosines).mean(dim=0).view(n, t)


# --------------------------------------------------------------------------- aggregation


def aggregate_per_position(name: str, values: np.ndarray) -> Dict[str, float]:
    """values (N, T) → {name/i: mean over sequences at position i, name/var/i: its population
    variance, name/avg: mean over sequences and positions 1 … T−1, name/var: their population
    variance}. With T = 1 the average is over position 0."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"{name}: values must be (N, T) with N ≥ 1, got {values.shape}")
    result: Dict[str, float] = {}
    for position in range(values.shape[1]):
        result[f"{name}/{position}"] = float(values[:, position].mean())
        result[f"{name}/var/{position}"] = float(values[:, position].var())
    averaged = values[:, 1:] if values.shape[1] > 1 else values
    result[f"{name}/avg"] = float(averaged.mean())
    result[f"{name}/var"] = float(averaged.var())
    return result


# --------------------------------------------------------------------------- Fréchet distance


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = FRECHET_EPSILON) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2·(Σ1Σ2)^½) in float64 (Heusel et al. 2017; pytorch-fid's
    `calculate_frechet_distance`): scipy.linalg.sqrtm, eps·I added to both covariances when the
    product is near-singular (non-finite root), the real part kept (imaginary parts from
    round-off only; a large one raises ValueError)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"Fréchet distance: mismatched shapes {mu1.shape} {sigma1.shape} {mu2.shape} {sigma2.shape}")
    difference = mu1 - mu2
    root = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(root).all():
        offset = np.eye(sigma1.shape[0]) * eps
        root = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: imaginary component {np.max(np.abs(root.imag))}")
        root = root.real
    return float(difference.dot(difference) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))


def feature_statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """features (M, D) → mean (D,), covariance (D, D) (unbiased, as pytorch-fid), float64."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


# --------------------------------------------------------------------------- detection metrics


def detection_metrics(real_centres: np.ndarray, real_found: np.ndarray, generated_centres: np.ndarray,
                      generated_found: np.ndarray) -> Dict[str, float]:
    """ADD and MDR (PVG, Menapace et al. 2021) from per-frame detections (M, 2) centres in pixels and (M,) found.

    ADD: mean L2 distance between real and generated centres over frames where both detect
    (NaN when there is none). MDR: percentage of the frames with a detection in the real frame
    whose generated frame has none (NaN when the real frames have no detection at all).
    """
    real_found, generated_found = np.asarray(real_found, bool), np.asarray(generated_found, bool)
    both = real_found & generated_found
    distances = np.linalg.norm(np.asarray(real_centres, np.float64) - np.asarray(generated_centres, np.float64),
                               axis=1)
    add = float(distances[both].mean()) if both.any() else math.nan
    mdr = float(100.0 * (real_found & ~generated_found).sum() / real_found.sum()) if real_found.any() else math.nan
    return {"tennis_add": add, "tennis_mdr": mdr, "tennis_detection/frames_both": int(both.sum()),
            "tennis_detection/frames_real": int(real_found.sum())}


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Metric:
    """A metric of the registry: `kind` is 'per_frame' (function (real, generated, networks) → (N, T)),
    'fid', 'fvd' or 'detection' (accumulated by `evaluate_videos`); `network` names the feature
    network it needs (utils.evaluation.feature_networks), or None."""

    kind: str
    network: Optional[str]
    function: Optional[Callable[..., torch.Tensor]]
    reference: str


REGISTRY: Dict[str, Metric] = {
    "mse": Metric("per_frame", None, mse, "PVG evaluate_dataset: mean over C×H×W per frame"),
    "motion_mse": Metric("per_frame", None, motion_mse, "GLASS: squared error weighted by real-frame motion"),
    "psnr": Metric("per_frame", None, psnr, "PVG: −10·log10(MSE + 1e-8)"),
    "ssim": Metric("per_frame", None, ssim, "Wang et al. 2004; 11×11 Gaussian σ 1.5, valid positions"),
    "lpips_vgg": Metric("per_frame", "lpips_vgg", lpips_vgg, "Zhang et al. 2018, lpips v0.1 VGG"),
    "vgg19_cosine": Metric("per_frame", "vgg19", vgg19_cosine, "GLASS: VGG19 feature cosine similarity"),
    "fid_inception_frames": Metric("fid", "fid_inception", None,
                                   "Heusel et al. 2017, pytorch-fid Inception pool3 over every frame"),
    "fvd_i3d_k400": Metric("fvd", "i3d", None, "Unterthiner et al. 2018, I3D Kinetics-400 logits, batches of 16"),
    "tennis_add": Metric("detection", "person_detector", None, "PVG: average detection distance"),
    "tennis_mdr": Metric("detection", "person_detector", None, "PVG: missing detection rate"),
}
DETECTION_METRICS = ("tennis_add", "tennis_mdr")


def default_metrics(detection_metrics_enabled: bool) -> List[str]:
    """Every registered metric that applies: the detection ones only when the config asks for them."""
    return [name for name in REGISTRY if detection_metrics_enabled or name not in DETECTION_METRICS]


class MetricAccumulator:
    """Runs the chosen metrics batch by batch and returns the results at the end.

        accumulator = MetricAccumulator(["mse", "fvd_i3d_k400"], networks)
        for real, generated in batches: accumulator.add(real, generated)     # (B, T, 3, H, W) in [0, 1]
        results, notes = accumulator.results()
    """

    def __init__(self, metrics: List[str], networks: Dict[str, torch.nn.Module]):
        self.metrics = metrics
        self.networks = networks
        self.per_frame: Dict[str, List[np.ndarray]] = {name: [] for name in metrics
                                                       if REGISTRY[name].kind == "per_frame"}
        self.fid_features: Tuple[List[np.ndarray], List[np.ndarray]] = ([], [])
        self.fvd_videos: Tuple[List[torch.Tensor], List[torch.Tensor]] = ([], [])
        self.fvd_features: Tuple[List[np.ndarray], List[np.ndarray]] = ([], [])
        self.detections: List[List[np.ndarray]] = [[], [], [], []]
        self.seconds: Dict[str, float] = {name: 0.0 for name in metrics}
        self.sequences = 0

    def _timed(self, name: str, compute: Callable[[], None]) -> None:
        import time

        start = time.perf_counter()
        compute()
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # GPU work is asynchronous: time it to its end
        self.seconds[name] += time.perf_counter() - start

    @torch.no_grad()
    def add(self, real: torch.Tensor, generated: torch.Tensor) -> None:
        _check_videos(real, generated)
        self.sequences += real.shape[0]
        kinds = {REGISTRY[name].kind for name in self.metrics}
        for name in self.per_frame:
            self._timed(name, lambda: self.per_frame[name].append(
                REGISTRY[name].function(real, generated, self.networks).double().cpu().numpy()))
        if "fid" in kinds:
            def fid() -> None:
                for index, videos in enumerate((real, generated)):
                    self.fid_features[index].append(
                        self.networks["fid_inception"](videos.flatten(0, 1)).double().cpu().numpy())
            self._timed("fid_inception_frames", fid)
        if "fvd" in kinds:
            self._timed("fvd_i3d_k400", lambda: self._add_fvd(real, generated))
        if "detection" in kinds:
            def detect() -> None:
                for offset, videos in ((0, real), (2, generated)):
                    centres, found = self.networks["person_detector"](videos[:, 1:].flatten(0, 1))
                    self.detections[offset].append(centres.double().cpu().numpy())
                    self.detections[offset + 1].append(found.cpu().numpy())
            name = next(name for name in self.metrics if REGISTRY[name].kind == "detection")
            self._timed(name, detect)

    def _add_fvd(self, real: torch.Tensor, generated: torch.Tensor) -> None:
        """Queue sequences; embed them 16 at a time (the TF-Hub FVD batch)."""
        for index, videos in enumerate((real, generated)):
            self.fvd_videos[index].extend(videos.cpu())
            while len(self.fvd_videos[index]) >= FVD_BATCH:
                batch = torch.stack(self.fvd_videos[index][:FVD_BATCH])
                del self.fvd_videos[index][:FVD_BATCH]
                device = next(self.networks["i3d"].parameters()).device
                self.fvd_features[index].append(self.networks["i3d"](batch.to(device)).double().cpu().numpy())

    def results(self) -> Tuple[Dict[str, float], List[str]]:
        """(metric key → value, notes for the reader: dropped sequences, skipped metrics)."""
        results: Dict[str, float] = {}
        notes: List[str] = []
        for name, values in self.per_frame.items():
            results.update(aggregate_per_position(name, np.concatenate(values)))
        if "fid_inception_frames" in self.metrics:
            real, generated = (np.concatenate(features) for features in self.fid_features)
            if len(real) < 2:
                notes.append(f"fid_inception_frames skipped: {len(real)} frame(s), at least 2 needed")
            else:
                results["fid_inception_frames"] = frechet_distance(*feature_statistics(real),
                                                                   *feature_statistics(generated))
                results["fid_inception_frames/frames"] = int(len(real))
        if "fvd_i3d_k400" in self.metrics:
            kept = FVD_BATCH * (self.sequences // FVD_BATCH)
            if kept == 0:
                notes.append(f"fvd_i3d_k400 skipped: {self.sequences} sequence(s), fewer than the {FVD_BATCH} of one "
                             f"FVD batch")
            else:
                if kept < self.sequences:
                    notes.append(f"fvd_i3d_k400: {self.sequences - kept} of {self.sequences} sequences dropped "
                                 f"(FVD embeds batches of {FVD_BATCH}; {kept} used)")
                real, generated = (np.concatenate(features) for features in self.fvd_features)
                results["fvd_i3d_k400"] = frechet_distance(*feature_statistics(real), *feature_statistics(generated))
                results["fvd_i3d_k400/sequences"] = kept
        if any(REGISTRY[name].kind == "detection" for name in self.metrics):
            real_centres, real_found, generated_centres, generated_found = (np.concatenate(part)
                                                                            for part in self.detections)
            detection = detection_metrics(real_centres, real_found, generated_centres, generated_found)
            for name in DETECTION_METRICS:
                if name not in self.metrics:
                    del detection[name]
                elif math.isnan(detection[name]):
                    notes.append(f"{name} undefined: " + ("no frame where both real and generated have a person"
                                                          if name == "tennis_add" else "no person in any real frame"))
                    detection[name] = None
            results.update(detection)
        return results, notes
