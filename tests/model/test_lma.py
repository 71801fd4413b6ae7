"""The LMA of SPEC §3.2: quantisers, action network ablations, dynamics, decoder, unrolling.
Tests taking `device` run where `pytest --device` says (tests/conftest.py)."""
import math
from typing import Tuple

import pytest
import torch
import torch.nn.functional as F

from model.blocks import Up
from model.gma import FOREGROUND_PADDING, shift_images
from model.lma import (
    ActionNetwork,
    Decoder,
    DynamicsNetwork,
    GumbelQuantizer,
    LocalMotionAnalysis,
    MaskPredictor,
    VectorQuantizer,
)

torch.set_num_threads(1)


def _quantizer(loss_form: str = "authors") -> VectorQuantizer:
    quantizer = VectorQuantizer(num_codes=3, code_dim=2, beta=0.25, loss_form=loss_form)
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
    return quantizer


def test_codebook_is_initialised_uniformly_in_one_over_k():
    codebook = VectorQuantizer(num_codes=6, code_dim=16, beta=0.25, loss_form="authors").codebook
    assert codebook.shape == (6, 16)
    assert codebook.abs().max() <= 1 / 6 and codebook.std() > 1 / 6 / 4


def test_vector_quantizer_returns_the_nearest_code_straight_through(device):
    quantizer = _quantizer().to(device)
    vectors = torch.tensor([[0.9, 0.2], [0.1, 1.4], [-0.3, 0.2]], device=device, requires_grad=True)
    output = quantizer(vectors)
    assert output.ids.tolist() == [1, 2, 0]
    assert torch.allclose(output.codes, quantizer.codebook[[1, 2, 0]])
    # Straight through: d(Σ w·code)/dz = w.
    weights = torch.randn(3, 2, device=device)
    (output.codes * weights).sum().backward()
    assert torch.allclose(vectors.grad, weights)


@pytest.mark.parametrize("loss_form", ["authors", "vqvae"])
def test_vq_loss_weights_its_terms_as_configured(loss_form):
    quantizer = _quantizer(loss_form)
    vectors = torch.tensor([[0.9, 0.2], [0.1, 1.4]], requires_grad=True)
    loss = quantizer(vectors).vq_loss
    nearest = quantizer.codebook.detach()[[1, 2]]
    squared_error = (nearest - vectors.detach()).pow(2).mean()
    assert torch.allclose(loss, 1.25 * squared_error)
    loss.backward()
    # mean over N·D = 4 elements; the authors' form gives the inputs weight 1 and the codebook β.
    vector_weight, codebook_weight = (1.0, 0.25) if loss_form == "authors" else (0.25, 1.0)
    assert torch.allclose(vectors.grad, vector_weight * 2 * (vectors.detach() - nearest) / 4)
    assert torch.allclose(quantizer.codebook.grad[[1, 2]], codebook_weight * 2 * (nearest - vectors.detach()) / 4)
    assert torch.equal(quantizer.codebook.grad[0], torch.zeros(2))


def test_gumbel_quantizer_mixes_codes_in_training_and_picks_rows_in_eval():
    torch.manual_seed(0)
    quantizer = GumbelQuantizer(num_codes=4, code_dim=3)
    logits = torch.randn(5, 4)
    with pytest.raises(ValueError, match="gumbel_temperature"):
        quantizer(logits, None)
    trained = quantizer(logits, temperature=1.0)
    assert trained.codes.shape == (5, 3) and trained.vq_loss is None
    assert not any(torch.allclose(code, row) for code in trained.codes for row in quantizer.codebook)
    quantizer.eval()
    evaluated = quantizer(logits, None)
    assert torch.equal(evaluated.ids, logits.argmax(1))
    assert torch.allclose(evaluated.codes, quantizer.codebook[logits.argmax(1)])


def test_gumbel_quantizer_samples_in_eval_at_its_temperature_in_the_authors_mode():
    torch.manual_seed(0)
    quantizer = GumbelQuantizer(num_codes=4, code_dim=3, eval_mode="sample", eval_temperature=0.4).eval()
    logits = torch.randn(5, 4)
    torch.manual_seed(1)
    sampled = quantizer(logits, None)  # no training temperature needed
    torch.manual_seed(1)
    expected = torch.nn.functional.gumbel_softmax(logits, tau=0.4, hard=False)
    assert torch.allclose(sampled.codes, expected @ quantizer.codebook)
    assert torch.equal(sampled.ids, expected.argmax(1))
    assert not torch.equal(quantizer(logits, None).codes, sampled.codes)  # a new sample each call


@pytest.mark.parametrize("plain", [False, True])
def test_action_network_direction_chain_or_plain_difference(small_model_config, plain):
    config = small_model_config(use_plain_direction=plain).lma
    network = ActionNetwork(config)
    assert len(network.direction_layers) == (0 if plain else 4)
    if not plain:
        sizes = [layer.bilinear.out_features for layer in network.direction_layers]
        assert sizes == config.direction_sizes
        assert isinstance(network.direction_layers[-1].post, torch.nn.Identity)
    output = network(torch.randn(6, 8, 2, 4), torch.randn(6, 8, 2, 4))
    assert output.codes.shape == (6, config.action_dim) and output.ids.shape == (6,) and output.vq_loss.dim() == 0


def test_decoder_returns_full_size_first_with_a_mask_channel(small_model_config):
    decoder = Decoder(small_model_config().lma)
    outputs = decoder(torch.randn(2, 4, 2, 4))
    assert [tuple(o.shape) for o in outputs] == [(2, 4, 16, 32), (2, 3, 8, 16), (2, 3, 4, 8)]


@pytest.mark.parametrize("overrides", [{}, {"modulated_conv": False}, {"joint_input": True}, {"noise_size": 3},
                                       {"modulated_conv": False, "joint_input": True, "noise_size": 2}])
def test_dynamics_shapes_for_every_conditioning(small_model_config, overrides):
    config = small_model_config(**overrides).lma
    dynamics = DynamicsNetwork(config, (2, 4))
    state = dynamics.initial_state(3)
    assert [tuple(h.shape) for h, _ in state] == [(3, 4, 2, 4), (3, 8, 1, 2), (3, 4, 2, 4)]
    noise = torch.randn(3, config.noise_size) if config.noise_size else None
    hidden, state = dynamics(torch.randn(3, 4, 2, 4), torch.randn(3, 2), torch.randn(3, 4), state, noise)
    assert hidden.shape == (3, config.hidden_size, 2, 4)
    conditioning = 8 if config.joint_input else 4
    assert dynamics.lstm_1.in_channels == 4 + conditioning + config.noise_size


def _unroll_inputs(lma: LocalMotionAnalysis, seed: int):
    """States (2, 1, 8, 2, 4), shifts (2, 3, 2) and codes (2, 3, 4), drawn on the CPU, on the LMA's device."""
    generator = torch.Generator().manual_seed(seed)
    device = lma.action_network.codebook.device
    return (torch.randn(2, 1, 8, 2, 4, generator=generator).to(device),
            (torch.randn(2, 3, 2, generator=generator) * 0.1).to(device),
            lma.action_network.codebook[torch.randint(0, 3, (2, 3), generator=generator).to(device)].detach())


def test_unroll_starts_every_sequence_from_the_learned_initial_state(small_model_config, device):
    torch.manual_seed(0)
    # Training mode: batch statistics keep the untrained network's signal at unit scale.
    lma = LocalMotionAnalysis(small_model_config().lma, (2, 4)).to(device)
    first, second = _unroll_inputs(lma, 1), _unroll_inputs(lma, 2)
    with torch.no_grad():
        before = lma.unroll(*first)[0][0]
        lma.unroll(*second)
        again = lma.unroll(*first)[0][0]
    assert torch.equal(before, again)  # nothing of the second sequence leaked into the third run

    with torch.no_grad():
        lma.dynamics.lstm_1.initial_hidden.fill_(0.5)
        changed = lma.unroll(*first)[0][0]
    assert not torch.allclose(before, changed)  # the initial state is read at the start
    foregrounds, masks = lma.unroll(*first)
    (foregrounds[0].sum() + masks.sum()).backward()
    for lstm in (lma.dynamics.lstm_1, lma.dynamics.lstm_2, lma.dynamics.lstm_3):
        assert lstm.initial_hidden.grad.abs().sum() > 0 and lstm.initial_cell.grad.abs().sum() > 0


def test_ground_truth_steps_decide_which_inputs_are_real(small_model_config):
    torch.manual_seed(0)
    # Eval mode: in training the ground-truth steps share one BatchNorm batch (see the next test).
    lma = LocalMotionAnalysis(small_model_config().lma, (2, 4)).eval()
    states = torch.randn(2, 3, 8, 2, 4)
    shifts, codes = torch.zeros(2, 3, 2), lma.action_network.codebook[torch.zeros(2, 3, dtype=torch.long)].detach()
    with torch.no_grad():
        teacher_forced = lma.unroll(states, shifts, codes)[0][0]
        autoregressive = lma.unroll(states[:, :1], shifts, codes)[0][0]
        perturbed = states.clone()
        perturbed[:, 2] += 1
        teacher_forced_perturbed = lma.unroll(perturbed, shifts, codes)[0][0]
    assert torch.equal(teacher_forced[:, 0], autoregressive[:, 0])  # step 0 reads φ₀ in both
    assert not torch.equal(teacher_forced[:, 1], autoregressive[:, 1])
    # With T_f = 3 step 2 reads φ₂; earlier steps do not.
    assert torch.equal(teacher_forced_perturbed[:, :2], teacher_forced[:, :2])
    assert not torch.equal(teacher_forced_perturbed[:, 2], teacher_forced[:, 2])
    with pytest.raises(ValueError, match="ground-truth steps"):
        lma.unroll(torch.randn(2, 4, 8, 2, 4), shifts, codes)


def test_ground_truth_steps_are_decoded_in_one_batch_and_later_steps_one_by_one(small_model_config):
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config().lma, (2, 4))
    batch_sizes = []
    lma.decoder.register_forward_pre_hook(lambda module, inputs: batch_sizes.append(inputs[0].shape[0]))
    states = torch.randn(2, 2, 8, 2, 4)
    shifts = torch.randn(2, 4, 2) * 0.1
    codes = lma.action_network.codebook[torch.randint(0, 3, (2, 4))].detach()
    foregrounds, masks = lma.unroll(states, shifts, codes)  # S 4, T_f 2
    assert batch_sizes == [2 * 2, 2, 2]  # the authors': one call of B·T_f, then B per autoregressive step
    assert [scale.shape[:2] for scale in foregrounds] == [(2, 4)] * len(foregrounds) and masks.shape[:2] == (2, 4)
    # In training the ground-truth steps share BatchNorm statistics: step 0 depends on step 1's input.
    with torch.no_grad():
        perturbed = states.clone()
        perturbed[:, 1] += 1
        assert not torch.allclose(lma.unroll(perturbed, shifts, codes)[0][0][:, 0], foregrounds[0][:, 0].detach())
        # In eval mode the batching changes nothing: the same as decoding every step alone.
        lma.eval()
        batched = lma.unroll(states, shifts, codes)
        dynamics_state = lma.dynamics.initial_state(2)
        stepwise = []
        for t in range(4):
            step_states = states[:, t] if t < 2 else lma.encoder(stepwise[-1])[0]
            decoded, dynamics_state = lma.step(step_states, shifts[:, t], codes[:, t], dynamics_state)
            stepwise.append(decoded[0][:, :3])
        assert torch.allclose(batched[0][0], torch.stack(stepwise, dim=1), atol=1e-6)


def _window_inputs(lma: LocalMotionAnalysis, batch_size: int, seed: int):
    """A whole window of T 4 for `unroll_batch`: states (B, 4, 8, 2, 4), shifts (B, 3, 2), codes (B, 3, 4),
    foregrounds (B, 4, 3, 16, 32) and masks (B, 4, 1, 16, 32)."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch_size, 4, 8, 2, 4, generator=generator),
            torch.randn(batch_size, 3, 2, generator=generator) * 0.1,
            lma.action_network.codebook[torch.randint(0, 3, (batch_size, 3), generator=generator)].detach(),
            torch.rand(batch_size, 4, 3, 16, 32, generator=generator) * 2 - 1,
            torch.rand(batch_size, 4, 1, 16, 32, generator=generator))


def test_autoregressive_share_unrolls_the_first_windows_from_their_own_frames(small_model_config):
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(decoder_skip=True, decoder_skip_mask=True,
                                                 autoregressive_share=0.5).lma, (2, 4))
    states, shifts, codes, foregrounds, masks = _window_inputs(lma, 4, seed=1)
    assert lma.autoregressive_windows(4, 3) == (2, 1)
    with torch.no_grad():
        mixed, mixed_masks = lma.unroll_batch(states, shifts, codes, 3, foregrounds=foregrounds, masks=masks)
        # Windows 0-1 alone with T_f 1, windows 2-3 alone with T_f 3 (each its own BatchNorm batch): the same.
        first = lma.unroll(states[:2, :1], shifts[:2], codes[:2], ground_truth_foregrounds=foregrounds[:2, :1],
                           ground_truth_masks=masks[:2, :1])
        rest = lma.unroll(states[2:, :3], shifts[2:], codes[2:], ground_truth_foregrounds=foregrounds[2:, :3],
                          ground_truth_masks=masks[2:, :3])
        for scale, one, other in zip(mixed, first[0], rest[0]):
            assert torch.equal(scale, torch.cat([one, other]))
        assert torch.equal(mixed_masks, torch.cat([first[1], rest[1]]))
        # The first windows never read a real frame after f₀; the others do.
        later = [tensor.clone() for tensor in (states, foregrounds, masks)]
        for tensor in later:
            tensor[:, 1:] += 1
        moved, _ = lma.unroll_batch(later[0], shifts, codes, 3, foregrounds=later[1], masks=later[2])
        assert torch.equal(moved[0][:2], mixed[0][:2])
        assert not torch.allclose(moved[0][2:, 1:], mixed[0][2:, 1:])
        # In eval mode the whole batch has T_f 3, as without the option.
        lma.eval()
        assert lma.autoregressive_windows(4, 3) == (0, 3)
        evaluated = lma.unroll_batch(states, shifts, codes, 3, foregrounds=foregrounds, masks=masks)[0][0]
        plain = lma.unroll(states[:, :3], shifts, codes, ground_truth_foregrounds=foregrounds[:, :3],
                           ground_truth_masks=masks[:, :3])[0][0]
        assert torch.equal(evaluated, plain)


@pytest.mark.parametrize("share, batch_size, ground_truth_steps, expected",
                         [(0.0, 4, 3, (0, 3)), (0.25, 4, 3, (1, 1)), (1.0, 4, 3, (4, 1)), (0.5, 4, 1, (0, 1)),
                          (0.1, 4, 3, (0, 3))])
def test_autoregressive_windows_counts_the_share_of_the_batch(small_model_config, share, batch_size,
                                                              ground_truth_steps, expected):
    lma = LocalMotionAnalysis(small_model_config(autoregressive_share=share).lma, (2, 4))
    assert lma.autoregressive_windows(batch_size, ground_truth_steps) == expected


def test_the_lma_trains_with_an_autoregressive_share(small_model_config):
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(autoregressive_share=0.5,
                                                 autoregressive_ground_truth_steps=2).lma, (2, 4))
    batch_sizes = []
    lma.decoder.register_forward_pre_hook(lambda module, inputs: batch_sizes.append(inputs[0].shape[0]))
    _, shifts, _, foregrounds, _ = _window_inputs(lma, 4, seed=2)
    output = lma(foregrounds, foregrounds[:, :-1], shifts, 3)
    # Windows 0-1: T_f 2 (one call of 2·2, then one autoregressive step of 2); windows 2-3: T_f 3 (2·3).
    assert batch_sizes == [2 * 2, 2, 2 * 3]
    assert output.generated_foregrounds[0].shape == (4, 3, 3, 16, 32)
    assert output.generated_masks.shape == (4, 3, 1, 16, 32)
    output.generated_foregrounds[0].sum().backward()
    assert lma.decoder.finals[-1][0].weight.grad.abs().sum() > 0
    assert lma.action_network.mlp[-1].weight.grad.abs().sum() > 0  # the codes of every window still learn


@pytest.mark.parametrize("overrides, key", [({"autoregressive_share": 1.5}, "autoregressive_share"),
                                            ({"autoregressive_share": -0.1}, "autoregressive_share"),
                                            ({"autoregressive_ground_truth_steps": 0},
                                             "autoregressive_ground_truth_steps"),
                                            ({"autoregressive_share": 0.5, "winner_take_all": True},
                                             "autoregressive_share")])
def test_autoregressive_share_refuses_bad_values(small_model_config, overrides, key):
    from utils.errors import GlassError

    with pytest.raises((GlassError, ValueError), match=key):
        small_model_config(**overrides)


def test_action_from_masks_reads_the_moved_current_mask_and_the_next_one(small_model_config):
    from model.gma import shift_images

    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(action_from_masks=True).lma, (2, 4))  # training mode
    _, shifts, _, foregrounds, masks = _window_inputs(lma, 4, seed=3)
    masks = (masks > 0.5).float()
    read = []
    lma.action_encoder.register_forward_pre_hook(lambda module, inputs: read.append(inputs[0]))
    motion = lma.infer_motion(foregrounds, foregrounds[:, :-1], shifts, masks=masks)
    moved = shift_images(masks[:, :-1].flatten(0, 1), shifts.flatten(0, 1), "zeros")
    assert len(read) == 2
    assert torch.allclose(read[0], (moved * 2 - 1).expand(-1, 3, -1, -1))
    assert torch.equal(read[1], (masks[:, 1:].flatten(0, 1) * 2 - 1).expand(-1, 3, -1, -1))
    with torch.no_grad():
        # The colours never reach the codes; the outline does.
        recoloured = lma.infer_motion(-foregrounds, -foregrounds[:, :-1], shifts, masks=masks).actions.vectors
        assert torch.equal(recoloured, motion.actions.vectors)
        other = masks.clone()
        other[:, 2:, :, :8] = 1 - other[:, 2:, :, :8]
        reshaped = lma.infer_motion(foregrounds, foregrounds[:, :-1], shifts, masks=other).actions.vectors
        assert not torch.allclose(reshaped[:, 1:], motion.actions.vectors[:, 1:], atol=1e-4)
    (motion.actions.codes.sum() + motion.actions.vq_loss).backward()
    assert lma.action_encoder.layers[0][0].weight.grad.abs().sum() > 0
    assert lma.encoder.layers[0][0].weight.grad is None  # the foreground encoder does not serve the actions
    with pytest.raises(ValueError, match="action_from_masks"):
        lma.infer_motion(foregrounds, foregrounds[:, :-1], shifts)


def test_action_mirror_features_tell_a_view_from_its_mirror_image_and_add_nothing_for_a_symmetric_one(
        small_model_config):
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(action_from_masks=True, action_mirror_features=True).lma,
                              (2, 4))  # training mode: BatchNorm's batch statistics (untrained running ones flatten z)
    _, shifts, _, foregrounds, masks = _window_inputs(lma, 4, seed=3)
    masks = (masks > 0.5).float()
    read = []
    lma.action_encoder.register_forward_pre_hook(lambda module, inputs: read.append(inputs[0]))
    with torch.no_grad():
        motion = lma.infer_motion(foregrounds, foregrounds[:, :-1], shifts, masks=masks)
    assert len(read) == 3  # the moved current mask, the next mask, the next mask flipped left to right
    assert torch.equal(read[2], read[1].flip(-1))

    def vectors(next_masks: torch.Tensor, mirror_weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            lma.action_network.mirror.weight.copy_(mirror_weight)
            both = torch.cat([masks[:, :1], next_masks], dim=1)
            return lma.infer_motion(foregrounds, foregrounds[:, :-1], shifts, masks=both).actions.vectors

    weight = lma.action_network.mirror.weight.detach().clone()
    zero = torch.zeros_like(weight)
    symmetric = masks[:, 1:] * masks[:, 1:].flip(-1)  # each next mask made left-right symmetric
    torch.testing.assert_close(vectors(symmetric, weight), vectors(symmetric, zero))  # nothing added
    assert not torch.allclose(vectors(masks[:, 1:], weight), vectors(masks[:, 1:], zero), atol=1e-4)
    torch.testing.assert_close(vectors(masks[:, 1:], weight), motion.actions.vectors)
    with pytest.raises(ValueError, match="action_mirror_features"):
        lma.action_network(torch.zeros(2, 8, 2, 4), torch.zeros(2, 8, 2, 4))
    from utils.config import ConfigError
    with pytest.raises(ConfigError, match="action_mirror_features"):
        small_model_config(action_mirror_features=True).lma.check("model.lma.")


def test_action_shift_input_reads_the_detached_foreground_shift_and_nothing_else_when_off(small_model_config):
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(action_from_masks=True, action_shift_input=10.0).lma, (2, 4))
    _, shifts, _, foregrounds, masks = _window_inputs(lma, 4, seed=3)
    read = []
    lma.action_network.shift_input.register_forward_pre_hook(lambda module, inputs: read.append(inputs[0]))
    with torch.no_grad():
        lma.infer_motion(foregrounds, foregrounds[:, :-1], shifts, masks=masks)
    torch.testing.assert_close(read[0], shifts.flatten(0, 1) * 10)  # 10·Δ_F of every transition
    # The network trains its Linear and gives no gradient to the shift it reads (the GMA's).
    network, states = lma.action_network, torch.randn(6, 8, 2, 4)
    read_shifts = torch.full((6, 2), 0.1, requires_grad=True)
    network.vectors(states, states.flip(0), shifts=read_shifts).sum().backward()
    assert network.shift_input.weight.grad.abs().sum() > 0
    assert read_shifts.grad is None
    # The same readings with other shifts: other vectors (shifts that vary over the batch: BatchNorm's batch
    # statistics take away what is common to all).
    some, others = torch.randn(6, 2) * 0.1, torch.randn(6, 2) * 0.1
    with torch.no_grad():
        one = network.vectors(states, states.flip(0), shifts=some)
        assert not torch.allclose(one, network.vectors(states, states.flip(0), shifts=others), atol=1e-4)
        # With the Linear zeroed, the network of the authors with the same weights.
        network.shift_input.weight.zero_()
        network.shift_input.bias.zero_()
        off = LocalMotionAnalysis(small_model_config(action_from_masks=True).lma, (2, 4)).action_network
        assert off.shift_input is None
        missing = off.load_state_dict(network.state_dict(), strict=False)
        assert missing.missing_keys == [] and sorted(missing.unexpected_keys) == ["shift_input.bias",
                                                                                  "shift_input.weight"]
        torch.testing.assert_close(network.vectors(states, states.flip(0), shifts=some),
                                   off.vectors(states, states.flip(0)))
    with pytest.raises(ValueError, match="action_shift_input"):
        network(torch.zeros(2, 8, 2, 4), torch.zeros(2, 8, 2, 4))
    from utils.config import ConfigError
    with pytest.raises(ConfigError, match="action_shift_input"):
        small_model_config(action_shift_input=-1.0).lma.check("model.lma.")


def test_colour_jitter_gives_both_images_of_a_pair_one_colour_transform():
    from model.lma import colour_jitter

    torch.manual_seed(0)
    source = torch.rand(3, 4, 3, 8, 6) * 2 - 1
    source[..., :2] = 0  # an empty surround
    target = torch.roll(source, 1, dims=-1)
    jittered_source, jittered_target = colour_jitter(source, target)
    assert jittered_source.shape == source.shape
    # The same transform for both images of a pair: it commutes with the roll that made the target.
    assert torch.allclose(torch.roll(jittered_source, 1, dims=-1), jittered_target)
    assert torch.equal(jittered_source[..., :2], torch.zeros_like(source[..., :2]))
    # Each output channel is ± a gain in [0.5, 1.5] times one input channel, the channels permuted.
    flat_in, flat_out = source.flatten(0, 1), jittered_source.flatten(0, 1)
    permutations = set()
    for pair in range(flat_in.shape[0]):
        chosen = []
        for channel in range(3):
            ratios = [flat_out[pair, channel, :, 2:].flatten() / flat_in[pair, other, :, 2:].flatten()
                      for other in range(3)]
            matches = [other for other in range(3)
                       if torch.allclose(ratios[other], ratios[other][:1].expand_as(ratios[other]))]
            assert len(matches) == 1
            gain = ratios[matches[0]][0].abs().item()
            assert 0.5 <= gain <= 1.5
            chosen.append(matches[0])
        assert sorted(chosen) == [0, 1, 2]
        permutations.add(tuple(chosen))
    assert len(permutations) > 1  # pairs get different transforms


def test_action_colour_jitter_reads_jittered_foregrounds_in_training_and_plain_ones_in_eval(small_model_config):
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(action_colour_jitter=True).lma, (2, 4))  # training mode
    _, shifts, _, foregrounds, _ = _window_inputs(lma, 4, seed=3)
    read = []
    lma.action_encoder.register_forward_pre_hook(lambda module, inputs: read.append(inputs[0]))
    motion = lma.infer_motion(foregrounds, foregrounds[:, :-1], shifts)
    shifted = motion.shifted_foregrounds.flatten(0, 1)
    assert len(read) == 2
    assert not torch.allclose(read[0], shifted) and not torch.allclose(read[1], foregrounds[:, 1:].flatten(0, 1))
    # |jittered| has the magnitudes of the plain images' channels, up to gains in [0.5, 1.5].
    assert (read[0].abs().sum() / shifted.abs().sum()).item() == pytest.approx(1.0, abs=0.5)
    (motion.actions.codes.sum() + motion.actions.vq_loss).backward()
    assert lma.action_encoder.layers[0][0].weight.grad.abs().sum() > 0
    assert lma.encoder.layers[0][0].weight.grad is None  # the LMA's encoder does not serve the actions
    lma.eval()
    read.clear()
    with torch.no_grad():
        plain = lma.infer_motion(foregrounds, foregrounds[:, :-1], shifts)
    assert torch.equal(read[0], plain.shifted_foregrounds.flatten(0, 1))
    assert torch.equal(read[1], foregrounds[:, 1:].flatten(0, 1))


def test_action_from_changes_reads_the_moved_mask_and_where_the_frame_changes(small_model_config):
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(action_from_changes=True).lma, (2, 4))  # training mode
    assert lma.shift_refinement == 0
    _, _, _, foregrounds, masks = _window_inputs(lma, 4, seed=3)
    shifts = torch.zeros(4, 3, 2)  # f̃ₜ = fₜ
    still = foregrounds[:, :1].expand(-1, 4, -1, -1, -1).clone()  # a character that does not move ...
    still[:, 2:, :, 4:8, 10:20] += 0.3  # ... but for one patch, changed from frame 2 on (transition 1 → 2)
    read = []
    lma.action_encoder.register_forward_pre_hook(lambda module, inputs: read.append(inputs[0]))
    motion = lma.infer_motion(still, still[:, :-1], shifts, masks=masks)
    assert len(read) == 2
    assert torch.allclose(read[0], (masks[:, :-1].flatten(0, 1) * 2 - 1).expand(-1, 3, -1, -1), atol=1e-6)
    expected = -torch.ones(4, 3, 1, 16, 32)
    expected[:, 1, :, 4:8, 10:20] = 0.8  # Σ_c |0.3| = 0.9 → min(0.9, 1)·2 − 1
    assert torch.allclose(read[1], expected.flatten(0, 1).expand(-1, 3, -1, -1), atol=1e-6)
    with torch.no_grad():
        # What stays still cancels: another character, as still, with the same change, gives the same codes.
        other = (-foregrounds[:, 1:2]).expand(-1, 4, -1, -1, -1).clone()
        other[:, 2:, :, 4:8, 10:20] += 0.3
        other_vectors = lma.infer_motion(other, other[:, :-1], shifts, masks=masks).actions.vectors
        # the action encoder reads the same two maps (to the rounding of f + 0.3 − f against −f + 0.3 + f, a few
        # 1e-7), and the vectors agree to what the training-mode BatchNorm of a batch of 12 makes of that rounding
        # (2e-5 on an AVX2 EPYC; a reader of appearance would differ by tenths)
        assert len(read) == 4 and torch.equal(read[2], read[0]) and torch.allclose(read[3], read[1], atol=1e-6)
        assert torch.allclose(other_vectors, motion.actions.vectors, atol=1e-4)
    (motion.actions.codes.sum() + motion.actions.vq_loss).backward()
    assert lma.action_encoder.layers[0][0].weight.grad.abs().sum() > 0
    assert lma.encoder.layers[0][0].weight.grad is None
    with pytest.raises(ValueError, match="action_from_changes"):
        lma.infer_motion(still, still[:, :-1], shifts)


@pytest.mark.parametrize("overrides, key", [
    ({"action_colour_jitter": True, "action_from_masks": True}, "action_colour_jitter"),
    ({"action_colour_jitter": True, "action_matching": True}, "action_colour_jitter"),
    ({"action_from_changes": True, "action_from_masks": True}, "action_from_changes"),
    ({"action_from_changes": True, "action_colour_jitter": True}, "action_from_changes"),
    ({"action_from_changes": True, "action_matching": True}, "action_from_changes")])
def test_action_readers_of_their_own_are_refused_together(small_model_config, overrides, key):
    from utils.errors import GlassError

    with pytest.raises((GlassError, ValueError), match=key):
        small_model_config(**overrides)


@pytest.mark.parametrize("reader", ["features", "masks"])
def test_action_reader_norm_group_makes_a_transition_s_code_independent_of_the_batch(small_model_config, reader):
    """model.lma.action_reader_norm 'group': the action network (and the action encoder, where it has one) has no
    BatchNorm, so a transition's vector is the same read with other transitions or alone, in training and in
    evaluation; the shared encoder, the dynamics and the decoder keep theirs. With 'batch' (the authors') it is not."""
    from utils.errors import GlassError

    def batch_norms(module):
        return sum(isinstance(layer, torch.nn.modules.batchnorm._BatchNorm) for layer in module.modules())

    overrides = {"action_from_masks": True} if reader == "masks" else {}
    vectors = {}
    for norm in ("batch", "group"):
        torch.manual_seed(0)
        lma = LocalMotionAnalysis(small_model_config(action_reader_norm=norm, **overrides).lma, (2, 4))
        readers = lma.action_readers()
        assert len(readers) == (2 if reader == "masks" else 1)
        assert all((batch_norms(module) == 0) == (norm == "group") for module in readers)
        assert batch_norms(lma.encoder) and batch_norms(lma.dynamics) and batch_norms(lma.decoder)
        _, shifts, _, foregrounds, masks = _window_inputs(lma, 4, seed=3)
        masks = (masks > 0.5).float()
        with torch.no_grad():
            def read(rows):
                return lma.infer_motion(foregrounds[rows], foregrounds[rows, :-1], shifts[rows],
                                        masks=masks[rows]).actions.vectors
            together = read(slice(0, 4))
            alone = torch.cat([read(slice(i, i + 1)) for i in range(4)])
            lma.eval()
            evaluated = read(slice(0, 4))
        vectors[norm] = (together, alone, evaluated)
    together, alone, evaluated = vectors["group"]
    assert torch.allclose(together, alone, atol=1e-5) and torch.allclose(together, evaluated, atol=1e-5)
    together, alone, evaluated = vectors["batch"]
    assert not torch.allclose(together, alone, atol=1e-3) and not torch.allclose(together, evaluated, atol=1e-3)
    with pytest.raises((GlassError, ValueError), match="action_reader_norm"):
        small_model_config(action_reader_norm="layer")


@pytest.mark.parametrize("overrides, reader, needs_masks, own_encoder", [
    ({}, "features", False, False), ({"decoder_skip": True, "decoder_skip_mask": True}, "features", True, False),
    ({"action_from_masks": True}, "masks", True, True), ({"action_from_changes": True}, "changes", True, True),
    ({"action_colour_jitter": True}, "colour_jitter", False, True)])
def test_the_action_reader_decides_the_masks_and_the_action_encoder(small_model_config, overrides, reader, needs_masks,
                                                                     own_encoder):
    config = small_model_config(**overrides).lma
    assert (config.action_reader, config.needs_masks) == (reader, needs_masks)
    assert (LocalMotionAnalysis(config, (2, 4)).action_encoder is not None) == own_encoder


def test_action_from_masks_is_refused_with_action_matching(small_model_config):
    from utils.errors import GlassError

    with pytest.raises((GlassError, ValueError), match="action_from_masks"):
        small_model_config(action_from_masks=True, action_matching=True)


def test_bilinear_matches_torch_bilinear_values_and_gradients():
    from model.lma import bilinear

    torch.manual_seed(0)
    layer = torch.nn.Bilinear(5, 7, 3).double()
    first = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    second = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    expected = layer(first, second)
    actual = bilinear(first, second, layer.weight, layer.bias)
    assert torch.allclose(actual, expected, atol=1e-12)
    # by hand for one entry: Σ_ij first[n, i] W[o, i, j] second[n, j] + b[o]
    by_hand = (first[1, :, None] * layer.weight[2] * second[1, None, :]).sum() + layer.bias[2]
    assert torch.allclose(actual[1, 2], by_hand, atol=1e-12)
    upstream = torch.randn(4, 3, dtype=torch.float64)
    gradients = torch.autograd.grad((actual * upstream).sum(), [first, second, layer.weight, layer.bias])
    expected_gradients = torch.autograd.grad((expected * upstream).sum(), [first, second, layer.weight, layer.bias])
    for got, want in zip(gradients, expected_gradients):
        assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(bilinear(first, second, layer.weight, None), expected - layer.bias, atol=1e-12)


def test_gumbel_head_is_one_linear_layer_as_in_spec_and_the_authors_code(small_model_config):
    config = small_model_config(use_gumbel=True).lma
    head = ActionNetwork(config).mlp
    assert len(head) == 1 and isinstance(head[0], torch.nn.Linear)
    assert (head[0].in_features, head[0].out_features) == (config.action_trunk_channels[-1], config.num_actions)
    vq_head = ActionNetwork(small_model_config().lma).mlp
    assert sum(isinstance(layer, torch.nn.Linear) for layer in vq_head) == len(config.action_mlp_hidden) + 1


def test_decoder_skip_feeds_the_shifted_current_foreground_to_the_full_size_output(small_model_config):
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(decoder_skip=True).lma, (2, 4)).eval()
    assert lma.decoder.finals[-1][0].in_channels == 4 + 3
    states, shifts = torch.randn(2, 2, 8, 2, 4), torch.tensor([[[0.25, 0.0]] * 3] * 2)
    codes = lma.action_network.codebook[torch.zeros(2, 3, dtype=torch.long)].detach()
    foregrounds = torch.zeros(2, 2, 3, 16, 32)
    with torch.no_grad():
        plain = lma.unroll(states, shifts, codes, ground_truth_foregrounds=foregrounds)[0][0]
        bright = foregrounds.clone()
        bright[:, 0, :, :, 20:] = 1.0  # step 0's foreground; moved right by 0.25 (4 px), its edge is at x = 24
        lit = lma.unroll(states, shifts, codes, ground_truth_foregrounds=bright)[0][0]
        changed = (lit[:, 0] - plain[:, 0]).abs().amax(dim=(0, 1, 2)) > 1e-6  # per column x
        # The final conv (k7) reaches 3 px: the shifted edge at 24 shows from x = 21, the unshifted one would from 17.
        assert changed[21:].all() and not changed[:21].any()
        assert torch.equal(lit[:, 1], plain[:, 1])  # step 1 reads its own foreground (unchanged)
    with pytest.raises(ValueError, match="decoder_skip"):
        lma.unroll(states, shifts, codes)


def test_decoder_skip_mask_feeds_the_shifted_current_mask_and_later_steps_their_own(small_model_config):
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(decoder_skip=True, decoder_skip_mask=True).lma, (2, 4)).eval()
    assert lma.decoder.finals[-1][0].in_channels == 4 + 4
    states, shifts = torch.randn(2, 2, 8, 2, 4), torch.tensor([[[0.25, 0.0]] * 3] * 2)
    codes = lma.action_network.codebook[torch.zeros(2, 3, dtype=torch.long)].detach()
    foregrounds, masks = torch.zeros(2, 2, 3, 16, 32), torch.zeros(2, 2, 1, 16, 32)
    with torch.no_grad():
        plain = lma.unroll(states, shifts, codes, ground_truth_foregrounds=foregrounds, ground_truth_masks=masks)[0][0]
        full = masks.clone()
        full[:, 0, :, :, 20:] = 1.0  # step 0's mask; moved right by 4 px its edge is at x = 24
        lit = lma.unroll(states, shifts, codes, ground_truth_foregrounds=foregrounds, ground_truth_masks=full)[0][0]
        changed = (lit[:, 0] - plain[:, 0]).abs().amax(dim=(0, 1, 2)) > 1e-6
        assert changed[21:].all() and not changed[:21].any()  # the final conv (k7) reaches 3 px
        assert torch.equal(lit[:, 1], plain[:, 1])  # step 1 reads its own ground-truth mask (unchanged)
        # With T_f = 1, steps 1 and 2 are autoregressive: each skip carries f̂ and m̂ of the step before.
        calls = []
        original = lma.decoder_skip
        lma.decoder_skip = lambda f, d, m=None, c=None: calls.append((f, m)) or original(f, d, m, c)
        generated, generated_masks = lma.unroll(states[:, :1], shifts, codes,
                                                ground_truth_foregrounds=foregrounds[:, :1],
                                                ground_truth_masks=masks[:, :1])
        del lma.decoder_skip
        assert len(calls) == 3 and torch.equal(calls[0][1], masks[:, 0])
        for t in (1, 2):
            assert (torch.allclose(calls[t][0], generated[0][:, t - 1])
                    and torch.allclose(calls[t][1], generated_masks[:, t - 1]))
    with pytest.raises(ValueError, match="decoder_skip_mask"):
        lma.unroll(states, shifts, codes, ground_truth_foregrounds=foregrounds)


def test_decoder_skip_mask_needs_decoder_skip(small_model_config):
    from utils.config import ConfigError
    with pytest.raises(ConfigError, match="decoder_skip_mask"):
        small_model_config(decoder_skip_mask=True).lma.check("model.lma.")


def test_decoder_action_makes_the_output_depend_on_the_code_through_the_decoder(small_model_config):
    torch.manual_seed(0)
    config = small_model_config(decoder_action=True).lma
    decoder = Decoder(config).eval()
    widths = [config.hidden_size] + list(config.decoder_channels)

    def up_conv_inputs(built: Decoder):
        return [(stage if isinstance(stage, Up) else stage[0])[1].in_channels for stage in built.stages]

    # Every Up stage's conv takes the code's D channels more.
    assert up_conv_inputs(decoder) == [w + config.action_dim for w in widths[:-1]]
    assert up_conv_inputs(Decoder(small_model_config().lma)) == widths[:-1]
    hidden = torch.randn(2, config.hidden_size, 2, 4)
    first, second = torch.randn(2, config.action_dim), torch.randn(2, config.action_dim)
    with torch.no_grad():
        outputs_first, outputs_second = decoder(hidden, action=first), decoder(hidden, action=second)
        again = decoder(hidden, action=first)
    for a, b, c in zip(outputs_first, outputs_second, again):
        assert not torch.allclose(a, b)  # the same hidden state decodes differently for another code, at every scale
        assert torch.equal(a, c)
    with pytest.raises(ValueError, match="decoder_action"):
        decoder(hidden)


def test_decoder_action_film_starts_as_the_identity_and_scales_and_shifts_by_the_code(small_model_config):
    """decoder_action_film: with its maps at zero the decoder is the plain decoder_action one (same weights, same
    outputs); with (γ, β) set, the full-size features are x·(1 + γ) + β of the code — checked on the last map
    through a hook on the input of the full-size Final."""
    torch.manual_seed(0)
    config = small_model_config(decoder_action=True, decoder_action_film=True).lma
    film = Decoder(config).eval()
    plain = Decoder(small_model_config(decoder_action=True).lma).eval()
    widths = [config.hidden_size] + list(config.decoder_channels)
    assert [m.out_features for m in film.films] == [2 * w for w in widths] and not plain.films
    plain.load_state_dict({k: v for k, v in film.state_dict().items() if not k.startswith("films.")})
    hidden, code = torch.randn(2, config.hidden_size, 2, 4), torch.randn(2, config.action_dim)
    with torch.no_grad():
        for a, b in zip(film(hidden, action=code), plain(hidden, action=code)):
            assert torch.equal(a, b)
        seen = {}
        film.finals[-1].register_forward_pre_hook(lambda module, inputs: seen.setdefault("x", inputs[0]))
        plain.finals[-1].register_forward_pre_hook(lambda module, inputs: seen.setdefault("plain", inputs[0]))
        film.films[-1].weight.normal_()
        film.films[-1].bias.normal_()
        film(hidden, action=code)
        plain(hidden, action=code)
        scale, shift = film.films[-1](code).chunk(2, dim=1)
        expected = seen["plain"] * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        torch.testing.assert_close(seen["x"], expected)
    from utils.config import ConfigError
    with pytest.raises(ConfigError, match="decoder_action_film"):
        small_model_config(decoder_action_film=True).lma.check("model.lma.")


def test_action_state_difference_reads_only_the_change_of_the_states(small_model_config):
    torch.manual_seed(0)
    config = small_model_config(action_state_difference=True).lma
    network = ActionNetwork(config).eval()
    assert len(network.direction_layers) == 0
    source, target = torch.randn(5, 8, 4, 4), torch.randn(5, 8, 4, 4)
    appearance = torch.randn(5, 8, 4, 4)  # the same in both frames: what a character looks like
    with torch.no_grad():
        plain = network(source, target)
        shifted = network(source + appearance, target + appearance)
        other = network(source, target + appearance)
    assert torch.allclose(plain.vectors, shifted.vectors, atol=1e-5) and torch.equal(plain.ids, shifted.ids)
    assert not torch.allclose(plain.vectors, other.vectors)
    from utils.config import ConfigError
    with pytest.raises(ConfigError, match="action_state_difference"):
        small_model_config(action_state_difference=True, use_plain_direction=True)


def test_action_target_only_reads_the_next_frame_alone(small_model_config):
    torch.manual_seed(0)
    network = ActionNetwork(small_model_config(action_target_only=True).lma).eval()
    assert len(network.direction_layers) == 0
    source, target = torch.randn(5, 8, 4, 4), torch.randn(5, 8, 4, 4)
    with torch.no_grad():
        plain = network(source, target)
        other_source = network(torch.randn(5, 8, 4, 4), target)
        other_target = network(source, target + torch.randn(5, 8, 4, 4))
    assert torch.equal(plain.vectors, other_source.vectors)
    assert not torch.allclose(plain.vectors, other_target.vectors)
    from utils.config import ConfigError
    with pytest.raises(ConfigError, match="action_target_only"):
        small_model_config(action_target_only=True, action_state_difference=True)


def _moving_square(steps: int, per_step: Tuple[int, int]) -> torch.Tensor:
    """(1, steps, 3, 16, 32) foregrounds: a random 5×6 patch moving per_step (dx, dy) pixels each frame."""
    generator = torch.Generator().manual_seed(0)
    frames = torch.zeros(1, steps, 3, 16, 32)
    patch = torch.rand(3, 5, 6, generator=generator) + 0.5
    for t in range(steps):
        x, y = 8 + per_step[0] * t, 5 + per_step[1] * t
        frames[0, t, :, y:y + 5, x:x + 6] = patch
    return frames


@pytest.mark.parametrize("radius", [0, 3])
def test_shift_refinement_finds_the_integer_offset_that_aligns_the_next_foreground(small_model_config, radius, device):
    lma = LocalMotionAnalysis(small_model_config(shift_refinement=radius).lma, (2, 4)).to(device)
    foregrounds = _moving_square(3, (3, -1)).to(device)  # the true motion: 3 px right, 1 px up per frame
    pixel = torch.tensor([2 / 32, 2 / 16], device=device)
    given = (torch.tensor([1.0, 0.0], device=device) * pixel).expand(1, 2, 2)  # the GMA's guess: 1 px right
    from model.gma import FOREGROUND_PADDING, shift_images
    shifted = shift_images(foregrounds[0, :-1], given[0], FOREGROUND_PADDING)[None]
    refined_foregrounds, refined_shifts = lma.refine_shifts(foregrounds, shifted, given)
    if radius == 0:
        assert refined_foregrounds is shifted and refined_shifts is given
        return
    assert torch.allclose(refined_shifts / pixel, torch.tensor([3.0, -1.0], device=device).expand(1, 2, 2), atol=1e-5)
    assert torch.allclose(refined_foregrounds, foregrounds[:, 1:], atol=1e-5)
    # An offset beyond the radius is not reached: the best one within it is taken.
    far = LocalMotionAnalysis(small_model_config(shift_refinement=1).lma, (2, 4)).to(device).refine_shifts(
        foregrounds, shifted, given)
    assert torch.allclose(far[1] / pixel, torch.tensor([2.0, -1.0], device=device).expand(1, 2, 2), atol=1e-5)
    # Already aligned: nothing moves (δ = 0 wins ties).
    exact = (torch.tensor([3.0, -1.0], device=device) * pixel).expand(1, 2, 2)
    aligned = lma.refine_shifts(foregrounds, foregrounds[:, 1:], exact)
    assert torch.equal(aligned[1], exact)


def test_the_lma_trains_and_reconstructs_with_the_refined_shifts(small_model_config, device):
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(shift_refinement=3).lma, (2, 4)).to(device)
    foregrounds = _moving_square(3, (2, 1)).to(device)
    zero = torch.zeros(1, 2, 2, device=device)
    output = lma(foregrounds, foregrounds[:, :-1], zero, num_ground_truth_steps=1)
    assert torch.allclose(output.foreground_shifts / torch.tensor([2 / 32, 2 / 16], device=device),
                          torch.tensor([2.0, 1.0], device=device).expand(1, 2, 2), atol=1e-5)
    assert torch.allclose(output.shifted_foregrounds, foregrounds[:, 1:], atol=1e-5)


def _two_outcomes(batch_size: int, seed: int):
    """A toy with a local action that the current frame cannot tell: one 6×6 grey square in f₀ (B, 2, 3, 16, 32);
    in f₁ it becomes a horizontal or a vertical bar, at random. No global motion. Returns f, masks, outcome (B,)."""
    generator = torch.Generator().manual_seed(seed)
    outcome = torch.randint(0, 2, (batch_size,), generator=generator)
    masks = torch.zeros(batch_size, 2, 1, 16, 32)
    masks[:, 0, :, 5:11, 13:19] = 1
    for index, kind in enumerate(outcome.tolist()):
        if kind == 0:
            masks[index, 1, :, 7:9, 8:24] = 1
        else:
            masks[index, 1, :, 1:15, 15:17] = 1
    return (masks * 0.6).expand(-1, -1, 3, -1, -1).contiguous(), masks, outcome


def test_winner_take_all_keeps_the_closest_of_every_code(small_model_config):
    """Each step is drawn with every codebook row; the kept output is the row whose f̂ (plus m̂) is closest to
    the target, and equals what `unroll` draws with that row (eval mode: per-sample BatchNorm)."""
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(num_actions=3, decoder_action=True).lma, (2, 4)).eval()
    with torch.no_grad():
        lma.action_network.codebook.normal_(generator=torch.Generator().manual_seed(1))
    states, shifts, _ = _unroll_inputs(lma, seed=2)
    states = torch.cat([states, torch.randn(2, 2, 8, 2, 4, generator=torch.Generator().manual_seed(3))], dim=1)
    per_code = [lma.unroll(states, shifts, lma.action_network.codebook[k].expand(2, 3, -1)) for k in range(3)]
    targets = torch.rand(2, 3, 3, 16, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    target_masks = torch.rand(2, 3, 1, 16, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        foregrounds, masks, winners = lma.unroll_winner_take_all(states, shifts, targets, target_masks)
    errors = torch.stack([(drawn[0] - targets).abs().mean(dim=(2, 3, 4)) + (drawn_masks - target_masks).abs().mean(
        dim=(2, 3, 4)) for drawn, drawn_masks in per_code], dim=-1)  # (B, S, K): all steps real, codes constant
    assert torch.equal(winners, errors.argmin(dim=-1))
    for b in range(2):
        for t in range(3):
            k = int(winners[b, t])
            assert torch.allclose(foregrounds[0][b, t], per_code[k][0][0][b, t], atol=1e-5)
            assert torch.allclose(foregrounds[1][b, t], per_code[k][0][1][b, t], atol=1e-5)
            assert torch.allclose(masks[b, t], per_code[k][1][b, t], atol=1e-5)


def test_winner_take_all_trains_the_chooser_only_in_training_mode(small_model_config):
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(num_actions=3, winner_take_all=True).lma, (2, 4))
    foregrounds, masks, _ = _two_outcomes(4, seed=0)
    shifts = torch.zeros(4, 1, 2)
    output = lma(foregrounds, foregrounds[:, :1], shifts, 1, masks=masks)
    assert output.winner_ids.shape == (4, 1) and output.action_choice_loss.dim() == 0
    gradients = torch.autograd.grad(output.action_choice_loss, [lma.action_network.mlp[-1].weight,
                                                                lma.decoder.finals[-1][0].weight,
                                                                lma.action_network.codebook], allow_unused=True)
    assert gradients[0].abs().sum() > 0  # the chooser learns from it ...
    assert gradients[1] is None and gradients[2] is None  # ... the decoder and the codebook do not
    lma.eval()
    plain = lma(foregrounds, foregrounds[:, :1], shifts, 1, masks=masks)
    assert plain.winner_ids is None and plain.action_choice_loss is None


def test_winner_take_all_is_refused_with_gumbel(small_model_config):
    from utils.errors import GlassError

    with pytest.raises((GlassError, ValueError), match="winner_take_all"):
        small_model_config(winner_take_all=True, use_gumbel=True)


def _train_on_told_outcomes(lma: LocalMotionAnalysis, steps: int, freeze_code_path: bool,
                            data=None) -> float:
    """Train `lma` on `_two_outcomes` with the outcome given as the code (a fixed row per outcome), the authors'
    multiscale local reconstruction loss (motion-weighted) plus the mask loss; returns the code effect of the
    trained LMA: PSNR with the right code minus with the other one, on 32 new windows."""
    from types import SimpleNamespace

    from model.losses import GlassLoss
    from tests.model.test_losses import only
    from utils.metrics import code_effect_db

    data = data or _two_outcomes
    loss = GlassLoss(only("multiscale_local_reconstruction_loss"), None)
    table = torch.randn(2, lma.action_network.codebook.shape[1], generator=torch.Generator().manual_seed(9))
    if freeze_code_path:
        lma.dynamics.local_projection.weight.data.zero_()
        lma.dynamics.local_projection.weight.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in lma.parameters() if p.requires_grad], lr=3e-3)

    def draw(foregrounds, masks, codes):
        motion = lma.infer_motion(foregrounds, foregrounds[:, :1], torch.zeros(foregrounds.shape[0], 1, 2))
        drawn, drawn_masks = lma.unroll(motion.states[:, :1], motion.foreground_shifts, codes[:, None],
                                        ground_truth_foregrounds=foregrounds[:, :1], ground_truth_masks=masks[:, :1])
        return motion, drawn, drawn_masks

    for step in range(steps):
        foregrounds, masks, outcome = data(8, seed=step)
        motion, drawn, drawn_masks = draw(foregrounds, masks, table[outcome])
        output = SimpleNamespace(generated_foregrounds=drawn, shifted_foregrounds=motion.shifted_foregrounds)
        total = (loss.multiscale_local_reconstruction_loss(SimpleNamespace(foregrounds=foregrounds), output)
                 + (drawn_masks - masks[:, 1:]).abs().mean())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    lma.eval()
    foregrounds, masks, outcome = data(32, seed=1000)
    with torch.no_grad():
        errors = [(draw(foregrounds, masks, table[told])[1][0] - foregrounds[:, 1:]).pow(2).sum(dim=(2, 3, 4))
                  for told in (outcome, 1 - outcome)]
    return code_effect_db(errors[0], errors[1])


@pytest.mark.parametrize("freeze_code_path", [False, True], ids=["code-read", "code-path-cut"])
def test_the_lma_learns_to_draw_what_the_code_says(small_model_config, freeze_code_path):
    """A learning smoke test of the local half's rendering: on `_two_outcomes`, where only the code can tell the
    bar's orientation, 100 steps with the outcome as the code must give a code effect above 1.5 dB (measured
    3.6 dB, one thread; with a plain unweighted L1 instead of the authors' motion weights 0.2 dB). With the code's
    path into the dynamics cut, the same training gives no effect: that run must stay under 0.1 dB, which shows
    the test fails when the code has no effect."""
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(num_actions=3, decoder_skip=True, decoder_skip_mask=True).lma,
                              (2, 4))
    effect = _train_on_told_outcomes(lma, 100, freeze_code_path)
    if freeze_code_path:
        assert abs(effect) < 0.1, effect
    else:
        assert effect > 1.5, effect


def _two_moves(batch_size: int, seed: int):
    """A toy of a told local motion: a 6×6 square with a horizontal ramp of grey levels in f₀ (B, 2, 3, 16, 32)
    moves 2 px left or 2 px right in f₁, at random (no global shift). Returns f, masks, outcome (B,)."""
    generator = torch.Generator().manual_seed(seed)
    outcome = torch.randint(0, 2, (batch_size,), generator=generator)
    ramp = torch.linspace(-0.8, 0.8, 6).expand(3, 6, 6)
    foregrounds = torch.zeros(batch_size, 2, 3, 16, 32)
    masks = torch.zeros(batch_size, 2, 1, 16, 32)
    foregrounds[:, 0, :, 5:11, 13:19] = ramp
    masks[:, 0, :, 5:11, 13:19] = 1
    for index, kind in enumerate(outcome.tolist()):
        move = 2 if kind else -2
        foregrounds[index, 1, :, 5:11, 13 + move:19 + move] = ramp
        masks[index, 1, :, 5:11, 13 + move:19 + move] = 1
    return foregrounds, masks, outcome


def test_decoder_warp_learns_a_told_local_motion(small_model_config):
    """`decoder_warp`: on `_two_moves`, with the direction given as the code, 100 steps must give a code effect
    above 15 dB (measured 25.4 dB with R = 3 px, one thread; the drawing decoder without the warp 7.5 dB)."""
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(num_actions=3, decoder_skip=True, decoder_skip_mask=True,
                                                 decoder_warp=3.0).lma, (2, 4))
    effect = _train_on_told_outcomes(lma, 100, freeze_code_path=False, data=_two_moves)
    assert effect > 15.0, effect

def _two_turns(batch_size: int, seed: int):
    """A toy of a told turn: a 6×6 square of six random grey columns (new ones in every sample, so no drawing can
    learn them) in f₀ (B, 2, 3, 16, 32) stays as it is in f₁ or turns, its columns in reverse order (the square
    mirrored about its own centre column), at random. Returns f, masks, outcome (B,)."""
    generator = torch.Generator().manual_seed(seed)
    outcome = torch.randint(0, 2, (batch_size,), generator=generator)
    columns = (torch.rand(batch_size, 1, 1, 6, generator=generator) * 1.6 - 0.8).expand(batch_size, 3, 6, 6)
    foregrounds = torch.zeros(batch_size, 2, 3, 16, 32)
    masks = torch.zeros(batch_size, 2, 1, 16, 32)
    foregrounds[:, 0, :, 5:11, 13:19] = columns
    masks[:, :, :, 5:11, 13:19] = 1
    foregrounds[:, 1, :, 5:11, 13:19] = torch.where(outcome[:, None, None, None].bool(), columns.flip(-1), columns)
    return foregrounds, masks, outcome


@pytest.mark.parametrize("mirror", [False, True], ids=["warp", "warp-mirror"])
def test_decoder_warp_mirror_learns_a_told_turn(small_model_config, mirror):
    """`decoder_warp_mirror`: on `_two_turns`, with the turn given as the code, 100 steps must give a code effect
    above 10 dB (measured 19.0 dB, one thread); the warp alone, which would have to draw the reversed columns, stays
    under 6 dB (measured 2.5 dB) — so the test fails if the mirrored source is not used."""
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(num_actions=3, decoder_skip=True, decoder_skip_mask=True,
                                                 decoder_warp=3.0, decoder_warp_mirror=mirror).lma, (2, 4))
    effect = _train_on_told_outcomes(lma, 100, freeze_code_path=False, data=_two_turns)
    if mirror:
        assert effect > 10.0, effect
    else:
        assert effect < 6.0, effect


def test_balanced_assignment_caps_every_code_and_takes_the_least_errors_first():
    from model.lma import balanced_assignment

    errors = torch.tensor([[0.1, 0.5, 0.9],
                           [0.2, 0.6, 0.8],
                           [0.3, 0.7, 0.4],
                           [0.05, 0.9, 0.95]])
    # code 0 takes the two least errors (items 3 and 0); item 1 then gets its next best code 1, item 2 code 2
    assert balanced_assignment(errors).tolist() == [0, 1, 2, 0]
    chosen = balanced_assignment(torch.rand(10, 3, generator=torch.Generator().manual_seed(0)))
    assert torch.bincount(chosen, minlength=3).max() <= 4  # ⌈10 / 3⌉
    assert balanced_assignment(torch.zeros(2, 6)).tolist() == [0, 1]  # ties: the lower item, then code


def _matching_inputs(seed: int):
    generator = torch.Generator().manual_seed(seed)
    shifted = torch.rand(2, 3, 3, 16, 32, generator=generator) * 2 - 1
    next_foregrounds = torch.rand(2, 3, 3, 16, 32, generator=generator) * 2 - 1
    return shifted, next_foregrounds


def test_action_matching_is_zero_for_identical_distributions_and_positive_otherwise(small_model_config):
    """KL(q(f̃ₜ, fₜ₊₁) ‖ q(f̃ₜ, f̂ₜ₊₁)): 0 when f̂ₜ₊₁ = fₜ₊₁ (the same frames, so the same BatchNorm batch
    statistics on both sides), > 0 for other frames; equal to the KL computed by hand from the two pairs' code
    distances. Training mode: a fresh model in eval mode gives every input the same z."""
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(num_actions=4, action_matching=True).lma, (2, 4))
    with torch.no_grad():
        lma.action_network.codebook.normal_(generator=torch.Generator().manual_seed(1))
    shifted, next_foregrounds = _matching_inputs(seed=2)

    source, source_attention = lma.encoder(shifted.flatten(0, 1))
    source_features = source * source_attention

    def logits(targets: torch.Tensor) -> torch.Tensor:
        target, target_attention = lma.encoder(targets.flatten(0, 1))
        actions = lma.action_network(source_features, target * target_attention)
        return actions.choice_logits.unflatten(0, (2, 3))

    source_features_per_window = source_features.unflatten(0, (2, 3))
    real = logits(next_foregrounds)
    assert float(lma.action_matching_loss(source_features_per_window, real, next_foregrounds)) == pytest.approx(
        0.0, abs=1e-6)
    other = next_foregrounds.flip(1) * 0.5
    by_hand = (real.softmax(-1) * (real.log_softmax(-1) - logits(other).log_softmax(-1))).sum(-1).mean()
    matching = lma.action_matching_loss(source_features_per_window, real, other)
    assert float(matching.detach()) > 1e-3
    assert float(matching.detach()) == pytest.approx(float(by_hand.detach()), rel=1e-4)


def test_action_matching_trains_the_drawing_only_and_keeps_the_statistics(small_model_config):
    """The term's gradient goes through f̂ₜ₊₁ only (into what drew it: the decoder, the dynamics, the code), never
    through the encoder and action network that read the generated frame; their BatchNorm running statistics are not
    moved by the generated frames; the term is absent in eval mode."""
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(num_actions=3, action_matching=True).lma, (2, 4))
    foregrounds, masks, _ = _two_outcomes(4, seed=0)
    shifts = torch.zeros(4, 1, 2)
    output = lma(foregrounds, foregrounds[:, :1], shifts, 1, masks=masks)
    assert output.action_matching_loss.dim() == 0 and float(output.action_matching_loss.detach()) >= 0
    drawing = [lma.decoder.finals[-1][0].weight, lma.dynamics.local_projection.weight]
    assert all(float(gradient.abs().sum()) > 0
               for gradient in torch.autograd.grad(output.action_matching_loss, drawing))

    source, source_attention = lma.encoder(output.shifted_foregrounds.flatten(0, 1))  # with gradient: cut inside
    statistics = {name: buffer.clone() for name, buffer in lma.named_buffers()}
    generated = output.generated_foregrounds[0].detach().requires_grad_(True)
    matching = lma.action_matching_loss((source * source_attention).unflatten(0, (4, 1)), torch.randn(4, 1, 3),
                                        generated)
    assert all(torch.equal(statistics[name], buffer) for name, buffer in lma.named_buffers())
    readers = list(lma.encoder.parameters()) + list(lma.action_network.parameters())
    gradients = torch.autograd.grad(matching, [generated] + readers, allow_unused=True)
    assert float(gradients[0].abs().sum()) > 0
    assert all(gradient is None for gradient in gradients[1:])
    lma.eval()
    assert lma(foregrounds, foregrounds[:, :1], shifts, 1, masks=masks).action_matching_loss is None


def test_the_mask_predictor_learns_what_only_the_code_tells():
    """`action_mask_predictor`: on `_two_outcomes` (one square becomes a horizontal or a vertical bar, the current mask
    the same for both) a predictor given the outcome as its code learns to draw the right bar: after training its
    loss with the true codes is far below its loss with the codes swapped, and below what the best code-blind
    prediction can reach (the cross-entropy of the mean of the two outcomes). The output is at a quarter of the size."""
    torch.manual_seed(0)
    _, masks, outcome = _two_outcomes(16, seed=5)
    codes = torch.nn.functional.one_hot(outcome, 2).float()
    predictor = MaskPredictor(action_dim=2)
    assert predictor(masks[:, 0], codes).shape == (16, 1, 4, 8)
    optimizer = torch.optim.Adam(predictor.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        predictor.loss(masks[:, 0], masks[:, 1], codes).backward()
        optimizer.step()
    with torch.no_grad():
        right = float(predictor.loss(masks[:, 0], masks[:, 1], codes))
        swapped = float(predictor.loss(masks[:, 0], masks[:, 1], codes.flip(1)))
        targets = torch.nn.functional.avg_pool2d(masks[:, 1], 4)
        blind = float(torch.nn.functional.binary_cross_entropy(targets.mean(0, keepdim=True).expand_as(targets)
                                                              .clamp(1e-6, 1 - 1e-6), targets))
        floor = float(torch.nn.functional.binary_cross_entropy(targets.clamp(1e-6, 1 - 1e-6), targets))
    assert right < floor + 0.25 * (blind - floor) and swapped > blind


def test_the_mask_predictor_change_weight_weighs_the_positions_that_change():
    """`action_mask_predictor_change_weight` α: the pooled positions where mₜ₊₁ and m̃ₜ differ by more than 0.1 weigh
    1 + α in the mean, the others 1; α = 0 is the plain mean. A predictor that always says 'empty' (logit −5) on a
    current mask that is empty and a next mask with one filled 4 × 4 block (one of four pooled positions changes)."""
    predictor = MaskPredictor(action_dim=2)
    predictor.forward = lambda masks, codes: torch.full((1, 1, 2, 2), -5.0)
    current = torch.zeros(1, 1, 8, 8)
    following = current.clone()
    following[..., :4, :4] = 1
    codes = torch.zeros(1, 2)
    unchanged, changed = float(F.softplus(torch.tensor(-5.0))), float(F.softplus(torch.tensor(5.0)))
    assert float(predictor.loss(current, following, codes)) == pytest.approx((3 * unchanged + changed) / 4)
    assert float(predictor.loss(current, following, codes, 0.0)) == pytest.approx((3 * unchanged + changed) / 4)
    assert float(predictor.loss(current, following, codes, 10.0)) == pytest.approx((3 * unchanged + 11 * changed) / 14)
    following[..., :4, :4] = 0.05  # a change under the threshold weighs 1
    assert float(predictor.loss(current, following, codes, 10.0)) == pytest.approx(
        float(predictor.loss(current, following, codes)))


def test_the_mask_predictor_scale_sets_the_size_it_predicts_at(small_model_config):
    """`action_mask_predictor_scale`: the masks are pooled by it (1: full size), and the LMA builds its predictor with
    the configured scale; with scale 1 the change weight sees each changed pixel."""
    masks, codes = torch.rand(2, 1, 8, 16), torch.zeros(2, 3)
    assert MaskPredictor(action_dim=3)(masks, codes).shape == (2, 1, 2, 4)
    assert MaskPredictor(action_dim=3, scale=2)(masks, codes).shape == (2, 1, 4, 8)
    full = MaskPredictor(action_dim=3, scale=1)
    assert full(masks, codes).shape == (2, 1, 8, 16)
    full.forward = lambda masks, codes: torch.full((1, 1, 2, 2), -5.0)
    current, following = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    following[..., 0, 0] = 1  # one pixel of four changes
    unchanged, changed = float(F.softplus(torch.tensor(-5.0))), float(F.softplus(torch.tensor(5.0)))
    assert float(full.loss(current, following, codes[:1], 10.0)) == pytest.approx((3 * unchanged + 11 * changed) / 14)
    lma = LocalMotionAnalysis(small_model_config(action_mask_predictor=True, action_mask_predictor_scale=2).lma, (2, 4))
    assert lma.mask_predictor.scale == 2


def test_the_mask_prediction_trains_the_action_readers_in_training_only(small_model_config):
    """With `action_mask_predictor` the LMA's training output has the predictor's loss, whose gradient reaches the
    action network and its mask encoder (through the straight-through code) and the predictor, not the decoder; in
    eval mode there is none; without masks the LMA says what it needs."""
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(num_actions=3, action_from_masks=True,
                                                 action_mask_predictor=True).lma, (2, 4))
    foregrounds, masks, _ = _two_outcomes(4, seed=0)
    shifts = torch.zeros(4, 1, 2)
    output = lma(foregrounds, foregrounds[:, :1], shifts, 1, masks=masks)
    loss = output.mask_prediction_loss
    assert loss.dim() == 0 and float(loss.detach()) > 0
    groups = {"action network": list(lma.action_network.parameters()),
              "action encoder": list(lma.action_encoder.parameters()),
              "predictor": list(lma.mask_predictor.parameters()), "decoder": list(lma.decoder.parameters())}
    names = [name for name, parameters in groups.items() for _ in parameters]
    gradients = torch.autograd.grad(loss, [p for parameters in groups.values() for p in parameters],
                                    allow_unused=True)
    reached = {name: False for name in groups}
    for name, gradient in zip(names, gradients):
        reached[name] |= gradient is not None and float(gradient.abs().sum()) > 0
    assert reached == {"action network": True, "action encoder": True, "predictor": True, "decoder": False}
    assert LocalMotionAnalysis(small_model_config(num_actions=3).lma, (2, 4))(
        foregrounds, foregrounds[:, :1], shifts, 1).mask_prediction_loss is None
    lma.eval()
    assert lma(foregrounds, foregrounds[:, :1], shifts, 1, masks=masks).mask_prediction_loss is None
    plain_reader = LocalMotionAnalysis(small_model_config(num_actions=3, action_mask_predictor=True).lma, (2, 4))
    with pytest.raises(ValueError, match="action_mask_predictor needs the masks"):
        plain_reader(foregrounds, foregrounds[:, :1], shifts, 1)


def test_decoder_mask_prediction_puts_the_predicted_next_mask_in_the_skip(small_model_config):
    """`decoder_mask_prediction`: the skip is f̃ₜ, m̃ₜ (both moved by Δ_F) and σ(P(m̃ₜ, aₜ)) brought to full size;
    the code alone (no `decoder_action`) then changes what the decoder draws; a skip without codes is refused."""
    torch.manual_seed(0)
    lma = LocalMotionAnalysis(small_model_config(num_actions=3, decoder_skip=True, decoder_skip_mask=True,
                                                 action_mask_predictor=True, decoder_mask_prediction=True).lma,
                              (2, 4)).eval()
    foregrounds, masks, _ = _two_outcomes(2, seed=1)
    shifts = torch.tensor([[0.25, 0.0], [0.0, -0.125]])
    codes = torch.randn(2, 4, generator=torch.Generator().manual_seed(2))
    skip = lma.decoder_skip(foregrounds[:, 0], shifts, masks[:, 0], codes)
    moved = shift_images(torch.cat([foregrounds[:, 0], masks[:, 0]], dim=1), shifts, FOREGROUND_PADDING)
    assert skip.shape == (2, 5, 16, 32) and torch.equal(skip[:, :4], moved)
    predicted = torch.sigmoid(lma.mask_predictor(moved[:, 3:], codes))
    assert torch.allclose(skip[:, 4:], torch.nn.functional.interpolate(predicted, size=(16, 32), mode="bilinear",
                                                                       align_corners=False))
    with torch.no_grad():
        torch.nn.init.normal_(lma.mask_predictor.out.weight, std=0.5)
        states = torch.randn(2, 1, 8, 2, 4, generator=torch.Generator().manual_seed(3))
        drawn = [lma.unroll(states, shifts[:, None], code[:, None], ground_truth_foregrounds=foregrounds[:, :1],
                            ground_truth_masks=masks[:, :1])[0][0] for code in (codes, -codes)]
    assert float((drawn[0] - drawn[1]).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="decoder_mask_prediction needs the action code"):
        lma.decoder_skip(foregrounds[:, 0], shifts, masks[:, 0])


def test_decoder_warp_moves_the_skip_by_the_flow_and_blends_with_the_drawing(small_model_config):
    """`decoder_warp` r: channels 4–5 of the full-size Final are the flow / r, channel 6 the blend logit; a flow of
    (+1, 0) px reads the skip one pixel to the right (its content moves one pixel left), the skip's mask becomes
    the mask logit 2m − 1, and blend b mixes b·warped + (1 − b)·drawn."""
    decoder = Decoder(small_model_config(decoder_skip=True, decoder_skip_mask=True, decoder_warp=2.0).lma)
    skip = torch.zeros(1, 4, 8, 8)
    skip[0, :3, 3, 4] = 0.8
    skip[0, 3, 3, 4] = 1.0
    output = torch.zeros(1, 7, 8, 8)
    output[:, :3] = -0.5  # drawn
    output[:, 3] = 0.2
    output[:, 4] = 0.5  # flow x = 0.5 · r = 1 px
    output[:, 6] = 1.0  # blend 1: the warp alone
    warped = decoder.warp_skip(output, skip)
    assert torch.allclose(warped[0, :3, 3, 3], torch.full((3,), 0.8), atol=1e-5)
    assert torch.allclose(warped[0, :3, 3, 4], torch.zeros(3), atol=1e-5)
    assert float(warped[0, 3, 3, 3]) == pytest.approx(1.0, abs=1e-5)
    assert float(warped[0, 3, 0, 0]) == pytest.approx(-1.0, abs=1e-5)
    output[:, 6] = 0.0  # blend 1/2
    half = decoder.warp_skip(output, skip)
    assert torch.allclose(half[0, :3, 3, 3], torch.full((3,), (0.8 - 0.5) / 2), atol=1e-5)
    assert float(half[0, 3, 0, 0]) == pytest.approx((-1.0 + 0.2) / 2, abs=1e-5)


def test_decoder_warp_without_drawing_is_the_warped_skip_alone(small_model_config):
    """`decoder_warp_draw: false`: whatever the drawing and blend channels say, the output is the warped skip."""
    decoder = Decoder(small_model_config(decoder_skip=True, decoder_skip_mask=True, decoder_warp=2.0,
                                         decoder_warp_draw=False).lma)
    skip = torch.rand(1, 4, 8, 8) * 2 - 1
    skip[:, 3] = (skip[:, 3] + 1) / 2
    output = torch.rand(1, 7, 8, 8) * 2 - 1
    output[:, 4:6] = 0  # no flow
    warped = decoder.warp_skip(output, skip)
    assert torch.allclose(warped[:, :3], skip[:, :3], atol=1e-5)
    assert torch.allclose(warped[:, 3:], 2 * skip[:, 3:] - 1, atol=1e-5)
    from utils.errors import GlassError

    with pytest.raises((GlassError, ValueError), match="decoder_warp_draw"):
        small_model_config(decoder_skip=True, decoder_warp_draw=False)

def test_decoder_warp_starts_as_the_copy_blended_with_the_drawing(small_model_config):
    """At initialisation the flow channels are exactly zero, so the full-size output is b·skip + (1 − b)·drawn."""
    torch.manual_seed(0)
    decoder = Decoder(small_model_config(decoder_skip=True, decoder_warp=3.0).lma).eval()
    captured = []
    decoder.finals[-1].register_forward_hook(lambda module, inputs, output: captured.append(output))
    hidden = torch.randn(2, 4, 2, 4)
    skip = torch.rand(2, 3, 16, 32) * 2 - 1
    full = decoder(hidden, skip)[0]
    raw = captured[0]
    assert raw.shape == (2, 7, 16, 32) and full.shape == (2, 4, 16, 32)
    assert torch.equal(raw[:, 4:6], torch.zeros_like(raw[:, 4:6]))
    blend = (raw[:, 6:7] + 1) / 2
    assert torch.allclose(full[:, :3], blend * skip + (1 - blend) * raw[:, :3], atol=1e-5)
    assert torch.allclose(full[:, 3:], raw[:, 3:4], atol=1e-6)  # no mask in the skip: the drawn mask logit


def test_mirror_grid_reads_an_image_mirrored_about_its_mask_centre():
    """Reading at `mirror_grid` draws each image mirrored left ↔ right about its mask's mean column (x → 2c − x);
    an empty mask mirrors about the middle of the image."""
    from model.lma import mirror_grid

    images = torch.rand(2, 1, 4, 12, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, 4, 12)
    masks[0, 1:3, 2:7] = 1  # columns 2–6: centre column 4
    identity = torch.eye(2, 3).expand(2, 2, 3)
    grid = torch.nn.functional.affine_grid(identity, [2, 1, 4, 12], align_corners=False)
    read = torch.nn.functional.grid_sample(images, mirror_grid(grid, masks), mode="bilinear", padding_mode="zeros",
                                           align_corners=False)
    # image 0: output column x reads column 8 − x (zero beyond the image); image 1: the whole image flipped
    for x in range(12):
        expected = images[0, 0, :, 8 - x] if 0 <= 8 - x < 12 else torch.zeros(4)
        assert torch.allclose(read[0, 0, :, x], expected, atol=1e-5), x
    assert torch.allclose(read[1], images[1].flip(-1), atol=1e-5)


def test_decoder_warp_mirror_blends_the_mirrored_skip_by_its_gate(small_model_config):
    """`decoder_warp_mirror`: channels 7–8 of the full-size Final are the mirror's flow / r, channel 9 its gate
    logit; gate 1 gives the skip mirrored about its mask's centre (its mask as the logit 2m − 1), gate 0 the
    `decoder_warp` output alone; at the start the mirror's flow is zero and its gate ≈ 0.047 everywhere."""
    from model.lma import MIRROR_GATE_INIT_LOGIT

    torch.manual_seed(0)
    decoder = Decoder(small_model_config(decoder_skip=True, decoder_skip_mask=True, decoder_warp=2.0,
                                         decoder_warp_mirror=True).lma)
    skip = torch.zeros(1, 4, 8, 8)
    skip[0, :3, 3, 2] = 0.8  # a bright pixel at the left end of a mask over columns 2–5 (centre 3.5)
    skip[0, 3, 2:5, 2:6] = 1.0
    output = torch.zeros(1, 10, 8, 8)
    output[:, :3] = -0.5  # drawn
    output[:, 6] = 1.0  # the warp's blend 1, its flow 0: the skip itself
    output[:, 9] = 1.0  # gate 1: the mirror alone
    mirrored = decoder.warp_skip(output, skip)
    assert torch.allclose(mirrored[0, :3], skip[0, :3].flip(-1), atol=1e-5)  # 2·3.5 − x = 7 − x: the whole flip
    assert torch.allclose(mirrored[0, 3], 2 * skip[0, 3].flip(-1) - 1, atol=1e-5)
    output[:, 8] = 0.5  # the mirror's flow y = 0.5 · r = 1 px: reads one row below
    moved = decoder.warp_skip(output, skip)
    assert torch.allclose(moved[0, :3, 2], skip[0, :3, 3].flip(-1), atol=1e-5)
    output[:, 9] = -1.0  # gate 0: the warp's output
    assert torch.allclose(decoder.warp_skip(output, skip)[0, :3], skip[0, :3], atol=1e-5)
    captured = []
    decoder.eval().finals[-1].register_forward_hook(lambda module, inputs, out: captured.append(out))
    full = decoder(torch.randn(1, 4, 2, 4), torch.rand(1, 4, 16, 32))[0]
    assert captured[0].shape == (1, 10, 16, 32) and full.shape == (1, 4, 16, 32)
    assert torch.equal(captured[0][:, 7:9], torch.zeros_like(captured[0][:, 7:9]))
    gate = (captured[0][:, 9] + 1) / 2
    assert torch.allclose(gate, torch.full_like(gate, (math.tanh(MIRROR_GATE_INIT_LOGIT) + 1) / 2), atol=1e-6)
    from utils.errors import GlassError

    with pytest.raises((GlassError, ValueError), match="decoder_warp_mirror"):
        small_model_config(decoder_skip=True, decoder_skip_mask=True, decoder_warp_mirror=True)
    with pytest.raises((GlassError, ValueError), match="decoder_warp_mirror"):
        small_model_config(decoder_skip=True, decoder_warp=2.0, decoder_warp_mirror=True)


def test_decoder_warp_needs_decoder_skip(small_model_config):
    from utils.errors import GlassError

    with pytest.raises((GlassError, ValueError), match="decoder_warp"):
        small_model_config(decoder_warp=2.0)


def test_decoder_palette_takes_the_characters_colours_and_paints_with_them(small_model_config):
    """`decoder_palette` K: the palette is each slot's mean colour of f̃ₜ over the mask (the background, whatever its
    colour, takes no part); a pixel whose choice is one slot gets that slot's colour, one whose choice is the last
    entry gets the drawn colour, and the mask logit stays the drawn one."""
    torch.manual_seed(0)
    decoder = Decoder(small_model_config(decoder_skip=True, decoder_skip_mask=True, decoder_palette=2).lma)
    with torch.no_grad():  # slot 0: red above green, slot 1: the rest (sharp)
        decoder.palette_slots.weight.zero_()
        decoder.palette_slots.weight[0, 0, 0, 0], decoder.palette_slots.weight[0, 1, 0, 0] = 50.0, -50.0
        decoder.palette_slots.bias.zero_()
    skip = torch.zeros(1, 4, 8, 8)
    skip[0, :3] = torch.tensor([0.2, 0.9, 0.1])[:, None, None]  # background, outside the mask: green
    skip[0, :3, 2:4, 2:6] = torch.tensor([0.9, -0.5, 0.0])[:, None, None]  # the character: red...
    skip[0, :3, 4:6, 2:6] = torch.tensor([-0.8, -0.6, 0.7])[:, None, None]  # ...and blue
    skip[0, 3, 2:6, 2:6] = 1.0
    palette = decoder.palette(skip)
    assert torch.allclose(palette[0, 0], torch.tensor([0.9, -0.5, 0.0]), atol=1e-3)
    assert torch.allclose(palette[0, 1], torch.tensor([-0.8, -0.6, 0.7]), atol=1e-3)
    output = torch.rand(1, 4, 8, 8) * 2 - 1
    logits = torch.zeros(1, 3, 8, 8)
    logits[0, 1, :4] = 30.0  # the top half: slot 1 (blue)
    logits[0, 2, 4:] = 30.0  # the bottom half: the drawn colour
    painted = decoder.paint(output, logits, skip)
    assert torch.allclose(painted[0, :3, :4], palette[0, 1][:, None, None].expand(3, 4, 8), atol=1e-3)
    assert torch.allclose(painted[0, :3, 4:], output[0, :3, 4:], atol=1e-5)
    assert torch.equal(painted[:, 3:], output[:, 3:])


def test_decoder_palette_runs_in_the_decoder_and_its_key_is_checked(small_model_config):
    """The full-size output of a palette decoder is `paint` of the Final's output with `palette_choice` of the
    full-size features and skip; both palette layers get gradients; bad values name the key."""
    torch.manual_seed(0)
    decoder = Decoder(small_model_config(decoder_skip=True, decoder_palette=3).lma)
    hidden = torch.randn(2, 4, 2, 4)
    skip = torch.rand(2, 3, 16, 32) * 2 - 1
    outputs = decoder(hidden, skip)
    assert [tuple(o.shape) for o in outputs] == [(2, 4, 16, 32), (2, 3, 8, 16), (2, 3, 4, 8)]
    outputs[0][:, :3].sum().backward()
    assert decoder.palette_choice.weight.grad.abs().sum() > 0
    assert decoder.palette_slots.weight.grad.abs().sum() > 0
    from utils.errors import GlassError

    with pytest.raises((GlassError, ValueError), match="decoder_palette: needs decoder_skip"):
        small_model_config(decoder_palette=3)
    with pytest.raises((GlassError, ValueError), match="decoder_palette: must be >= 0"):
        small_model_config(decoder_skip=True, decoder_palette=-1)
    warped = Decoder(small_model_config(decoder_skip=True, decoder_palette=3, decoder_warp=2.0).lma)
    assert warped(hidden, skip)[0].shape == (2, 4, 16, 32)  # with the warp: the painted drawing, then the blend
