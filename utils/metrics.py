"""Action and segmentation metrics of SPEC §5.1 that need no pretrained network.

Shifts predicted by the model are in `affine_grid` units (2 = the full frame width or
height); ground-truth shifts are in pixels. `shifts_to_pixels` converts the former, `pixels_to_shifts` back.
Predicted shift t (frames t → t+1) is compared with the true shift stored at t+1
(`global_shifts[:, 1:]` of a batch), which is the displacement from frame t to t+1.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch

DIRECTION_COSINE_THRESHOLD = 1.0 / math.sqrt(2.0)  # within 45°


def shifts_to_pixels(shifts: torch.Tensor, input_size: Sequence[int]) -> torch.Tensor:
    """(…, 2) shifts in affine_grid units → pixels of frames `input_size` = [W, H]: (dx·W/2, dy·H/2)."""
    width, height = input_size
    scale = torch.tensor([width / 2.0, height / 2.0], dtype=shifts.dtype, device=shifts.device)
    return shifts * scale


def pixels_to_shifts(pixels: torch.Tensor, input_size: Sequence[int]) -> torch.Tensor:
    """The inverse of `shifts_to_pixels`: (…, 2) pixels of frames `input_size` = [W, H] → affine_grid units
    (dx/(W/2), dy/(H/2))."""
    width, height = input_size
    scale = torch.tensor([width / 2.0, height / 2.0], dtype=pixels.dtype, device=pixels.device)
    return pixels / scale


def soft_iou_sums(predicted_masks: torch.Tensor, true_masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two sums of the soft IoU per item, in float64: masks (N, …) in [0, 1] of one shape → Σ m·m* (N,) and
    Σ (1 − (1−m)(1−m*)) (N,) over all but the first dimension. Sums of many items give one IoU over all of
    them (`iou_from_sums`), as `evaluate.py` reports it over a split."""
    if predicted_masks.shape != true_masks.shape:
        raise ValueError(f"mask shapes differ: {tuple(predicted_masks.shape)} and {tuple(true_masks.shape)}")
    predicted, true = predicted_masks.double().flatten(1), true_masks.double().flatten(1)
    return (predicted * true).sum(dim=1), (1 - (1 - predicted) * (1 - true)).sum(dim=1)


def iou_from_sums(intersection: torch.Tensor, union: torch.Tensor) -> float:
    """Σ intersection / Σ union over every item of `soft_iou_sums`; two empty masks (union 0) give 1."""
    total_union = float(union.sum())
    return float(intersection.sum()) / total_union if total_union > 0 else 1.0


def soft_iou(predicted_masks: torch.Tensor, true_masks: torch.Tensor) -> float:
    """Soft IoU over all elements: Σ m·m* / Σ (1 − (1−m)(1−m*)), masks in [0, 1] of one shape.

    For binary masks it is the usual intersection over union. Two empty masks give 1.
    """
    if predicted_masks.shape != true_masks.shape:
        raise ValueError(f"mask shapes differ: {tuple(predicted_masks.shape)} and {tuple(true_masks.shape)}")
    return iou_from_sums(*soft_iou_sums(predicted_masks.reshape(1, -1), true_masks.reshape(1, -1)))


def direction_matches(predicted_shifts: torch.Tensor, true_shifts: torch.Tensor) -> torch.Tensor:
    """For every non-zero true shift (…, 2), whether the predicted one points within 45° of it.

    Returns a flat bool tensor with one entry per non-zero true shift (cosine > 1/√2;
    a zero predicted shift never matches).
    """
    if predicted_shifts.shape != true_shifts.shape:
        raise ValueError(f"shift shapes differ: {tuple(predicted_shifts.shape)} and {tuple(true_shifts.shape)}")
    predicted, true = predicted_shifts.reshape(-1, 2), true_shifts.reshape(-1, 2)
    moving = true.norm(dim=1) > 0
    predicted, true = predicted[moving], true[moving]
    cosine = (predicted * true).sum(dim=1) / (predicted.norm(dim=1) * true.norm(dim=1)).clamp_min(1e-12)
    return cosine > DIRECTION_COSINE_THRESHOLD


def shift_errors(predicted_shifts: torch.Tensor, true_shifts: torch.Tensor) -> torch.Tensor:
    """Flat L2 distances in pixels between predicted and true shifts (…, 2)."""
    if predicted_shifts.shape != true_shifts.shape:
        raise ValueError(f"shift shapes differ: {tuple(predicted_shifts.shape)} and {tuple(true_shifts.shape)}")
    return (predicted_shifts - true_shifts).reshape(-1, 2).norm(dim=1)


def _entropy(counts: torch.Tensor) -> torch.Tensor:
    probabilities = counts[counts > 0] / counts.sum()
    return -(probabilities * probabilities.log()).sum()


def normalized_mutual_information(labels_a: torch.Tensor, labels_b: torch.Tensor) -> float:
    """NMI of two labelings of the same items, normalised by the arithmetic mean of their entropies.

    NMI = I(A; B) / ((H(A) + H(B)) / 2), natural logarithms, in [0, 1]; the same definition as
    scikit-learn's `normalized_mutual_info_score` (its default `average_method='arithmetic'`),
    including its convention that two labelings with one class each score 1. Labels are any
    integers (1-D, equal lengths, at least one item).
    """
    if labels_a.shape != labels_b.shape or labels_a.dim() != 1 or labels_a.numel() == 0:
        raise ValueError(f"expected two non-empty 1-D labelings of one length, got {tuple(labels_a.shape)} and "
                         f"{tuple(labels_b.shape)}")
    _, index_a = torch.unique(labels_a, return_inverse=True)
    _, index_b = torch.unique(labels_b, return_inverse=True)
    classes_a, classes_b = int(index_a.max()) + 1, int(index_b.max()) + 1
    if classes_a == classes_b == 1:
        return 1.0
    joint = torch.zeros(classes_a * classes_b, dtype=torch.float64)
    joint.index_add_(0, index_a * classes_b + index_b, torch.ones(labels_a.numel(), dtype=torch.float64))
    joint = joint.view(classes_a, classes_b)
    entropy_a, entropy_b = _entropy(joint.sum(dim=1)), _entropy(joint.sum(dim=0))
    mutual_information = entropy_a + entropy_b - _entropy(joint.flatten())
    normaliser = (entropy_a + entropy_b) / 2
    return float((mutual_information / normaliser).clamp(0.0, 1.0)) if normaliser > 0 else 0.0


def mean_nmi_per_group(predicted: torch.Tensor, true: torch.Tensor, groups: torch.Tensor) -> float:
    """The mean over groups (e.g. characters) of the NMI of `predicted` and `true` within each group."""
    values = [normalized_mutual_information(predicted[groups == group], true[groups == group])
              for group in torch.unique(groups)]
    return sum(values) / len(values)


def code_histogram(ids: torch.Tensor, num_codes: int) -> torch.Tensor:
    """How many of the items `ids` (any shape, values in [0, num_codes)) fall on each code: (num_codes,) int64."""
    flat = ids.reshape(-1).long()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_codes):
        raise ValueError(f"code ids must be in [0, {num_codes}), got {int(flat.min())} … {int(flat.max())}")
    return torch.bincount(flat.cpu(), minlength=num_codes)


def codes_used(histogram: torch.Tensor) -> int:
    """The number of codes with at least one item."""
    return int((histogram > 0).sum())


def perplexity(histogram: torch.Tensor) -> float:
    """exp(entropy) of the code distribution: 1 when one code takes every item, K when K codes share them equally.

    An empty histogram has perplexity 0.
    """
    counts = histogram.double()
    if counts.sum() == 0:
        return 0.0
    return float(_entropy(counts).exp())


def psnr(predicted: torch.Tensor, target: torch.Tensor, value_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio over all elements: 10·log10(range² / MSE), in dB (images in [−1, 1]: range 2).

    Identical tensors give +inf.
    """
    if predicted.shape != target.shape:
        raise ValueError(f"shapes differ: {tuple(predicted.shape)} and {tuple(target.shape)}")
    mse = float((predicted.double() - target.double()).pow(2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(value_range ** 2 / mse)


def switch_transitions(local_actions: torch.Tensor) -> torch.Tensor:
    """The transitions where a new local action starts: labels per frame (B, T) → (B, T−1) bool, True at
    transition t → t+1 when the label of frame t+1 differs from that of frame t (W-Sprites: a new stay
    animation, a walk ↔ stay change, a turn). Only there does the next pose not follow from the current one."""
    if local_actions.dim() != 2 or local_actions.shape[1] < 2:
        raise ValueError(f"local actions must be (B, T) with T >= 2, got {tuple(local_actions.shape)}")
    return local_actions[:, 1:] != local_actions[:, :-1]


# What a switch does to the character's view (labels named "<animation>-<view>", W-Sprites' `LOCAL_ACTION_NAMES`): 0 is
# not a switch; a turn between the front and a side; a turn from one side to the other; another animation in the
# same view. A turn draws the character from another side (new pixels), the last moves limbs it shows.
SWITCH_KINDS = ("turn front <-> side", "turn side <-> side", "same view")


def switch_kinds(local_actions: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """Labels per frame (B, T) and each label's name → (B, T−1) int64: 0 where the label does not change, else
    1 + the index in `SWITCH_KINDS` of what the switch does to the view, read from the names' last '-' part
    ('front', 'left' or 'right'). Raises ValueError for a label without a name or a name without such a view."""
    views = [name.rsplit("-", 1)[-1] for name in names]
    if any(view not in ("front", "left", "right") for view in views):
        raise ValueError(f"local action names must end in -front, -left or -right, got {list(names)}")
    if local_actions.numel() and (int(local_actions.min()) < 0 or int(local_actions.max()) >= len(names)):
        raise ValueError(f"local action labels must be in [0, {len(names)}), got "
                         f"{int(local_actions.min())} … {int(local_actions.max())}")
    switches = switch_transitions(local_actions)
    view = torch.tensor([("front", "left", "right").index(view) for view in views],
                        device=local_actions.device)[local_actions]  # 0 front, 1 left, 2 right
    before, after = view[:, :-1], view[:, 1:]
    kinds = torch.where(before == after, 3, torch.where((before != 0) & (after != 0), 2, 1))
    return torch.where(switches, kinds, torch.zeros_like(kinds))


def code_effect_db(inferred_squared_errors: torch.Tensor, random_squared_errors: torch.Tensor,
                   selected: torch.Tensor = None) -> float:
    """The code effect (the idea of Genie's ΔPSNR, Bruce et al. 2024): the PSNR of what the model drew with the
    codes it inferred minus the PSNR of what it drew with uniformly random codes, in dB, over the `selected`
    transitions (bool, same shape; all when None), from the per-transition sums of squared errors against the
    same targets: 10·log10(Σ random / Σ inferred). 0 when the decoder ignores the code; NaN when nothing is
    selected; +inf when the inferred codes draw the targets exactly."""
    if inferred_squared_errors.shape != random_squared_errors.shape:
        raise ValueError(f"shapes differ: {tuple(inferred_squared_errors.shape)} and "
                         f"{tuple(random_squared_errors.shape)}")
    if selected is not None:
        inferred_squared_errors, random_squared_errors = (inferred_squared_errors[selected],
                                                          random_squared_errors[selected])
    if inferred_squared_errors.numel() == 0:
        return math.nan
    inferred, random = float(inferred_squared_errors.double().sum()), float(random_squared_errors.double().sum())
    if inferred == 0:
        return math.inf if random > 0 else 0.0
    return 10.0 * math.log10(random / inferred) if random > 0 else -math.inf


def code_effect_interval(inferred_squared_errors: torch.Tensor, random_squared_errors: torch.Tensor,
                         groups: torch.Tensor, selected: torch.Tensor = None, level: float = 0.9, draws: int = 2000,
                         seed: int = 0) -> Tuple[float, float]:
    """How much `code_effect_db` depends on which characters a split holds: a percentile bootstrap interval (`level`,
    from `draws` resamplings) that redraws whole groups with replacement — the rows of the (N, T−1) error arrays
    belong to group `groups[n]` (W-Sprites: the character; < 0 unknown, left out) — and recomputes the figure over
    their `selected` transitions (bool, same shape; all when None). (NaN, NaN) when fewer than two groups hold a
    selected transition. Seeded: the same inputs give the same interval."""
    if inferred_squared_errors.shape != random_squared_errors.shape:
        raise ValueError(f"shapes differ: {tuple(inferred_squared_errors.shape)} and "
                         f"{tuple(random_squared_errors.shape)}")
    if not 0.0 < level < 1.0 or draws < 1:
        raise ValueError(f"level must be in (0, 1) and draws >= 1, got {level} and {draws}")
    chosen = torch.ones_like(inferred_squared_errors, dtype=torch.bool) if selected is None else selected.bool()
    chosen = chosen & (groups >= 0)[:, None]
    rows = chosen.any(dim=1)
    names, index = torch.unique(groups[rows], return_inverse=True)
    if len(names) < 2:
        return math.nan, math.nan
    sums = torch.zeros(2, len(names), dtype=torch.float64)
    for row, errors in enumerate((inferred_squared_errors, random_squared_errors)):
        sums[row].index_add_(0, index, (errors.double() * chosen.double()).sum(dim=1)[rows])
    # each draw: as many groups as there are, drawn with replacement (how often each is drawn)
    picks = torch.randint(0, len(names), (draws, len(names)), generator=torch.Generator().manual_seed(seed))
    counts = torch.zeros(draws, len(names), dtype=torch.float64)
    counts.scatter_add_(1, picks, torch.ones(picks.shape, dtype=torch.float64))
    inferred_total, random_total = counts @ sums[0], counts @ sums[1]
    effects = 10.0 * torch.log10(random_total.clamp(min=1e-300) / inferred_total.clamp(min=1e-300))
    low, high = torch.quantile(effects, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(low), float(high)


def code_effect_per_label(inferred_squared_errors: torch.Tensor, random_squared_errors: torch.Tensor,
                          labels: torch.Tensor) -> List[Tuple[float, int]]:
    """`code_effect_db` over each true local action's transitions: per label 0 … max of `labels` (same shape as the
    errors; the label of frame t+1 for transition t → t+1), (dB, how many transitions) — NaN dB for a label without
    any. Where the code pays: a turn shows on the switches, a walk phase on every transition of an animation."""
    effects = []
    for label in range(int(labels.max()) + 1 if labels.numel() else 0):
        chosen = labels == label
        effects.append((code_effect_db(inferred_squared_errors, random_squared_errors, chosen), int(chosen.sum())))
    return effects

