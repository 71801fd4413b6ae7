"""What a training run saves and restores, so that a stopped run continues exactly: every random generator
as plain values (`capture_rng_state` / `restore_rng_state`), the per-process seeds, and the checkpoint dict
(`training_checkpoint` / `resume_training`, around `Trainer.state_dict`). A run stopped after N steps and
resumed continues with the same batches, random numbers and optimiser and scheduler states as one that was not
stopped, so on the CPU both end with bit-identical weights. Work that must leave no trace on training (media,
probes) runs inside `preserved_buffers` and `preserved_random_state`."""
from __future__ import annotations

import contextlib
import random
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional

import numpy as np
import torch

from utils.checkpoint import AVERAGED_MODEL_KEY, CHECKPOINT_FORMAT, state_dict_mismatch
from utils.config import TrainingConfig
from utils.distributed import DistributedContext, all_gather_objects, broadcast_buffers, check_replicas_identical
from utils.errors import GlassError

if TYPE_CHECKING:  # the trainer uses the context managers below
    from utils.training.batches import TrainingBatches
    from utils.training.trainer import StepResult, Trainer


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy's global generator and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def process_seed(training: TrainingConfig, context: DistributedContext) -> int:
    """seed · world_size + rank: different on every process, the same for the same process on a rerun."""
    return training.seed * context.world_size + context.rank


def capture_rng_state(device: torch.device) -> Dict[str, Any]:
    """The states of Python's `random`, NumPy's global generator, torch's CPU generator and the
    GPU's (when `device` is CUDA), as values that `torch.load(weights_only=True)` reads back."""
    python_version, python_internal, python_gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": {"version": python_version, "internal": list(python_internal), "gauss_next": python_gauss},
        "numpy": {"bit_generator": numpy_state["bit_generator"], "key": numpy_state["state"]["key"].tolist(),
                  "pos": int(numpy_state["state"]["pos"]), "has_gauss": int(numpy_state["has_gauss"]),
                  "gauss": float(numpy_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    """Set every generator back to a `capture_rng_state` result."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["bit_generator"], np.array(numpy_state["key"], dtype=np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def preserved_buffers(module: torch.nn.Module) -> Iterator[None]:
    """Every buffer of `module` (batch-norm running statistics and counts) as it was on entry, once the block
    ends (by copying clones back in place, so references to the buffers stay valid)."""
    saved = {name: buffer.clone() for name, buffer in module.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buffer in module.named_buffers():
                buffer.copy_(saved[name])


@contextlib.contextmanager
def preserved_random_state(device: torch.device) -> Iterator[None]:
    """Python's `random`, NumPy's global generator, torch's CPU generator and, on CUDA, `device`'s generator
    as they were on entry, once the block ends."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def training_checkpoint(trainer: Trainer, batches: TrainingBatches, step: int,
                        last: StepResult) -> Optional[Dict[str, Any]]:
    """The state after `step` optimiser steps, as a checkpoint dict on rank 0 (None on the others).

    A collective: every process calls it. The batch-norm statistics are first made rank 0's on
    every process (as DDP's next forward would) and the replicas are checked to be bit-identical
    (`RuntimeError` otherwise); the RNG states of every process are gathered, one per rank.
    """
    context = trainer.context
    broadcast_buffers(context, trainer.model)
    check_replicas_identical(context, trainer.model)
    trainer_state = trainer.state_dict()
    rng_states = all_gather_objects(context, capture_rng_state(trainer.device))
    if not context.is_main:
        return None
    return {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        **trainer_state,
        "curriculum": {"observations_count": last.observations_count, "ground_truth_steps": last.ground_truth_steps,
                       "ran_lma": last.ran_lma},
        "data": batches.state(),
        "rng": rng_states,
        "world_size": context.world_size,
        "comparable": not trainer.training.random_vgg_weights,
    }


def resume_training(trainer: Trainer, checkpoint: Dict[str, Any], path: str) -> Dict[str, int]:
    """Load a checkpoint into the trainer and this process's generators; returns the data position
    {'epoch', 'position'} to give `TrainingBatches`. A mismatch is a one-line `GlassError`; for the weights it
    names the first entries that differ (on resume, a key=value override that changes the model's shape, say)."""
    problem = state_dict_mismatch(trainer.model.state_dict(), checkpoint["model"])
    if problem is not None:
        raise GlassError(f"{path}: its weights do not fit the model of the run's config.yaml with this command's "
                         f"overrides ({problem})")
    if trainer.weight_average is not None and checkpoint.get(AVERAGED_MODEL_KEY) is not None:
        problem = state_dict_mismatch(trainer.model.state_dict(), checkpoint[AVERAGED_MODEL_KEY])
        if problem is not None:  # written from the same model, so only a damaged file gets here
            raise GlassError(f"{path}: its averaged weights ('{AVERAGED_MODEL_KEY}') do not fit the model ({problem})")
    try:
        trainer.load_state_dict(checkpoint)
    except (RuntimeError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise GlassError(f"{path}: does not fit the model and optimiser of the run's config.yaml "
                         f"({first_line[:200]})") from None
    context = trainer.context
    states = checkpoint["rng"]
    if checkpoint["world_size"] == context.world_size:
        restore_rng_state(states[context.rank], trainer.device)
    elif context.is_main:
        print(f"warning: {path} was saved by {checkpoint['world_size']} processes and is resumed by "
              f"{context.world_size}: the weights and optimiser continue, the data order and random numbers do not "
              f"continue exactly")
    return {"epoch": int(checkpoint["data"]["epoch"]), "position": int(checkpoint["data"]["position"])}
