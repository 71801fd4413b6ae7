"""The action and segmentation metrics of a trained run (SPEC §5.1): the loop behind evaluate.py.

Every non-overlapping window of T = `evaluation.observations_count` frames of a split is
reconstructed with the chosen protocol (default 'one_step', T_f = T−1); three sets of metrics
come out, with the names used in the table and the JSON line:

- `gt`: the model's predictions on the real video against the ground truth;
- `re` (re-encoding): the reconstructed video (frame 0 real, 1 … T−1 generated) fed back
  through the model's analysis (GMA and action inference, no unrolling); its predictions
  against the ground truth — the `gt` metrics of the reconstruction, over the same frames;
- `co` (consistency): the `re` predictions against the `gt` predictions instead of the
  ground truth (soft masks against soft masks, ids against ids); needs no labels;
- `re_one_step` / `re_single_image`: the `re` metrics of the other protocol's reconstruction
  (whichever the run is not evaluated with), so that one evaluation shows both.

Besides the SPEC metrics, for the local half: `codes_used` and `code_perplexity` of the action
ids (gt: on the real video; re: on the reconstruction) with their histograms (`histograms` of
the JSON line), and for each reconstruction `foreground_psnr` (its generated foregrounds f̂ₜ₊₁
against the GMA's foregrounds fₜ₊₁ = mₜ₊₁·Iₜ₊₁ of the real video) and `frame_psnr` (its frames
1 … T−1 against the real ones), PSNR over the whole split (Σ squared errors / Σ elements),
images in [−1, 1].

Alignment with the labels (`data.video_dataset`: shifts[t] is the move from frame t−1 to t,
local[t] the animation shown in frame t, chosen by the walk step t−1 → t): the model's
transition t (frames t → t+1, t = 0 … T−2) — its Δ_F,ₜ, Δ_B,ₜ and action aₜ — is compared with
shifts[t+1], bg_shifts[t+1] and local[t+1]; label 0 of a window (no previous frame) is unused.
Masks are compared on all T frames.

Reduction: masks give one soft IoU over the split (Σ intersections / Σ unions, SPEC §5.1's
formula); shifts are converted to pixels (dx·W/2, dy·H/2) and give the mean / min / max L2
error and the share of non-zero reference shifts matched within 45°; ids give the NMI over
the whole split (`utils.metrics.normalized_mutual_information`, arithmetic-mean
normalisation), the mean per-character NMI (windows grouped by `sprite_id`), and the same two
for uniformly random ids drawn with `evaluation.seed` (the floor, `random/…`); the IoU's floor is that of a
mask calling every pixel foreground (`all_foreground/mask_iou`).

Several processes: each takes whole batches (batch b goes to rank b mod K), so every window is
computed in the same batch as in one process; rank 0 gathers the per-window records, orders
them by window and reduces them in that order, so K processes give the single-process result.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from data.video_dataset import VideoDataset, collate_videos
from data.wsprites.walk import LOCAL_ACTION_NAMES
from model.generation import (
    local_action_matrix,
    num_ground_truth_steps,
    reconstruct,
    transition_motion,
    video_code_effect_errors,
    video_gma,
)
from model.trained import TRAINED_WEIGHTS_SUFFIX, TrainedModel, load_trained_model
from utils.checkpoint import CONFIG_FILE
from utils.config import Config, load_config
from utils.distributed import DistributedContext, all_gather_objects
from utils.errors import GlassError
from utils.files import json_records
from utils.metrics import (
    SWITCH_KINDS,
    code_effect_db,
    code_effect_interval,
    code_effect_per_label,
    code_histogram,
    codes_used,
    direction_matches,
    iou_from_sums,
    mean_nmi_per_group,
    normalized_mutual_information,
    perplexity,
    pixels_to_shifts,
    shift_errors,
    shifts_to_pixels,
    soft_iou_sums,
    switch_kinds,
    switch_transitions,
)
from utils.training.batches import start_loader_worker
from utils.training.media import action_matrix_media

METRIC_NAME = "glass_action_metrics"  # the "metric" field of every JSON line
METRICS_FOLDER = "metrics"
VARIANTS = ("gt", "re", "co")
# the analyses of the real video, of its reconstruction, of the other protocol's
_PREDICTION_SETS = ("real", "generated", "other")


def other_protocol(protocol: str) -> str:
    """The reconstruction protocol that is not `protocol`."""
    return "single_image" if protocol == "one_step" else "one_step"


def _squared_error_sums(predicted: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per window (B,) float64: Σ (predicted − reference)² over all but the first dimension."""
    return (predicted.double() - reference.double()).pow(2).flatten(1).sum(dim=1).cpu()


# --------------------------------------------------------------------------- the run


def load_run_for_evaluation(run_folder: str, step: Optional[int], device: torch.device, overrides: Sequence[str] = (),
                            config_path: Optional[str] = None, trained_weights: bool = False
                            ) -> Tuple[TrainedModel, bool]:
    """The run's model (rebuilt from its config.yaml, checkpoint `step` or latest) and whether its results are
    comparable with the paper's (false when it trained with random VGG19 weights).

    With `config_path`, the `data` and `evaluation` sections come from that file (e.g. the dataset
    elsewhere) and the model from the run; `overrides` apply to both files. `trained_weights`: see
    `load_trained_model` (the averaged weights are read where the checkpoint has them).
    """
    trained = load_trained_model(run_folder, step, device, overrides, trained_weights)
    if config_path:
        chosen = load_config(config_path, list(overrides))
        trained.config = dataclasses.replace(trained.config, data=chosen.data, evaluation=chosen.evaluation)
    stored = load_config(os.path.join(run_folder, CONFIG_FILE))
    return trained, not stored.training.random_vgg_weights


# --------------------------------------------------------------------------- per window


@dataclass
class MotionAnalysis:
    """What the model infers from a video (B, T, 3, H, W): masks (B, T, 1, H, W), foreground and
    background shifts Δ_F, Δ_B (B, T−1, 2) in affine_grid units, local action ids (B, T−1), and where
    `analyse_motion` reads them without `model.lma.glimpse`, the action network's outputs before quantisation
    (B, T−1, D)."""

    masks: torch.Tensor
    foreground_shifts: torch.Tensor
    background_shifts: torch.Tensor
    action_ids: torch.Tensor
    action_vectors: Optional[torch.Tensor] = None


def analyse_motion(model: torch.nn.Module, video: torch.Tensor) -> MotionAnalysis:
    """The GMA and the LMA's action inference on `video` (B, T, 3, H, W), in eval mode without gradients
    (the same inference as `model.generation.reconstruct`, without unrolling the dynamics)."""
    was_training = model.training
    model.eval()
    action_vectors = None
    try:
        with torch.no_grad():
            gma = model.gma(video)
            if model.glimpse is not None:  # `model.lma.glimpse`: each transition in its own box
                action_ids = transition_motion(model, gma).ids
            else:
                actions = model.lma.infer_motion(gma.foregrounds, gma.shifted_foregrounds, gma.foreground_shifts,
                                                 masks=gma.masks).actions
                action_ids, action_vectors = actions.ids, actions.vectors
    finally:
        model.train(was_training)
    return MotionAnalysis(masks=gma.masks, foreground_shifts=gma.foreground_shifts,
                          background_shifts=gma.background_shifts, action_ids=action_ids,
                          action_vectors=action_vectors)


def window_records(model: torch.nn.Module, batch: Dict[str, Any], protocol: str, input_size: Sequence[int],
                   device: torch.device, seed: int = 0) -> Dict[str, torch.Tensor]:
    """The per-window quantities of one batch (CPU tensors with a leading window dimension B).

    Labels are cut to the model's transitions (index 1 … T−1, see the module docstring); shifts are
    in pixels; `{real,generated}_*` are the analyses of the real video and of its reconstruction.
    `code_{inferred,random}_squared_error` (B, T−1): the one-step foregrounds drawn from the GMA's real
    foregrounds with the inferred codes and with codebook rows drawn uniformly (`seed`, the same draw for every
    batch) against fₜ₊₁ (`model.generation.video_code_effect_errors`); `switches`: the transitions where the true
    local action changes, `switch_kinds` what each does to the view (`utils.metrics.switch_kinds`, −1 for a window
    whose labels are not W-Sprites' nine); `code_best_squared_error` (B, T−1): the same with the codebook row that
    draws fₜ₊₁ best (the renderer's ceiling), `code_row_squared_error` (B, T−1, K) the same with each row;
    `code_difference`, `real_change`, `region` (B, T−1): how different the one-step foregrounds drawn with two
    different codebook rows are, and how much fₜ₊₁ differs from f̃ₜ, summed over the character's region, and its
    size (`model.generation.CodeEffectErrors`).
    """
    observations = batch["observations"].to(device)
    gma = video_gma(model, observations)  # once for the three inferences from the real video below
    reconstructions = {"generated": reconstruct(model, observations, protocol, gma=gma),
                       "other": reconstruct(model, observations, other_protocol(protocol), gma=gma)}
    reconstruction = reconstructions["generated"]
    real = MotionAnalysis(masks=reconstruction.masks, foreground_shifts=reconstruction.foreground_shifts,
                          background_shifts=reconstruction.background_shifts, action_ids=reconstruction.action_ids)
    analyses = {"real": real, **{name: analyse_motion(model, made.frames) for name, made in reconstructions.items()}}
    true_masks = batch["masks"].to(device)
    real_foregrounds = (reconstruction.masks * observations)[:, 1:]  # the GMA's fₜ₊₁ = mₜ₊₁·Iₜ₊₁
    records: Dict[str, torch.Tensor] = {
        "sprite_id": batch["sprite_id"], "has_masks": batch["has_masks"], "has_actions": batch["has_actions"],
        "true_local_actions": batch["local_actions"][:, 1:],
        "true_sprite_shifts": batch["global_shifts"][:, 1:],
        "true_background_shifts": batch["background_shifts"][:, 1:],
        "image_elements": torch.full((observations.shape[0],), float(real_foregrounds[0].numel()), dtype=torch.float64),
    }
    effect = video_code_effect_errors(model, observations, torch.Generator().manual_seed(seed), code_differences=True,
                                      gma=gma)
    records["code_inferred_squared_error"] = effect.inferred.double().cpu()
    records["code_random_squared_error"] = effect.random.double().cpu()
    for key in ("code_difference", "real_change", "region"):
        records[key] = getattr(effect, key).double().cpu()
    records["code_best_squared_error"] = effect.best.double().cpu()
    records["code_row_squared_error"] = effect.per_code.double().cpu()
    records["switches"] = switch_transitions(batch["local_actions"])
    labels = batch["local_actions"]  # W-Sprites' names (as `confusion_row_labels`); −1 for a window beyond them
    named = ((labels >= 0) & (labels < len(LOCAL_ACTION_NAMES))).all(dim=1)
    kinds = switch_kinds(labels.clamp(0, len(LOCAL_ACTION_NAMES) - 1), LOCAL_ACTION_NAMES)
    records["switch_kinds"] = torch.where(named[:, None], kinds, torch.full_like(kinds, -1))
    for name, made in reconstructions.items():
        records[f"{name}_foreground_squared_error"] = _squared_error_sums(made.generated_foregrounds, real_foregrounds)
        records[f"{name}_frame_squared_error"] = _squared_error_sums(made.frames[:, 1:], observations[:, 1:])
    for name, analysis in analyses.items():
        records[f"{name}_action_ids"] = analysis.action_ids.cpu()
        records[f"{name}_sprite_shifts"] = shifts_to_pixels(analysis.foreground_shifts, input_size).float().cpu()
        records[f"{name}_background_shifts"] = shifts_to_pixels(analysis.background_shifts, input_size).float().cpu()
    for variant, predicted, reference in (("gt", analyses["real"].masks, true_masks),
                                          ("re", analyses["generated"].masks, true_masks),
                                          ("re_other", analyses["other"].masks, true_masks),
                                          ("co", analyses["generated"].masks, analyses["real"].masks)):
        intersection, union = soft_iou_sums(predicted, reference)
        records[f"{variant}_mask_intersection"], records[f"{variant}_mask_union"] = intersection.cpu(), union.cpu()
    # the floor of the IoU: a mask that calls everything foreground
    intersection, union = soft_iou_sums(torch.ones_like(true_masks), true_masks)
    records["all_foreground_mask_intersection"], records["all_foreground_mask_union"] = intersection.cpu(), union.cpu()
    return records


# --------------------------------------------------------------------------- reduction


@dataclass
class EvaluationResult:
    """Every value (`results`, flat names 'variant/metric'), why some were not computed (`skipped`:
    what → reason), and the counts behind them (`counts`)."""

    results: Dict[str, float]
    skipped: Dict[str, str]
    counts: Dict[str, int]
    histograms: Dict[str, List[int]] = dataclasses.field(default_factory=dict)  # variant → transitions per action id
    # gt: row = true local action, column = code: how many labelled transitions got it; None without labels
    confusion: Optional[List[List[int]]] = None
    # gt: per true local action (rows as `confusion`), the code effect in dB over its labelled transitions and how
    # many there are (NaN dB for a label without transitions); None without labels or without the code effect
    label_code_effects: Optional[List[Tuple[float, int]]] = None
    # gt: per kind of switch (`utils.metrics.SWITCH_KINDS`: a turn between front and side, from side to side, another
    # animation in the same view), (kind, code effect dB, with the best code per transition dB, how many transitions)
    switch_kind_code_effects: Optional[List[Tuple[str, float, float, int]]] = None
    # gt: per code, how many transitions of the real videos got it and the GMA's foreground shift it usually comes
    # with (`code_usual_shifts`): the global action each local action comes with
    code_shifts: Optional[List["UsualShift"]] = None


# A shift shorter than this (pixels) is "still" when the usual shift picks a code's most common direction; a
# W-Sprites walk moves about 7 px per step at 128 × 96, a standing character's GMA shift is well under a pixel.
STILL_SHIFT_PX = 2.0
SHIFT_DIRECTIONS = ("still", "right", "left", "down", "up")  # the order breaks ties


class UsualShift(NamedTuple):
    """A code's usual shift (`code_usual_shifts`): `count` transitions got the code; `dx`, `dy` (pixels) the median
    shift over those going its most common direction, `direction` (`SHIFT_DIRECTIONS`), `share` of `count` of
    them. NaN, NaN, "", 0 for an unused code."""
    count: int
    dx: float
    dy: float
    direction: str
    share: float


def shift_directions(shifts: torch.Tensor) -> torch.Tensor:
    """Index into `SHIFT_DIRECTIONS` of each shift (…, 2) in pixels: still under `STILL_SHIFT_PX`, else along its
    longer axis (x first on a tie; y grows downwards)."""
    dx, dy = shifts[..., 0], shifts[..., 1]
    horizontal = dx.abs() >= dy.abs()
    moving = torch.where(horizontal, torch.where(dx > 0, 1, 2), torch.where(dy > 0, 3, 4))
    return torch.where(shifts.norm(dim=-1) < STILL_SHIFT_PX, 0, moving)


def code_usual_shifts(action_ids: torch.Tensor, shifts: torch.Tensor, num_actions: int) -> List[UsualShift]:
    """Per code k < `num_actions`, the global action it comes with: over the transitions whose id in `action_ids`
    (…) is k, the most common direction of their `shifts` (…, 2; pixels; `shift_directions`) and the median dx and
    dy over the transitions going that way. An action network that reads the shift (W-Sprites: walks) gives its
    walk codes the walk's shift; drawn with another shift, such a code is asked for what it never saw. A code taken
    both ways (a front walk up and down) gets one of them, with its share, where a median over all would be still."""
    ids, values = action_ids.reshape(-1), shifts.reshape(-1, 2).double()
    directions = shift_directions(values)
    rows = []
    for code in range(num_actions):
        chosen = ids == code
        count = int(chosen.sum())
        if not count:
            rows.append(UsualShift(0, math.nan, math.nan, "", 0.0))
            continue
        tally = torch.bincount(directions[chosen], minlength=len(SHIFT_DIRECTIONS))
        direction = int(tally.argmax())  # the first of the most common ones
        median = values[chosen & (directions == direction)].median(dim=0).values  # the lower middle of an even count
        rows.append(UsualShift(count, float(median[0]), float(median[1]), SHIFT_DIRECTIONS[direction],
                               int(tally[direction]) / count))
    return rows


def _shift_metrics(predicted: torch.Tensor, reference: torch.Tensor, prefix: str) -> Tuple[Dict[str, float], int]:
    errors = shift_errors(predicted, reference)
    matches = direction_matches(predicted, reference)
    values = {f"{prefix}_error_mean": errors.double().mean().item(), f"{prefix}_error_min": errors.min().item(),
              f"{prefix}_error_max": errors.max().item()}
    if matches.numel():
        values[f"{prefix}_direction_match"] = matches.double().mean().item()
    return values, int(matches.numel())


def _nmi_metrics(predicted: torch.Tensor, reference: torch.Tensor, characters: torch.Tensor) -> Dict[str, float]:
    """NMI over all items, and the mean per-character NMI over the items of known characters (id ≥ 0)."""
    values = {"local_action_nmi": normalized_mutual_information(predicted.flatten(), reference.flatten())}
    known = characters >= 0
    if known.any():
        groups = characters[:, None].expand_as(predicted)[known]
        values["local_action_nmi_per_character"] = mean_nmi_per_group(predicted[known].flatten(),
                                                                     reference[known].flatten(), groups.flatten())
    return values


def summarize(records: Dict[str, torch.Tensor], num_actions: int, seed: int,
              protocol: str = "one_step") -> EvaluationResult:
    """Reduce the records of every window of a split (ordered by window) to the SPEC §5.1 metrics and the
    local-half rows; `protocol` is the one of the `re` reconstruction (the other one's, when recorded, is
    reported as `re_<other protocol>`)."""
    results: Dict[str, float] = {}
    skipped: Dict[str, str] = {}
    histograms: Dict[str, List[int]] = {}
    confusion: Optional[List[List[int]]] = None
    label_code_effects: Optional[List[Tuple[float, int]]] = None
    switch_kind_code_effects: Optional[List[Tuple[str, float, float, int]]] = None
    reconstructions = [("re", "generated")]
    if "other_action_ids" in records:
        reconstructions.append((f"re_{other_protocol(protocol)}", "other"))
    analyses = [("gt", "real"), *reconstructions]
    windows = int(records["sprite_id"].numel())
    has_actions, has_masks = records["has_actions"].bool(), records["has_masks"].bool()
    characters = records["sprite_id"]
    counts = {"windows": windows, "windows_with_action_labels": int(has_actions.sum()),
              "windows_with_masks": int(has_masks.sum()), "transitions": int(records["real_action_ids"].numel())}
    if not (characters >= 0).any():
        skipped["local_action_nmi_per_character"] = ("no video folder name gives a character "
                                                     "(sprite_<id>_video_<k>)")

    # Local actions: against the labels (gt, re, random floor), and re against gt (co).
    if has_actions.any():
        true = records["true_local_actions"][has_actions]
        labelled_characters = characters[has_actions]
        for variant, name in analyses:
            predicted = records[f"{name}_action_ids"][has_actions]
            for key, value in _nmi_metrics(predicted, true, labelled_characters).items():
                results[f"{variant}/{key}"] = value
        generator = torch.Generator().manual_seed(seed)
        random_ids = torch.randint(0, num_actions, tuple(true.shape), generator=generator)
        for key, value in _nmi_metrics(random_ids, true, labelled_characters).items():
            results[f"random/{key}"] = value
    else:
        skipped["gt, re, random: local_action_nmi"] = "no window has action labels (glactions.pkl or actions.pkl)"
    for key, value in _nmi_metrics(records["generated_action_ids"], records["real_action_ids"], characters).items():
        results[f"co/{key}"] = value

    # Shifts: labels only where a window has them and some true shift is non-zero (actions.pkl has none).
    for kind in ("sprite", "background"):
        true = records[f"true_{kind}_shifts"][has_actions]
        if true.numel() and bool((true != 0).any()):
            for variant, name in analyses:
                values, moving = _shift_metrics(records[f"{name}_{kind}_shifts"][has_actions], true, f"{kind}_shift")
                results.update({f"{variant}/{key}": value for key, value in values.items()})
            counts[f"{kind}_moving_transitions"] = moving
        else:
            skipped[f"gt, re: {kind}_shift_*"] = ("no window has action labels" if not has_actions.any() else
                                                  f"every true {kind} shift is zero (labels without shifts, "
                                                  f"e.g. actions.pkl)")
        values, _ = _shift_metrics(records[f"generated_{kind}_shifts"], records[f"real_{kind}_shifts"], f"{kind}_shift")
        results.update({f"co/{key}": value for key, value in values.items()})

    # Masks: one soft IoU over the split.
    mask_variants = [(variant, variant) for variant in (*VARIANTS, "all_foreground")]
    if len(reconstructions) > 1:
        mask_variants.insert(2, (reconstructions[1][0], "re_other"))
    for variant, key in mask_variants:
        selected = has_masks if variant != "co" else torch.ones_like(has_masks)
        if not selected.any():
            skipped[f"{variant}: mask_iou"] = "no ground-truth masks (no masks/ folders, or data.load_masks=false)"
            continue
        results[f"{variant}/mask_iou"] = iou_from_sums(records[f"{key}_mask_intersection"][selected],
                                                       records[f"{key}_mask_union"][selected])

    # The local half: how many codes the action ids use, and how close the generated images are.
    for variant, name in analyses:
        histogram = code_histogram(records[f"{name}_action_ids"], num_actions)
        histograms[variant] = histogram.tolist()
        results[f"{variant}/codes_used"] = float(codes_used(histogram))
        results[f"{variant}/code_perplexity"] = perplexity(histogram)
    # What the codes follow instead of the local actions: the character (an action network whose z encodes
    # appearance gives each character its own code). Floor: uniformly random ids.
    known = characters >= 0
    if known.any():
        random_ids = torch.randint(0, num_actions, tuple(records["real_action_ids"].shape),
                                   generator=torch.Generator().manual_seed(seed))
        variant_ids = {variant: records[f"{name}_action_ids"] for variant, name in analyses}
        for variant, ids in {**variant_ids, "random": random_ids}.items():
            groups = characters[:, None].expand_as(ids)[known]
            results[f"{variant}/code_character_nmi"] = normalized_mutual_information(ids[known].flatten(),
                                                                                     groups.flatten())
    # Does the decoder read the code? The code effect over all transitions, and on labelled windows over those where
    # the true local action changes, over the others and per true local action (0 dB when the decoder ignores the code).
    # Rendering or discovery? The same with the codebook row that draws each transition best: what the decoder could
    # give if the action network always chose right (its gap to the code effect is what the choice loses).
    if "code_inferred_squared_error" in records:
        inferred, random = records["code_inferred_squared_error"], records["code_random_squared_error"]
        best = records.get("code_best_squared_error")
        results["gt/code_effect_db"] = code_effect_db(inferred, random)
        # how much the figure owes to which characters the split holds (a bootstrap over them; W-Sprites)
        _put_interval(results, "gt/code_effect", code_effect_interval(inferred, random, characters))
        if best is not None:
            results["gt/code_effect_best_db"] = code_effect_db(best, random)
        # A baseline that unused or rare codes cannot lower: random codes drawn as often as the split's inferred
        # codes are used, its expected error taken exactly from every row's drawing (so a model with more codes, or
        # with codes it never uses, is not credited for their poor drawings).
        usage_random = None
        if "code_row_squared_error" in records:
            rows = records["code_row_squared_error"]
            usage = code_histogram(records["real_action_ids"], rows.shape[-1]).double()
            usage_random = (rows * (usage / usage.sum().clamp(min=1))).sum(dim=-1)
            results["gt/code_effect_usage_db"] = code_effect_db(inferred, usage_random)
        if has_actions.any():
            inferred, random = inferred[has_actions], random[has_actions]
            best = None if best is None else best[has_actions]
            switches = records["switches"][has_actions]
            counts["switch_transitions"] = int(switches.sum())
            if switches.any():
                results["gt/code_effect_switch_db"] = code_effect_db(inferred, random, switches)
                _put_interval(results, "gt/code_effect_switch",
                              code_effect_interval(inferred, random, characters[has_actions], switches))
                if usage_random is not None:
                    results["gt/code_effect_usage_switch_db"] = code_effect_db(inferred, usage_random[has_actions],
                                                                               switches)
                if best is not None:
                    results["gt/code_effect_best_switch_db"] = code_effect_db(best, random, switches)
            else:
                skipped["gt: code_effect_switch_db"] = "no labelled transition changes local action"
            if not switches.all():
                results["gt/code_effect_non_switch_db"] = code_effect_db(inferred, random, ~switches)
            # Which animations the code pays on
            label_code_effects = code_effect_per_label(inferred, random, records["true_local_actions"][has_actions])
            # Which switches: a turn draws the character from another side, another animation moves what it shows
            if "switch_kinds" in records and best is not None:
                kinds = records["switch_kinds"][has_actions]
                switch_kind_code_effects = [
                    (name, code_effect_db(inferred, random, kinds == kind), code_effect_db(best, random, kinds == kind),
                     int((kinds == kind).sum()))
                    for kind, name in enumerate(SWITCH_KINDS, start=1)]
    # Would a user see another code? How different the next frame is with two different codes, in the character's
    # region, against how much the real video changes there (images in [0, 1]; issue 21 asks for a ratio ≥ 0.25).
    if "code_difference" in records:
        region = float(records["region"].sum())
        if region > 0:
            results["gt/code_difference"] = float(records["code_difference"].sum()) / region
            results["gt/real_change"] = float(records["real_change"].sum()) / region
            if results["gt/real_change"] > 0:
                results["gt/code_difference_ratio"] = results["gt/code_difference"] / results["gt/real_change"]
        else:
            skipped["gt: code_difference"] = "no mask of the GMA is above 0.5 anywhere (no character region)"
    # Which code each true local action gets (W-Sprites: rows the 9 animations).
    if has_actions.any():
        confusion = local_action_confusion(records["true_local_actions"][has_actions],
                                           records["real_action_ids"][has_actions], num_actions).tolist()
    code_shifts = code_usual_shifts(records["real_action_ids"], records["real_sprite_shifts"], num_actions)
    for variant, name in reconstructions:
        for image in ("foreground", "frame"):
            key = f"{name}_{image}_squared_error"
            if key in records:
                mse = float(records[key].sum() / records["image_elements"].sum())
                results[f"{variant}/{image}_psnr"] = 10 * math.log10(4.0 / mse) if mse > 0 else math.inf
    return EvaluationResult(results=results, skipped=skipped, counts=counts, histograms=histograms,
                            confusion=confusion, label_code_effects=label_code_effects,
                            switch_kind_code_effects=switch_kind_code_effects, code_shifts=code_shifts)


def local_action_confusion(true_labels: torch.Tensor, ids: torch.Tensor, num_actions: int) -> torch.Tensor:
    """How often each true local action (rows, 0 … max label) got each code (columns, 0 … K−1): (L, K) int64."""
    num_labels = int(true_labels.max()) + 1 if true_labels.numel() else 0
    flat = true_labels.reshape(-1).long() * num_actions + ids.reshape(-1).long()
    return torch.bincount(flat, minlength=num_labels * num_actions).reshape(num_labels, num_actions)


# --------------------------------------------------------------------------- the loop


def shard_indices(num_windows: int, batch_size: int, rank: int, world_size: int) -> List[int]:
    """The windows of process `rank`: those of batches rank, rank + K, … of the single-process batching."""
    return [index for index in range(num_windows) if (index // batch_size) % world_size == rank]


def evaluation_dataset(config: Config) -> VideoDataset:
    """Every non-overlapping window of `evaluation.observations_count` frames of `evaluation.split` (of its first
    `evaluation.max_videos` videos where set)."""
    evaluation = config.evaluation
    dataset = VideoDataset(config.evaluation_data(), evaluation.split, sampling="all",
                           observations_count=evaluation.observations_count, max_videos=evaluation.max_videos)
    if len(dataset) == 0:
        raise GlassError(f"{config.data.root}: no '{evaluation.split}' window of {evaluation.observations_count} "
                         f"frames (evaluation.observations_count)")
    return dataset


def reader_refit_batches(config: Config, count: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Observations (B, T, 3, H, W) of `count` batches of the training split for `refit_action_reader_statistics`:
    one random window of evaluation.observations_count frames from each of B·count videos (B =
    evaluation.batch_size) of a permutation seeded by evaluation.seed, the same in every process; fewer batches
    when the split has fewer videos. Raises a one-line error when the training split has no such window."""
    evaluation = config.evaluation
    dataset = VideoDataset(config.evaluation_data(), "train", sampling="random", seed=evaluation.seed,
                           observations_count=evaluation.observations_count)
    if len(dataset) == 0:
        raise GlassError(f"{config.data.root}: no 'train' window of {evaluation.observations_count} frames to refit "
                         f"the action readers' statistics from")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(evaluation.seed)).tolist()
    loader = DataLoader(Subset(dataset, order[:count * evaluation.batch_size]), batch_size=evaluation.batch_size,
                        collate_fn=collate_videos, num_workers=min(config.data.num_workers, 2),
                        worker_init_fn=start_loader_worker)
    for batch in loader:
        yield batch["observations"].to(device)


def evaluate_run(trained: TrainedModel, protocol: str, context: DistributedContext,
                 progress: Optional[Callable[[int], Any]] = None,
                 dataset: Optional[VideoDataset] = None) -> Optional[EvaluationResult]:
    """Run the model over this process's share of the split's windows; on rank 0 gather every share and
    return the metrics (None on the other ranks). `progress(n)` is called after each batch; `dataset` is
    `evaluation_dataset(trained.config)`, built here when not given."""
    config = trained.config
    torch.manual_seed(config.evaluation.seed)
    dataset = evaluation_dataset(config) if dataset is None else dataset
    indices = shard_indices(len(dataset), config.evaluation.batch_size, context.rank, context.world_size)
    loader = DataLoader(Subset(dataset, indices), batch_size=config.evaluation.batch_size, collate_fn=collate_videos,
                        num_workers=min(config.data.num_workers, 2), pin_memory=context.device.type == "cuda",
                        worker_init_fn=start_loader_worker)
    parts: List[Dict[str, torch.Tensor]] = []
    position = 0
    for batch in loader:
        records = window_records(trained.model, batch, protocol, config.data.input_size, context.device,
                                 config.evaluation.seed)
        size = len(batch["video_name"])
        records["window"] = torch.tensor(indices[position:position + size], dtype=torch.int64)
        position += size
        parts.append(records)
        if progress is not None:
            progress(size)
    local = {key: torch.cat([part[key] for part in parts]) for key in parts[0]} if parts else {}
    gathered = [part for part in all_gather_objects(context, local) if part]
    if not context.is_main:
        return None
    merged = {key: torch.cat([part[key] for part in gathered]) for key in gathered[0]}
    order = torch.argsort(merged.pop("window"))
    merged = {key: value[order] for key, value in merged.items()}
    return summarize(merged, config.model.lma.num_actions, config.evaluation.seed, protocol)


# --------------------------------------------------------------------------- reporting


def metrics_path(run_folder: str, split: str, protocol: str) -> str:
    """runs/R/metrics/evaluate-SPLIT-PROTOCOL.jsonl: one line per evaluation."""
    return os.path.join(run_folder, METRICS_FOLDER, f"evaluate-{split}-{protocol}.jsonl")


def result_record(result: EvaluationResult, trained: TrainedModel, run_folder: str, protocol: str, comparable: bool,
                  world_size: int) -> Dict[str, Any]:
    """The JSON line of one evaluation: what was measured, on what, and every value (`append_json_line` adds
    when)."""
    config = trained.config
    count = config.evaluation.observations_count
    return {"metric": METRIC_NAME, "run_folder": os.path.abspath(run_folder),
            "checkpoint": os.path.abspath(trained.path),
            "step": trained.step, "weights": trained.weights,
            "split": config.evaluation.split, "protocol": protocol,
            "num_ground_truth_steps": num_ground_truth_steps(protocol, count), "observations_count": count,
            "skip_frames": config.evaluation.skip_frames, "max_videos": config.evaluation.max_videos,
            "data_root": os.path.abspath(config.data.root),
            "seed": config.evaluation.seed, "world_size": world_size, "comparable": comparable,
            "counts": result.counts, "results": result.results, "skipped": result.skipped,
            "histograms": result.histograms, "local_action_confusion": result.confusion,
            "local_action_code_effect": (None if result.label_code_effects is None else
                                         [{"code_effect_db": None if math.isnan(value) else value,
                                           "transitions": count} for value, count in result.label_code_effects]),
            "switch_kind_code_effect": (None if result.switch_kind_code_effects is None else
                                        [{"kind": kind, "code_effect_db": None if math.isnan(value) else value,
                                          "best_code_effect_db": None if math.isnan(best) else best,
                                          "transitions": count}
                                         for kind, value, best, count in result.switch_kind_code_effects]),
            "code_usual_shift": (None if result.code_shifts is None else
                                 [{"transitions": usual.count, "dx": None if math.isnan(usual.dx) else usual.dx,
                                   "dy": None if math.isnan(usual.dy) else usual.dy,
                                   "direction": usual.direction or None, "share": usual.share}
                                  for usual in result.code_shifts])}


def _put_interval(results: Dict[str, float], prefix: str, interval: Tuple[float, float]) -> None:
    """`code_effect_interval`'s bounds as PREFIX_low_db and PREFIX_high_db, when there is one (two characters or
    more)."""
    low, high = interval
    if not (math.isnan(low) or math.isnan(high)):
        results[f"{prefix}_low_db"], results[f"{prefix}_high_db"] = low, high


_TABLE_ROWS = [
    ("local_action_nmi", "local action NMI"),
    ("local_action_nmi_per_character", "  mean per-character NMI"),
    ("sprite_shift_error_mean", "sprite shift error mean (px)"),
    ("sprite_shift_error_min", "  min (px)"),
    ("sprite_shift_error_max", "  max (px)"),
    ("sprite_shift_direction_match", "  direction within 45°"),
    ("background_shift_error_mean", "background shift error mean (px)"),
    ("background_shift_error_min", "  min (px)"),
    ("background_shift_error_max", "  max (px)"),
    ("background_shift_direction_match", "  direction within 45°"),
    ("mask_iou", "soft mask IoU"),
    ("codes_used", "local action codes used"),
    ("code_perplexity", "  code perplexity"),
    ("code_character_nmi", "  NMI of the codes and the character"),
    ("code_effect_db", "code effect, all transitions (dB)"),
    ("code_effect_low_db", "  90% over characters, from (dB)"),
    ("code_effect_high_db", "    to (dB)"),
    ("code_effect_switch_db", "  on switch transitions (dB)"),
    ("code_effect_switch_low_db", "    90% over characters, from (dB)"),
    ("code_effect_switch_high_db", "      to (dB)"),
    ("code_effect_non_switch_db", "  on the other transitions (dB)"),
    ("code_effect_best_db", "  best code per transition (dB)"),
    ("code_effect_best_switch_db", "    on switch transitions (dB)"),
    ("code_effect_usage_db", "  against codes drawn as used (dB)"),
    ("code_effect_usage_switch_db", "    on switch transitions (dB)"),
    ("code_difference", "two codes' next frames differ by"),
    ("real_change", "  the real next frame changes by"),
    ("code_difference_ratio", "  ratio (codes / real)"),
    ("foreground_psnr", "generated foreground PSNR (dB)"),
    ("frame_psnr", "generated frame PSNR (dB)"),
]


def format_table(result: EvaluationResult, protocol: str = "one_step") -> str:
    """The metrics as a text table: one row per metric, columns GT, RE (`protocol`), RE of the other protocol
    when measured, CO and the floor (random ids for the NMI, an all-foreground mask for the IoU); then the
    code histograms."""
    other = f"re_{other_protocol(protocol)}"
    columns = ["gt", "re"] + ([other] if any(key.startswith(other + "/") for key in result.results) else []) + ["co"]
    headers = {"gt": "GT", "re": "RE " + ("1-step" if protocol == "one_step" else "1-image"),
               other: "RE " + ("1-step" if protocol != "one_step" else "1-image"), "co": "CO"}
    lines = [f"{'metric':<34}" + "".join(f"{headers[name]:>11}" for name in columns) + f"{'FLOOR':>11}"]
    for key, label in _TABLE_ROWS:
        floor = result.results.get(f"random/{key}", result.results.get(f"all_foreground/{key}"))
        cells = [result.results.get(f"{column}/{key}") for column in columns] + [floor]
        lines.append(f"{label:<34}" + "".join(f"{'—' if value is None else f'{value:.4f}':>11}" for value in cells))
    for variant, histogram in result.histograms.items():
        lines.append(f"code histogram {headers.get(variant, variant)}: {' '.join(str(count) for count in histogram)}")
    lines.append("GT: predictions vs labels; RE: predictions on the reconstruction (1-step: T_f = T-1; "
                 "1-image: T_f = 1) "
                 "vs labels; CO: predictions on the RE " + ("1-step" if protocol == "one_step" else "1-image")
                 + " reconstruction vs predictions on the real video; FLOOR: uniformly random ids (NMI), an "
                   "all-foreground mask (IoU)")
    if result.confusion is not None:
        lines.append("codes per true local action (GT; rows: labels, columns: codes " + " ".join(
            str(code) for code in range(len(result.confusion[0]))) + "):")
        for name, row in zip(confusion_row_labels(len(result.confusion)), result.confusion):
            lines.append(f"  {name:<18}" + "".join(f"{count:>6}" for count in row))
    if result.label_code_effects is not None:
        lines.append("code effect per true local action (GT; dB over its labelled transitions, how many):")
        for name, (value, count) in zip(confusion_row_labels(len(result.label_code_effects)),
                                        result.label_code_effects):
            lines.append(f"  {name:<18}{'—' if math.isnan(value) else f'{value:.3f}':>8}{count:>6}")
    if result.switch_kind_code_effects is not None:
        lines.append("code effect per kind of switch (GT; dB, with the best code per transition, how many):")
        for name, value, best, count in result.switch_kind_code_effects:
            cells = "".join(f"{'—' if math.isnan(number) else f'{number:.3f}':>8}" for number in (value, best))
            lines.append(f"  {name:<22}{cells}{count:>6}")
    if result.code_shifts is not None:
        lines.append(f"each code's usual foreground shift (GT; the most common direction of the GMA's shift over its "
                     f"transitions, still under {STILL_SHIFT_PX:g} px, the median px over those and their share; how "
                     f"many):")
        for code, usual in enumerate(result.code_shifts):
            shift = "—" if not usual.count else (f"{usual.direction:<6}({_rounded(usual.dx, 2):+.2f}, "
                                                 f"{_rounded(usual.dy, 2):+.2f}) {usual.share:4.0%}")
            lines.append(f"  code {code:<13}{shift:>28}{usual.count:>6}")
    for what, reason in result.skipped.items():
        lines.append(f"skipped {what}: {reason}")
    return "\n".join(lines)


def confusion_row_labels(num_labels: int) -> List[str]:
    """Names of the true local actions: W-Sprites' animations when there are at most 9 labels, else numbers."""
    if num_labels <= len(LOCAL_ACTION_NAMES):
        return list(LOCAL_ACTION_NAMES[:num_labels])
    return [f"label {label}" for label in range(num_labels)]


def usual_shift_sheet(model: torch.nn.Module, dataset: VideoDataset, code_shifts: Sequence[UsualShift],
                      input_size: Sequence[int], rows: int = 2, num_frames: int = 6) -> np.ndarray:
    """The local-action sheet with each code's usual shift (`EvaluationResult.code_shifts`, pixels): from the first
    frames of the split's first windows of `rows` different characters (or of its first windows, without
    characters), code k held for `num_frames` generated steps with its usual shift (an unused code: no shift). The
    training media's sheet holds every code with no shift, which a walk code read with its walk's shift never
    saw. One row per (start, code), labelled with the shift; columns: time."""
    starts: List[torch.Tensor] = []
    seen = set()
    for window, (video_index, _) in enumerate(dataset.windows):
        character = dataset.videos[video_index].sprite_id
        if character in seen and character >= 0:
            continue
        seen.add(character)
        starts.append(dataset[window]["observations"][0, :3])
        if len(starts) == rows:
            break
    device = next(model.parameters()).device
    start_frames = torch.stack(starts).to(device)
    matrix = local_action_matrix(model, start_frames, num_frames,
                                 action_shifts=usual_grid_shifts(code_shifts, input_size).to(device))
    names = [usual_shift_label(code, usual) for code, usual in enumerate(code_shifts)]
    _, sheet = action_matrix_media(matrix.cpu(), start_frames.cpu(), names)
    return sheet


def usual_shift_label(code: int, usual: UsualShift) -> str:
    """A sheet row's name: the code and its usual shift in pixels (with its share when not all transitions)."""
    if not usual.count:
        return f"code {code}, unused: no shift"
    share = "" if usual.share >= 1.0 else f" ({usual.share:.0%})"
    return f"code {code}, shift {_rounded(usual.dx, 1):+.1f} {_rounded(usual.dy, 1):+.1f} px{share}"


def usual_shift_steps(code_shifts: Sequence[UsualShift], input_size: Sequence[int]) -> List[str]:
    """Each used code with its usual shift (`EvaluationResult.code_shifts`, pixels) as a `play.py` step of the
    action language, `DX,DY:CODE` in affine_grid units (3 decimals; an unused code is left out)."""
    return [token for token, usual in zip(usual_shift_tokens(code_shifts, input_size), code_shifts) if usual.count]


def usual_shift_tokens(code_shifts: Sequence[UsualShift], input_size: Sequence[int]) -> List[str]:
    """Every code's step of the action language: `DX,DY:CODE` with its usual shift in affine_grid units (3
    decimals), or the bare `CODE` (no shift) for a code no transition took."""
    shifts = usual_grid_shifts(code_shifts, input_size).tolist()
    return [f"{_rounded(shifts[code][0], 3):.3f},{_rounded(shifts[code][1], 3):.3f}:{code}" if usual.count
            else str(code) for code, usual in enumerate(code_shifts)]


def usual_grid_shifts(code_shifts: Sequence[UsualShift], input_size: Sequence[int]) -> torch.Tensor:
    """`EvaluationResult.code_shifts` (pixels) → (K, 2) float64 affine_grid units, no shift for an unused code."""
    pixels = torch.tensor([(usual.dx, usual.dy) if usual.count else (0.0, 0.0) for usual in code_shifts],
                          dtype=torch.float64)
    return pixels_to_shifts(pixels, input_size)


def _rounded(value: float, digits: int) -> float:
    """`value` rounded to `digits` decimals, without a negative zero (printed "-0.0" where it rounds to 0)."""
    return round(value, digits) + 0.0


def recorded_usual_shifts(run_folder: str, step: int, num_actions: int) -> Tuple[str, List[UsualShift]]:
    """The usual shifts (`code_usual_shifts`) of the latest `evaluate.py` record of checkpoint `step` in
    RUN/metrics/evaluate-*.jsonl (any split and protocol; the latest by its `time`) → (a description of the record,
    the shifts). A record older than the direction field gives direction "" and share 1 (its median over all
    transitions). A `GlassError` names the folder when no such record has `num_actions` codes; lines cut by a crash
    are skipped."""
    folder = os.path.join(run_folder, METRICS_FOLDER)
    names = sorted(name for name in os.listdir(folder) if name.startswith("evaluate-") and name.endswith(".jsonl")) \
        if os.path.isdir(folder) else []
    latest: Optional[Tuple[str, str, List[Dict[str, Any]]]] = None
    for name in names:
        for _, record in json_records(os.path.join(folder, name)):
            shifts = record.get("code_usual_shift")
            if record.get("step") != step or not isinstance(shifts, list) or len(shifts) != num_actions:
                continue
            time = str(record.get("time", ""))
            if latest is None or time >= latest[0]:
                latest = (time, f"{name} ({record.get('split')}, {time})", shifts)
    if latest is None:
        raise GlassError(f"{folder}: no evaluate.py record of step {step} with the usual shifts of {num_actions} "
                         f"codes; run evaluate.py on that checkpoint first (--step {step})")
    try:
        usual = [UsualShift(int(entry["transitions"]), math.nan, math.nan, "", 0.0) if not entry["transitions"] else
                 UsualShift(int(entry["transitions"]), float(entry["dx"]), float(entry["dy"]),
                            str(entry.get("direction") or ""), float(entry.get("share", 1.0)))
                 for entry in latest[2]]
    except (KeyError, TypeError, ValueError) as error:
        raise GlassError(f"{folder}/{latest[1]}: a code_usual_shift entry of step {step} is malformed "
                         f"({type(error).__name__}: {error})") from None
    return latest[1], usual


def _picture_stem(run_folder: str, split: str, protocol: str, step: int, trained_weights: bool) -> str:
    """runs/R/metrics/evaluate-SPLIT-PROTOCOL-step_N, with -trained-weights for evaluate.py --trained-weights (so that
    a run's averaged and trained weights never overwrite each other's pictures)."""
    suffix = TRAINED_WEIGHTS_SUFFIX if trained_weights else ""
    return os.path.join(run_folder, METRICS_FOLDER, f"evaluate-{split}-{protocol}-step_{step:06d}{suffix}")


def usual_shift_sheet_path(run_folder: str, split: str, protocol: str, step: int, trained_weights: bool = False) -> str:
    """runs/R/metrics/evaluate-SPLIT-PROTOCOL-step_N-local-actions.png: `usual_shift_sheet`."""
    return _picture_stem(run_folder, split, protocol, step, trained_weights) + "-local-actions.png"


def confusion_path(run_folder: str, split: str, protocol: str, step: int, trained_weights: bool = False) -> str:
    """runs/R/metrics/evaluate-SPLIT-PROTOCOL-step_N-confusion.png: the picture of `EvaluationResult.confusion`."""
    return _picture_stem(run_folder, split, protocol, step, trained_weights) + "-confusion.png"
