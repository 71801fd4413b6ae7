"""The library behind `play.py`: the action language, the images and videos it reads, and the
files it writes.

    steps = parse_actions("right*3 2 left:1 0.05,-0.02", num_actions=6)
    image = load_start_image("sprite.png", config.data)              # (3, H, W) in [−1, 1]
    frames = play_actions(model, image, steps)                       # (1 + len(steps), 3, H, W)
    write_video(to_uint8_images(frames), "runs/x/play/demo", fps=8)  # video.gif, video.mp4, frames/

The action language (the same for `--actions`, the lines of `--actions-file` and the web page's
keys) — whitespace separates tokens; a token is one step, or `STEP*N` for N equal steps:

    DIRECTION             right, left, down, up or stay: that global shift, the current local action
    ACTION                a local action id 0 … K−1: global shift 'stay', that action
    DIRECTION:ACTION      both
    DX,DY                 a global shift in affine_grid units (2 = the frame width or height,
                          |DX|, |DY| ≤ 2): the current local action
    DX,DY:ACTION          both

A step that names an ACTION makes it the current action; the current action starts as
`default_action` (0). The named directions are the shifts of the paper's figures (SPEC §3.3):
right (0.07, 0), left (−0.07, 0), down (0, 0.1), up (0, −0.1), stay (0, 0).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml

from data.video_dataset import IMAGE_EXTENSIONS, index_video, load_image, split_video_folders
from model.generation import NAMED_SHIFTS, Reconstruction, play_step, start_play
from model.glass import Glass
from utils.config import DataConfig
from utils.errors import DatasetError, GlassError
from utils.media import image_grid, save_gif, save_mp4, save_png, to_uint8_images
from utils.metrics import shifts_to_pixels

MAX_SHIFT = 2.0  # affine_grid units: a shift of 2 moves content by the whole frame
MAX_REPEAT = 1000  # the largest N of a `STEP*N` token
SHIFT_NAMES = tuple(NAMED_SHIFTS)
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")  # a decimal number, no inf or nan

ACTION_LANGUAGE_HELP = """\
actions (--actions "right*3 2 left:1 0.05,-0.02"; tokens separated by spaces, each one step,
or STEP*N for N equal steps):
  DIRECTION          right, left, down, up or stay: that global shift with the current local action
  ACTION             a local action id 0..K-1 (K: the model's number of actions): shift 'stay', that action
  DIRECTION:ACTION   both, e.g. right:2
  DX,DY              a global shift in affine_grid units (2 = the frame width/height; |DX|,|DY| <= 2),
                     e.g. 0.05,-0.02, with the current local action
  DX,DY:ACTION       both, e.g. 0.05,0:3
  A step that names an ACTION makes it the current action (at first --default-action, 0).
  Named shifts (the paper's, SPEC 3.3): right (0.07, 0), left (-0.07, 0), down (0, 0.1), up (0, -0.1),
  stay (0, 0). Example: "right right 3 3 left stay 0" = right/0, right/0, stay/3, stay/3, left/3, stay/3,
  stay/0.
--actions-file FILE: JSON (.json) or YAML, a list whose items are tokens as above ("right*4", "2") or
  mappings {shift: right | [dx, dy], action: K, repeat: N} (shift defaults to stay, action to the
  current action, repeat to 1).
--serve keys (the same language): arrows = one step right/left/up/down with the current action;
  space = stay; 1..9 = one step 'stay' with action 0..8 (which becomes the current action); 0 = reset."""


class ActionError(GlassError):
    """An action string or file that does not follow the action language; names the bad token."""


@dataclass(frozen=True)
class PlayStep:
    """One generated frame's actions: the global shift Δ_F (dx, dy) in affine_grid units and the
    local action id (a codebook row)."""

    global_shift: Tuple[float, float]
    local_action: int

    def to_dict(self) -> Dict[str, Any]:
        return {"global_shift": list(self.global_shift), "local_action": self.local_action}


def _check_action(action: int, num_actions: int) -> int:
    if not 0 <= action < num_actions:
        raise ValueError(f"local action {action} is out of range: this model has {num_actions} actions "
                         f"(0..{num_actions - 1})")
    return action


def _check_shift(dx: float, dy: float) -> Tuple[float, float]:
    for name, value in (("dx", dx), ("dy", dy)):
        if not math.isfinite(value) or abs(value) > MAX_SHIFT:
            raise ValueError(f"{name} = {value} must be a finite number in [-{MAX_SHIFT:g}, {MAX_SHIFT:g}] "
                             f"(affine_grid units; 2 = the whole frame)")
    return (float(dx), float(dy))


def _named_shift(name: str) -> Tuple[float, float]:
    if name.lower() not in NAMED_SHIFTS:
        raise ValueError(f"unknown direction {name!r} (expected one of {', '.join(SHIFT_NAMES)})")
    return NAMED_SHIFTS[name.lower()]


def _check_repeat(repeat: int) -> int:
    if not 1 <= repeat <= MAX_REPEAT:
        raise ValueError(f"repeat count {repeat} must be in 1..{MAX_REPEAT}")
    return repeat


def _parse_shift(text: str) -> Tuple[float, float]:
    if "," in text:
        parts = text.split(",")
        if len(parts) != 2 or not all(_NUMBER.match(part) for part in parts):
            raise ValueError(f"{text!r} is not a shift DX,DY of two numbers")
        return _check_shift(float(parts[0]), float(parts[1]))
    if text.isalpha():
        return _named_shift(text)
    raise ValueError(f"{text!r} is neither a direction ({', '.join(SHIFT_NAMES)}) nor a shift DX,DY")


def _parse_integer(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{what} {text!r} is not a non-negative integer")
    return int(text)


def parse_token(token: str, num_actions: int, current_action: int) -> List[PlayStep]:
    """The steps of one token of the action language (module docstring); raises ValueError with
    the reason when the token is malformed or an action id is out of range."""
    body, star, repeat_text = token.partition("*")
    repeat = _check_repeat(_parse_integer(repeat_text, "repeat count")) if star else 1
    if not body:
        raise ValueError("empty step (expected DIRECTION, ACTION, DIRECTION:ACTION, DX,DY or DX,DY:ACTION)")
    shift_text, colon, action_text = body.partition(":")
    if colon:
        if not shift_text:
            raise ValueError("nothing before ':' (expected DIRECTION:ACTION or DX,DY:ACTION)")
        shift = _parse_shift(shift_text)
        action = _check_action(_parse_integer(action_text, "local action"), num_actions)
    elif re.fullmatch(r"[+-]?[0-9]+", body):
        shift, action = NAMED_SHIFTS["stay"], _check_action(int(body), num_actions)
    else:
        shift, action = _parse_shift(body), current_action
    return [PlayStep(shift, action)] * repeat


def parse_actions(text: str, num_actions: int, default_action: int = 0, source: str = "--actions") -> List[PlayStep]:
    """The steps of an action string (tokens separated by whitespace); an error is one line naming
    `source`, the token's position (1-based) and the token."""
    try:
        _check_action(default_action, num_actions)
    except ValueError as error:
        raise ActionError(f"--default-action: {error}") from None
    tokens = text.split()
    if not tokens:
        raise ActionError(f"{source}: no steps given")
    steps: List[PlayStep] = []
    current_action = default_action
    for position, token in enumerate(tokens, start=1):
        try:
            token_steps = parse_token(token, num_actions, current_action)
        except ValueError as error:
            raise ActionError(f"{source}: token {position} {token!r}: {error}") from None
        steps += token_steps
        current_action = token_steps[-1].local_action
    return steps


def _mapping_steps(item: Dict[str, Any], num_actions: int, current_action: int) -> List[PlayStep]:
    unknown = sorted(set(item) - {"shift", "action", "repeat"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} (expected shift, action, repeat)")
    shift_value = item.get("shift", "stay")
    if isinstance(shift_value, str):
        shift = _named_shift(shift_value)
    elif (isinstance(shift_value, (list, tuple)) and len(shift_value) == 2
          and all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in shift_value)):
        shift = _check_shift(*shift_value)
    else:
        raise ValueError(f"shift must be a direction name or [dx, dy], got {shift_value!r}")
    action, repeat = item.get("action", current_action), item.get("repeat", 1)
    for key, value in (("action", action), ("repeat", repeat)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{key} must be an integer, got {value!r}")
    return [PlayStep(shift, _check_action(action, num_actions))] * _check_repeat(repeat)


def read_action_file(path: str, num_actions: int, default_action: int = 0) -> List[PlayStep]:
    """The steps of a JSON (.json) or YAML action file (see `ACTION_LANGUAGE_HELP`); an error names
    the file and the item (1-based)."""
    if not os.path.isfile(path):
        raise ActionError(f"{path}: no such action file")
    try:
        with open(path, "r", encoding="utf-8") as handle:
            content = json.load(handle) if path.lower().endswith(".json") else yaml.safe_load(handle)
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ActionError(f"{path}: not valid {'JSON' if path.lower().endswith('.json') else 'YAML'} "
                          f"({reason})") from None
    if isinstance(content, str):
        return parse_actions(content, num_actions, default_action, source=path)
    if not isinstance(content, list) or not content:
        raise ActionError(f"{path}: expected a non-empty list of steps (or one action string), got "
                          f"{type(content).__name__ if content else 'nothing'}")
    steps: List[PlayStep] = []
    current_action = default_action
    for position, item in enumerate(content, start=1):
        try:
            if isinstance(item, str):
                item_steps = parse_token(item.strip(), num_actions, current_action)
            elif isinstance(item, int) and not isinstance(item, bool):
                item_steps = parse_token(str(item), num_actions, current_action)
            elif isinstance(item, dict):
                item_steps = _mapping_steps(item, num_actions, current_action)
            else:
                raise ValueError(f"expected a token string or a mapping, got {type(item).__name__}")
        except ValueError as error:
            raise ActionError(f"{path}: item {position} {item!r}: {error}") from None
        steps += item_steps
        current_action = item_steps[-1].local_action
    return steps


# --------------------------------------------------------------------------- inputs

def image_paths(arguments: Sequence[str]) -> List[str]:
    """The image files of `--image` values, each a file or a folder (its images, sorted by name)."""
    paths: List[str] = []
    for argument in arguments:
        if os.path.isdir(argument):
            found = sorted(os.path.join(argument, name) for name in os.listdir(argument)
                           if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(argument, name)))
            if not found:
                raise GlassError(f"{argument}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        elif os.path.isfile(argument):
            paths.append(argument)
        else:
            raise GlassError(f"{argument}: no such image file or folder")
    return paths


def load_start_image(path: str, config: DataConfig, fit: str = "auto") -> torch.Tensor:
    """An image file as a first frame (3, H, W) in [−1, 1], prepared as the dataset prepares frames
    (`data.video_dataset.fit_image`); a missing file or one that is not an image is a one-line error."""
    if not os.path.isfile(path):
        raise GlassError(f"{path}: " + ("a folder, not an image file" if os.path.isdir(path) else "no such image file"))
    return load_image(path, config, fit)


def dataset_start_frames(config: DataConfig, max_count: int,
                         splits: Sequence[str] = ("test", "val")) -> List[Tuple[str, str]]:
    """(name, path) of the first frames of up to `max_count` videos of the run's dataset, spread
    evenly over the first split that has videos (test, then val), so that they show different
    characters; [] when the dataset is not on this machine."""
    for split in splits:
        try:
            folders = split_video_folders(config, split)
        except DatasetError:
            continue
        chosen = sorted({index * len(folders) // max_count for index in range(max_count)} if folders else set())
        found = []
        for index in chosen:
            try:
                found.append((f"{split}/{os.path.basename(folders[index])}",
                              index_video(folders[index]).frame_paths[0]))
            except DatasetError:
                continue
        if found:
            return found
    return []


def load_video(folder: str, config: DataConfig, fit: str = "auto", max_frames: Optional[int] = None) -> torch.Tensor:
    """A video folder in the on-disk format (SPEC §1.1) → frames (T, 3, H, W) in [−1, 1], `config.skip_frames`
    source frames skipped between two (play.py passes the evaluation spacing, `Config.evaluation_data`), the
    first `max_frames` of them (all by default)."""
    if not os.path.isdir(folder):
        raise GlassError(f"{folder}: no such video folder (expected a folder of 00000.png, 00001.png, ...)")
    paths = index_video(folder).frame_paths[::config.frame_spacing()]
    if max_frames is not None:
        paths = paths[:max_frames]
    if len(paths) < 2:
        raise GlassError(f"{folder}: {len(paths)} frame(s) with skip_frames={config.skip_frames}; at least 2 needed")
    return torch.stack([load_image(path, config, fit) for path in paths])


# --------------------------------------------------------------------------- generating

def play_actions(model: Glass, image: torch.Tensor, steps: Sequence[PlayStep]) -> torch.Tensor:
    """Play `steps` from one image (3, H, W) → frames (1 + len(steps), 3, H, W), the image first."""
    state = start_play(model, image[None])
    frames = [state.frame[0]]
    for step in steps:
        state = play_step(model, state, step.global_shift, step.local_action)
        frames.append(state.frame[0])
    return torch.stack(frames)


def motion_record(result: Reconstruction, frame_size: Tuple[int, int]) -> List[Dict[str, Any]]:
    """Per generated frame of a one-video `Reconstruction`: the foreground and background shifts
    it used (affine_grid units and output pixels: dx·W/2, dy·H/2) and the local action id."""
    height, width = frame_size
    rows = []
    for index in range(result.foreground_shifts.shape[1]):
        foreground, background = result.foreground_shifts[0, index].cpu(), result.background_shifts[0, index].cpu()
        rows.append({"frame": index + 1, "local_action": int(result.action_ids[0, index]),
                     "global_shift": [round(float(v), 6) for v in foreground],
                     "global_shift_pixels": [round(float(v), 3) for v in shifts_to_pixels(foreground, (width, height))],
                     "background_shift": [round(float(v), 6) for v in background],
                     "background_shift_pixels": [round(float(v), 3)
                                                 for v in shifts_to_pixels(background, (width, height))]})
    return rows


# --------------------------------------------------------------------------- writing

def default_output_folder(run_folder: str, mode: str) -> str:
    """run_folder/play/MODE-YYYYmmdd-HHMMSS (with -2, -3, … when that exists already)."""
    base = os.path.join(run_folder, "play", f"{mode}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")
    folder, count = base, 1
    while os.path.exists(folder):
        count += 1
        folder = f"{base}-{count}"
    return folder


def mp4_available() -> bool:
    """Whether PyAV (the optional `video` extra) can be imported, so MP4 files can be written."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def write_video(frames: np.ndarray, folder: str, fps: float, name: str = "video",
                frames_folder: Optional[str] = "frames") -> Dict[str, str]:
    """Write frames (T, H, W, 3) uint8 as NAME.gif, NAME.mp4 (when PyAV is installed) and
    `frames_folder`/00000.png, … (unless None) in `folder`; returns {kind: path}."""
    paths = {"gif": save_gif(frames, os.path.join(folder, f"{name}.gif"), fps)}
    if mp4_available():
        paths["mp4"] = save_mp4(frames, os.path.join(folder, f"{name}.mp4"), fps)
    if frames_folder is not None:
        for index, frame in enumerate(frames):
            save_png(frame, os.path.join(folder, frames_folder, f"{index:05d}.png"))
        paths["frames"] = os.path.join(folder, frames_folder)
    return paths


def side_by_side(videos: Sequence[torch.Tensor], labels: Sequence[str]) -> List[np.ndarray]:
    """Videos (T, 3, H, W) of one length → T labelled frames showing them side by side."""
    cells = to_uint8_images(torch.stack(list(videos), dim=1))  # (T, V, H, W, 3)
    return [image_grid(cells[t][None], column_labels=list(labels)) for t in range(cells.shape[0])]


def write_record(folder: str, record: Dict[str, Any]) -> str:
    """play.json in `folder`: what was played, from which checkpoint, and the files written."""
    path = os.path.join(folder, "play.json")
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
        handle.write("\n")
    return path
