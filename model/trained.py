"""A trained run, ready to use: the model rebuilt from the run's config.yaml with the weights of one of its
checkpoints (`load_trained_model`), for evaluation, generation and play."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from model.glass import Glass, build_model
from utils.checkpoint import (
    AVERAGED_MODEL_KEY,
    CONFIG_FILE,
    load_checkpoint,
    read_run_config,
    resume_checkpoint_path,
    state_dict_mismatch,
)
from utils.config import Config
from utils.errors import GlassError

# The names of the outputs of --trained-weights (evaluate.py's pictures, build_evaluation_dataset.py's folder) end
# with this, so that a run's averaged and trained weights never overwrite each other's.
TRAINED_WEIGHTS_SUFFIX = "-trained-weights"


@dataclass
class TrainedModel:
    """A model rebuilt from a run folder: the run's stored config, the weights of one checkpoint."""

    config: Config
    model: Glass  # in eval mode, on the requested device
    step: int  # optimiser steps of the checkpoint
    path: str  # the checkpoint file read
    # True: the checkpoint's moving average of the weights (training.weight_average_decay) was loaded; False: the
    # trained weights (the run had no average, or trained_weights was asked)
    averaged: bool = False

    @property
    def weights(self) -> str:
        """'averaged' or 'trained': which weights were loaded, as the scripts' records name them."""
        return "averaged" if self.averaged else "trained"

    def describe_weights(self) -> str:
        """'averaged weights' or 'trained weights', for the scripts' status lines."""
        return f"{self.weights} weights"


def load_trained_model(run_folder: str, step: Optional[int] = None, device: Union[str, torch.device] = "cpu",
                       overrides: Sequence[str] = (), trained_weights: bool = False) -> TrainedModel:
    """Rebuild the model of `run_folder` from its config.yaml and load checkpoint `step` (None: latest).

    `overrides` (dotted `key=value`) may change evaluation or data settings; a checkpoint whose weights
    do not fit the stored model configuration is a one-line `GlassError`. A checkpoint of a run with
    training.weight_average_decay holds the moving average of the weights too: that is loaded, unless
    `trained_weights` (the scripts' --trained-weights) asks for the weights training left.
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
    averaged = not trained_weights and state.get(AVERAGED_MODEL_KEY) is not None
    if averaged:
        problem = state_dict_mismatch(model.state_dict(), state[AVERAGED_MODEL_KEY])
        if problem is not None:  # the average is written from the same model, so only a damaged file gets here
            raise GlassError(f"{path}: its averaged weights ('{AVERAGED_MODEL_KEY}') do not fit the model "
                             f"({problem}); --trained-weights reads the trained ones")
    model.load_state_dict(state[AVERAGED_MODEL_KEY] if averaged else state["model"])
    return TrainedModel(config=config, model=model.to(device).eval(), step=int(state["step"]), path=path,
                        averaged=averaged)
