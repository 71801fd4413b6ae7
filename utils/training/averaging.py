"""`training.weight_average_decay`: an exponential moving average of the model's weights, kept beside training and
saved in checkpoints ('averaged_model'), which evaluation, generation, play and the training media read by default
(ours, opt-in; the authors evaluate the trained weights); under DDP rank 0 alone keeps it.

After each optimiser step of 0-based step s, every floating-point entry of the model's state dict (parameters and
BatchNorm running statistics) moves towards the trained one:

    average ← d · average + (1 − d) · trained,    d = min(weight_average_decay, (1 + s) / (10 + s))

(the warm-up of TensorFlow's ExponentialMovingAverage with num_updates), so the average spans about the last tenth of
the run until that reaches 1 / (1 − weight_average_decay) steps; integer entries (BatchNorm's batch counts) are
copied. Averaging recent weights does much of what a lower learning rate does (less of the steps' noise in the
weights) without slowing learning (Polyak & Juditsky 1992; Kaddour 2022, "Stop wasting my time! Saving days of
ImageNet and BERT training with latest weight averaging"). Entries that training leaves as fixed functions are
copied, not averaged, so that the average reads the same codes as the trained weights: the action readers once
frozen (`training.action_freeze_step`), and the codebook when a restart or the k-means initialisation has just moved
its rows (an average of a row before and after a restart is no code at all).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterable, Iterator, Optional

import torch
from torch import nn


def average_decay_at(decay: float, step: int) -> float:
    """The decay used after the optimiser step of 0-based `step`: min(decay, (1 + step) / (10 + step))."""
    return min(decay, (1.0 + step) / (10.0 + step))


def module_state_keys(model: nn.Module, modules: Iterable[nn.Module]) -> set:
    """The state-dict keys of `model` that belong to `modules` (submodules of it)."""
    wanted = {id(module) for module in modules}
    prefixes = [name + "." for name, module in model.named_modules() if id(module) in wanted and name]
    return {key for key in model.state_dict() if any(key.startswith(prefix) for prefix in prefixes)}


def parameter_state_key(model: nn.Module, parameter: nn.Parameter) -> str:
    """The state-dict key of one of `model`'s parameters."""
    for name, candidate in model.named_parameters():
        if candidate is parameter:
            return name
    raise KeyError("the parameter is not one of the model's")


class WeightAverage:
    """The exponential moving average of a model's state dict (see the module's docstring)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.state: Dict[str, torch.Tensor] = {name: tensor.detach().clone()
                                               for name, tensor in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, copied: Iterable[str] = ()) -> None:
        """Move the average towards `model`'s weights after the optimiser step of 0-based `step`; the keys in
        `copied` (and every integer entry) take the trained value as it is."""
        copied = set(copied)
        weight = 1.0 - average_decay_at(self.decay, step)
        for name, tensor in model.state_dict().items():
            average = self.state[name]
            if name in copied or not tensor.is_floating_point():
                average.copy_(tensor)
            else:
                average.lerp_(tensor.to(average.dtype), weight)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The averaged weights, a state dict of the model (on the model's device)."""
        return self.state

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Set the average to `state` (a saved average, or a model's state dict to restart it there)."""
        with torch.no_grad():
            for name, tensor in state.items():
                self.state[name].copy_(tensor)


@contextlib.contextmanager
def weights_swapped_in(model: nn.Module, state: Optional[Dict[str, torch.Tensor]]) -> Iterator[None]:
    """Inside the block `model` holds `state` (a state dict of it: the average), in place; after it, its own weights
    and buffers again, bit for bit, whatever the block did to them. `state` None: the block runs on the model as it
    is."""
    if state is None:
        yield
        return
    current = model.state_dict()
    own = {name: tensor.detach().clone() for name, tensor in current.items()}
    with torch.no_grad():
        for name, tensor in current.items():
            tensor.copy_(state[name])
    try:
        yield
    finally:
        with torch.no_grad():
            for name, tensor in current.items():
                tensor.copy_(own[name])
