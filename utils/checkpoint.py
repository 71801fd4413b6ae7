"""The run folder and its checkpoints.

    runs/NAME/config.yaml                  the resolved configuration, written before the first step
    runs/NAME/metrics.jsonl                one JSON line per logging step
    runs/NAME/media/                       images and GIFs logged during training
    runs/NAME/wandb_id.txt, runs/NAME/wandb/   with --wandb
    runs/NAME/checkpoints/step_N.pth       the state after N optimiser steps
    runs/NAME/checkpoints/latest.pth       the same as the newest step_N.pth

A checkpoint is a dict of tensors, lists, dicts, ints, floats, strings and booleans only, so
`torch.load(path, weights_only=True)` reads it (no code runs when loading). Files are written
to a temporary name in the same folder and moved into place with `os.replace`, so a crash
never leaves a half-written `step_N.pth` or `latest.pth`.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import zipfile
from typing import Any, Dict, List, Mapping, Optional

import torch

from utils.config import Config, check_frames_fit, dump_config, load_config
from utils.errors import GlassError
from utils.files import write_atomically

CHECKPOINT_FORMAT = 1  # bumped when the layout of the checkpoint dict changes
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
MEDIA_FOLDER = "media"
WANDB_ID_FILE = "wandb_id.txt"  # the id of the run's wandb run, so that a resumed run continues it
CHECKPOINT_FOLDER = "checkpoints"
LATEST_CHECKPOINT = "latest.pth"
_STEP_CHECKPOINT = re.compile(r"^step_(\d+)\.pth$")
REQUIRED_KEYS = ("format", "step", "model", "optimizer", "scheduler", "grad_scaler", "data", "rng")
# training.weight_average_decay: the moving average of the weights, a state dict of the model beside 'model'
AVERAGED_MODEL_KEY = "averaged_model"


def checkpoint_folder(run_folder: str) -> str:
    return os.path.join(run_folder, CHECKPOINT_FOLDER)


def checkpoint_path(run_folder: str, step: int) -> str:
    """runs/NAME/checkpoints/step_N.pth for the state after `step` optimiser steps."""
    return os.path.join(checkpoint_folder(run_folder), f"step_{step}.pth")


def checkpoint_steps(run_folder: str) -> List[int]:
    """The N of every step_N.pth in the run folder, in increasing order."""
    folder = checkpoint_folder(run_folder)
    if not os.path.isdir(folder):
        return []
    return sorted(int(match.group(1)) for match in map(_STEP_CHECKPOINT.match, os.listdir(folder)) if match)


def has_checkpoints(run_folder: str) -> bool:
    return (bool(checkpoint_steps(run_folder))
            or os.path.isfile(os.path.join(checkpoint_folder(run_folder), LATEST_CHECKPOINT)))


def parse_resume_step(text: str) -> Optional[int]:
    """`--resume-step` → N, or None for the latest checkpoint ('latest' or -1)."""
    if text.strip().lower() == "latest":
        return None
    try:
        step = int(text)
    except ValueError:
        raise GlassError(f"--resume-step: expected a step number, -1 or 'latest', got {text!r}") from None
    if step < -1:
        raise GlassError(f"--resume-step: expected a step number >= 0, -1 or 'latest', got {step}")
    return None if step == -1 else step


def _require_run_folder(run_folder: str) -> None:
    if not os.path.isdir(run_folder):
        raise GlassError(f"{run_folder}: no such run folder (check --run-name and --runs-dir)")


def resume_checkpoint_path(run_folder: str, step: Optional[int]) -> str:
    """The checkpoint to resume from: step_N.pth, or latest.pth when `step` is None; checked to exist."""
    _require_run_folder(run_folder)
    path = (os.path.join(checkpoint_folder(run_folder), LATEST_CHECKPOINT) if step is None
            else checkpoint_path(run_folder, step))
    if not os.path.isfile(path):
        available = checkpoint_steps(run_folder)
        listing = f"steps available: {', '.join(map(str, available))}" if available else "the run has no checkpoints"
        raise GlassError(f"{path}: no such checkpoint ({listing})")
    return path


def write_config(run_folder: str, config: Config, header: str = "") -> str:
    """Write the resolved configuration to runs/NAME/config.yaml (atomically); `header` lines go first as comments."""
    os.makedirs(run_folder, exist_ok=True)
    path = os.path.join(run_folder, CONFIG_FILE)
    comments = "".join(f"# {line}\n" for line in header.splitlines())

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(comments + dump_config(config))

    write_atomically(path, write)
    return path


def keep_metrics_up_to(path: str, step: int) -> None:
    """Drop the rows of metrics.jsonl after `step` (a resumed run logs those steps again)."""
    if not os.path.isfile(path):
        return
    with open(path, "r", encoding="utf-8") as handle:
        lines = handle.readlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a crash
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.writelines(kept)

    write_atomically(path, write)


def prepare_run_folder(run_folder: str, config: Config, first_step: int, header: str = "") -> None:
    """Make the run folder ready for training from `first_step` (0: a new run): write config.yaml,
    keep the metrics rows up to `first_step`, and forget the wandb run of a new run."""
    write_config(run_folder, config, header)
    keep_metrics_up_to(os.path.join(run_folder, METRICS_FILE), first_step)
    if first_step == 0 and os.path.isfile(os.path.join(run_folder, WANDB_ID_FILE)):
        os.remove(os.path.join(run_folder, WANDB_ID_FILE))


def read_run_config(run_folder: str, overrides: List[str]) -> Config:
    """The configuration stored with a run (its config.yaml), with dotted `overrides` applied."""
    _require_run_folder(run_folder)
    path = os.path.join(run_folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise GlassError(f"{path}: missing; a run folder keeps the configuration it was started with")
    return check_frames_fit(load_config(path, overrides), path)


def save_checkpoint(run_folder: str, state: Dict[str, Any]) -> str:
    """Write `state` (with its 'step' N) to step_N.pth and latest.pth, each atomically; returns step_N's path.

    latest.pth is a hard link to step_N.pth where the file system allows it, a copy otherwise.
    """
    folder = checkpoint_folder(run_folder)
    os.makedirs(folder, exist_ok=True)
    path = checkpoint_path(run_folder, state["step"])
    write_atomically(path, lambda temporary: torch.save(state, temporary))

    def link_or_copy(temporary: str) -> None:
        os.remove(temporary)
        try:
            os.link(path, temporary)
        except OSError:
            shutil.copyfile(path, temporary)

    write_atomically(os.path.join(folder, LATEST_CHECKPOINT), link_or_copy)
    return path


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, Any], ignore_unexpected: bool = False,
                        shown: int = 3) -> Optional[str]:
    """What keeps `found` from loading into a module whose state dict is `expected`, in one line; None when it fits.

    Names the first `shown` differences — an entry missing from `found`, one of another shape, one not a tensor and
    (unless `ignore_unexpected`) one the module does not have — and counts the rest, e.g.
    "lma.codebook: (9, 64) in the file, (16, 64) here; 2 more entries differ"; or says that `found` is not a mapping.
    """
    if not isinstance(found, Mapping):
        return f"the file holds a {type(found).__name__}, not a state dict"
    problems: List[str] = []
    for name, tensor in expected.items():
        loaded = found.get(name)
        if loaded is None:
            problems.append(f"{name}: missing in the file")
        elif not isinstance(loaded, torch.Tensor):
            problems.append(f"{name}: not a tensor in the file")
        elif loaded.shape != tensor.shape:
            problems.append(f"{name}: {tuple(loaded.shape)} in the file, {tuple(tensor.shape)} here")
    if not ignore_unexpected:
        problems.extend(f"{name}: in the file, not here" for name in found if name not in expected)
    if not problems:
        return None
    rest = len(problems) - shown
    more = f"; {rest} more {'entry differs' if rest == 1 else 'entries differ'}" if rest > 0 else ""
    return "; ".join(problems[:shown]) + more


def load_checkpoint(path: str, step_option: str = "--resume-step") -> Dict[str, Any]:
    """Read a checkpoint on the CPU with `weights_only=True`; anything wrong is a one-line `GlassError`
    (an unreadable file's message suggests the calling script's `step_option N` for another checkpoint)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise GlassError(f"{path}: cannot be loaded ({reason[:200]}); choose another checkpoint "
                         f"with {step_option} N") from None
    except Exception as error:  # a file that is not a torch archive: the unpickler raises whatever its bytes lead to
        raise GlassError(f"{path}: cannot be loaded (not a torch checkpoint file: {type(error).__name__}); choose "
                         f"another checkpoint with {step_option} N") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        missing = [key for key in REQUIRED_KEYS if not isinstance(state, dict) or key not in state]
        raise GlassError(f"{path}: not a GLASS training checkpoint (missing {', '.join(missing)})")
    if state["format"] != CHECKPOINT_FORMAT:
        raise GlassError(f"{path}: checkpoint format {state['format']}, this code reads format {CHECKPOINT_FORMAT}")
    return state
