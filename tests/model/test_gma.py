"""The GMA of SPEC §3.1: shifting, mask dilation, shift predictor initialisation, inpainter, composition.
Tests taking `device` run where `pytest --device` says (tests/conftest.py)."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from model.gma import (
    BACKGROUND_PADDING,
    FOREGROUND_PADDING,
    GlobalMotionAnalysis,
    Inpainter,
    ShiftPredictor,
    dilate_masks,
    shift_images,
)
from utils.config import ConfigError, GMAConfig, load_config

torch.set_num_threads(1)

HEIGHT, WIDTH = 8, 10


def _square_image() -> torch.Tensor:
    """(1, 1, 8, 10): ones on rows 2–3, columns 3–4, and a left border column of 0.5."""
    image = torch.zeros(1, 1, HEIGHT, WIDTH)
    image[0, 0, 2:4, 3:5] = 1.0
    image[0, 0, :, 0] = 0.5
    return image


def _pixels_to_shift(dx_pixels: float, dy_pixels: float) -> torch.Tensor:
    return torch.tensor([[2 * dx_pixels / WIDTH, 2 * dy_pixels / HEIGHT]])


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_a_positive_shift_moves_content_right_and_down_with_zero_padding(mode, device):
    shifted = shift_images(_square_image().to(device), _pixels_to_shift(3, 2).to(device), FOREGROUND_PADDING, mode)
    assert shifted.device == device
    expected = torch.zeros(1, 1, HEIGHT, WIDTH)
    expected[0, 0, 4:6, 6:8] = 1.0  # the square, 3 px right and 2 px down
    expected[0, 0, 2:, 3] = 0.5  # the border column moved right; the 3 columns and 2 rows that entered are zeros
    assert torch.allclose(shifted.cpu(), expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_a_negative_shift_moves_content_left_and_up_with_border_padding(mode, device):
    image = _square_image().to(device)
    shifted = shift_images(image, _pixels_to_shift(-2, -1).to(device), BACKGROUND_PADDING, mode).cpu()
    expected = torch.zeros(1, 1, HEIGHT, WIDTH)
    expected[0, 0, 1:3, 1:3] = 1.0  # 2 px left, 1 px up
    # The entering rows and columns repeat the border: the last row and the last column (zeros here).
    assert torch.allclose(shifted, expected, atol=1e-5)
    # With border padding a rightward shift repeats the left border column into the entering columns.
    shifted_right = shift_images(image, _pixels_to_shift(2, 0).to(device), BACKGROUND_PADDING, mode).cpu()
    assert torch.allclose(shifted_right[0, 0, :, :3], torch.full((HEIGHT, 3), 0.5), atol=1e-5)


def test_dilation_grows_a_pixel_into_a_three_by_three_block(device):
    mask = torch.zeros(1, 1, 5, 5)
    mask[0, 0, 2, 2] = 1
    dilated = dilate_masks(mask.to(device), 3)
    expected = torch.zeros(1, 1, 5, 5)
    expected[0, 0, 1:4, 1:4] = 1
    assert torch.equal(dilated.cpu(), expected)


def test_shift_predictors_start_near_zero_with_zero_last_weights():
    torch.manual_seed(0)
    predictor = ShiftPredictor(GMAConfig(shift_predictor_channels=[4, 4, 4, 8, 8], shift_predictor_hidden=[8, 8]))
    assert torch.equal(predictor.output.weight, torch.zeros(2, 8))
    assert 0 < predictor.output.bias.abs().max() < 1e-3
    shifts = predictor(torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16))
    assert shifts.shape == (3, 2)
    assert torch.allclose(shifts, predictor.output.bias.expand(3, 2))


def test_inpainter_keeps_the_unmasked_pixels_and_ignores_the_masked_ones(device):
    torch.manual_seed(0)
    inpainter = Inpainter(GMAConfig(inpainter_encoder_channels=[4, 4, 4, 8, 8],
                                    inpainter_decoder_channels=[8, 4, 4, 4]))
    inpainter.eval().to(device)
    frames = (torch.rand(2, 3, 16, 16) * 2 - 1).to(device)
    assert torch.equal(inpainter(frames, torch.zeros(2, 1, 16, 16, device=device)), frames)
    # A full mask replaces the whole frame with the fill value: the content no longer matters.
    full = torch.ones(2, 1, 16, 16, device=device)
    assert torch.allclose(inpainter(frames, full), inpainter(-frames, full))


def test_gma_output_shapes_and_recomposition(small_model_config, small_video, device):
    gma = GlobalMotionAnalysis(small_model_config().gma).to(device)
    small_video = small_video.to(device)
    output = gma(small_video)
    batch, length, _, height, width = small_video.shape
    for name, channels in (("masks", 1), ("foregrounds", 3), ("backgrounds", 3), ("inpainted_backgrounds", 3)):
        assert getattr(output, name).shape == (batch, length, channels, height, width), name
    for name, channels in (("shifted_foregrounds", 3), ("shifted_masks", 1), ("shifted_backgrounds", 3),
                           ("reconstructed_frames", 3)):
        assert getattr(output, name).shape == (batch, length - 1, channels, height, width), name
    assert output.foreground_shifts.shape == output.background_shifts.shape == (batch, length - 1, 2)
    assert torch.allclose(output.foregrounds, output.masks * small_video)
    assert torch.allclose(output.backgrounds + output.foregrounds, small_video, atol=1e-6)
    expected = (output.shifted_masks * output.shifted_foregrounds
                + (1 - output.shifted_masks) * output.shifted_backgrounds)
    assert torch.allclose(output.reconstructed_frames, expected)
    # f̃ₜ is fₜ moved by Δ_F,ₜ.
    first = shift_images(output.foregrounds[:, 0], output.foreground_shifts[:, 0], FOREGROUND_PADDING)
    assert torch.allclose(output.shifted_foregrounds[:, 0], first, atol=1e-6)


def test_gma_rejects_single_frames_and_wrong_channels(small_model_config):
    gma = GlobalMotionAnalysis(small_model_config().gma)
    with pytest.raises(ValueError, match="at least 2 frames"):
        gma(torch.zeros(1, 1, 3, 16, 32))
    with pytest.raises(ValueError, match="observations"):
        gma(torch.zeros(1, 2, 6, 16, 32))


def test_an_input_scale_runs_the_networks_on_smaller_frames_and_returns_full_size(small_model_config, small_video):
    """`model.gma.input_scale` (ours): the masking network, inpainter and shift predictors read frames shrunk by the
    scale; masks and inpainted backgrounds come back at full size, so fₜ = mₜ·Iₜ keeps the frame's pixels."""
    torch.manual_seed(0)
    gma = GlobalMotionAnalysis(dataclasses.replace(small_model_config().gma, input_scale=2))
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen.setdefault(name, tuple(inputs[0].shape[-2:]))
        return hook

    for name in ("masking_network", "inpainter", "foreground_shift_predictor", "background_shift_predictor"):
        getattr(gma, name).register_forward_hook(record(name))
    output = gma(small_video)
    assert set(seen.values()) == {(8, 16)} and len(seen) == 4  # 32×16 frames read at 16×8
    batch, length = small_video.shape[:2]
    assert output.masks.shape == (batch, length, 1, 16, 32)
    assert output.inpainted_backgrounds.shape == (batch, length, 3, 16, 32)
    assert output.reconstructed_frames.shape == (batch, length - 1, 3, 16, 32)
    frames = small_video.flatten(0, 1)
    expected = F.interpolate(gma.masking_network(F.avg_pool2d(frames, 2)), size=(16, 32), mode="bilinear",
                             align_corners=False)
    assert torch.allclose(output.masks.flatten(0, 1), expected, atol=1e-6)
    assert torch.allclose(output.foregrounds, output.masks * small_video)
    output.reconstructed_frames.abs().mean().backward()
    assert next(gma.masking_network.parameters()).grad.abs().sum() > 0
    gma.eval()
    with torch.no_grad():
        assert gma.masks(frames[:2]).shape == (2, 1, 16, 32)
        assert gma.generation_background(frames[:2], output.masks.flatten(0, 1)[:2].detach()).shape == (2, 3, 16, 32)


@pytest.mark.parametrize("overrides, message", [
    (["model.gma.input_scale=3"], r"model\.gma\.input_scale: must be 1, 2 or 4"),
    (["data.input_size=[80, 48]", "model.gma.input_scale=4"], r"data\.input_size: .*the inpainter")])
def test_a_bad_input_scale_is_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config = load_config("configs/wsprites-tiny.yaml", overrides=overrides)
        config.model.state_resolution(config.data.input_size)
    config = load_config("configs/wsprites-tiny.yaml",
                         overrides=["data.input_size=[80, 48]", "model.gma.input_scale=2"])
    assert config.model.state_resolution(config.data.input_size) == (6, 10)
