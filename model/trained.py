"""A trained run, ready to use: the model rebuilt from the run's config.yaml with the weights of one of its
checkpoints (`load_trained_model`), for evaluation, generation and play."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from model.glass import Glass, build_model
from utils.checkpoint import CONFIG_FILE, load_checkpoint, read_run_config, resume_checkpoint_path, state_dict_mismatch
from utils.config import Config
from utils.errors import GlassError


@dataclass
class TrainedModel:
    """A model rebuilt from a run folder: the run's stored config, the weights of one checkpoint."""

    config: Config
    model: Glass  # in eval mode, on the requested device
    step: int  # optimiser steps of the checkpoint
    path: str  # the checkpoint file read


def load_trained_model(run_folder: str, step: Optional[int] = None, device: Union[str, torch.device] = "cpu",
                       overrides: Sequence[str] = ()) -> TrainedModel:
    """Rebuild the model of `run_folder` from its config.yaml and load checkpoint `step` (None: latest).

    `overrides` (dotted `key=value`) may change evaluation or data settings; a checkpoint whose weights
    do not fit the stored model configuration is a one-line `GlassError`.
    """
    config = read_run_config(run_folder, list(overrides))
    path = resume_checkpoint_path(run_folder, step)
    state = load_checkpoint(path, step_option="--step")  # the option of every script that reads a run
    model = build_model(config)
    problem = state_dict_mismatch(model.state_dict(), state["model"])
    if problem is not None:
        given = f" with {' '.join(overrides)}" if overrides else ""
        raise GlassError(f"{path}: its weights do not fit the model of {os.path.join(run_folder, CONFIG_FILE)}{given} "
                         f"({problem})")
    model.load_state_dict(state["model"])
    return TrainedModel(config=config, model=model.to(device).eval(), step=int(state["step"]), path=path)
