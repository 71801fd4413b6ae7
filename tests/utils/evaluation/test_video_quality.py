"""The video-quality metrics against closed forms, hand values and independent implementations."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.ndimage import gaussian_filter

from utils.evaluation import video_quality
from utils.evaluation.video_quality import (
    REGISTRY,
    MetricAccumulator,
    aggregate_per_position,
    detection_metrics,
    frechet_distance,
    motion_mse,
    mse,
    psnr,
    ssim,
    ssim_images,
)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 2, size=5), rng.uniform(0.1, 2, size=5)
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_non_diagonal_against_a_symmetric_root_formula():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    sigma1, sigma2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    # tr((Σ1Σ2)^½) = tr((Σ1^½ Σ2 Σ1^½)^½), the latter a root of a symmetric positive matrix (eigenvalues).
    root1 = scipy.linalg.sqrtm(sigma1).real
    eigenvalues = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(eigenvalues).sum()
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_survives_singular_covariances():
    features = np.random.default_rng(2).normal(size=(3, 10))  # 3 samples in 10 dimensions: rank 2
    mu, sigma = video_quality.feature_statistics(features)
    value = frechet_distance(mu, sigma, mu + 1, sigma)
    assert math.isfinite(value) and value == pytest.approx(10, abs=1e-2)


def test_mse_and_psnr_hand_values():
    real = torch.zeros(1, 2, 3, 4, 4)
    generated = real.clone()
    generated[0, 1, :, :2] = 0.5  # half the pixels off by 0.5 → MSE 0.125
    assert mse(real, generated).tolist() == [[0.0, 0.125]]
    values = psnr(real, generated)[0]
    assert values[0].item() == pytest.approx(80.0)
    assert values[1].item() == pytest.approx(-10 * math.log10(0.125 + 1e-8), rel=1e-6)


def test_motion_mse_weights_errors_by_real_motion():
    real = torch.zeros(1, 3, 3, 2, 2)
    real[0, 1, :, 0, 0] = 1.0  # frame 1: one pixel moved by 1 (weight 1), the others static (weight 0)
    generated = real.clone()
    generated[0, 1, :, 0, 0] = 0.5  # error 0.25 on the moving pixel
    generated[0, 1, :, 1, 1] = 1.0  # error 1 on a static pixel: weight 0
    generated[0, 0] = 1.0  # the first frame has weight 0
    values = motion_mse(real, generated)[0]
    assert values[0].item() == 0.0
    assert values[1].item() == pytest.approx(0.25)  # Σ w·e / Σ w = 1·0.25 / 1
    # frame 2 moves back (weight 1 at that pixel) and is perfect
    assert values[2].item() == 0.0
    static = torch.rand(1, 3, 3, 2, 2)[:, :1].expand(1, 3, 3, 2, 2).contiguous()
    assert motion_mse(static, torch.rand(1, 3, 3, 2, 2)).abs().sum().item() == 0.0  # no motion: 0 by definition


def _reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM through scipy's Gaussian filter (radius 5 = an 11-tap window), cropped to the valid positions."""
    def blur(x):
        return gaussian_filter(x, sigma=1.5, truncate=5 / 1.5, mode="constant")[5:-5, 5:-5]

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for channel in range(a.shape[0]):
        x, y = a[channel].astype(np.float64), b[channel].astype(np.float64)
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
        values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_an_independent_implementation():
    rng = np.random.default_rng(3)
    a = rng.uniform(size=(3, 24, 20)).astype(np.float32)
    b = np.clip(a + rng.normal(scale=0.2, size=a.shape), 0, 1).astype(np.float32)
    value = ssim_images(torch.from_numpy(a)[None].double(), torch.from_numpy(b)[None].double()).item()
    assert value == pytest.approx(_reference_ssim(a, b), abs=1e-9)
    assert value < 0.9


def test_ssim_of_identical_and_of_constant_images():
    x = torch.rand(1, 2, 3, 16, 16)
    assert torch.allclose(ssim(x, x), torch.ones(1, 2), atol=1e-6)
    # constant images 0.2 and 0.6: only the luminance term remains, (2·0.12 + c1) / (0.04 + 0.36 + c1)
    a, b = torch.full((1, 1, 3, 16, 16), 0.2), torch.full((1, 1, 3, 16, 16), 0.6)
    c1 = 0.01 ** 2
    assert ssim(a, b).item() == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1), rel=1e-5)


def test_aggregation_per_position_mean_and_variance():
    values = np.array([[0.0, 1.0, 3.0], [0.0, 3.0, 5.0]])
    result = aggregate_per_position("m", values)
    assert result["m/0"] == 0 and result["m/1"] == 2 and result["m/2"] == 4
    assert result["m/var/1"] == 1 and result["m/var/2"] == 1
    assert result["m/avg"] == 3  # positions 1 … T−1 only: mean of 1, 3, 3, 5
    assert result["m/var"] == pytest.approx(np.var([1, 3, 3, 5]))


def test_detection_metrics_definitions():
    real_centres = np.array([[0, 0], [10, 10], [5, 5], [0, 0]], float)
    generated_centres = np.array([[3, 4], [10, 10], [0, 0], [1, 1]], float)
    real_found = np.array([True, True, True, False])
    generated_found = np.array([True, True, False, True])
    result = detection_metrics(real_centres, real_found, generated_centres, generated_found)
    assert result["tennis_add"] == pytest.approx(2.5)  # distances 5 and 0 over the two frames where both detect
    assert result["tennis_mdr"] == pytest.approx(100 / 3)  # 1 miss among 3 real detections


def test_accumulator_fvd_cuts_to_multiples_of_16_and_skips_below():
    class FakeI3D(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def forward(self, videos):
            assert videos.shape[0] == 16
            return videos.flatten(1)[:, :3]

    accumulator = MetricAccumulator(["mse", "fvd_i3d_k400"], {"i3d": FakeI3D()})
    for _ in range(3):
        batch = torch.rand(7, 2, 3, 4, 4)
        accumulator.add(batch, batch)
    results, notes = accumulator.results()
    assert results["fvd_i3d_k400/sequences"] == 16 and results["fvd_i3d_k400"] == pytest.approx(0, abs=1e-6)
    assert any("5 of 21 sequences dropped" in note for note in notes)
    small = MetricAccumulator(["fvd_i3d_k400"], {"i3d": FakeI3D()})
    small.add(torch.rand(3, 2, 3, 4, 4), torch.rand(3, 2, 3, 4, 4))
    results, notes = small.results()
    assert "fvd_i3d_k400" not in results and "skipped" in notes[0]


def test_registry_names_say_the_protocol_and_document_a_reference():
    assert set(REGISTRY) == {"mse", "motion_mse", "psnr", "ssim", "lpips_vgg", "vgg19_cosine",
                             "fid_inception_frames", "fvd_i3d_k400", "tennis_add", "tennis_mdr"}
    for metric in REGISTRY.values():
        assert metric.reference
        if metric.function is not None:
            assert metric.function.__doc__
