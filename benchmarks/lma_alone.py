"""Experiment: can the LMA alone learn f_{t+1}? The LMA trained on the dataset's true foregrounds.

    python benchmarks/lma_alone.py --config configs/wsprites-tiny.yaml --steps 600 --out runs-experiments/lma-alone
    python benchmarks/lma_alone.py --config configs/wsprites-tiny.yaml --steps 600 --ground-truth-steps 1 \
        --out runs-experiments/lma-alone-tf1 model.lma.decoder_channels=[64,32,16]
    python benchmarks/lma_alone.py --steps 400 --eval-every 100 --eval-windows 64 --oracle --out runs-experiments/oracle
    python benchmarks/lma_alone.py --steps 6000 --eval-every 1000 --eval-windows 240 --length 3 --crop 64 48 --oracle \
        --out runs-experiments/oracle-crop

Not a test and not the training of GLASS: the GMA is replaced by the truth, so that a question
about the local half is not confounded with the global half. Foregrounds are fₜ = mₜ·Iₜ with
the dataset's true masks (W-Sprites writes them), f̃ₜ is fₜ moved by the true sprite shift
(converted to `affine_grid` units) and the LMA's six loss terms of `model.losses.GlassLoss`
(with the config's weights; the perceptual one needs VGG19 weights or `--random-vgg-weights`)
train the LMA's parameters with Adam at `training.learning_rate`. T is `--length`, T_f
`--ground-truth-steps` (default T − 1, the one-step protocol). Training draws a new random window of every
video each epoch; the evaluation windows are the split's non-overlapping windows (`--eval-windows` of them).
`--crop H W` trains and evaluates on an H × W box around the character instead of the whole frame.
The config's training settings it does not apply (`loss.code_switch_weight`, a learning-rate drop the run reaches,
the readers' refit, the moving average of the weights, colour permutations; `model.lma.glimpse`) are named in a
line at the start.

Every `--eval-every` steps, on a fixed set of validation windows: the PSNR of f̂ₜ₊₁ against
fₜ₊₁ at full size (one_step, T_f = T − 1, and single_image, T_f = 1) in eval mode and in
train mode (BatchNorm on the batch's statistics, without updating them), the codes used, the
perplexity of the code histogram, the spread of z (mean per-dimension standard deviation) and
the NMI of the ids against the true local actions (over the windows and per character), and
whether the decoder reads the code at all: the one-step PSNR with every window's codes taken from
another window, and the share of random codebook rows the action network recovers from what the
decoder drew with them (`code_recovery`, chance 1/K); the code effect (`code_effect_db`: one-step PSNR with
the inferred codes minus with uniformly random codebook rows; `code_effect_switch_db`: the same over the
transitions where the true local action changes; `code_effect_non_switch_db` over the others and
`code_effect_per_label_db` per true local action of frame t+1, as `evaluate.py`) and the PSNR on the pixels
that change beyond the shift (`psnr_changed_pixels`, with random codes, and of the copy f̃ₜ), and how well a
change of code marks a true switch on the transitions t ≥ 1 (`code_switch_precision`, `code_switch_recall`,
`code_switch_share`: what `loss.code_switch_weight` weighs). `--action-cycle W` trains with the recovery
as a cross-entropy term; `--oracle` draws with the true local-action label as the code (a fixed embedding per
label, N(0, S²/D) rows with `--oracle-scale S`; `--oracle-merge-sides`: one row for a left and a right
animation; `--oracle-codes RUN`: the code ids a trained run's action network gives each transition instead of the
labels) instead of the action network's, and `--switch-weight W`
multiplies the local reconstruction loss of switch transitions by W (`--switch-on codes`: of the transitions where
the code changes, as `loss.code_switch_weight`) (both read the labels: experiments only; docs/local-actions.md).
Writes OUT/curves.json (one record per evaluation), OUT/step_N.png (per window: the true
foregrounds, the eval-mode and the train-mode one-step generations, the eval-mode
single-image generation), OUT/switches_step_N.png (switch transitions: fₜ, fₜ₊₁ and the next frame drawn with
each code, or with each label under `--oracle`) and, at the end, the LMA's weights OUT/lma.pt.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from types import SimpleNamespace
from typing import Any, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from data.video_dataset import VideoDataset, collate_videos  # noqa: E402
from data.wsprites.walk import LOCAL_ACTION_NAMES  # noqa: E402
from model.codebook import kmeans_codebook, restart_dead_codes  # noqa: E402
from model.gma import FOREGROUND_PADDING, shift_images  # noqa: E402
from model.lma import LMAOutput, LocalMotionAnalysis  # noqa: E402
from model.losses import (  # noqa: E402
    CHANGED_PIXEL_THRESHOLD,
    LMA_LOSS_NAMES,
    GlassLoss,
    action_slowness,
    code_switches,
    extra_lma_terms,
)
from model.vgg import build_vgg_features  # noqa: E402
from utils.cli import run_main  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.errors import GlassError  # noqa: E402
from utils.media import image_grid, save_png, to_uint8_images  # noqa: E402
from utils.metrics import (  # noqa: E402
    code_effect_db,
    code_effect_per_label,
    code_histogram,
    codes_used,
    mean_nmi_per_group,
    normalized_mutual_information,
    perplexity,
    psnr,
    soft_iou,
    switch_transitions,
)
from utils.schedules import action_readers_frozen  # noqa: E402
from utils.training.state import preserved_buffers  # noqa: E402


def blob_masks(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """`--blob-masks R`: masks (B, T, 1, H, W) made like the tiny GMA's — dilated by R pixels (a (2R+1)² maximum) and
    then blurred by a (2R+1)² mean: a smooth capsule that holds the character and some background around it, with the
    gaps between legs and arms filled. Every pixel of the true mask stays 1."""
    size = 2 * radius + 1
    flat = masks.flatten(0, 1)
    dilated = F.max_pool2d(flat, size, stride=1, padding=radius)
    blurred = F.avg_pool2d(dilated, size, stride=1, padding=radius, count_include_pad=False)
    return blurred.unflatten(0, masks.shape[:2])


def true_inputs(batch: Dict[str, Any], input_size, shift_noise: float = 0.0,
                generator: torch.Generator = None, blob_radius: int = 0) -> SimpleNamespace:
    """The GMA's outputs replaced by the truth: masks, foregrounds, shifted foregrounds, shifts (affine units).

    `shift_noise` (pixels): the standard deviation of Gaussian noise added to each true sprite shift, for Δ_F and
    f̃ₜ alike, to mimic a GMA whose shifts are off by a few pixels. `blob_radius` > 0: the masks are `blob_masks`
    first, and the foregrounds cut with them, to mimic the tiny GMA's masks."""
    frames, masks = batch["observations"], batch["masks"]
    if blob_radius > 0:
        masks = blob_masks(masks, blob_radius)
    foregrounds = masks * frames
    width, height = input_size
    pixel_shifts = batch["global_shifts"][:, 1:]
    if shift_noise > 0:
        pixel_shifts = pixel_shifts + shift_noise * torch.randn(pixel_shifts.shape, generator=generator)
    shifts = pixel_shifts * torch.tensor([2.0 / width, 2.0 / height])  # Δ_F of t → t+1
    sources = foregrounds[:, :-1].flatten(0, 1)
    shifted = shift_images(sources, shifts.flatten(0, 1), FOREGROUND_PADDING).unflatten(0, shifts.shape[:2])
    return SimpleNamespace(masks=masks, foregrounds=foregrounds, shifted_foregrounds=shifted, foreground_shifts=shifts)


def crop_windows(batch: Dict[str, Any], size) -> Dict[str, Any]:
    """`--crop H W`: every window's frames and masks cut to an H × W box (the same box for all its frames) centred on
    the bounding box of the true masks over the window and kept inside the frame; the other entries as they are.
    Returns the cropped batch and the share of mask pixels the boxes cut off."""
    height, width = size
    frames, masks = batch["observations"], batch["masks"]
    frame_height, frame_width = frames.shape[-2:]
    if height > frame_height or width > frame_width:
        raise ValueError(f"--crop {height} {width} is larger than the frames ({frame_height} × {frame_width})")
    cropped_frames, cropped_masks = [], []
    for window_frames, window_masks in zip(frames, masks):
        union = (window_masks > 0.5).any(dim=0)[0]
        rows, columns = torch.where(union.any(dim=1))[0], torch.where(union.any(dim=0))[0]
        centre_y = (int(rows[0]) + int(rows[-1]) + 1) // 2 if len(rows) else frame_height // 2
        centre_x = (int(columns[0]) + int(columns[-1]) + 1) // 2 if len(columns) else frame_width // 2
        top = min(max(centre_y - height // 2, 0), frame_height - height)
        left = min(max(centre_x - width // 2, 0), frame_width - width)
        cropped_frames.append(window_frames[..., top:top + height, left:left + width])
        cropped_masks.append(window_masks[..., top:top + height, left:left + width])
    cropped = dict(batch, observations=torch.stack(cropped_frames), masks=torch.stack(cropped_masks))
    kept = float(cropped["masks"].sum() / masks.sum().clamp_min(1))
    return cropped, 1.0 - kept


class OracleCodes(torch.nn.Module):
    """`--oracle`: the true local-action label of each transition as its code: a fixed (not trained) random
    embedding per label, N(0, 1/D) rows, fed where the quantised code goes (dynamics, and the decoder with
    `decoder_action`). Asks whether the decoder can draw the labelled pose change when it is told it.
    `merge_sides` (`--oracle-merge-sides`): each '-right' label gets the row of its '-left' twin, as the codes the
    whole model discovers do — one code for both sides (W-Sprites' names, `LOCAL_ACTION_NAMES`)."""

    def __init__(self, num_labels: int, code_dim: int, seed: int, scale: float = 1.0, merge_sides: bool = False):
        super().__init__()
        generator = torch.Generator().manual_seed(seed + 7)
        table = torch.randn(num_labels, code_dim, generator=generator) * scale / code_dim ** 0.5
        if merge_sides:
            names = list(LOCAL_ACTION_NAMES[:num_labels])
            for label, name in enumerate(names):
                twin = name[:-len("right")] + "left"
                if name.endswith("-right") and twin in names:
                    table[label] = table[names.index(twin)]
        self.register_buffer("table", table)

    def forward(self, local_actions: torch.Tensor) -> torch.Tensor:
        """Labels per frame (B, T) → the codes of the transitions t → t+1, those of frame t+1: (B, T−1, D)."""
        return self.table[local_actions[:, 1:]]


def oracle_labels(batch: Dict[str, Any]) -> torch.Tensor:
    """What the oracle is told per frame (B, T): the code ids of a trained run (`--oracle-codes`, attached by
    `attach_run_codes`) or else the true local-action labels."""
    return batch.get("oracle_labels", batch["local_actions"])


def run_code_ids(run_folder: str, step: int, splits: List[str]) -> Tuple[Dict[str, torch.Tensor], int]:
    """`--oracle-codes`: the code id the action network of a trained run (`run_folder`, checkpoint `step`, None: the
    latest; eval mode, as the frozen readers infer them in training after `training.action_freeze_step`) gives every
    transition of every video of `splits` of the run's own data: {video name: ids (frames − 1,)}, id t for the
    transition t → t+1, each video read whole; and the run's number of codes."""
    from model.trained import load_trained_model
    from utils.evaluation.action_metrics import analyse_motion

    trained = load_trained_model(run_folder, step, "cpu")
    if trained.model.glimpse is not None:
        raise GlassError(f"--oracle-codes {run_folder}: a model with model.lma.glimpse is not supported")
    if trained.config.data.frame_spacing() != 1:
        raise GlassError(f"--oracle-codes {run_folder}: needs consecutive frames (its data's frame spacing is not 1)")
    codes: Dict[str, torch.Tensor] = {}
    for split in splits:
        dataset = VideoDataset(trained.config.data, split)
        for index, video in enumerate(dataset.videos):
            item = dataset[(index, len(video))]  # the whole video (the start of a full-length window is 0)
            codes[video.name] = analyse_motion(trained.model, item["observations"][None]).action_ids[0]
    return codes, trained.config.model.lma.num_actions


def attach_run_codes(batch: Dict[str, Any], codes: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """The batch with "oracle_labels" (B, T): for frame t ≥ 1 the run's code id of transition t−1 → t of its video
    (`run_code_ids`), for frame 0 that of the transition into the window (the first transition's own where the
    window starts the video), so that `oracle_labels(batch)[:, 1:]` are the window's transitions' codes."""
    length = batch["local_actions"].shape[1]
    labels = []
    for name, start in zip(batch["video_name"], batch["start_frame"].tolist()):
        if name not in codes:
            raise GlassError(f"--oracle-codes: the run's data has no video {name} (trained on another dataset?)")
        ids = codes[name]
        window = ids[start:start + length - 1]
        labels.append(torch.cat([ids[start - 1:start] if start > 0 else window[:1], window]))
    return dict(batch, oracle_labels=torch.stack(labels))


def oracle_forward(lma: LocalMotionAnalysis, gma: SimpleNamespace, codes: torch.Tensor,
                   ground_truth_steps: int) -> LMAOutput:
    """The LMA's forward with the given codes (B, T−1, D) instead of the inferred ones (no quantiser loss)."""
    motion = lma.infer_motion(gma.foregrounds, gma.shifted_foregrounds, gma.foreground_shifts, masks=gma.masks)
    generated, masks = lma.unroll_batch(motion.states, motion.foreground_shifts, codes, ground_truth_steps,
                                        foregrounds=gma.foregrounds, masks=gma.masks)
    return LMAOutput(states=motion.states, action_codes=codes, action_ids=motion.actions.ids, action_vq_loss=None,
                     generated_foregrounds=generated, generated_masks=masks,
                     reencoded_states=lma.encode(generated[0])[0], num_ground_truth_steps=ground_truth_steps,
                     action_vectors=motion.actions.vectors, shifted_foregrounds=motion.shifted_foregrounds,
                     foreground_shifts=motion.foreground_shifts)


def code_effect_record(lma: LocalMotionAnalysis, gma: SimpleNamespace, batch: Dict[str, Any], one_step: LMAOutput,
                       random_codes: torch.Tensor) -> Dict[str, float]:
    """One-step f̂ (eval mode) drawn from the states of `one_step` with its codes and with `random_codes`
    (B, T−1, D): the code effect over all transitions and over switch transitions, and the PSNR on the pixels
    that change beyond the shift (with both codes, and of f̃ₜ, the global motion alone, for reference)."""
    steps = random_codes.shape[1]
    targets = gma.foregrounds[:, 1:]
    drawn = []
    for codes in (one_step.action_codes, random_codes):
        generated, _ = lma.unroll(one_step.states[:, :steps], one_step.foreground_shifts, codes,
                                  ground_truth_foregrounds=gma.foregrounds[:, :steps],
                                  ground_truth_masks=gma.masks[:, :steps])
        drawn.append(generated[0])
    errors = [(image - targets).pow(2).sum(dim=(2, 3, 4)) for image in drawn]
    switches = switch_transitions(batch["local_actions"])
    copy = one_step.shifted_foregrounds  # f̃ₜ as the LMA used it (refined)
    changed = ((targets - copy).abs().sum(dim=2, keepdim=True) > CHANGED_PIXEL_THRESHOLD).float()

    def changed_psnr(image: torch.Tensor) -> float:
        mse = float(((image - targets).pow(2) * changed).sum() / (changed.sum() * 3).clamp_min(1))
        return 10 * math.log10(4.0 / mse) if mse > 0 else math.inf

    # As evaluate.py: on the other transitions and per true local action (the label of frame t+1); None (JSON null)
    # where a label has no transition in the windows
    per_label = [None if count == 0 else value
                 for value, count in code_effect_per_label(errors[0], errors[1], batch["local_actions"][:, 1:])]
    return {"code_effect_db": code_effect_db(errors[0], errors[1]),
            "code_effect_switch_db": code_effect_db(errors[0], errors[1], switches),
            "code_effect_non_switch_db": code_effect_db(errors[0], errors[1], ~switches),
            "code_effect_per_label_db": per_label,
            "switch_transitions": int(switches.sum()),
            "psnr_changed_pixels": changed_psnr(drawn[0]), "psnr_changed_pixels_random_codes": changed_psnr(drawn[1]),
            "psnr_changed_pixels_copy": changed_psnr(copy)}


def code_switch_record(ids: torch.Tensor, local_actions: torch.Tensor) -> Dict[str, float]:
    """How well a change of code (`model.losses.code_switches`, what `loss.code_switch_weight` weighs) marks a true
    switch (`switch_transitions`): code ids (B, T−1) and labels per frame (B, T), on the transitions t ≥ 1 (the
    first of a window is never marked) → precision (share of the marked that are switches; 0 when none is marked),
    recall (share of the switches marked; 0 when there is none) and the share of transitions marked."""
    marked, true = code_switches(ids)[:, 1:], switch_transitions(local_actions)[:, 1:]
    hits = float((marked & true).sum())
    return {"code_switch_precision": hits / max(int(marked.sum()), 1),
            "code_switch_recall": hits / max(int(true.sum()), 1),
            "code_switch_share": float(marked.float().mean()) if marked.numel() else 0.0}


def random_switches(shape: Tuple[int, int], share: float, generator: torch.Generator) -> torch.Tensor:
    """`--random-switches P`, the control for `loss.code_switch_weight`: (B, T−1) bool marks, each transition t ≥ 1
    marked with probability P, the first of a window never (as `code_switches` never marks it)."""
    marks = torch.rand(shape, generator=generator) < share
    marks[:, 0] = False
    return marks


@torch.no_grad()
def evaluate(lma: LocalMotionAnalysis, gma: SimpleNamespace, batch: Dict[str, Any], num_actions: int,
             oracle: OracleCodes = None) -> Dict[str, Any]:
    length = gma.foregrounds.shape[1]
    targets = gma.foregrounds[:, 1:]
    record: Dict[str, Any] = {}
    lma.eval()
    if oracle is not None:
        codes = oracle(oracle_labels(batch))
        one_step = oracle_forward(lma, gma, codes, length - 1)
        single = oracle_forward(lma, gma, codes, 1)
        lma.train()
        with preserved_buffers(lma):
            one_step_train = oracle_forward(lma, gma, codes, length - 1)
    else:
        one_step = lma(gma.foregrounds, gma.shifted_foregrounds, gma.foreground_shifts, length - 1, masks=gma.masks)
        single = lma(gma.foregrounds, gma.shifted_foregrounds, gma.foreground_shifts, 1, masks=gma.masks)
        lma.train()  # train-mode BatchNorm (batch statistics), its running statistics left untouched
        with preserved_buffers(lma):
            one_step_train = lma(gma.foregrounds, gma.shifted_foregrounds, gma.foreground_shifts, length - 1,
                                 masks=gma.masks)
    lma.eval()
    random_generator = torch.Generator().manual_seed(3)
    if oracle is not None:
        random_labels = torch.randint(0, oracle.table.shape[0], tuple(batch["local_actions"].shape),
                                      generator=random_generator)
        record.update(code_effect_record(lma, gma, batch, one_step, oracle(random_labels)))
    else:
        codebook = lma.action_network.codebook
        random_ids = torch.randint(0, num_actions, tuple(one_step.action_ids.shape), generator=random_generator)
        record.update(code_effect_record(lma, gma, batch, one_step, codebook[random_ids]))
    lma.train()
    record["psnr_one_step_eval"] = psnr(one_step.generated_foregrounds[0], targets)
    record["psnr_one_step_trainbn"] = psnr(one_step_train.generated_foregrounds[0], targets)
    record["psnr_single_image_eval"] = psnr(single.generated_foregrounds[0], targets)
    record["mask_iou_one_step"] = soft_iou(one_step.generated_masks, gma.masks[:, 1:])
    record["mask_iou_single_image"] = soft_iou(single.generated_masks, gma.masks[:, 1:])
    record["psnr_zero"] = psnr(torch.zeros_like(targets), targets)  # an empty foreground
    record["psnr_copy"] = psnr(gma.shifted_foregrounds, targets)  # f̃ₜ: the global motion only
    ids = one_step.action_ids
    histogram = code_histogram(ids, num_actions)
    record["codes_used"] = codes_used(histogram)
    record["perplexity"] = perplexity(histogram)
    record["code_histogram"] = histogram.tolist()
    record["z_spread"] = float(one_step.action_vectors.flatten(0, 1).std(dim=0).mean())
    labels = batch["local_actions"][:, 1:]
    characters = batch["sprite_id"][:, None].expand_as(labels)
    record["nmi"] = normalized_mutual_information(ids.flatten(), labels.flatten())
    record["nmi_per_character"] = mean_nmi_per_group(ids.flatten(), labels.flatten(), characters.flatten())
    # What else the codes may follow: the character (z encoding identity instead of motion)
    record["nmi_character"] = normalized_mutual_information(ids.flatten(), characters.flatten())
    random_ids = torch.randint(0, num_actions, tuple(labels.shape), generator=torch.Generator().manual_seed(0))
    record["nmi_floor"] = normalized_mutual_information(random_ids.flatten(), labels.flatten())
    record["nmi_per_character_floor"] = mean_nmi_per_group(random_ids.flatten(), labels.flatten(), characters.flatten())
    record.update(code_switch_record(ids, batch["local_actions"]))
    lma.eval()
    # Does the decoder read the code? One-step PSNR with every window's codes taken from another window, and the
    # share of random codes that the action network recovers from what the decoder drew with them (chance 1/K).
    rolled = lma.unroll(one_step.states[:, :length - 1], one_step.foreground_shifts, one_step.action_codes.roll(1, 0),
                        ground_truth_foregrounds=gma.foregrounds[:, :length - 1],
                        ground_truth_masks=gma.masks[:, :length - 1])[0][0]
    record["psnr_one_step_rolled_codes"] = psnr(rolled, targets)
    random_ids = torch.randint(0, num_actions, tuple(ids.shape), generator=torch.Generator().manual_seed(1))
    recovered, _ = recover_codes(lma, gma, one_step, random_ids)
    record["code_recovery"] = float((recovered.argmax(dim=1) == random_ids.flatten()).float().mean())
    lma.train()
    if oracle is not None:
        # short column names ("spell-l" for spellcast-left): the sheet's cells are as narrow as the frames
        code_names = ([f"{name.split('-')[0][:5]}-{name.split('-')[1][0]}" for name in LOCAL_ACTION_NAMES]
                      if "oracle_labels" not in batch else [f"code {k}" for k in range(oracle.table.shape[0])])
        code_rows = oracle.table
    else:
        code_rows, code_names = lma.action_network.codebook, [f"code {k}" for k in range(num_actions)]
    record["_switch_sheet"] = switch_sheet(lma, gma, batch, one_step, code_rows, code_names)
    lma.train()
    record["_images"] = (targets, one_step.generated_foregrounds[0], one_step_train.generated_foregrounds[0],
                         single.generated_foregrounds[0])
    return record


def recover_codes(lma: LocalMotionAnalysis, gma: SimpleNamespace, output, ids: torch.Tensor):
    """Experiment `--action-cycle`: unroll one step ahead from the real states with the codebook rows `ids`
    (B, T−1) instead of the inferred codes, and read the actions back from what the decoder drew: returns the
    logits (B·(T−1), K) = −‖z' − eₖ‖² of the action network's z' for (f̃ₜ, f̂ₜ₊₁) against the (detached) codebook,
    and the generated foregrounds."""
    steps = ids.shape[1]
    codebook = lma.action_network.codebook
    generated, _ = lma.unroll(output.states[:, :steps], output.foreground_shifts, codebook[ids],
                              ground_truth_foregrounds=gma.foregrounds[:, :steps],
                              ground_truth_masks=gma.masks[:, :steps])
    source_states, source_attention = lma.encoder(output.shifted_foregrounds.flatten(0, 1))
    target_states, target_attention = lma.encoder(generated[0].flatten(0, 1))
    vectors = lma.action_network.vectors(source_states * source_attention, target_states * target_attention,
                                         shifts=output.foreground_shifts.flatten(0, 1))
    logits = -torch.cdist(vectors, codebook.detach()).pow(2)
    return logits, generated


@torch.no_grad()
def switch_sheet(lma: LocalMotionAnalysis, gma: SimpleNamespace, batch: Dict[str, Any], one_step: LMAOutput,
                 code_rows: torch.Tensor, code_names: List[str], max_rows: int = 8) -> np.ndarray:
    """What each code draws where the code is needed: for up to `max_rows` switch transitions t → t+1 (the true
    local action changes) of the windows, a row with fₜ, the real fₜ₊₁, and the one-step f̂ₜ₊₁ (eval mode, the
    real states) drawn with each row of `code_rows` (K, D) given to every transition: the oracle's label
    embeddings or the codebook. A uint8 grid (labelled rows and columns)."""
    switches = switch_transitions(batch["local_actions"])
    places = torch.nonzero(switches)[:max_rows]
    if len(places) == 0:
        return None
    steps = switches.shape[1]
    drawn = []
    for row in code_rows:
        codes = row.expand(*one_step.action_codes.shape[:2], -1)
        generated, _ = lma.unroll(one_step.states[:, :steps], one_step.foreground_shifts, codes,
                                  ground_truth_foregrounds=gma.foregrounds[:, :steps],
                                  ground_truth_masks=gma.masks[:, :steps])
        drawn.append(generated[0][places[:, 0], places[:, 1]])
    windows, times = places[:, 0], places[:, 1]
    columns = [gma.foregrounds[windows, times], gma.foregrounds[windows, times + 1], *drawn]
    cells = np.stack([to_uint8_images(column) for column in columns], axis=1)
    labels = batch["local_actions"]
    row_labels = [f"{LOCAL_ACTION_NAMES[int(labels[b, t])]} > {LOCAL_ACTION_NAMES[int(labels[b, t + 1])]}"
                  for b, t in places.tolist()]
    return image_grid(cells, row_labels=row_labels, column_labels=["f_t", "f_t+1", *code_names])


def write_sheet(images, path: str, num_windows: int = 4) -> None:
    rows = []
    for window in range(min(num_windows, images[0].shape[0])):
        for kind in images:
            rows.append(to_uint8_images(kind[window]))
    save_png(image_grid(np.stack(rows)), path)


def settings_not_applied(config, steps: int) -> List[str]:
    """The config's training settings that the LMA alone does not apply, a phrase each with what stands in for it, so
    that a run of a longer-run config (configs/wsprites-c3.yaml, say) does not leave them out silently."""
    training, notes = config.training, []
    if config.loss.code_switch_weight != 1.0:
        weight = f"{config.loss.code_switch_weight:g}"
        notes.append(f"loss.code_switch_weight {weight} (--switch-weight {weight} --switch-on codes applies it)")
    passed = [milestone for milestone in training.lr_milestones if milestone < steps]
    if passed:
        notes.append(f"training.lr_milestones {passed} (the learning rate stays {training.learning_rate:g})")
    if training.action_freeze_refit_batches:
        notes.append("training.action_freeze_refit_batches (the readers freeze with the statistics they have)")
    if training.weight_average_decay:
        notes.append("training.weight_average_decay (the evaluations read the trained weights)")
    if training.colour_permutation:
        notes.append("training.colour_permutation (the LMA sees every window in its own colours)")
    return notes


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/wsprites-tiny.yaml")
    parser.add_argument("--out", required=True, help="output folder (curves.json, step_N.png)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--length", type=int, default=6, help="T, frames per training window")
    parser.add_argument("--ground-truth-steps", type=int, default=None, help="T_f in training (default T − 1)")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-windows", type=int, default=32, help="validation windows per evaluation")
    parser.add_argument("--eval-split", default="val", help="the split the evaluation windows come from")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-vgg-weights", action="store_true")
    parser.add_argument("--shift-noise", type=float, default=0.0, metavar="PX",
                        help="experiment: Gaussian noise (std in pixels) on the true sprite shifts, in training and "
                             "evaluation (a GMA whose shifts are off)")
    parser.add_argument("--blob-masks", type=int, default=0, metavar="R",
                        help="experiment: the true masks dilated by R pixels and blurred as much (smooth capsules "
                             "with some background, like the tiny GMA's masks), in training and evaluation")
    parser.add_argument("--unweighted", action="store_true",
                        help="experiment: the two multiscale reconstruction terms without motion weights (plain L1)")
    parser.add_argument("--action-cycle", type=float, default=0.0, metavar="WEIGHT",
                        help="experiment: also unroll with random codebook rows and train the action network to "
                             "recover them from the generated frames (cross-entropy, this weight)")
    parser.add_argument("--oracle", action="store_true",
                        help="experiment: the true local-action label of each transition as its code (a fixed "
                             "embedding per label, see OracleCodes) instead of the action network's")
    parser.add_argument("--oracle-merge-sides", action="store_true",
                        help="experiment, with --oracle: a left and a right animation share one code (as the "
                             "discovered codes do): is a turn to a side drawn when the code does not say which?")
    parser.add_argument("--oracle-codes", default=None, metavar="RUN_FOLDER|FILE",
                        help="experiment, with --oracle: the oracle is told the code ids a trained run's action "
                             "network gives each transition (checkpoint --oracle-codes-step) instead of the true "
                             "labels: can the decoder draw the turns with the codes that run discovered? They are "
                             "saved as OUT/told_codes.pt ({'codes': {video: ids}, 'num_codes': K}), which this option "
                             "also reads (edited, for what-ifs)")
    parser.add_argument("--oracle-codes-step", type=int, default=None, metavar="N",
                        help="the checkpoint of --oracle-codes (default: its latest)")
    parser.add_argument("--switch-on", choices=("labels", "codes"), default="labels",
                        help="experiment, with --switch-weight: weigh the transitions where the true label changes "
                             "(default) or, as loss.code_switch_weight, those where the code changes (t >= 1 of a "
                             "window; the oracle's told codes under --oracle)")
    parser.add_argument("--oracle-scale", type=float, default=1.0, metavar="S",
                        help="experiment: the oracle's embedding rows are N(0, S²/D) (default 1: unit-length rows)")
    parser.add_argument("--switch-weight", type=float, default=1.0, metavar="W",
                        help="experiment (uses the labels): the local reconstruction loss of switch transitions (the "
                             "true local action changes) weighs W times more; with --oracle it asks whether the "
                             "decoder can draw the labelled change when the transitions that need the code dominate")
    parser.add_argument("--random-switches", type=float, default=None, metavar="P",
                        help="experiment, with --switch-weight: the weighted transitions are drawn at random instead "
                             "(each transition t ≥ 1 with probability P; the first never), the control for "
                             "loss.code_switch_weight's marks (a heavier local loss in general, not at the switches)")
    parser.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="experiment (uses the true masks): the LMA works on an H × W box around the character, "
                             "one box per window (centred on the masks' bounding box over the window), instead of the "
                             "whole frame: fewer pixels per step, so more steps in the same time")
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    args = parser.parse_args(argv)
    if args.random_switches is not None and (args.switch_weight == 1.0 or not 0.0 <= args.random_switches <= 1.0):
        parser.error("--random-switches P needs --switch-weight W (W != 1) and P in [0, 1]")
    if args.switch_on == "codes" and args.switch_weight == 1.0:
        parser.error("--switch-on codes needs --switch-weight W (W != 1)")
    if args.oracle_merge_sides and not args.oracle:
        raise GlassError("--oracle-merge-sides: needs --oracle")
    if args.oracle_codes is not None and (not args.oracle or args.oracle_merge_sides):
        raise GlassError("--oracle-codes: needs --oracle, and not --oracle-merge-sides")
    if args.oracle_codes is not None and not os.path.exists(args.oracle_codes):
        raise GlassError(f"--oracle-codes {args.oracle_codes}: no such run folder or file")
    told_file = None
    if args.oracle_codes is not None and os.path.isfile(args.oracle_codes):  # a told_codes.pt, perhaps edited
        try:
            told = torch.load(args.oracle_codes, weights_only=True)
            told_file = dict(told["codes"]), int(told["num_codes"])
        except Exception as error:  # not a file this option wrote: one line, whatever the reason
            raise GlassError(f"--oracle-codes {args.oracle_codes}: not a told_codes.pt file "
                             f"({type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''})"
                             ) from None
    if args.blob_masks < 0:
        parser.error(f"--blob-masks R: a radius in pixels >= 0 (0 = the true masks), got {args.blob_masks}")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    config = load_config(args.config, args.overrides)
    if config.model.lma.glimpse is not None:  # the LMA alone is given the whole frame or its --crop, not boxes
        print(f"model.lma.glimpse {config.model.lma.glimpse} is not used here: the LMA alone works on the whole frame "
              "(or on --crop boxes around the true masks)", flush=True)
        config.model.lma.glimpse = None
    not_applied = settings_not_applied(config, args.steps)
    if not_applied:
        print("not applied by the LMA alone: " + "; ".join(not_applied), flush=True)
    os.makedirs(args.out, exist_ok=True)
    ground_truth_steps = args.ground_truth_steps or args.length - 1

    train_set = VideoDataset(config.data, "train", observations_count=args.length)
    # Every non-overlapping window of the split (more transitions, and switches, than one window per video)
    val_set = VideoDataset(config.data, args.eval_split, sampling="all", observations_count=args.length)
    generator = torch.Generator().manual_seed(args.seed)
    val_items = torch.randperm(len(val_set), generator=generator)[:args.eval_windows].tolist()
    val_batch = collate_videos([val_set[i] for i in val_items])
    run_codes, num_labels = None, len(LOCAL_ACTION_NAMES)
    if args.oracle_codes is not None:
        started_codes = time.time()
        if told_file is not None:
            run_codes, num_labels = told_file
        else:
            run_codes, num_labels = run_code_ids(args.oracle_codes, args.oracle_codes_step,
                                                 sorted({"train", args.eval_split}))
        torch.save({"codes": run_codes, "num_codes": num_labels}, os.path.join(args.out, "told_codes.pt"))
        val_batch = attach_run_codes(val_batch, run_codes)
        told_ids = oracle_labels(val_batch)[:, 1:]
        print(f"--oracle-codes: {num_labels} codes of {args.oracle_codes} read for {len(run_codes)} videos in "
              f"{time.time() - started_codes:.0f} s; on the validation windows NMI with the labels "
              f"{normalized_mutual_information(told_ids.flatten(), val_batch['local_actions'][:, 1:].flatten()):.3f}",
              flush=True)
    input_size = config.data.input_size  # (width, height)
    if args.crop:
        input_size = (args.crop[1], args.crop[0])
        val_batch, cut = crop_windows(val_batch, args.crop)
        print(f"--crop {args.crop[0]} {args.crop[1]}: the validation boxes cut off {100 * cut:.2f} % of the mask "
              "pixels", flush=True)
    noise_generator = torch.Generator().manual_seed(args.seed + 2)  # apart from the loader's: the same batches
    val_gma = true_inputs(val_batch, input_size, args.shift_noise,
                          torch.Generator().manual_seed(args.seed + 1), args.blob_masks)
    loader = torch.utils.data.DataLoader(train_set, batch_size=config.training.batch_size, shuffle=True, drop_last=True,
                                         collate_fn=collate_videos, num_workers=min(config.data.num_workers, 1),
                                         generator=generator)  # not persistent: the workers see set_epoch

    lma = LocalMotionAnalysis(config.model.lma, config.model.state_resolution(input_size))
    vgg = (build_vgg_features(config.loss, random_weights=args.random_vgg_weights)
           if GlassLoss.needs_vgg(config.loss) else None)
    loss = GlassLoss(config.loss, vgg)
    optimizer = torch.optim.Adam(lma.parameters(), lr=config.training.learning_rate,
                                 weight_decay=config.training.weight_decay)
    num_actions = config.model.lma.num_actions
    curves: List[Dict[str, Any]] = []
    step, started, train_ids, train_seconds = 0, time.time(), [], 0.0
    control_generator = torch.Generator().manual_seed(args.seed + 11)  # --random-switches
    oracle = OracleCodes(num_labels, config.model.lma.action_dim, args.seed, args.oracle_scale,
                         merge_sides=args.oracle_merge_sides) if args.oracle else None
    usage, restarted, every = torch.zeros(num_actions), 0, config.training.codebook_restart_every
    lma.train()

    def log_evaluation() -> None:
        record = evaluate(lma, val_gma, val_batch, num_actions, oracle)
        images, sheet = record.pop("_images"), record.pop("_switch_sheet")
        if sheet is not None:
            save_png(sheet, os.path.join(args.out, f"switches_step_{step:06d}.png"))
        record.update(step=step, seconds=round(time.time() - started, 1), codes_restarted=restarted,
                      train_seconds_per_step=round(train_seconds / max(step, 1), 3))
        if train_ids:
            train_histogram = code_histogram(torch.cat(train_ids), num_actions)
            record["train_codes_used"], record["train_perplexity"] = (codes_used(train_histogram),
                                                                      perplexity(train_histogram))
            train_ids.clear()
        curves.append(record)
        write_sheet(images, os.path.join(args.out, f"step_{step:06d}.png"))
        with open(os.path.join(args.out, "curves.json"), "w") as file:
            json.dump({"config": args.config, "overrides": args.overrides, "args": vars(args), "curves": curves}, file,
                      indent=1)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in record.items()}), flush=True)

    log_evaluation()
    epoch = 0
    while step < args.steps:
        train_set.set_epoch(epoch)  # a new random window of every video each epoch
        epoch += 1
        for batch in loader:
            if run_codes is not None:
                batch = attach_run_codes(batch, run_codes)
            if args.crop:
                batch, _ = crop_windows(batch, args.crop)
            gma = true_inputs(batch, input_size, args.shift_noise, noise_generator, args.blob_masks)
            step_started = time.perf_counter()
            frozen = lma.action_readers() if action_readers_frozen(config.training, step) else []
            for module in frozen:
                module.eval()
            if oracle is not None:
                output = oracle_forward(lma, gma, oracle(oracle_labels(batch)), ground_truth_steps)
            else:
                output = lma(gma.foregrounds, gma.shifted_foregrounds, gma.foreground_shifts, ground_truth_steps,
                             masks=gma.masks)
            total = 0.0
            for name in LMA_LOSS_NAMES:
                weight = loss.weights[name]
                if weight == 0:
                    continue
                if name == "local_action_vq_loss":
                    term = output.action_vq_loss
                elif args.unweighted and name in ("multiscale_global_reconstruction_loss",
                                                  "multiscale_local_reconstruction_loss"):
                    term = loss._multiscale_weighted_l1(gma.foregrounds[:, 1:], output.generated_foregrounds,
                                                        torch.ones_like(gma.foregrounds[:, 1:, :1]))
                elif name == "multiscale_local_reconstruction_loss" and args.switch_weight != 1.0:
                    if args.switch_on == "codes":  # as loss.code_switch_weight: where the code changes
                        switches = code_switches(oracle_labels(batch)[:, 1:] if oracle is not None
                                                 else output.action_ids).float()
                    else:
                        switches = switch_transitions(batch["local_actions"]).float()
                    if args.random_switches is not None:  # the control: as many marks, at random places
                        switches = random_switches(tuple(switches.shape), args.random_switches,
                                                   control_generator).float()
                    term = loss.multiscale_local_reconstruction_loss(gma, output,
                                                                     1.0 + (args.switch_weight - 1.0) * switches)
                elif name in ("local_state_reconstruction_loss",):
                    term = getattr(loss, name)(output)
                else:
                    term = getattr(loss, name)(gma, output)
                if term is not None:
                    total = total + weight * term
            for _, weight, term in extra_lma_terms(output, config.loss):  # winner-take-all, matching, mask prediction
                total = total + weight * term
            if config.loss.action_slowness_weight > 0 and oracle is None:  # loss.action_slowness_weight
                slowness = action_slowness(output.action_codes, output.action_vectors)
                if slowness is not None:
                    total = total + config.loss.action_slowness_weight * slowness
            if args.action_cycle > 0:
                random_ids = torch.randint(0, num_actions, tuple(output.action_ids.shape), generator=noise_generator)
                logits, _ = recover_codes(lma, gma, output, random_ids)
                cycle = torch.nn.functional.cross_entropy(logits, random_ids.flatten())
                total = total + args.action_cycle * cycle
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            for module in frozen:
                for parameter in module.parameters():
                    parameter.grad = None
            optimizer.step()
            train_seconds += time.perf_counter() - step_started
            train_ids.append(output.action_ids.flatten())
            # The trainer's opt-in codebook options (utils.training.trainer.Trainer.maintain_codebook), one process.
            usage += code_histogram(output.action_ids, num_actions).float()
            codebook, vectors = lma.action_network.codebook, output.action_vectors.flatten(0, 1)
            codebook_generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
            if frozen:
                pass  # the codebook stays as it is
            elif config.training.codebook_kmeans_init and step == 0:
                kmeans_codebook(codebook, vectors, codebook_generator, optimizer=optimizer)
                usage.zero_()
            elif every and (step + 1) % every == 0:
                restarted += len(restart_dead_codes(codebook, usage, vectors, codebook_generator, optimizer=optimizer))
                usage.zero_()
            step += 1
            if step % args.eval_every == 0 or step == args.steps:
                log_evaluation()
            if step >= args.steps:
                break
    torch.save({"lma": lma.state_dict(), "oracle": None if oracle is None else oracle.state_dict(),
                "args": vars(args)}, os.path.join(args.out, "lma.pt"))
    return 0


if __name__ == "__main__":
    run_main(main)
