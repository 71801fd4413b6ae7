"""Keeping the local-action codebook alive: options the authors' code does not have (all opt-in).

A vector quantiser trained from a small initialisation tends to put every transition on one
or two codes: a code that no vector is nearest to gets no gradient and stays where it is, so
it is never chosen again (a "dead" code). Two standard remedies, each a pure function of the
tensors it is given so that the trainer and the experiments share them:

    ids = kmeans_codebook(codebook, vectors, generator)        # once, on the first LMA batch
    restarted = restart_dead_codes(codebook, usage, vectors, optimizer, generator)   # every N steps

Both write the codebook in place (no autograd) and reset the Adam moments of the rows they
change, so that an old running average does not push a fresh code back at once.
"""
from __future__ import annotations

from typing import List, Optional

import torch


def _reset_moments(optimizer: Optional[torch.optim.Optimizer], parameter: torch.Tensor, rows: torch.Tensor) -> None:
    """Zero Adam's first and second moments of `rows` of `parameter` (nothing if it has no state yet)."""
    if optimizer is None:
        return
    state = optimizer.state.get(parameter, {})
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        if key in state:
            state[key][rows] = 0


def _nearest(vectors: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return torch.cdist(vectors.double(), centres.double()).argmin(dim=1)


@torch.no_grad()
def kmeans_codebook(codebook: torch.Tensor, vectors: torch.Tensor, generator: torch.Generator, iterations: int = 20,
                    optimizer: Optional[torch.optim.Optimizer] = None) -> torch.Tensor:
    """Set the K codebook rows (K, D) to the k-means centres of `vectors` (N, D), k-means++ seeding.

    With fewer distinct vectors than codes, the remaining rows are vectors plus small noise. Returns the
    id of each vector's centre (N,). `generator` is a CPU generator (the same on every process, so
    the result is too when the vectors are).
    """
    num_codes = codebook.shape[0]
    points = vectors.detach().double().cpu()
    first = int(torch.randint(0, points.shape[0], (1,), generator=generator))
    centres = [points[first]]
    for _ in range(1, num_codes):
        distances = torch.cdist(points, torch.stack(centres)).min(dim=1).values.pow(2)
        if float(distances.sum()) <= 0:  # every point is already a centre: jitter one
            scale = points.std() * 1e-2 + 1e-6
            centres.append(points[int(torch.randint(0, points.shape[0], (1,), generator=generator))]
                           + scale * torch.randn(points.shape[1], generator=generator, dtype=torch.float64))
            continue
        centres.append(points[int(torch.multinomial(distances / distances.sum(), 1, generator=generator))])
    centres_tensor = torch.stack(centres)
    for _ in range(iterations):
        ids = _nearest(points, centres_tensor)
        for code in range(num_codes):
            members = points[ids == code]
            if members.shape[0]:
                centres_tensor[code] = members.mean(dim=0)
    codebook.copy_(centres_tensor.to(codebook))
    _reset_moments(optimizer, codebook, torch.arange(num_codes, device=codebook.device))
    return _nearest(points, centres_tensor)


@torch.no_grad()
def restart_dead_codes(codebook: torch.Tensor, usage: torch.Tensor, vectors: torch.Tensor,
                       generator: torch.Generator, optimizer: Optional[torch.optim.Optimizer] = None,
                       threshold: float = 0.0) -> List[int]:
    """Replace each code whose `usage` (K,) is ≤ `threshold` by one of `vectors` (N, D), drawn without
    replacement (with replacement when there are fewer vectors than dead codes); reset their Adam
    moments. Returns the restarted ids (ascending). The vectors are the action network's current z,
    so a restarted code is where some transition is now and will be chosen by it.
    """
    dead = torch.nonzero(usage.detach().cpu() <= threshold).flatten()
    if dead.numel() == 0 or vectors.shape[0] == 0:
        return []
    points = vectors.detach().cpu()
    if points.shape[0] >= dead.numel():
        picks = torch.randperm(points.shape[0], generator=generator)[:dead.numel()]
    else:
        picks = torch.randint(0, points.shape[0], (dead.numel(),), generator=generator)
    codebook[dead.to(codebook.device)] = points[picks].to(codebook)
    _reset_moments(optimizer, codebook, dead.to(codebook.device))
    return dead.tolist()
