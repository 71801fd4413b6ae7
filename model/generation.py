"""Generating video with a trained GLASS model (SPEC §3.3): reconstruction, motion transfer,
interactive play and the global / local action matrices of the paper's figures.

Every function puts the model in eval mode for its duration (restoring the previous mode)
and runs without gradients; with `sample_noise=False` (the default) its results are
deterministic. Frames are (·, 3, H, W) in [−1, 1].

The generated frame is m̂·f̂ + (1−m̂)·background, where the background is the first frame
inpainted under its dilated mask, shifted by the cumulative background shift with nearest
sampling and border padding.

    recon = reconstruct(model, video, protocol="one_step")    # video (B, T, 3, H, W)
    recon.frames                                              # (B, T, 3, H, W), frame 0 real
    state = start_play(model, first_frames)                   # (B, 3, H, W)
    state = play_step(model, state, NAMED_SHIFTS["right"], local_action=2)
    state.frame                                               # (B, 3, H, W)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from model.blocks import assert_shape
from model.glass import Glass, LMAInputs
from model.glimpse import GlimpseBoxes, crop, paste, translate_states
from model.gma import BACKGROUND_PADDING, FOREGROUND_PADDING, GMAOutput, shift_images
from model.lma import DynamicsState, InferredMotion, split_full_output
from utils.config import RECONSTRUCTION_PROTOCOLS  # name → description; num_ground_truth_steps gives their T_f

# Global shifts (dx, dy) in affine_grid units used in the paper's figures (SPEC §3.3).
NAMED_SHIFTS: Dict[str, Tuple[float, float]] = {
    "right": (0.07, 0.0),
    "left": (-0.07, 0.0),
    "down": (0.0, 0.1),
    "up": (0.0, -0.1),
    "stay": (0.0, 0.0),
}


ShiftLike = Union[Sequence[float], torch.Tensor]
ActionLike = Union[int, torch.Tensor]


def num_ground_truth_steps(protocol: str, length: int) -> int:
    """T_f of a reconstruction protocol for sequences of `length` frames."""
    if protocol not in RECONSTRUCTION_PROTOCOLS:
        raise ValueError(f"unknown reconstruction protocol {protocol!r} (known: {', '.join(RECONSTRUCTION_PROTOCOLS)})")
    return length - 1 if protocol == "one_step" else 1


@contextlib.contextmanager
def _generating(model: Glass) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _composite(foregrounds: torch.Tensor, masks: torch.Tensor, background: torch.Tensor,
               cumulative_background_shifts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """f̂ (N, 3, H, W), m̂ (N, 1, H, W), the first background (N, 3, H, W) and the cumulative Δ_B
    (N, 2) → the frame m̂·f̂ + (1−m̂)·shifted background, and that background, each (N, 3, H, W)."""
    shifted_background = shift_images(background, cumulative_background_shifts, BACKGROUND_PADDING, mode="nearest")
    return masks * foregrounds + (1 - masks) * shifted_background, shifted_background


@dataclass
class Reconstruction:
    """A generated video and what the model inferred from the driving video.

    frames (B, T, 3, H, W): frame 0 is the real first frame, 1 … T−1 are generated;
    generated_foregrounds f̂ and generated_masks m̂ (B, T−1, ·, H, W); backgrounds (B, T, 3,
    H, W) as shown behind each frame; from the driving video: its masks (B, T, 1, H, W),
    foreground and background shifts Δ_F, Δ_B (B, T−1, 2), local action ids (B, T−1) and
    codes (B, T−1, D). `protocol` names how it was made and `num_ground_truth_steps` is its T_f.
    Δ_F is the GMA's; with `model.lma.shift_refinement` the LMA generated with it refined.
    """

    protocol: str
    num_ground_truth_steps: int
    frames: torch.Tensor
    generated_foregrounds: torch.Tensor
    generated_masks: torch.Tensor
    backgrounds: torch.Tensor
    masks: torch.Tensor
    foreground_shifts: torch.Tensor
    background_shifts: torch.Tensor
    action_ids: torch.Tensor
    action_codes: torch.Tensor


@dataclass
class TransitionMotion:
    """`model.lma.glimpse`: the motion of a sequence read transition by transition, each t → t+1 inside a box of its
    own around mₜ ∪ mₜ₊₁ (the GMA's masks). `inputs` and `inferred` are those of the B·S two-frame windows (window
    b·S + t is transition t of sequence b; `model.glass.LMAInputs`, `model.lma.InferredMotion`); ids (B, S) and
    codes (B, S, D) are the local actions per sequence."""

    inputs: LMAInputs
    inferred: InferredMotion
    ids: torch.Tensor
    codes: torch.Tensor

    @property
    def steps(self) -> int:
        return self.ids.shape[1]


def transition_motion(model: Glass, gma: GMAOutput) -> TransitionMotion:
    """Read the local actions of a sequence (the GMA's output on it) with `model.lma.glimpse`, one box per transition
    (a sequence longer than the training windows need not fit one box)."""
    batch_size, steps = gma.foreground_shifts.shape[:2]

    def pairs(tensor: torch.Tensor) -> torch.Tensor:  # (B, T, …) → (B·S, 2, …): frames t and t + 1
        return torch.stack([tensor[:, :-1], tensor[:, 1:]], dim=2).flatten(0, 1)

    inputs = model.lma_inputs(pairs(gma.foregrounds), gma.shifted_foregrounds.flatten(0, 1)[:, None],
                              gma.foreground_shifts.flatten(0, 1)[:, None], pairs(gma.masks))
    inferred = model.lma.infer_motion(inputs.foregrounds, inputs.shifted_foregrounds, inputs.foreground_shifts,
                                      masks=inputs.masks)
    return TransitionMotion(inputs, inferred, inferred.actions.ids.view(batch_size, steps),
                            inferred.actions.codes.view(batch_size, steps, -1))


def _box_inputs(model: Glass, foreground: torch.Tensor, mask: torch.Tensor,
                shift: torch.Tensor) -> Tuple[GlimpseBoxes, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A step from the current foreground and mask (B, ·, H, W) without a transition box: the glimpse box around the
    mask and where Δ_F (B, 2, frame units) moves it, the foreground and mask cut to it and the box's states φ."""
    boxes = model.boxes(torch.stack([mask, shift_images(mask, shift, FOREGROUND_PADDING)], dim=1))
    box_foreground = crop(foreground, boxes)
    return boxes, box_foreground, crop(mask, boxes), model.lma.encoder(box_foreground)[0]


def _step_in_box(model: Glass, boxes: GlimpseBoxes, previous_boxes: Optional[GlimpseBoxes], states: torch.Tensor,
                 foreground: torch.Tensor, mask: torch.Tensor, box_shift: torch.Tensor, code: torch.Tensor,
                 dynamics_state: DynamicsState, sample_noise: bool) -> Tuple[torch.Tensor, torch.Tensor, DynamicsState]:
    """One LMA step inside `boxes` from the box's states φ, foreground and mask, Δ_F in box units and the code; the
    memory first moves from `previous_boxes` to `boxes` (`model.glimpse.translate_states`). Returns f̂, m̂ pasted
    into frames and the new memory."""
    if previous_boxes is not None:
        dynamics_state = translate_states(dynamics_state, model.lma.dynamics.initial_state(states.shape[0]),
                                          previous_boxes, boxes)
    decoded, dynamics_state = model.lma.step(states, box_shift, code, dynamics_state, sample_noise, foreground, mask)
    foreground, mask = split_full_output(decoded[0])
    return paste(foreground, boxes), paste(mask, boxes), dynamics_state


def glimpse_unroll(model: Glass, motion: TransitionMotion, codes: torch.Tensor, ground_truth_steps: int,
                   first: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                   sample_noise: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """`model.lma.glimpse`: the S steps of `motion` drawn one by one with `codes` (B, S, D), each in a box: step
    t < T_f from the real fₜ in its transition's box, a later step from the previous f̂ in a box around it
    (`_box_inputs`); with `first` = (f, m) (B, ·, H, W) every step is of the latter kind, from that start (motion
    transfer). Δ_F is the refined one the transition was read with. Returns f̂ (B, S, 3, H, W) and m̂ (B, S, 1, H, W)
    in frame coordinates."""
    batch_size, steps = motion.ids.shape
    box_shifts = motion.inferred.foreground_shifts.view(batch_size, steps, 2)  # every box has the same size
    dynamics_state = model.lma.dynamics.initial_state(batch_size)
    foreground, mask = first if first is not None else (None, None)
    boxes = None
    outputs = []
    for t in range(steps):
        rows = [b * steps + t for b in range(batch_size)]
        previous_boxes = boxes
        if first is None and t < ground_truth_steps:
            boxes = motion.inputs.boxes.select(rows)
            box_foreground, box_mask = motion.inputs.foregrounds[rows, 0], motion.inputs.masks[rows, 0]
            states = motion.inferred.states[rows, 0]
        else:
            boxes, box_foreground, box_mask, states = _box_inputs(
                model, foreground, mask, motion.inputs.boxes.to_frame_shifts(box_shifts[:, t]))
        foreground, mask, dynamics_state = _step_in_box(model, boxes, previous_boxes, states, box_foreground,
                                                        box_mask, box_shifts[:, t], codes[:, t], dynamics_state,
                                                        sample_noise)
        outputs.append((foreground, mask))
    return torch.stack([f for f, _ in outputs], dim=1), torch.stack([m for _, m in outputs], dim=1)


def video_gma(model: Glass, video: torch.Tensor) -> GMAOutput:
    """The GMA's output on a real video (B, T, 3, H, W) in eval mode without gradients (the model's mode restored
    after): what `reconstruct` and `video_code_effect_errors` infer first, for a caller that runs several of them on
    one video (`utils.evaluation.action_metrics.window_records`) to pass as their `gma`."""
    assert_shape(video, (None, None, 3, *model.frame_size), "video")
    with _generating(model):
        return model.gma(video)


def _render(model: Glass, protocol: str, driving_video: torch.Tensor, target_first_frames: Optional[torch.Tensor],
            ground_truth_steps: int, sample_noise: bool, gma: Optional[GMAOutput] = None) -> Reconstruction:
    """Infer motion from `driving_video` (B, T, 3, H, W) and generate with T_f = `ground_truth_steps`
    from its own frames, or (T_f = 1) from `target_first_frames` (B, 3, H, W) when given. `gma`: the GMA's output
    on `driving_video` (`video_gma`) if the caller has it."""
    if gma is None:
        gma = model.gma(driving_video)
    if model.glimpse is not None:  # `model.lma.glimpse`: every step in a box of its own, pasted back
        motion = transition_motion(model, gma)
        first_frames = driving_video[:, 0] if target_first_frames is None else target_first_frames
        first_masks = gma.masks[:, 0] if target_first_frames is None else model.gma.masks(first_frames)
        first = None if target_first_frames is None else (first_masks * first_frames, first_masks)
        foregrounds, masks = glimpse_unroll(model, motion, motion.codes, ground_truth_steps, first, sample_noise)
        foregrounds, action_ids, action_codes = [foregrounds], motion.ids, motion.codes
    else:
        inferred = model.lma.infer_motion(gma.foregrounds, gma.shifted_foregrounds, gma.foreground_shifts,
                                          masks=gma.masks)
        states, actions = inferred.states, inferred.actions
        action_ids, action_codes = actions.ids, actions.codes
        if target_first_frames is None:
            first_frames, first_masks, ground_truth_states = (driving_video[:, 0], gma.masks[:, 0],
                                                              states[:, :ground_truth_steps])
            ground_truth_foregrounds, ground_truth_masks = (gma.foregrounds[:, :ground_truth_steps],
                                                            gma.masks[:, :ground_truth_steps])
        else:
            first_frames, first_masks = target_first_frames, model.gma.masks(target_first_frames)
            ground_truth_foregrounds, ground_truth_masks = (first_masks * first_frames)[:, None], first_masks[:, None]
            ground_truth_states = model.lma.encode(ground_truth_foregrounds)[0]
        foregrounds, masks = model.lma.unroll(ground_truth_states, inferred.foreground_shifts, actions.codes,
                                              sample_noise, ground_truth_foregrounds, ground_truth_masks)
    background = model.gma.generation_background(first_frames, first_masks)
    steps = gma.foreground_shifts.shape[1]
    cumulative_shifts = gma.background_shifts.cumsum(dim=1).flatten(0, 1)  # (B·(T−1), 2)
    frames, backgrounds = _composite(foregrounds[0].flatten(0, 1), masks.flatten(0, 1),
                                     background.repeat_interleave(steps, dim=0), cumulative_shifts)
    return Reconstruction(
        protocol=protocol,
        num_ground_truth_steps=ground_truth_steps,
        frames=torch.cat([first_frames[:, None], frames.unflatten(0, (-1, steps))], dim=1),
        generated_foregrounds=foregrounds[0],
        generated_masks=masks,
        backgrounds=torch.cat([background[:, None], backgrounds.unflatten(0, (-1, steps))], dim=1),
        masks=gma.masks,
        foreground_shifts=gma.foreground_shifts,
        background_shifts=gma.background_shifts,
        action_ids=action_ids,
        action_codes=action_codes,
    )


def reconstruct(model: Glass, video: torch.Tensor, protocol: str = "one_step",
                sample_noise: bool = False, gma: Optional[GMAOutput] = None) -> Reconstruction:
    """Reconstruct a real video (B, T, 3, H, W), T ≥ 2, from its first frame with the shifts and
    actions inferred from it. `protocol` 'one_step' (T_f = T−1, the authors' evaluation) or
    'single_image' (T_f = 1); the result records which. `gma`: `video_gma(model, video)` if the caller has it
    (the same result, without running the GMA again)."""
    assert_shape(video, (None, None, 3, *model.frame_size), "video")
    with _generating(model):
        return _render(model, protocol, video, None, num_ground_truth_steps(protocol, video.shape[1]), sample_noise,
                       gma)


def transfer_motion(model: Glass, source_video: torch.Tensor, target_first_frames: torch.Tensor,
                    sample_noise: bool = False) -> Reconstruction:
    """Apply the motion of `source_video` (B, T, 3, H, W) to `target_first_frames` (B, 3, H, W).

    The foreground shifts, local actions and background shifts are inferred from the source;
    generation starts from the target's first frame and is autoregressive after it (T_f = 1,
    protocol 'motion_transfer'); the background is the target's, moved by the source's
    cumulative background shift. The masks, shifts and actions in the result are the source's.
    """
    assert_shape(source_video, (None, None, 3, *model.frame_size), "source video")
    assert_shape(target_first_frames, (source_video.shape[0], 3, *model.frame_size), "target first frames")
    with _generating(model):
        return _render(model, "motion_transfer", source_video, target_first_frames, 1, sample_noise)


@dataclass
class PlayState:
    """Where an interactive session stands after `step` steps.

    frame (B, 3, H, W): the current frame; foreground (B, 3, H, W): the current foreground
    (real at step 0, f̂ afterwards), whose encoding is the next dynamics input; mask (B, 1, H, W):
    its mask (the GMA's at step 0, m̂ afterwards);
    dynamics_state: the ConvLSTM memory; background (B, 3, H, W): the first frame's inpainted
    background; cumulative_background_shift (B, 2): the sum of the background shifts so far; boxes: with
    `model.lma.glimpse`, the boxes the last step was drawn in (None before the first step and without a glimpse).
    """

    frame: torch.Tensor
    foreground: torch.Tensor
    mask: torch.Tensor
    dynamics_state: DynamicsState
    background: torch.Tensor
    cumulative_background_shift: torch.Tensor
    step: int
    boxes: Optional[GlimpseBoxes] = None


def start_play(model: Glass, first_frames: torch.Tensor) -> PlayState:
    """Begin playing from images (B, 3, H, W): their mask, foreground, background and a fresh memory."""
    assert_shape(first_frames, (None, 3, *model.frame_size), "first frames")
    with _generating(model):
        masks = model.gma.masks(first_frames)
        return PlayState(frame=first_frames, foreground=masks * first_frames, mask=masks,
                         dynamics_state=model.lma.dynamics.initial_state(first_frames.shape[0]),
                         background=model.gma.generation_background(first_frames, masks),
                         cumulative_background_shift=first_frames.new_zeros(first_frames.shape[0], 2), step=0)


def _per_sample_shifts(shift: ShiftLike, batch_size: int, like: torch.Tensor) -> torch.Tensor:
    tensor = torch.as_tensor(shift, dtype=like.dtype, device=like.device)
    tensor = tensor.expand(batch_size, 2) if tensor.dim() == 1 else tensor
    assert_shape(tensor, (batch_size, 2), "shift")
    return tensor


def play_step(model: Glass, state: PlayState, global_shift: ShiftLike, local_action: ActionLike,
              background_shift: ShiftLike = (0.0, 0.0), sample_noise: bool = False) -> PlayState:
    """One generated frame from the user's actions; returns the next `PlayState`.

    global_shift: Δ_F as (dx, dy) for the whole batch or (B, 2), in affine_grid units (see
    `NAMED_SHIFTS`); local_action: a codebook row id, an int or (B,); background_shift: the
    background's content motion for this step, (dx, dy) or (B, 2), default none.
    """
    batch_size = state.frame.shape[0]
    action_ids = torch.as_tensor(local_action, dtype=torch.long, device=state.frame.device).expand(batch_size)
    num_actions = model.num_actions
    if action_ids.min() < 0 or action_ids.max() >= num_actions:
        raise ValueError(f"local action ids must be in [0, {num_actions}), got {action_ids.tolist()}")
    with _generating(model):
        shifts = _per_sample_shifts(global_shift, batch_size, state.frame)
        code = model.lma.action_network.codebook[action_ids]
        boxes = None
        if model.glimpse is not None:  # `model.lma.glimpse`: in a box around the character and where Δ_F moves it
            boxes, box_foreground, box_mask, states = _box_inputs(model, state.foreground, state.mask, shifts)
            foreground, mask, dynamics_state = _step_in_box(model, boxes, state.boxes, states, box_foreground,
                                                            box_mask, boxes.to_box_shifts(shifts), code,
                                                            state.dynamics_state, sample_noise)
        else:
            states, _ = model.lma.encoder(state.foreground)
            decoded, dynamics_state = model.lma.step(states, shifts, code, state.dynamics_state, sample_noise,
                                                     state.foreground, state.mask)
            foreground, mask = split_full_output(decoded[0])
        cumulative = state.cumulative_background_shift + _per_sample_shifts(background_shift, batch_size, state.frame)
        frame, _ = _composite(foreground, mask, state.background, cumulative)
    return replace(state, frame=frame, foreground=foreground, mask=mask, dynamics_state=dynamics_state,
                   cumulative_background_shift=cumulative, step=state.step + 1, boxes=boxes)


def _action_matrix(model: Glass, start_frames: torch.Tensor, num_frames: int, global_shifts: torch.Tensor,
                   local_actions: torch.Tensor) -> torch.Tensor:
    """Rows = start frames (R, 3, H, W), columns = (global shift (A, 2), local action (A,)) pairs,
    each repeated for `num_frames` steps → (R, A, num_frames, 3, H, W)."""
    rows, columns = start_frames.shape[0], global_shifts.shape[0]
    # Masks and backgrounds depend on the start frame only: compute them once per row, then repeat.
    row_state = start_play(model, start_frames)

    def repeat(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.repeat_interleave(columns, dim=0)

    state = replace(row_state, frame=repeat(row_state.frame), foreground=repeat(row_state.foreground),
                    mask=repeat(row_state.mask),
                    dynamics_state=[(repeat(hidden), repeat(cell)) for hidden, cell in row_state.dynamics_state],
                    background=repeat(row_state.background),
                    cumulative_background_shift=repeat(row_state.cumulative_background_shift))
    frames = []
    for _ in range(num_frames):
        state = play_step(model, state, global_shifts.repeat(rows, 1), local_actions.repeat(rows))
        frames.append(state.frame)
    return torch.stack(frames, dim=1).unflatten(0, (rows, columns))


def global_action_matrix(model: Glass, start_frames: torch.Tensor, num_frames: int,
                         shifts: Optional[Dict[str, Tuple[float, float]]] = None,
                         local_action: int = 0) -> torch.Tensor:
    """The global-action figure: rows = start frames (R, 3, H, W), one column per shift of
    `shifts` (default `NAMED_SHIFTS`, in its order) applied for `num_frames` steps with the
    fixed `local_action` → generated frames (R, A, num_frames, 3, H, W) (start frame excluded)."""
    assert_shape(start_frames, (None, 3, *model.frame_size), "start frames")
    shifts = NAMED_SHIFTS if shifts is None else shifts
    global_shifts = torch.tensor(list(shifts.values()), dtype=start_frames.dtype, device=start_frames.device)
    local_actions = torch.full((len(shifts),), local_action, dtype=torch.long, device=start_frames.device)
    return _action_matrix(model, start_frames, num_frames, global_shifts, local_actions)


def local_action_matrix(model: Glass, start_frames: torch.Tensor, num_frames: int,
                        global_shift: Tuple[float, float] = NAMED_SHIFTS["stay"],
                        action_shifts: Optional[ShiftLike] = None) -> torch.Tensor:
    """The local-action figure: rows = start frames (R, 3, H, W), column k = local action k of
    the codebook (K columns) applied for `num_frames` steps with the fixed `global_shift`
    (default stay), or with its own shift `action_shifts[k]` ((K, 2), affine_grid units: e.g. the shift each code
    comes with in real videos) → generated frames (R, K, num_frames, 3, H, W) (start frame excluded)."""
    assert_shape(start_frames, (None, 3, *model.frame_size), "start frames")
    num_actions = model.num_actions
    if action_shifts is None:
        global_shifts = torch.tensor([global_shift], dtype=start_frames.dtype,
                                     device=start_frames.device).expand(num_actions, 2)
    else:
        global_shifts = torch.as_tensor(action_shifts, dtype=start_frames.dtype, device=start_frames.device)
        assert_shape(global_shifts, (num_actions, 2), "per-action shifts")
    return _action_matrix(model, start_frames, num_frames, global_shifts,
                          torch.arange(num_actions, device=start_frames.device))


@dataclass
class CodeEffectErrors:
    """Per-transition sums of squared errors (B, T−1) of one-step foregrounds f̂ₜ₊₁ against fₜ₊₁, drawn with the
    codes inferred from the real transitions (`inferred`) and with uniformly random codebook rows (`random`);
    `utils.metrics.code_effect_db` turns them into the code effect. `action_ids` (B, T−1): the inferred ids.

    With `code_differences`, also per transition (B, T−1), over the character's region (the pixels where the
    GMA's mask of fₜ or of fₜ₊₁ is above 0.5; `region`: how many): `code_difference`, the sum over the region
    of |f̂ₜ₊₁ drawn with code k − the same with code l| (channel mean, images in [0, 1]) averaged over the pairs
    k < l of codebook rows — how different choosing another code makes the next frame — and `real_change`, the
    sum over the region of |fₜ₊₁ − f̃ₜ| on the same scale: how much the real video changes beyond the shift; and
    `best`, the squared error (like `inferred`) of the codebook row that draws fₜ₊₁ best, chosen per transition: the
    code effect the decoder could give if the action network always chose right, the renderer's ceiling; and
    `per_code` (B, T−1, K), the squared error of each codebook row's drawing (`best` is its minimum), from which a
    random baseline drawn as often as the codes are used can be taken exactly."""

    inferred: torch.Tensor
    random: torch.Tensor
    action_ids: torch.Tensor
    code_difference: Optional[torch.Tensor] = None
    real_change: Optional[torch.Tensor] = None
    region: Optional[torch.Tensor] = None
    best: Optional[torch.Tensor] = None
    per_code: Optional[torch.Tensor] = None


def _code_differences(draw: Callable[[torch.Tensor], torch.Tensor], codebook: torch.Tensor, batch_size: int,
                      steps: int, foregrounds: torch.Tensor, shifted_foregrounds: torch.Tensor,
                      masks: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
    """`CodeEffectErrors`' code_difference, real_change, region, best and per_code: `draw(codes (B, S, D))` → f̂
    (B, S, 3, H, W) is called once per codebook row, that row at every step; `targets` (B, S, 3, H, W): fₜ₊₁."""
    region = (torch.maximum(masks[:, :steps], masks[:, 1:steps + 1]) > 0.5).float()  # (B, S, 1, H, W)

    def region_sum(difference: torch.Tensor) -> torch.Tensor:  # images in [−1, 1]: |a − b| / 2 is in [0, 1]
        return (difference.abs().mean(dim=2, keepdim=True) / 2 * region).sum(dim=(2, 3, 4))

    drawings = [draw(row.expand(batch_size, steps, -1)).float() for row in codebook]
    pairs = [(k, j) for k in range(len(drawings)) for j in range(k + 1, len(drawings))]
    code_difference = torch.zeros(batch_size, steps, device=region.device)
    for k, j in pairs:
        code_difference = code_difference + region_sum(drawings[k] - drawings[j])
    errors = torch.stack([(drawing - targets).pow(2).sum(dim=(2, 3, 4)) for drawing in drawings], dim=-1)
    return {"code_difference": code_difference / max(len(pairs), 1), "best": errors.min(dim=-1).values,
            "per_code": errors,
            "real_change": region_sum(foregrounds[:, 1:steps + 1].float() - shifted_foregrounds[:, :steps].float()),
            "region": region.sum(dim=(2, 3, 4))}


def one_step_drawer(lma: torch.nn.Module, foregrounds: torch.Tensor, shifted_foregrounds: torch.Tensor,
                    foreground_shifts: torch.Tensor, masks: Optional[torch.Tensor]
                    ) -> Tuple[InferredMotion, Callable[[torch.Tensor], torch.Tensor]]:
    """The LMA's motion inferred from real foregrounds (as `code_effect_errors` takes them) and `draw(codes (B, S, D))`
    → f̂ (B, S, 3, H, W): every f̂ₜ₊₁ drawn from the real fₜ (T_f = T−1) with the given codes. The caller sets the
    mode (`code_effect_errors` and `video_code_drawings`: eval, without gradients)."""
    motion = lma.infer_motion(foregrounds, shifted_foregrounds, foreground_shifts, masks=masks)
    steps = motion.foreground_shifts.shape[1]

    def draw(codes: torch.Tensor) -> torch.Tensor:
        generated, _ = lma.unroll(motion.states[:, :steps], motion.foreground_shifts, codes,
                                  ground_truth_foregrounds=foregrounds[:, :steps],
                                  ground_truth_masks=None if masks is None else masks[:, :steps])
        return generated[0]

    return motion, draw


def video_code_drawings(model: Glass, video: torch.Tensor) -> Tuple[GMAOutput, InferredMotion, List[torch.Tensor]]:
    """What the code effect compares, as pictures: of a real video (B, T, 3, H, W), the GMA's output, the LMA's
    inferred motion and the one-step drawings (B, T−1, 3, H, W) with the inferred codes, then with each codebook row
    at every step — in eval mode without gradients (the model's mode restored after). Not for `model.lma.glimpse`
    (ValueError)."""
    if model.glimpse is not None:
        raise ValueError("video_code_drawings: a model with model.lma.glimpse is not supported")
    with _generating(model):
        gma = model.gma(video)
        motion, draw = one_step_drawer(model.lma, gma.foregrounds, gma.shifted_foregrounds, gma.foreground_shifts,
                                       gma.masks)
        steps = motion.foreground_shifts.shape[1]
        codebook = model.lma.action_network.codebook
        drawings = [draw(motion.actions.codes)] + [draw(row.expand(video.shape[0], steps, -1)) for row in codebook]
    return gma, motion, drawings


def code_effect_errors(lma: torch.nn.Module, foregrounds: torch.Tensor, shifted_foregrounds: torch.Tensor,
                       foreground_shifts: torch.Tensor, masks: Optional[torch.Tensor],
                       generator: torch.Generator, code_differences: bool = False) -> CodeEffectErrors:
    """Does the LMA's decoder read the code? From the real foregrounds f (B, T, 3, H, W), f̃ (B, T−1, 3, H, W),
    Δ_F (B, T−1, 2) and masks m (B, T, 1, H, W; may be None without `decoder_skip_mask` and `action_from_masks`),
    draw every f̂ₜ₊₁ from the real fₜ (T_f = T−1) once with the inferred codes and once with codebook rows drawn
    uniformly with `generator` (a CPU generator), in eval mode without gradients; the errors are against fₜ₊₁.
    `code_differences` (needs the masks): also once with each codebook row (`CodeEffectErrors`)."""
    if code_differences and masks is None:
        raise ValueError("code_differences needs the masks (the character's region)")
    with _generating(lma):
        motion, draw = one_step_drawer(lma, foregrounds, shifted_foregrounds, foreground_shifts, masks)
        steps = motion.foreground_shifts.shape[1]
        codebook = lma.action_network.codebook
        random_ids = torch.randint(0, codebook.shape[0], (foregrounds.shape[0], steps), generator=generator)
        targets = foregrounds[:, 1:].float()
        errors = [(draw(codes).float() - targets).pow(2).sum(dim=(2, 3, 4))
                  for codes in (motion.actions.codes, codebook[random_ids.to(codebook.device)])]
        differences = (_code_differences(draw, codebook, foregrounds.shape[0], steps, foregrounds,
                                         shifted_foregrounds, masks, targets) if code_differences else {})
    return CodeEffectErrors(inferred=errors[0], random=errors[1], action_ids=motion.actions.ids, **differences)


def video_code_effect_errors(model: Glass, video: torch.Tensor, generator: torch.Generator,
                             code_differences: bool = False, gma: Optional[GMAOutput] = None) -> CodeEffectErrors:
    """`code_effect_errors` of a real video (B, T, 3, H, W): the GMA's foregrounds, shifts and masks of it, in eval
    mode without gradients (the model's mode restored after). `gma`: `video_gma(model, video)` if the caller has it."""
    with _generating(model):
        if gma is None:
            gma = model.gma(video)
        if model.glimpse is None:
            return code_effect_errors(model.lma, gma.foregrounds, gma.shifted_foregrounds, gma.foreground_shifts,
                                      gma.masks, generator, code_differences)
        # `model.lma.glimpse`: the same draws, each step in its transition's box (`glimpse_unroll`), in frames
        motion = transition_motion(model, gma)
        codebook = model.lma.action_network.codebook
        random_ids = torch.randint(0, codebook.shape[0], tuple(motion.ids.shape), generator=generator)
        targets = gma.foregrounds[:, 1:].float()

        def draw(codes: torch.Tensor) -> torch.Tensor:
            return glimpse_unroll(model, motion, codes, motion.steps)[0]

        errors = [(draw(codes).float() - targets).pow(2).sum(dim=(2, 3, 4))
                  for codes in (motion.codes, codebook[random_ids.to(codebook.device)])]
        batch_size, steps = motion.ids.shape
        differences = (_code_differences(draw, codebook, batch_size, steps, gma.foregrounds,
                                         gma.shifted_foregrounds, gma.masks, targets) if code_differences else {})
        return CodeEffectErrors(inferred=errors[0], random=errors[1], action_ids=motion.ids, **differences)
