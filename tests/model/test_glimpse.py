"""`model.lma.glimpse` (ours, opt-in): boxes around the character, cutting and pasting, the memory moving with the box,
the losses inside the boxes, generation and play in boxes."""
import dataclasses

import pytest
import torch

from model.generation import (
    glimpse_unroll,
    play_step,
    reconstruct,
    start_play,
    transition_motion,
    video_code_effect_errors,
)
from model.glass import Glass
from model.glimpse import GlimpseBoxes, crop, paste, translate_states, window_boxes
from model.gma import FOREGROUND_PADDING, shift_images
from model.losses import GlassLoss, resize
from tests.small_model import small_model_config
from utils.config import ConfigError, LossConfig, load_config

torch.set_num_threads(2)

FRAME = [64, 32]  # [W, H] of the generation and loss tests; the glimpse is [32, 16]: state 2×4, half 1×2
GLIMPSE = [32, 16]


def _blob_masks(rows, columns, length=3, size=(96, 128)) -> torch.Tensor:
    """(1, length, 1, H, W) masks: frame t is 1 on rows × columns[t]."""
    masks = torch.zeros(1, length, 1, *size)
    for t in range(length):
        masks[0, t, 0, rows[0]:rows[1], columns[t][0]:columns[t][1]] = 1
    return masks


def test_window_boxes_centre_the_union_of_a_windows_masks_on_the_grid_inside_the_frame():
    moving = _blob_masks((30, 51), [(70, 81), (75, 86), (80, 91)])  # union rows 30–50, columns 70–90
    empty = torch.zeros(1, 3, 1, 96, 128)
    at_edge = _blob_masks((60, 96), [(120, 128)] * 3)
    boxes = window_boxes(torch.cat([moving, empty, at_edge]), size=(48, 64), grid=16)
    # centres (40.5, 80.5), (48, 64), (78, 124); corner = centre − half the box, to the nearest multiple of 16, clamped
    assert boxes.tops == [16, 32, 48] and boxes.lefts == [48, 32, 64]
    assert boxes.size == (48, 64) and boxes.frame_size == (96, 128)
    one_frame = window_boxes(moving[:, 0], size=(48, 64), grid=16)  # (B, 1, H, W): one frame per window
    assert one_frame.tops == [16] and one_frame.lefts == [48]
    with pytest.raises(ValueError, match="does not fit"):
        window_boxes(moving, size=(112, 64), grid=16)


def test_crop_and_paste_invert_each_other_and_commute_with_the_losses_resizing():
    generator = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 3, 3, 96, 128, generator=generator)
    boxes = GlimpseBoxes(tops=[16, 48], lefts=[0, 64], size=(48, 64), frame_size=(96, 128), grid=16)
    cut = crop(frames, boxes)
    assert cut.shape == (2, 3, 3, 48, 64)
    assert torch.equal(cut[1], frames[1, ..., 48:96, 64:128])
    pasted = paste(cut, boxes)
    assert torch.equal(crop(pasted, boxes), cut)
    outside = torch.ones_like(pasted, dtype=torch.bool)
    outside[0, ..., 16:64, 0:64] = False
    outside[1, ..., 48:96, 64:128] = False
    assert pasted[outside].abs().sum() == 0
    for factor in (2, 4):  # the decoder's smaller scales: cutting the resized frame = resizing the cut
        small = resize(frames, (96 // factor, 128 // factor))
        assert torch.allclose(crop(small, boxes), resize(cut, (48 // factor, 64 // factor)), atol=1e-6)
        assert torch.equal(crop(paste(crop(small, boxes), boxes), boxes), crop(small, boxes))


def test_shifts_in_box_units_move_the_same_pixels():
    boxes = GlimpseBoxes(tops=[32], lefts=[32], size=(48, 64), frame_size=(96, 128), grid=16)
    shift = torch.tensor([[0.125, -0.25]])  # 8 px right, 12 px up
    assert torch.allclose(boxes.to_box_shifts(shift), torch.tensor([[0.25, -0.5]]))
    assert torch.allclose(boxes.to_frame_shifts(boxes.to_box_shifts(shift)), shift)
    image = torch.zeros(1, 1, 96, 128)
    image[..., 50:60, 60:70] = 1  # well inside the box before and after the move
    in_frame = crop(shift_images(image, shift, FOREGROUND_PADDING), boxes)
    in_box = shift_images(crop(image, boxes), boxes.to_box_shifts(shift), FOREGROUND_PADDING)
    assert torch.allclose(in_frame, in_box, atol=1e-5)
    assert in_box.sum() > 99


def test_the_memory_moves_with_the_box_by_whole_cells_and_new_cells_take_the_initial_state():
    old = GlimpseBoxes(tops=[0, 16], lefts=[0, 16], size=(32, 32), frame_size=(64, 64), grid=16)
    new = GlimpseBoxes(tops=[16, 16], lefts=[0, 0], size=(32, 32), frame_size=(64, 64), grid=16)
    values = torch.arange(16, dtype=torch.float).view(1, 1, 4, 4).repeat(2, 1, 1, 1)  # 8 px per cell
    half = torch.arange(4, dtype=torch.float).view(1, 1, 2, 2).repeat(2, 1, 1, 1)  # 16 px per cell
    initial = [(torch.full((1, 1, 4, 4), -1.0), torch.full((1, 1, 4, 4), -2.0)),
               (torch.full((1, 1, 2, 2), -3.0), torch.full((1, 1, 2, 2), -4.0))]
    moved = translate_states([(values, values + 100), (half, half + 100)], initial, old, new)
    hidden = moved[0][0]
    # window 0: the box went 16 px (two cells) down: new row r = old row r + 2; rows 2–3 are new
    assert torch.equal(hidden[0, 0, :2], values[0, 0, 2:]) and (hidden[0, 0, 2:] == -1).all()
    # window 1: 16 px left: new column c = old column c − 2; columns 0–1 are new
    assert torch.equal(hidden[1, 0, :, 2:], values[1, 0, :, :2]) and (hidden[1, 0, :, :2] == -1).all()
    assert torch.equal(moved[0][1][0, 0, :2], values[0, 0, 2:] + 100) and (moved[0][1][0, 0, 2:] == -2).all()
    # the half-resolution memory moves by one cell
    assert torch.equal(moved[1][0][0, 0, :1], half[0, 0, 1:]) and (moved[1][0][0, 0, 1:] == -3).all()
    assert torch.equal(translate_states([(values, values)], initial[:1], old, old)[0][0], values)


@pytest.mark.parametrize("glimpse, message", [([60, 80], "divisible by 16"), ([256, 80], "does not fit"),
                                              ([64], r"\[W, H\]")])
def test_a_bad_glimpse_is_refused_naming_the_key(glimpse, message):
    with pytest.raises(ConfigError, match=rf"model\.lma\.glimpse: .*{message}"):
        config = load_config("configs/wsprites-tiny.yaml", overrides=[f"model.lma.glimpse={glimpse}"])
        config.model.state_resolution(config.data.input_size)


def _glimpse_model(**overrides) -> Glass:
    torch.manual_seed(0)
    return Glass(small_model_config(glimpse=GLIMPSE, **overrides), FRAME)


def _video(seed: int = 1, length: int = 4) -> torch.Tensor:
    return torch.rand(2, length, 3, FRAME[1], FRAME[0], generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("recipe", [
    {},
    # the nineteenth round's (docs/local-actions.md): the action network also reads Δ_F — in box units here
    dict(decoder_warp=2.0, action_from_masks=True, action_shift_input=300.0, num_actions=9),
], ids=["plain", "warp_masks_shift"])
def test_the_lma_terms_are_those_of_an_lma_whose_frame_is_the_box(recipe):
    overrides = dict(decoder_skip=True, decoder_skip_mask=True, decoder_action=True, **recipe)
    model = _glimpse_model(**overrides)
    assert model.lma.state_resolution == (2, 4)
    video = _video()
    output = model(video, num_ground_truth_steps=3)
    gma, boxes = output.gma, output.lma.glimpse
    expected = window_boxes(gma.masks.detach(), (16, 32), 16)
    assert (boxes.tops, boxes.lefts) == (expected.tops, expected.lefts)
    # the same LMA built for frames of the box's size, on the boxes cut by hand, with Δ_F in box pixels
    box_lma = Glass(small_model_config(**overrides), GLIMPSE).lma
    box_lma.load_state_dict(model.lma.state_dict())

    def by_hand(tensor: torch.Tensor) -> torch.Tensor:
        return torch.stack([tensor[b, ..., top:top + 16, left:left + 32]
                            for b, (top, left) in enumerate(zip(boxes.tops, boxes.lefts))])

    box_shifts = gma.foreground_shifts.detach() * torch.tensor([64 / 32, 32 / 16])
    box_output = box_lma(by_hand(gma.foregrounds.detach()), by_hand(gma.shifted_foregrounds.detach()), box_shifts,
                         3, masks=by_hand(gma.masks.detach()))
    assert torch.allclose(by_hand(output.lma.generated_foregrounds[0]), box_output.generated_foregrounds[0], atol=1e-6)
    outside = paste(torch.ones_like(box_output.generated_masks), boxes) == 0
    assert output.lma.generated_masks[outside].abs().max() == 0
    assert torch.allclose(output.lma.foreground_shifts * torch.tensor([2.0, 2.0]), box_output.foreground_shifts)
    loss = GlassLoss(dataclasses.replace(LossConfig(), weights=dataclasses.replace(
        LossConfig().weights, background_perceptual_loss=0.0, multiscale_local_perceptual_loss=0.0)), vgg=None)
    terms = loss(video, output).terms
    box_gma = dataclasses.replace(gma, foregrounds=by_hand(gma.foregrounds), masks=by_hand(gma.masks),
                                  shifted_foregrounds=by_hand(gma.shifted_foregrounds))
    pair = (box_gma, box_output)
    box_terms = {"multiscale_global_reconstruction_loss": loss.multiscale_global_reconstruction_loss(*pair),
                 "multiscale_local_reconstruction_loss": loss.multiscale_local_reconstruction_loss(*pair),
                 "local_state_reconstruction_loss": loss.local_state_reconstruction_loss(box_output),
                 "local_action_vq_loss": box_output.action_vq_loss,
                 "mask_reconstruction_loss": loss.mask_reconstruction_loss(*pair)}
    for name, value in box_terms.items():
        assert torch.allclose(terms[name], value, atol=1e-6), name
    terms_total = loss(video, output).total
    terms_total.backward()
    assert model.lma.decoder.finals[0][0].weight.grad.abs().sum() > 0


@pytest.fixture
def eval_glimpse_model():
    """A small glimpse model in eval mode with the batch-norm statistics of `_video()` (see tests/model/conftest.py:
    with the initial ones an untrained model's outputs hardly depend on its inputs)."""
    model = _glimpse_model(decoder_skip=True, decoder_skip_mask=True, decoder_action=True)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
            module.reset_running_stats()
    with torch.no_grad():
        model(_video(), num_ground_truth_steps=3)
    return model.eval()


def test_one_step_reconstruction_draws_each_step_in_its_transitions_box(eval_glimpse_model):
    model = eval_glimpse_model
    still = _video()[:, :1].repeat(1, 4, 1, 1, 1)  # a still video: every transition has the window's box
    recon = reconstruct(model, still, "one_step")
    with torch.no_grad():
        gma = model.gma(still)
        inputs = model.lma_inputs(gma.foregrounds, gma.shifted_foregrounds, gma.foreground_shifts, gma.masks)
        motion = model.lma.infer_motion(inputs.foregrounds, inputs.shifted_foregrounds, inputs.foreground_shifts,
                                        masks=inputs.masks)
        drawn, masks = model.lma.unroll(motion.states[:, :3], motion.foreground_shifts, motion.actions.codes, False,
                                        inputs.foregrounds[:, :3], inputs.masks[:, :3])
    assert torch.allclose(recon.generated_foregrounds, paste(drawn[0], inputs.boxes), atol=1e-5)
    assert torch.allclose(recon.generated_masks, paste(masks, inputs.boxes), atol=1e-5)
    assert torch.equal(recon.action_ids, motion.actions.ids)
    # a moving video: every frame generated, frames and masks the right shape, nothing drawn outside the boxes
    video = _video(seed=3, length=5)
    for protocol in ("one_step", "single_image"):
        made = reconstruct(model, video, protocol)
        assert made.frames.shape == video.shape and made.generated_masks.shape == (2, 4, 1, 32, 64)
        assert torch.isfinite(made.frames).all()
    with torch.no_grad():
        motion = transition_motion(model, model.gma(video))
    covered = torch.stack([paste(torch.ones(2, 1, 16, 32), motion.inputs.boxes.select([b * 4 + t for b in range(2)]))
                           for t in range(4)], dim=1)
    assert made.generated_masks[:, :, :, :, :].shape == covered.shape
    one_step = reconstruct(model, video, "one_step")
    assert one_step.generated_masks[covered == 0].abs().max() == 0


def test_the_code_effect_and_difference_of_a_glimpse_model_are_zero_when_every_code_is_the_same(eval_glimpse_model):
    model = eval_glimpse_model
    video = _video(seed=4)
    effect = video_code_effect_errors(model, video, torch.Generator().manual_seed(0), code_differences=True)
    assert effect.inferred.shape == (2, 3) and not torch.equal(effect.inferred, effect.random)
    assert float(effect.code_difference.sum()) > 0  # distinct rows draw different boxes
    with torch.no_grad():
        model.lma.action_network.codebook.copy_(model.lma.action_network.codebook[:1].expand_as(
            model.lma.action_network.codebook))
    same = video_code_effect_errors(model, video, torch.Generator().manual_seed(0), code_differences=True)
    assert torch.allclose(same.inferred, same.random, rtol=1e-6)  # straight-through codes: rows up to rounding
    assert same.code_difference.shape == (2, 3) and float(same.code_difference.abs().max()) < 1e-5
    assert float(same.real_change.min()) >= 0 and float(same.region.min()) >= 0


def test_play_moves_the_box_with_the_character_and_its_memory_with_the_box(eval_glimpse_model):
    model = eval_glimpse_model
    state = start_play(model, _video()[:, 0])
    first = play_step(model, state, (0.0, 0.0), 0)
    assert first.boxes is not None and first.step == 1
    # a large shift right moves the box (the character and where it goes) to the right, on the grid
    moved = play_step(model, first, (0.75, 0.0), 0)
    assert all(new % 16 == 0 for new in moved.boxes.lefts)
    assert all(new >= old for new, old in zip(moved.boxes.lefts, first.boxes.lefts))
    assert torch.isfinite(moved.frame).all() and moved.frame.shape == (2, 3, 32, 64)
    outside = paste(torch.ones(2, 1, 16, 32), moved.boxes) == 0
    assert moved.mask[outside].abs().max() == 0
    # the same frames from the same start through glimpse_unroll's autoregressive path (motion transfer's)
    with torch.no_grad():
        motion = transition_motion(model, model.gma(_video(seed=5)))
        drawn, _ = glimpse_unroll(model, motion, motion.codes, 1, (state.foreground, state.mask))
    assert drawn.shape == (2, 3, 3, 32, 64) and torch.isfinite(drawn).all()
