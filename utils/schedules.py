"""Training schedules and curricula as pure functions of the optimiser step (SPEC §4.2).

Steps count from 0. Every function reads its numbers from the config, so a run resumed
at step N gets exactly the values it would have had without the interruption.

    T = observations_count_at(config.training, step)              # frames per sequence
    T_f = ground_truth_steps_at(config.training, step, T)         # LMA ground-truth steps
    warm = in_gma_warmup(config.training, step)                   # GMA-only warm-up?
"""
from __future__ import annotations

import math

from utils.config import LinearScheduleConfig, TrainingConfig


def linear_value(schedule: LinearScheduleConfig, step: int) -> float:
    """`start` up to `start_step`, then linear to `end` over `steps` steps, then `end`.

    With `steps` = 0 the value jumps from `start` to `end` at `start_step`. The
    interpolation multiplies before dividing so that integral values on the way (e.g. 7.0
    at step 55,000 of 6 → 12 over 30,000 steps from 50,000) come out exact and survive a floor.
    """
    if step < schedule.start_step:
        return float(schedule.start)
    elapsed = step - schedule.start_step
    if elapsed >= schedule.steps:
        return float(schedule.end)
    return schedule.start + (schedule.end - schedule.start) * elapsed / schedule.steps


def observations_count_at(training: TrainingConfig, step: int) -> int:
    """T, frames per training sequence: the floor of the linear schedule (SPEC: "linear (integer floor)").

    W-Sprites: 6 until step 50,000, 7 from step 55,000, 11 at 79,999, 12 from 80,000 on.
    """
    return math.floor(linear_value(training.observations_count, step))


def ground_truth_steps_at(training: TrainingConfig, step: int, observations_count: int) -> int:
    """T_f, the LMA's ground-truth steps: the floor of the linear schedule, clamped to [1, T−1].

    The floor follows the authors' `int()`. On a decreasing schedule it drops at once: with
    5 → 1 over 25,000 steps from step 0, T_f is 5 only at step 0 and 4 from step 1 (value
    4.99984); it is 2 at step 18,750 (exactly 2.0) and 1 from step 18,751 on. This is intended.
    """
    if observations_count < 2:
        raise ValueError(f"a training sequence needs at least 2 frames, got T = {observations_count}")
    value = math.floor(linear_value(training.ground_truth_steps, step))
    return max(1, min(observations_count - 1, value))


def gumbel_temperature_at(training: TrainingConfig, step: int) -> float:
    """The Gumbel-softmax temperature of the `use_gumbel` ablation (linear, not floored)."""
    return linear_value(training.gumbel_temperature, step)


def in_gma_warmup(training: TrainingConfig, step: int) -> bool:
    """True for the first `gma_warmup_steps` steps (0 … gma_warmup_steps − 1), which train the GMA only."""
    return step < training.gma_warmup_steps
