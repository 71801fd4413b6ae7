"""The twelve loss terms (SPEC §4.1) on hand-computed examples, their weighting, the warm-up
variants, and the gradient isolation of the LMA terms from the GMA on a real small model.
Tests taking `device` run where `pytest --device` says (tests/conftest.py); their references
are computed on the CPU."""
import dataclasses
from typing import List, Optional

import numpy as np
import pytest
import torch
from torch import nn

from model.glass import Glass, GlassOutput
from model.gma import GMAOutput
from model.lma import LMAOutput
from model.losses import GlassLoss, LossResult, action_slowness, code_switches
from model.vgg import VGGFeatures, build_vgg_features
from utils.config import GMA_LOSS_NAMES, LOSS_NAMES, LossConfig, LossWeightsConfig

torch.set_num_threads(1)

LMA_NAMES = tuple(name for name in LOSS_NAMES if name not in GMA_LOSS_NAMES)
RELU_X_1_INDICES = (1, 6, 11, 20, 29)


# --------------------------------------------------------------------------- builders

def only(*names: str, weight: float = 1.0) -> LossConfig:
    """A LossConfig whose named terms have `weight` and all others 0."""
    return LossConfig(weights=LossWeightsConfig(**{name: (weight if name in names else 0.0) for name in LOSS_NAMES}))


def fake_gma(masks, foregrounds=None, inpainted=None, shifted_foregrounds=None, shifted_backgrounds=None,
             reconstructed=None) -> GMAOutput:
    """A GMAOutput with the given tensors; the others zeros of the right shapes. masks (B, T, 1, H, W)."""
    batch, length, _, height, width = masks.shape
    frames = torch.zeros(batch, length, 3, height, width, dtype=masks.dtype)
    pairs = torch.zeros(batch, length - 1, 3, height, width, dtype=masks.dtype)
    return GMAOutput(
        masks=masks,
        foregrounds=frames if foregrounds is None else foregrounds,
        backgrounds=frames.clone(),
        inpainted_backgrounds=frames if inpainted is None else inpainted,
        foreground_shifts=torch.zeros(batch, length - 1, 2, dtype=masks.dtype),
        background_shifts=torch.zeros(batch, length - 1, 2, dtype=masks.dtype),
        shifted_foregrounds=pairs if shifted_foregrounds is None else shifted_foregrounds,
        shifted_masks=torch.zeros(batch, length - 1, 1, height, width, dtype=masks.dtype),
        shifted_backgrounds=pairs if shifted_backgrounds is None else shifted_backgrounds,
        reconstructed_frames=pairs if reconstructed is None else reconstructed,
    )


def fake_lma(generated: List[torch.Tensor], generated_masks: torch.Tensor, states: torch.Tensor,
             reencoded: torch.Tensor, vq_loss: Optional[torch.Tensor]) -> LMAOutput:
    batch, steps = generated_masks.shape[:2]
    return LMAOutput(states=states, action_codes=torch.zeros(batch, steps, 4, dtype=states.dtype),
                     action_ids=torch.zeros(batch, steps, dtype=torch.long), action_vq_loss=vq_loss,
                     generated_foregrounds=generated, generated_masks=generated_masks, reencoded_states=reencoded,
                     num_ground_truth_steps=1)


def random_example(batch=2, length=3, size=4, seed=0, dtype=torch.float64):
    """Observations and a full fake GlassOutput filled with seeded random values (3 decoder scales)."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape, low=-1.0, high=1.0):
        return (torch.rand(*shape, generator=generator, dtype=dtype) * (high - low) + low)

    steps = length - 1
    observations = uniform(batch, length, 3, size, size)
    masks = uniform(batch, length, 1, size, size, low=0.0)
    gma = fake_gma(masks, foregrounds=uniform(batch, length, 3, size, size),
                   inpainted=uniform(batch, length, 3, size, size),
                   shifted_foregrounds=uniform(batch, steps, 3, size, size),
                   shifted_backgrounds=uniform(batch, steps, 3, size, size),
                   reconstructed=uniform(batch, steps, 3, size, size))
    generated = [uniform(batch, steps, 3, size // 2 ** k, size // 2 ** k) for k in range(3)]
    lma = fake_lma(generated, uniform(batch, steps, 1, size, size, low=0.0), uniform(batch, length, 5, 2, 2),
                   uniform(batch, steps, 5, 2, 2), torch.tensor(0.37, dtype=dtype))
    return observations, GlassOutput(gma=gma, lma=lma)


def moved(value, device: torch.device):
    """A copy of `value` (a tensor, a list of tensors, or a GMAOutput / LMAOutput / GlassOutput) with every tensor on
    `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list):
        return [moved(item, device) for item in value]
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value, **{field.name: moved(getattr(value, field.name), device)
                                             for field in dataclasses.fields(value)})
    return value


# --------------------------------------------------------------------------- references (numpy, explicit loops)

def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """(C, H, W) → (C, H/f, W/f) as the authors resize (bilinear, align_corners=False, no antialiasing): output
    pixel y samples the input at (y + ½)·f − ½, i.e. the mean of the central 2×2 of its f×f block (f = 2: the
    whole block; f = 4: rows and columns 4y+1, 4y+2)."""
    if factor == 1:
        return image.astype(np.float64)
    channels, height, width = image.shape
    out = np.zeros((channels, height // factor, width // factor))
    low = factor // 2 - 1
    for c in range(channels):
        for y in range(height // factor):
            for x in range(width // factor):
                top, left = y * factor + low, x * factor + low
                out[c, y, x] = image[c, top:top + 2, left:left + 2].mean()
    return out


def reference_reconstruction(observations, reconstructed, epsilon):
    X, R = observations.numpy(), reconstructed.numpy()
    batch, length, channels, height, width = X.shape
    total, count = 0.0, 0
    for b in range(batch):
        for t in range(length - 1):
            previous = X[b, 0] if t == 0 else R[b, t - 1]
            for y in range(height):
                for x in range(width):
                    weight = sum(abs(X[b, t + 1, c, y, x] - X[b, t, c, y, x])
                                 + abs(R[b, t, c, y, x] - previous[c, y, x])
                                 for c in range(channels)) + epsilon
                    for c in range(channels):
                        total += weight * abs(X[b, t + 1, c, y, x] - R[b, t, c, y, x])
                        count += 1
    return total / count


def reference_multiscale(foregrounds, shifted_foregrounds, generated, local: bool):
    f = foregrounds.numpy()
    f_shifted = shifted_foregrounds.numpy()
    g = [scale.numpy() for scale in generated]
    batch, length, channels, height, width = f.shape
    per_scale = []
    for k, scale in enumerate(g):
        factor = 2 ** k
        total, count = 0.0, 0
        for b in range(batch):
            for t in range(length - 1):
                full_weight = np.zeros((1, height, width))
                for y in range(height):
                    for x in range(width):
                        for c in range(channels):
                            if local:
                                full_weight[0, y, x] += (abs(f[b, t + 1, c, y, x] - f_shifted[b, t, c, y, x])
                                                         + abs(f[b, t + 1, c, y, x] - g[0][b, t, c, y, x]))
                            else:
                                previous = f[b, 0, c, y, x] if t == 0 else g[0][b, t - 1, c, y, x]
                                full_weight[0, y, x] += (abs(f[b, t + 1, c, y, x] - f[b, t, c, y, x])
                                                         + abs(g[0][b, t, c, y, x] - previous))
                weight = block_mean(full_weight, factor)
                target = block_mean(f[b, t + 1], factor)
                for c in range(channels):
                    for y in range(height // factor):
                        for x in range(width // factor):
                            total += weight[0, y, x] * abs(target[c, y, x] - scale[b, t, c, y, x])
                            count += 1
        per_scale.append(total / count)
    return sum(per_scale) / len(per_scale)


def reference_vgg_maps(vgg: VGGFeatures, images: torch.Tensor) -> List[torch.Tensor]:
    """The relu*_1 outputs by running torchvision's layers one by one."""
    maps, features = [], images
    for index, layer in enumerate(layer for part in vgg.slices for layer in part):
        features = layer(features)
        if index in RELU_X_1_INDICES:
            maps.append(features)
    return maps


def reference_perceptual(vgg, images_a, images_b) -> float:
    with torch.no_grad():
        return sum(float((a - b).abs().mean()) for a, b in
                   zip(reference_vgg_maps(vgg, images_a.float()), reference_vgg_maps(vgg, images_b.float())))


@pytest.fixture(scope="module")
def vgg(device) -> VGGFeatures:
    """VGG19's features with seeded random weights, on `device`."""
    torch.manual_seed(0)
    return build_vgg_features(LossConfig(), random_weights=True).to(device)


# --------------------------------------------------------------------------- hand-computed examples

def test_reconstruction_by_hand():
    # I₀ = 0, I₁ = 0.5, Î₁ = 0.25 everywhere: w = 3·(0.5 + 0.25) + 0.001 = 2.251; loss = 2.251 · 0.25.
    observations = torch.zeros(1, 2, 3, 2, 2)
    observations[:, 1] = 0.5
    output = GlassOutput(gma=fake_gma(torch.zeros(1, 2, 1, 2, 2), reconstructed=torch.full((1, 1, 3, 2, 2), 0.25)),
                         lma=None)
    result = GlassLoss(only("reconstruction_loss"), None)(observations, output)
    assert result.terms["reconstruction_loss"].item() == pytest.approx(2.251 * 0.25)
    assert result.total.item() == pytest.approx(2.251 * 0.25)


def test_mask_terms_by_hand():
    masks = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.2, 0.9, 0.0]]).view(1, 2, 1, 2, 2)
    output = GlassOutput(gma=fake_gma(masks), lma=None)
    result = GlassLoss(only("binary_mask_loss", "mask_size_loss"), None)(torch.zeros(1, 2, 3, 2, 2), output)
    # min(m, 1−m): 0,0,0,0 and 0.5,0.2,0.1,0 → 0.8 / 8.
    assert result.terms["binary_mask_loss"].item() == pytest.approx(0.1)
    # pixel means 0.25 and 0.4 → |0.25 − 0.06| = 0.19 and |0.4 − 0.06| = 0.34 → mean 0.265.
    assert result.terms["mask_size_loss"].item() == pytest.approx(0.265)


def test_foreground_background_and_lma_l1_terms_by_hand():
    foregrounds = torch.zeros(1, 2, 3, 1, 1)
    foregrounds[0, 1] = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
    shifted_foregrounds = torch.zeros(1, 1, 3, 1, 1)  # errors 1, 2, 3 → MSE (1 + 4 + 9) / 3
    inpainted = torch.zeros(1, 2, 3, 1, 1)
    inpainted[0, 1] = torch.tensor([0.5, -0.5, 1.0]).view(3, 1, 1)
    shifted_backgrounds = torch.zeros(1, 1, 3, 1, 1)  # L1 (0.5 + 0.5 + 1) / 3
    masks = torch.tensor([0.2, 0.7]).view(1, 2, 1, 1, 1)
    gma = fake_gma(masks, foregrounds=foregrounds, inpainted=inpainted, shifted_foregrounds=shifted_foregrounds,
                   shifted_backgrounds=shifted_backgrounds)
    states = torch.tensor([9.0, 9.0, 1.0, 2.0]).view(1, 2, 2, 1, 1)  # φ₁ = (1, 2)
    reencoded = torch.tensor([0.0, 4.0]).view(1, 1, 2, 1, 1)  # |0 − 1| + |4 − 2| → 1.5
    generated_masks = torch.tensor([0.4]).view(1, 1, 1, 1, 1)  # |0.4 − 0.7| = 0.3
    lma = fake_lma([torch.zeros(1, 1, 3, 1, 1)], generated_masks, states, reencoded, torch.tensor(0.25))
    names = ("foreground_loss", "background_loss", "local_state_reconstruction_loss", "local_action_vq_loss",
             "mask_reconstruction_loss")
    result = GlassLoss(only(*names), None)(torch.zeros(1, 2, 3, 1, 1), GlassOutput(gma=gma, lma=lma))
    expected = {"foreground_loss": 14 / 3, "background_loss": 2 / 3, "local_state_reconstruction_loss": 1.5,
                "local_action_vq_loss": 0.25, "mask_reconstruction_loss": 0.3}
    assert {name: pytest.approx(result.terms[name].item()) for name in names} == expected


def test_multiscale_by_hand():
    # One sequence of 2 frames of 2×2, a single channel's worth of content in channel 0 (others zero).
    foregrounds = torch.zeros(1, 2, 3, 2, 2)
    foregrounds[0, 1, 0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # f₁; f₀ = 0
    full = torch.zeros(1, 1, 3, 2, 2)
    full[0, 0, 0] = torch.tensor([[0.5, 0.0], [0.0, 0.5]])  # f̂₁ at full size
    half = torch.zeros(1, 1, 3, 1, 1)
    half[0, 0, 0] = 0.5  # f̂₁ at 1/2
    shifted = torch.zeros(1, 1, 3, 2, 2)  # f̃₀ = 0
    gma = fake_gma(torch.zeros(1, 2, 1, 2, 2), foregrounds=foregrounds, shifted_foregrounds=shifted)
    lma = fake_lma([full, half], torch.zeros(1, 1, 1, 2, 2), torch.zeros(1, 2, 1, 1, 1), torch.zeros(1, 1, 1, 1, 1),
                   None)
    result = GlassLoss(only("multiscale_global_reconstruction_loss", "multiscale_local_reconstruction_loss"), None)(
        torch.zeros(1, 2, 3, 2, 2), GlassOutput(gma=gma, lma=lma))
    # Global w = |f₁ − f₀| + |f̂₁ − f₀| (f̂₀ := f₀ = 0) summed over channels: [[1.5, 0], [0, 0.5]].
    # Full scale: |f₁ − f̂₁| channel 0 = [[0.5, 0], [0, 0.5]] → (1.5·0.5 + 0.5·0.5) / 12 = 1/12.
    # Half scale: w → 0.5, f₁ → 0.25, |0.25 − 0.5| = 0.25 in channel 0 only → 0.5·0.25 / 3 = 1/24.
    assert result.terms["multiscale_global_reconstruction_loss"].item() == pytest.approx((1 / 12 + 1 / 24) / 2)
    # Local w = |f₁ − f̃₀| + |f₁ − f̂₁| = [[1.5, 0], [0, 0.5]] as well here: the same value.
    assert result.terms["multiscale_local_reconstruction_loss"].item() == pytest.approx((1 / 12 + 1 / 24) / 2)


def test_local_change_weight_adds_to_the_weights_of_the_changed_pixels_only():
    """As test_multiscale_by_hand, with loss.local_change_weight 2: pixel (0, 0) changes (|f₁ − f̃₀| = 1 > 0.1), so
    its local weight 1.5 becomes 3.5; pixel (1, 1) does not change (its weight 0.5 is the error term alone)."""
    import dataclasses

    foregrounds = torch.zeros(1, 2, 3, 2, 2)
    foregrounds[0, 1, 0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    full = torch.zeros(1, 1, 3, 2, 2)
    full[0, 0, 0] = torch.tensor([[0.5, 0.0], [0.0, 0.5]])
    gma = fake_gma(torch.zeros(1, 2, 1, 2, 2), foregrounds=foregrounds, shifted_foregrounds=torch.zeros(1, 1, 3, 2, 2))
    lma = fake_lma([full], torch.zeros(1, 1, 1, 2, 2), torch.zeros(1, 2, 1, 1, 1), torch.zeros(1, 1, 1, 1, 1), None)
    config = only("multiscale_local_reconstruction_loss")
    plain = GlassLoss(config, None)(torch.zeros(1, 2, 3, 2, 2), GlassOutput(gma=gma, lma=lma))
    heavier = GlassLoss(dataclasses.replace(config, local_change_weight=2.0), None)(
        torch.zeros(1, 2, 3, 2, 2), GlassOutput(gma=gma, lma=lma))
    assert plain.terms["multiscale_local_reconstruction_loss"].item() == pytest.approx((1.5 * 0.5 + 0.5 * 0.5) / 12)
    assert heavier.terms["multiscale_local_reconstruction_loss"].item() == pytest.approx((3.5 * 0.5 + 0.5 * 0.5) / 12)



def test_transition_weights_multiply_the_local_weights_of_their_transition():
    """benchmarks/lma_alone.py --switch-weight: per-transition factors (B, T−1) multiply the local motion weights,
    so a transition with factor 3 counts three times and one with factor 0 not at all."""
    observations, output = random_example(batch=2, length=3)
    loss = GlassLoss(only("multiscale_local_reconstruction_loss"), None)
    plain = loss.multiscale_local_reconstruction_loss(output.gma, output.lma)
    ones = torch.ones(2, 2, dtype=torch.float64)
    assert loss.multiscale_local_reconstruction_loss(output.gma, output.lma, ones).item() == pytest.approx(plain.item())
    assert loss.multiscale_local_reconstruction_loss(output.gma, output.lma, 3 * ones).item() == pytest.approx(
        3 * plain.item())
    first, second = (torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64),
                     torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=torch.float64))
    parts = [loss.multiscale_local_reconstruction_loss(output.gma, output.lma, part).item() for part in (first, second)]
    assert parts[0] > 0 and parts[1] > 0
    assert sum(parts) == pytest.approx(plain.item())


def test_code_switches_are_where_the_inferred_id_changes_from_the_previous_transition():
    ids = torch.tensor([[0, 0, 3, 3, 1], [2, 5, 5, 2, 2]])
    expected = torch.tensor([[False, False, True, False, True], [False, True, False, True, False]])
    assert torch.equal(code_switches(ids), expected)
    assert not code_switches(torch.tensor([[4], [1]])).any()  # one transition: nothing to compare with
    with pytest.raises(ValueError, match="action ids must be"):
        code_switches(torch.zeros(2, 3, 1, dtype=torch.long))


def test_code_switch_weight_multiplies_the_transitions_whose_code_changed():
    """loss.code_switch_weight 4: with ids [[0, 1], [2, 2]] only the second transition of the first window has a
    new code, so the local term equals the plain one with transition weights [[1, 4], [1, 1]]; 1 is the authors'."""
    observations, output = random_example(batch=2, length=3)
    lma = dataclasses.replace(output.lma, action_ids=torch.tensor([[0, 1], [2, 2]]))
    config = only("multiscale_local_reconstruction_loss")
    plain = GlassLoss(config, None)
    heavier = GlassLoss(dataclasses.replace(config, code_switch_weight=4.0), None)
    expected = plain.multiscale_local_reconstruction_loss(
        output.gma, lma, torch.tensor([[1.0, 4.0], [1.0, 1.0]], dtype=torch.float64))
    value = heavier.multiscale_local_reconstruction_loss(output.gma, lma)
    assert value.item() == pytest.approx(expected.item())
    assert value.item() > plain.multiscale_local_reconstruction_loss(output.gma, lma).item()
    same = dataclasses.replace(output.lma, action_ids=torch.tensor([[1, 1], [2, 2]]))  # no code changes
    assert heavier.multiscale_local_reconstruction_loss(output.gma, same).item() == pytest.approx(
        plain.multiscale_local_reconstruction_loss(output.gma, same).item())


@pytest.mark.parametrize("name, weight_key", [("action_choice_loss", "action_choice_weight"),
                                               ("action_matching_loss", "action_matching_weight"),
                                               ("mask_prediction_loss", "action_mask_prediction_weight")])
def test_an_opt_in_lma_term_enters_the_total_with_its_weight_and_is_logged(name, weight_key):
    """model.lma.winner_take_all, action_matching and action_mask_predictor: the LMA's extra term joins the LMA total
    times its loss weight (2 here), scaled with the LMA's terms, and is logged under its own name; absent when the
    LMA gives none."""
    observations, output = random_example()
    config = dataclasses.replace(only("mask_reconstruction_loss"), **{weight_key: 2.0})
    plain = GlassLoss(config, None)(observations, output)
    extra = dataclasses.replace(output.lma, **{name: torch.tensor(0.3, dtype=torch.float64)})
    with_term = GlassLoss(config, None)(observations, GlassOutput(gma=output.gma, lma=extra))
    assert name not in plain.terms
    assert with_term.terms[name].item() == pytest.approx(0.3)
    assert (with_term.total - plain.total).item() == pytest.approx(2.0 * 0.3)
    scaled = GlassLoss(config, None)(observations, GlassOutput(gma=output.gma, lma=extra), lma_loss_scale=0.0)
    assert (scaled.total - GlassLoss(config, None)(observations, output, lma_loss_scale=0.0).total).item() == 0.0


def straight_through(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The VQ's codes for `vectors` z (…, D): the nearest row of `codebook` (K, D) in value, z's gradient."""
    nearest = codebook[torch.cdist(vectors.flatten(0, -2), codebook).argmin(dim=1)].view_as(vectors)
    return vectors + (nearest - vectors).detach()


def test_action_slowness_by_hand_and_its_extremes():
    """loss.action_slowness_weight: E‖zₜ₊₁ − zₜ‖² / (2·E‖z − z̄‖²) on z itself, not on the quantised codes; 0 for
    z constant in each window, about 1 for z drawn independently, the same for z scaled; None for one transition."""
    codebook = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = torch.tensor([[[0.0, 0, 0, 0], [1, 0, 0, 0], [1, 2, 0, 0]],
                      [[0.0, 0, 0, 3], [0, 0, 0, 3], [0, 0, 0, 0]]], dtype=torch.float64)
    change = (1 + 4 + 0 + 9) / 4
    spread = ((z - z.flatten(0, 1).mean(0)) ** 2).sum(2).mean()
    value = action_slowness(straight_through(z, codebook), z)
    assert value.item() == pytest.approx(change / (2 * spread.item()))
    constant = torch.randn(8, 1, 4, dtype=torch.float64).expand(8, 5, 4)
    assert action_slowness(straight_through(constant, codebook), constant).item() == pytest.approx(0.0, abs=1e-12)
    independent = torch.randn(256, 5, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert action_slowness(independent, independent).item() == pytest.approx(1.0, abs=0.05)
    assert action_slowness(10 * independent, 10 * independent).item() == pytest.approx(
        action_slowness(independent, independent).item())
    assert action_slowness(z[:, :1], z[:, :1]) is None
    with pytest.raises(ValueError, match="action codes and vectors"):
        action_slowness(z, z[:, :2])


def test_action_slowness_trains_z_through_the_straight_through_codes():
    """The gradient reaches z as if the term were taken on z directly (the codes' value is the codebook rows), and
    following it makes z slower within the windows."""
    generator = torch.Generator().manual_seed(3)
    codebook = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    z = torch.randn(4, 5, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    action_slowness(straight_through(z, codebook), z.detach()).backward()
    direct = z.detach().clone().requires_grad_(True)
    action_slowness(direct, direct.detach()).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert torch.allclose(z.grad, direct.grad)
    before = action_slowness(z, z).item()
    with torch.no_grad():
        z -= 0.1 * z.grad
    assert action_slowness(z, z).item() < before


def test_action_slowness_enters_the_total_with_its_weight_and_is_logged():
    observations, output = random_example(batch=3, length=4)
    z = torch.randn(3, 3, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    lma = dataclasses.replace(output.lma, action_codes=z, action_vectors=z)
    config = only("mask_reconstruction_loss")
    plain = GlassLoss(config, None)(observations, GlassOutput(gma=output.gma, lma=lma))
    slow = GlassLoss(dataclasses.replace(config, action_slowness_weight=0.5), None)(
        observations, GlassOutput(gma=output.gma, lma=lma))
    assert "action_slowness_loss" not in plain.terms
    assert slow.terms["action_slowness_loss"].item() == pytest.approx(action_slowness(z, z).item())
    assert (slow.total - plain.total).item() == pytest.approx(0.5 * action_slowness(z, z).item())

# --------------------------------------------------------------------------- random examples against loops

def test_every_non_perceptual_term_against_loops(device):
    observations, output = random_example()
    names = [name for name in LOSS_NAMES if "perceptual" not in name]
    config = only(*names)
    result = GlassLoss(config, None)(observations.to(device), moved(output, device))
    assert result.total.device == device
    assert set(result.terms) == set(names)
    gma, lma = output.gma, output.lma
    m, f = gma.masks.numpy(), gma.foregrounds.numpy()
    expected = {
        "reconstruction_loss": reference_reconstruction(observations, gma.reconstructed_frames, 0.001),
        "foreground_loss": float(np.mean((f[:, 1:] - gma.shifted_foregrounds.numpy()) ** 2)),
        "background_loss": float(np.mean(np.abs(gma.inpainted_backgrounds.numpy()[:, 1:]
                                                - gma.shifted_backgrounds.numpy()))),
        "binary_mask_loss": float(np.mean(np.minimum(m, 1 - m))),
        "mask_size_loss": float(np.mean([abs(m[b, t].mean() - 0.06) for b in range(m.shape[0])
                                         for t in range(m.shape[1])])),
        "multiscale_global_reconstruction_loss": reference_multiscale(gma.foregrounds, gma.shifted_foregrounds,
                                                                      lma.generated_foregrounds, local=False),
        "multiscale_local_reconstruction_loss": reference_multiscale(gma.foregrounds, gma.shifted_foregrounds,
                                                                     lma.generated_foregrounds, local=True),
        "local_state_reconstruction_loss": float(np.mean(np.abs(lma.states.numpy()[:, 1:]
                                                                - lma.reencoded_states.numpy()))),
        "local_action_vq_loss": 0.37,
        "mask_reconstruction_loss": float(np.mean(np.abs(lma.generated_masks.numpy() - m[:, 1:]))),
    }
    for name in names:
        assert result.terms[name].item() == pytest.approx(expected[name], rel=1e-10), name
    assert result.total.item() == pytest.approx(sum(expected.values()), rel=1e-10)


def test_epsilon_comes_from_the_config():
    observations, output = random_example(seed=4)
    result = GlassLoss(dataclasses.replace(only("reconstruction_loss"), motion_weight_epsilon=0.5), None)(
        observations, output)
    expected = reference_reconstruction(observations, output.gma.reconstructed_frames, 0.5)
    assert result.terms["reconstruction_loss"].item() == pytest.approx(expected, rel=1e-10)


def test_perceptual_terms_against_layer_by_layer_vgg(vgg, device):
    observations, output = random_example(batch=1, length=2, size=64, seed=5, dtype=torch.float32)
    observations, output = observations.to(device), moved(output, device)
    result = GlassLoss(only("background_perceptual_loss", "multiscale_local_perceptual_loss"), vgg)(
        observations, output)
    gma, lma = output.gma, output.lma
    background = reference_perceptual(vgg, gma.inpainted_backgrounds[:, 1].contiguous(), gma.shifted_backgrounds[:, 0])
    targets = gma.foregrounds[:, 1]  # (1, 3, 64, 64)
    per_scale = []
    for k, scale in enumerate(lma.generated_foregrounds):
        factor = 2 ** k
        resized = torch.from_numpy(block_mean(targets[0].double().cpu().numpy(), factor)).float()[None].to(device)
        per_scale.append(reference_perceptual(vgg, resized, scale[:, 0]))
    assert result.terms["background_perceptual_loss"].item() == pytest.approx(background, rel=1e-4)
    assert result.terms["multiscale_local_perceptual_loss"].item() == pytest.approx(sum(per_scale) / 3, rel=1e-4)


def test_identical_inputs_have_zero_perceptual_loss(vgg, device):
    _, output = random_example(batch=1, length=2, size=16, seed=6, dtype=torch.float32)
    output = moved(output, device)
    gma = dataclasses.replace(output.gma, shifted_backgrounds=output.gma.inpainted_backgrounds[:, 1:].clone())
    result = GlassLoss(only("background_perceptual_loss"), vgg)(torch.zeros(1, 2, 3, 16, 16, device=device),
                                                                GlassOutput(gma=gma, lma=None))
    assert result.terms["background_perceptual_loss"].item() == 0.0


# --------------------------------------------------------------------------- weights, warm-up, scale

def test_weights_multiply_and_zero_weights_skip():
    observations, output = random_example(seed=1)
    unit = GlassLoss(only(*[n for n in LOSS_NAMES if "perceptual" not in n]), None)(observations, output)
    weights = {name: 0.0 if "perceptual" in name else 0.1 * (index + 1) for index, name in enumerate(LOSS_NAMES)}
    weights["background_loss"] = 0.0
    weighted = GlassLoss(LossConfig(weights=LossWeightsConfig(**weights)), None)(observations, output)
    computed = {name for name, weight in weights.items() if weight > 0}
    assert set(weighted.terms) == computed  # zero weights: absent (and with vgg None, no VGG pass was attempted)
    expected_total = sum(weights[name] * unit.terms[name].item() for name in computed)
    assert weighted.total.item() == pytest.approx(expected_total, rel=1e-10)
    assert all(not value.requires_grad and value.dim() == 0 for value in weighted.terms.values())


def test_perceptual_weight_without_vgg_is_refused():
    assert GlassLoss.needs_vgg(LossConfig())
    assert not GlassLoss.needs_vgg(only("reconstruction_loss"))
    with pytest.raises(ValueError, match="VGG"):
        GlassLoss(LossConfig(), None)
    with pytest.raises(ValueError, match="VGG"):
        GlassLoss(only("multiscale_local_perceptual_loss"), None)


def test_warmup_without_lma_gives_the_six_gma_terms(vgg, device):
    observations, output = random_example(batch=1, length=2, size=16, seed=2, dtype=torch.float32)
    result = GlassLoss(LossConfig(), vgg)(observations.to(device), moved(dataclasses.replace(output, lma=None), device))
    assert set(result.terms) == set(GMA_LOSS_NAMES)
    weights = LossWeightsConfig()
    expected = sum(getattr(weights, name) * result.terms[name].item() for name in GMA_LOSS_NAMES)
    assert result.total.item() == pytest.approx(expected, rel=1e-5)


def test_lma_loss_scale(vgg, device):
    observations, output = random_example(batch=1, length=2, size=64, seed=3, dtype=torch.float32)
    observations, output = observations.to(device), moved(output, device)
    loss = GlassLoss(LossConfig(), vgg)
    weights = LossWeightsConfig()

    def part(result: LossResult, names) -> float:
        return sum(getattr(weights, name) * result.terms[name].item() for name in names)

    full = loss(observations, output)
    assert set(full.terms) == set(LOSS_NAMES)
    assert full.total.item() == pytest.approx(part(full, LOSS_NAMES), rel=1e-5)
    zero = loss(observations, output, lma_loss_scale=0.0)
    assert set(zero.terms) == set(LOSS_NAMES)  # the LMA terms are still computed and logged
    assert zero.total.item() == pytest.approx(part(zero, GMA_LOSS_NAMES), rel=1e-5)
    half = loss(observations, output, lma_loss_scale=0.5)
    assert half.total.item() == pytest.approx(part(half, GMA_LOSS_NAMES) + 0.5 * part(half, LMA_NAMES), rel=1e-5)


def test_gumbel_ablation_has_no_vq_term():
    observations, output = random_example(seed=7)
    output = GlassOutput(gma=output.gma, lma=dataclasses.replace(output.lma, action_vq_loss=None))
    result = GlassLoss(only(*LMA_NAMES[:2], "local_action_vq_loss"), None)(observations, output)
    assert set(result.terms) == set(LMA_NAMES[:2])


# --------------------------------------------------------------------------- gradients on a real model

def _gradients(total: torch.Tensor, parameters: List[nn.Parameter]) -> List[Optional[torch.Tensor]]:
    return list(torch.autograd.grad(total, parameters, allow_unused=True, retain_graph=True))


def _is_zero(gradient: Optional[torch.Tensor]) -> bool:
    return gradient is None or bool((gradient == 0).all())


def test_lma_terms_do_not_reach_the_gma_and_gma_terms_do(small_model_config, vgg, device):
    torch.manual_seed(0)
    model = Glass(small_model_config(), [64, 64]).train().to(device)  # 64×64: the 1/4 decoder scale is VGG's minimum 16
    observations = (torch.rand(2, 3, 3, 64, 64) * 2 - 1).to(device)
    output = model(observations, num_ground_truth_steps=1)
    assert output.gma.masks.requires_grad and output.gma.foregrounds.requires_grad  # the targets carry a graph
    gma_modules = {"masking network": model.gma.masking_network,
                   "foreground shift predictor": model.gma.foreground_shift_predictor,
                   "background shift predictor": model.gma.background_shift_predictor,
                   "inpainter": model.gma.inpainter}
    gma_parameters = list(model.gma.parameters())
    lma_parameters = list(model.lma.parameters())

    lma_result = GlassLoss(only(*LMA_NAMES), vgg)(observations, output)
    assert set(lma_result.terms) == set(LMA_NAMES)
    assert all(_is_zero(g) for g in _gradients(lma_result.total, gma_parameters))
    assert not all(_is_zero(g) for g in _gradients(lma_result.total, lma_parameters))
    for name in LMA_NAMES:  # each term on its own, so that none hides behind another
        single = GlassLoss(only(name), vgg)(observations, output)
        assert all(_is_zero(g) for g in _gradients(single.total, gma_parameters)), name

    gma_result = GlassLoss(only(*GMA_LOSS_NAMES), vgg)(observations, output)
    assert all(_is_zero(g) for g in _gradients(gma_result.total, lma_parameters))
    for module_name, module in gma_modules.items():
        gradients = _gradients(gma_result.total, list(module.parameters()))
        assert not all(_is_zero(g) for g in gradients), module_name
    assert all(parameter.grad is None for parameter in vgg.parameters())
