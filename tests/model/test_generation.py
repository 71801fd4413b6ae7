"""The generation API (SPEC §3.3): reconstruction protocols, motion transfer, play, action matrices.
Tests taking `device` run where `pytest --device` says (tests/conftest.py)."""
# Multi-step comparisons use atol 1e-4: rounding differences between batch sizes (1e-6) grow through
# the autoregressive steps, while different actions change the frames by ~0.5.
import pytest
import torch

from model.generation import (
    NAMED_SHIFTS,
    global_action_matrix,
    local_action_matrix,
    num_ground_truth_steps,
    play_step,
    reconstruct,
    start_play,
    transfer_motion,
    video_code_drawings,
    video_code_effect_errors,
    video_gma,
)
from model.gma import BACKGROUND_PADDING, shift_images

torch.set_num_threads(2)


def test_named_shifts_are_the_papers():
    assert NAMED_SHIFTS == {"right": (0.07, 0.0), "left": (-0.07, 0.0), "down": (0.0, 0.1), "up": (0.0, -0.1),
                            "stay": (0.0, 0.0)}


def test_protocols_choose_the_ground_truth_steps():
    assert num_ground_truth_steps("one_step", 12) == 11
    assert num_ground_truth_steps("single_image", 12) == 1
    with pytest.raises(ValueError, match="unknown reconstruction protocol"):
        num_ground_truth_steps("teacher", 12)


@pytest.mark.parametrize("protocol, expected_steps", [("one_step", 3), ("single_image", 1)])
def test_reconstruction_is_deterministic_and_reports_its_protocol(calibrated_model, small_video, protocol,
                                                                  expected_steps, device):
    model = calibrated_model().to(device)
    small_video = small_video.to(device)
    model.train()
    first = reconstruct(model, small_video, protocol)
    second = reconstruct(model, small_video, protocol)
    assert model.training  # the mode is restored
    assert first.protocol == protocol and first.num_ground_truth_steps == expected_steps
    assert first.frames.shape == small_video.shape and first.backgrounds.shape == small_video.shape
    assert torch.equal(first.frames[:, 0], small_video[:, 0])
    assert first.generated_masks.shape == (2, 3, 1, 16, 32) and first.action_ids.shape == (2, 3)
    assert first.masks.shape == (2, 4, 1, 16, 32) and first.background_shifts.shape == (2, 3, 2)
    for name in ("frames", "generated_foregrounds", "generated_masks", "foreground_shifts", "action_codes"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    # The frames are m̂·f̂ + (1−m̂)·background, the background moved by the cumulative Δ_B (nearest sampling).
    moved = shift_images(first.backgrounds[:, 0], first.background_shifts[:, :2].sum(1), BACKGROUND_PADDING, "nearest")
    assert torch.allclose(first.backgrounds[:, 2], moved, atol=1e-6)
    expected = (first.generated_masks * first.generated_foregrounds
                + (1 - first.generated_masks) * first.backgrounds[:, 1:])
    assert torch.allclose(first.frames[:, 1:], expected, atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"action_from_masks": True, "decoder_skip": True, "decoder_skip_mask": True}])
def test_a_given_gma_output_gives_what_the_gma_would(calibrated_model, small_video, options):
    # evaluate.py runs the GMA once per batch for both protocols and the code effect (`video_gma`)
    model = calibrated_model(**options)
    model.train()
    gma = video_gma(model, small_video)
    assert model.training  # the mode is restored
    for protocol in ("one_step", "single_image"):
        given, own = reconstruct(model, small_video, protocol, gma=gma), reconstruct(model, small_video, protocol)
        for name in ("frames", "generated_foregrounds", "masks", "foreground_shifts", "action_ids"):
            assert torch.equal(getattr(given, name), getattr(own, name)), (protocol, name)
    given, own = (video_code_effect_errors(model, small_video, torch.Generator().manual_seed(0), gma=gma),
                  video_code_effect_errors(model, small_video, torch.Generator().manual_seed(0)))
    assert torch.equal(given.inferred, own.inferred) and torch.equal(given.random, own.random)
    # and it is what is used: another video's GMA output changes the reconstruction
    other = video_gma(model, small_video.flip(1))
    assert not torch.equal(reconstruct(model, small_video, gma=other).frames, reconstruct(model, small_video).frames)


def test_video_code_drawings_are_what_the_code_effect_measures(calibrated_model, small_video):
    """benchmarks/switch_sheet.py's pictures: the inferred codes' drawing and each codebook row's, the same draws as
    the code effect's (its inferred error and its best row's), the model's mode restored."""
    model = calibrated_model(action_from_masks=True, decoder_skip=True, decoder_skip_mask=True)
    model.train()
    gma, motion, drawings = video_code_drawings(model, small_video)
    assert model.training
    codebook = model.lma.action_network.codebook
    assert len(drawings) == 1 + codebook.shape[0] and motion.actions.ids.shape == drawings[0].shape[:2]
    effect = video_code_effect_errors(model, small_video, torch.Generator().manual_seed(0), code_differences=True)
    errors = [(drawing - gma.foregrounds[:, 1:]).pow(2).sum(dim=(2, 3, 4)) for drawing in drawings]
    assert torch.allclose(errors[0], effect.inferred, rtol=1e-5)
    assert torch.allclose(torch.stack(errors[1:], dim=-1).min(dim=-1).values, effect.best, rtol=1e-5)
    assert torch.allclose(torch.stack(errors[1:], dim=-1), effect.per_code, rtol=1e-5)  # each row's own error


def test_the_protocols_agree_on_the_first_step_only(calibrated_model, small_video):
    model = calibrated_model()
    one_step = reconstruct(model, small_video, "one_step")
    single = reconstruct(model, small_video, "single_image")
    assert torch.allclose(one_step.frames[:, :2], single.frames[:, :2], atol=1e-6)
    assert not torch.allclose(one_step.frames[:, 2:], single.frames[:, 2:], atol=1e-6)


def test_sampled_noise_changes_tennis_style_generations(calibrated_model, small_video):
    model = calibrated_model(noise_size=3)
    torch.manual_seed(0)
    zeros = reconstruct(model, small_video, "single_image")
    sampled = reconstruct(model, small_video, "single_image", sample_noise=True)
    assert torch.equal(zeros.frames, reconstruct(model, small_video, "single_image").frames)
    assert not torch.equal(zeros.frames, sampled.frames)


def test_motion_transfer_moves_another_image_with_the_source_actions(calibrated_model, small_video, device):
    model = calibrated_model().to(device)
    small_video = small_video.to(device)
    target = small_video.flip(0)[:, 0]
    transfer = transfer_motion(model, small_video, target)
    assert transfer.protocol == "motion_transfer" and transfer.num_ground_truth_steps == 1
    assert torch.equal(transfer.frames[:, 0], target)
    source = reconstruct(model, small_video, "single_image")
    assert torch.equal(transfer.action_ids, source.action_ids)
    assert torch.equal(transfer.foreground_shifts, source.foreground_shifts)
    # A target equal to the source's own first frame reproduces the single-image reconstruction.
    itself = transfer_motion(model, small_video, small_video[:, 0])
    assert torch.allclose(itself.frames, source.frames, atol=1e-4)


@pytest.mark.parametrize("options", [{}, {"decoder_skip": True},
                                     {"decoder_skip": True, "decoder_skip_mask": True, "decoder_action": True},
                                     {"decoder_skip": True, "decoder_skip_mask": True, "decoder_warp": 2.0},
                                     {"action_from_masks": True}])
def test_playing_the_inferred_actions_replays_the_single_image_reconstruction(calibrated_model, small_video, options,
                                                                              device):
    model = calibrated_model(**options).to(device)
    small_video = small_video.to(device)
    recon = reconstruct(model, small_video, "single_image")
    state = start_play(model, small_video[:, 0])
    for t in range(small_video.shape[1] - 1):
        state = play_step(model, state, recon.foreground_shifts[:, t], recon.action_ids[:, t],
                          background_shift=recon.background_shifts[:, t])
        assert torch.allclose(state.frame, recon.frames[:, t + 1], atol=1e-4), t
    assert state.step == 3
    assert torch.allclose(state.cumulative_background_shift, recon.background_shifts.sum(1), atol=1e-6)


def test_play_is_repeatable_from_a_kept_state(calibrated_model, small_video, device):
    model = calibrated_model().to(device)
    start = start_play(model, small_video[:, 0].to(device))
    first = play_step(model, start, NAMED_SHIFTS["right"], 1)
    again = play_step(model, start, NAMED_SHIFTS["right"], 1)
    assert torch.equal(first.frame, again.frame) and start.step == 0
    other = play_step(model, start, NAMED_SHIFTS["left"], 2)
    assert not torch.equal(first.frame, other.frame)
    # Action ids and shifts given as CPU tensors (as a caller holds them) are moved to the model's device.
    assert play_step(model, first, torch.tensor([0.0, 0.0]), torch.tensor([0, 2])).frame.shape == (2, 3, 16, 32)
    with pytest.raises(ValueError, match="local action ids"):
        play_step(model, start, NAMED_SHIFTS["up"], 3)


def test_action_matrices_repeat_one_action_per_column(calibrated_model, small_video, device):
    model = calibrated_model(num_actions=4).to(device)
    starts = small_video[:, 0].to(device)
    global_matrix = global_action_matrix(model, starts, num_frames=3)
    assert global_matrix.shape == (2, len(NAMED_SHIFTS), 3, 3, 16, 32)
    local_matrix = local_action_matrix(model, starts, num_frames=2)
    assert local_matrix.shape == (2, 4, 2, 3, 16, 32)
    # Row 1, column "up" of the global matrix is that start frame played with (0, −0.1) and action 0.
    state = start_play(model, starts[1:2])
    for n in range(3):
        state = play_step(model, state, NAMED_SHIFTS["up"], 0)
        assert torch.allclose(global_matrix[1, list(NAMED_SHIFTS).index("up"), n], state.frame[0], atol=1e-4)
    state = play_step(model, start_play(model, starts[:1]), NAMED_SHIFTS["stay"], 3)
    assert torch.allclose(local_matrix[0, 3, 0], state.frame[0], atol=1e-4)
    # Each code with its own shift (the shift it comes with in real videos): column k is code k played with shift k.
    shifts = torch.tensor([NAMED_SHIFTS["stay"], NAMED_SHIFTS["right"], NAMED_SHIFTS["up"], NAMED_SHIFTS["left"]])
    own = local_action_matrix(model, starts, num_frames=2, action_shifts=shifts)
    assert torch.equal(own[:, 0], local_matrix[:, 0]) and not torch.allclose(own[:, 1], local_matrix[:, 1])
    state = start_play(model, starts[1:2])
    for n in range(2):
        state = play_step(model, state, NAMED_SHIFTS["up"], 2)
        assert torch.allclose(own[1, 2, n], state.frame[0], atol=1e-4)
    with pytest.raises(ValueError, match="per-action shifts"):
        local_action_matrix(model, starts, num_frames=1, action_shifts=shifts[:3])


def test_reconstruction_generates_with_the_refined_shifts(calibrated_model, small_video):
    model = calibrated_model(shift_refinement=2)
    refined = reconstruct(model, small_video, "one_step")
    with torch.no_grad():
        gma = model.gma(small_video)
        _, shifts = model.lma.refine_shifts(gma.foregrounds, gma.shifted_foregrounds, gma.foreground_shifts)
    assert not torch.equal(shifts, gma.foreground_shifts)  # random frames: some offset aligns them better
    assert torch.equal(refined.foreground_shifts, gma.foreground_shifts)  # reported: the GMA's
    model.lma.shift_refinement = 0
    plain = reconstruct(model, small_video, "one_step")
    assert not torch.allclose(refined.generated_foregrounds, plain.generated_foregrounds)


def _code_effect_inputs(lma, batch_size: int = 4):
    """Foregrounds f (B, 2, 3, 16, 32), f̃ = f₀, zero shifts, masks; the codebook set to distinct rows."""
    from model.lma import ActionOutput

    generator = torch.Generator().manual_seed(5)
    foregrounds = torch.rand(batch_size, 2, 3, 16, 32, generator=generator) * 2 - 1
    masks = torch.ones(batch_size, 2, 1, 16, 32)
    with torch.no_grad():
        lma.action_network.codebook.copy_(torch.randn(lma.action_network.codebook.shape, generator=generator))
    ids = torch.arange(batch_size)[:, None] % lma.action_network.codebook.shape[0]

    # window b: code b mod K
    def fixed_actions(shifted_foregrounds, states, attention, gumbel_temperature=None, reader_images=None,
                      foreground_shifts=None):
        codes = lma.action_network.codebook[ids]
        return ActionOutput(codes=codes, ids=ids, vq_loss=codes.sum() * 0, vectors=codes)

    lma.infer_actions = fixed_actions
    return foregrounds, foregrounds[:, :1], torch.zeros(batch_size, 1, 2), masks


def test_code_effect_is_zero_for_a_decoder_that_ignores_the_code(make_small_model):
    from model.generation import code_effect_errors
    from utils.metrics import code_effect_db

    lma = make_small_model().lma
    inputs = _code_effect_inputs(lma)
    with torch.no_grad():  # the code's only way in (no decoder_action): cut
        lma.dynamics.local_projection.weight.zero_()
    effect = code_effect_errors(lma, *inputs, torch.Generator().manual_seed(0))
    assert effect.inferred.shape == effect.random.shape == (4, 1)
    assert torch.equal(effect.inferred, effect.random) and code_effect_db(effect.inferred, effect.random) == 0.0


def test_code_effect_is_positive_for_a_decoder_that_draws_the_inferred_code(make_small_model):
    """The next foregrounds replaced by what the LMA draws with the inferred codes: those codes draw them
    exactly, random ones (other rows for most windows) do not."""
    from model.generation import code_effect_errors
    from utils.metrics import code_effect_db

    lma = make_small_model().lma
    foregrounds, shifted, shifts, masks = _code_effect_inputs(lma)
    lma.eval()
    with torch.no_grad():
        motion = lma.infer_motion(foregrounds, shifted, shifts)
        drawn, _ = lma.unroll(motion.states[:, :1], shifts, motion.actions.codes)
    foregrounds = torch.cat([foregrounds[:, :1], drawn[0]], dim=1)
    effect = code_effect_errors(lma, foregrounds, shifted, shifts, masks, torch.Generator().manual_seed(0))
    assert float(effect.inferred.max()) < 1e-8 and float(effect.random.sum()) > 0
    assert code_effect_db(effect.inferred, effect.random) > 20
    assert lma.training is False and effect.action_ids.tolist() == [[0], [1], [2], [0]]


def test_code_differences_are_zero_for_a_decoder_that_ignores_the_code_and_the_real_change_is_by_hand(
        make_small_model):
    """Masks one in the left half of f₀ and the right half of f₁, zero elsewhere: the region is both halves where
    a mask is above 0.5 (here everything); the real change is Σ over it of |f₁ − f̃₀| (channel mean) / 2."""
    from model.generation import code_effect_errors

    lma = make_small_model().lma
    foregrounds, shifted, shifts, masks = _code_effect_inputs(lma)
    masks = torch.zeros_like(masks)
    masks[:, 0, :, :, :16], masks[:, 1, :, :, 16:] = 1.0, 0.6
    with torch.no_grad():
        lma.dynamics.local_projection.weight.zero_()
    effect = code_effect_errors(lma, foregrounds, shifted, shifts, masks, torch.Generator().manual_seed(0),
                                code_differences=True)
    assert effect.code_difference.shape == effect.real_change.shape == effect.region.shape == (4, 1)
    assert float(effect.code_difference.abs().max()) == 0.0
    assert torch.allclose(effect.best, effect.inferred, rtol=1e-6)  # every code draws the same: no ceiling above 0
    assert effect.region.tolist() == [[16.0 * 32]] * 4
    by_hand = ((foregrounds[:, 1] - shifted[:, 0]).abs().mean(dim=1) / 2).sum(dim=(1, 2))
    assert torch.allclose(effect.real_change[:, 0], by_hand, rtol=1e-5)
    masks[:, 1, :, :, 16:] = 0.4  # at or below 0.5 the right half is not the character's
    half = code_effect_errors(lma, foregrounds, shifted, shifts, masks, torch.Generator().manual_seed(0),
                              code_differences=True)
    assert half.region.tolist() == [[16.0 * 16]] * 4
    left = ((foregrounds[:, 1] - shifted[:, 0]).abs().mean(dim=1) / 2)[:, :, :16].sum(dim=(1, 2))
    assert torch.allclose(half.real_change[:, 0], left, rtol=1e-5)
    assert torch.equal(half.inferred, effect.inferred)  # the code effect's draws are unchanged by the option
    with pytest.raises(ValueError, match="needs the masks"):
        code_effect_errors(lma, foregrounds, shifted, shifts, None, torch.Generator(), code_differences=True)


def test_code_difference_is_the_mean_over_code_pairs_of_what_each_code_draws(make_small_model):
    """A decoder that reads the code: the code difference is the mean over the K(K−1)/2 pairs of codebook rows of
    Σ |f̂ with row k − f̂ with row j| / 2 (channel mean), each row drawn at every step — here by hand — and > 0."""
    from model.generation import code_effect_errors

    lma = make_small_model().lma
    foregrounds, shifted, shifts, masks = _code_effect_inputs(lma)
    lma.eval()
    effect = code_effect_errors(lma, foregrounds, shifted, shifts, masks, torch.Generator().manual_seed(0),
                                code_differences=True)
    codebook = lma.action_network.codebook
    with torch.no_grad():
        motion = lma.infer_motion(foregrounds, shifted, shifts, masks=masks)
        drawings = [lma.unroll(motion.states[:, :1], motion.foreground_shifts, row.expand(4, 1, -1),
                               ground_truth_foregrounds=foregrounds[:, :1], ground_truth_masks=masks[:, :1])[0][0]
                    for row in codebook]
    pairs = [(k, j) for k in range(len(drawings)) for j in range(k + 1, len(drawings))]
    by_hand = sum(((drawings[k] - drawings[j]).abs().mean(dim=2) / 2).sum(dim=(2, 3)) for k, j in pairs) / len(pairs)
    assert len(pairs) == codebook.shape[0] * (codebook.shape[0] - 1) // 2 >= 1
    assert torch.allclose(effect.code_difference, by_hand, rtol=1e-5) and float(by_hand.min()) > 0
    # the best code per transition: the least error over the rows, at most the inferred and the random codes' error
    errors = torch.stack([(drawing - foregrounds[:, 1:]).pow(2).sum(dim=(2, 3, 4)) for drawing in drawings], dim=-1)
    assert torch.allclose(effect.best, errors.min(dim=-1).values, rtol=1e-5)
    assert torch.allclose(effect.per_code, errors, rtol=1e-5)
    for drawn in (effect.inferred, effect.random):
        assert bool((effect.best <= drawn * (1 + 1e-5)).all())
    assert bool((errors.max(dim=-1).values > effect.best).all())  # the rows draw differently, so the choice matters
