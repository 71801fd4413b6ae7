"""training.colour_permutation (model/augmentation.py): the channel orders, their draw, and the model's contract —
the LMA sees its windows' foregrounds permuted and gives its outputs back in the frames' order, the GMA sees the
frames as they are."""
import pytest
import torch

from model.augmentation import (
    COLOUR_ORDERS,
    augmentation_generator,
    draw_colour_orders,
    inverse_orders,
    permute_colours,
)


def test_each_window_gets_its_own_order_and_the_inverse_puts_it_back():
    frames = torch.rand(3, 4, 3, 5, 6)
    orders = COLOUR_ORDERS[torch.tensor([0, 3, 5])]
    permuted = permute_colours(frames, orders)
    for window in range(3):
        for channel in range(3):
            assert torch.equal(permuted[window, :, channel], frames[window, :, orders[window, channel]])
    assert torch.equal(permuted[0], frames[0])  # the identity
    assert torch.equal(permute_colours(permuted, inverse_orders(orders)), frames)
    assert torch.equal(permute_colours(frames, orders), permuted) and frames.shape == permuted.shape


def test_stacked_frames_are_permuted_within_each_group_of_three():
    frames = torch.arange(2 * 6, dtype=torch.float32).view(1, 1, 12, 1, 1).expand(1, 2, 12, 1, 1)
    orders = torch.tensor([[2, 0, 1]])
    assert permute_colours(frames, orders)[0, 0, :, 0, 0].tolist() == [2, 0, 1, 5, 3, 4, 8, 6, 7, 11, 9, 10]
    with pytest.raises(ValueError, match="3·k channels"):
        permute_colours(torch.zeros(1, 1, 4, 2, 2), orders)


def test_the_draw_follows_the_probability_and_the_seed_rank_and_step():
    identity = COLOUR_ORDERS[0]
    never = draw_colour_orders(64, 0.0, augmentation_generator(0, 0, 0))
    always = draw_colour_orders(64, 1.0, augmentation_generator(0, 0, 0))
    assert all(torch.equal(order, identity) for order in never)
    assert not any(torch.equal(order, identity) for order in always)
    assert len({tuple(order.tolist()) for order in always}) == 5  # all five others, at 64 windows
    half = draw_colour_orders(2000, 0.5, augmentation_generator(0, 0, 0))
    assert 0.45 < sum(not torch.equal(order, identity) for order in half) / 2000 < 0.55
    again = draw_colour_orders(64, 0.5, augmentation_generator(3, 1, 7))
    assert torch.equal(again, draw_colour_orders(64, 0.5, augmentation_generator(3, 1, 7)))  # a resume draws the same
    for other in (augmentation_generator(3, 0, 7), augmentation_generator(3, 1, 8), augmentation_generator(4, 1, 7)):
        assert not torch.equal(again, draw_colour_orders(64, 0.5, other))


def test_the_lma_sees_the_permuted_foregrounds_and_gives_back_the_frames_order(calibrated_model, small_video):
    model = calibrated_model(decoder_skip=True, decoder_skip_mask=True, action_from_masks=True)
    orders = COLOUR_ORDERS[torch.tensor([4, 0])]
    with torch.no_grad():
        plain = model(small_video, num_ground_truth_steps=2)
        permuted = model(small_video, num_ground_truth_steps=2, colour_orders=orders)
        gma = model.gma(small_video)  # what the LMA of the permuted run was given, computed by hand
        inputs = model.lma_inputs(permute_colours(gma.foregrounds, orders), permute_colours(gma.shifted_foregrounds,
                                                                                          orders),
                                  gma.foreground_shifts, gma.masks)
        by_hand = model.lma(inputs.foregrounds, inputs.shifted_foregrounds, inputs.foreground_shifts, 2, None, False,
                            inputs.masks)
    # the GMA reads the frames as they are; so do the codes read from its masks
    assert torch.equal(permuted.gma.masks, plain.gma.masks)
    assert torch.equal(permuted.gma.foreground_shifts, plain.gma.foreground_shifts)
    assert torch.equal(permuted.lma.action_ids, plain.lma.action_ids)
    # the LMA's drawing is the one of the permuted foregrounds, put back in the frames' order
    for scale, drawn in zip(permuted.lma.generated_foregrounds, by_hand.generated_foregrounds):
        assert torch.allclose(permute_colours(scale, orders), drawn, atol=1e-6)
    assert torch.allclose(permute_colours(permuted.lma.shifted_foregrounds, orders), by_hand.shifted_foregrounds,
                          atol=1e-6)
    assert torch.equal(permuted.lma.generated_masks, by_hand.generated_masks)
    # the window left in its order is drawn as without the option; the permuted one is drawn differently
    assert torch.allclose(permuted.lma.generated_foregrounds[0][1], plain.lma.generated_foregrounds[0][1], atol=1e-6)
    assert not torch.allclose(permuted.lma.generated_foregrounds[0][0], plain.lma.generated_foregrounds[0][0],
                              atol=1e-4)


def test_training_with_permuted_colours_changes_the_lma_and_leaves_the_gma_bit_identical(one_torch_thread):
    """Two trainers, with the option at probability 1 and without: the GMA's weights stay bit-identical (it reads
    the frames as they are and the LMA's losses never reach it), the LMA's drawing learns something else."""
    from tests.small_model import small_trainer
    from utils.errors import GlassError

    def trainer(probability: float):
        return small_trainer(f"training.colour_permutation={probability}")

    plain, permuting = trainer(0.0), trainer(1.0)
    assert plain.colour_orders(2, 5) is None and permuting.colour_orders(2, 5) is not None
    assert torch.equal(permuting.colour_orders(2, 5), trainer(1.0).colour_orders(2, 5))  # (seed, rank, step)
    for step in range(3):
        observations = torch.rand(2, 3, 3, 16, 32, generator=torch.Generator().manual_seed(step)) * 2 - 1
        plain_result = plain.training_step({"observations": observations}, step)
        permuting_result = permuting.training_step({"observations": observations}, step)
    plain_state, permuting_state = plain.model.state_dict(), permuting.model.state_dict()
    assert all(torch.equal(tensor, permuting_state[name]) for name, tensor in plain_state.items()
               if name.startswith("gma."))
    assert any(not torch.equal(tensor, permuting_state[name]) for name, tensor in plain_state.items()
               if name.startswith("lma.decoder."))
    assert plain_result.loss.terms["reconstruction_loss"] == permuting_result.loss.terms["reconstruction_loss"]
    assert plain_result.loss.terms["multiscale_local_reconstruction_loss"] != permuting_result.loss.terms[
        "multiscale_local_reconstruction_loss"]
    with pytest.raises(GlassError, match=r"training.colour_permutation: must be a probability in \[0, 1\]"):
        small_trainer("training.colour_permutation=1.5")
