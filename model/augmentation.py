"""training.colour_permutation: the LMA trained on windows with their colour channels in another order.

The c2 W-Sprites set trains on 12 characters and is measured on 2 others. A decoder that has learned to draw the
training characters' turns draws an unseen character's turns half as well (docs/local-actions.md, twenty-sixth
round): it has learned what each of 12 characters looks like from another side, not how a character's colours move
when it turns. Permuting a window's RGB channels gives every character five more colourings — the same shapes and
motion, other colours — so that the drawing of a turn cannot rest on which colours a character wears.

Only the LMA sees the other order (`model.glass.Glass.forward`'s `colour_orders`): the GMA reads the frames as they
are, so the masks and shifts — and the codes read from them — are those of the real frames; the LMA's foreground
inputs are permuted and its outputs put back in the frames' order before the losses (the losses treat the channels
alike, so this is training the LMA on the permuted targets). Evaluation, media and the frozen readers' refit read
the frames as they are.
"""
from __future__ import annotations

import itertools

import torch

# The six orders of three channels, the identity first.
COLOUR_ORDERS = torch.tensor(list(itertools.permutations(range(3))))


def augmentation_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The generator of step `step`'s colour orders on process `rank`: a function of (seed, rank, step) only, so a
    resumed run draws what the uninterrupted one drew, and training's own random state is not touched."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_009 + rank) * 2 + 1)


def draw_colour_orders(batch_size: int, probability: float, generator: torch.Generator) -> torch.Tensor:
    """(batch_size, 3) channel orders, one per window: with `probability` one of the five orders other than the
    identity, uniformly, otherwise the identity (the frames as they are)."""
    permuted = torch.rand(batch_size, generator=generator) < probability
    other = torch.randint(1, len(COLOUR_ORDERS), (batch_size,), generator=generator)
    return COLOUR_ORDERS[torch.where(permuted, other, torch.zeros_like(other))]


def inverse_orders(orders: torch.Tensor) -> torch.Tensor:
    """The (B, 3) orders that put `permute_colours(x, orders)` back to x."""
    return torch.argsort(orders, dim=1)


def permute_colours(frames: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """`frames` (B, T, 3·k, H, W) with window b's channels in the order orders[b] (B, 3) — output channel c is input
    channel orders[b, c], within each group of three channels where frames are stacked. A new tensor; the input is
    unchanged."""
    batch, _, channels = frames.shape[:3]
    if channels % 3:
        raise ValueError(f"colour permutation needs 3·k channels, got {channels}")
    groups = torch.arange(0, channels, 3).repeat_interleave(3)  # (C,): each channel's group start
    index = groups + orders.cpu()[:, torch.arange(channels) % 3]  # (B, C)
    index = index.to(frames.device).view(batch, 1, channels, 1, 1).expand_as(frames)
    return torch.gather(frames, 2, index)
