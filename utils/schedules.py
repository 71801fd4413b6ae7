"""Training schedules and curricula as pure functions of the optimiser step (SPEC §4.2).

Steps count from 0. Every function reads its numbers from the config, so a run resumed
at step N gets exactly the values it would have had without the interruption.

    T = observations_count_at(config.training, step)              # frames per sequence
    T_f = ground_truth_steps_at(config.training, step, T)         # LMA ground-truth steps
    warm = in_gma_warmup(config.training, step)                   # GMA-only warm-up?
"""
from __future__ import annotations

from fractions import Fraction

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


def stepped_value(schedule: LinearScheduleConfig, step: int) -> int:
    """The authors' integer schedule: `start` + the linear change truncated towards zero.

    Their code computes `start + int(scale · (end − start))` (an increasing schedule) and
    `start − int(scale · (start − end))` (a decreasing one) with scale = (step − start_step) /
    steps: `int()` truncates the *change*, so the value moves one unit only once the change has
    reached a whole unit, whichever the direction — a decreasing schedule rounds towards its
    start (up), an increasing one towards its start (down). The change is computed exactly
    (rational arithmetic) so whole units on the way land on their step.
    """
    if step < schedule.start_step:
        return int(schedule.start)
    elapsed = step - schedule.start_step
    if elapsed >= schedule.steps:
        return int(schedule.end)
    change = (Fraction(schedule.end) - Fraction(schedule.start)) * elapsed / schedule.steps
    return int(Fraction(schedule.start) + int(change))


def observations_count_at(training: TrainingConfig, step: int) -> int:
    """T, frames per training sequence (`stepped_value`; for an increasing schedule the floor).

    W-Sprites: 6 until step 54,999, 7 from step 55,000, 11 at 79,999, 12 from 80,000 on.
    """
    return stepped_value(training.observations_count, step)


def ground_truth_steps_at(training: TrainingConfig, step: int, observations_count: int) -> int:
    """T_f, the LMA's ground-truth steps (`stepped_value`), clamped to [1, T−1].

    As in the authors' code the decrement is truncated: with 5 → 1 over 25,000 steps from
    step 0, T_f is 5 up to step 6,249, 4 from 6,250, 3 from 12,500, 2 from 18,750 and 1 only
    from step 25,000 on (each value held for a quarter of the schedule, 1 after it).
    """
    if observations_count < 2:
        raise ValueError(f"a training sequence needs at least 2 frames, got T = {observations_count}")
    return max(1, min(observations_count - 1, stepped_value(training.ground_truth_steps, step)))


def gumbel_temperature_at(training: TrainingConfig, step: int) -> float:
    """The Gumbel-softmax temperature of the `use_gumbel` ablation (linear, not floored)."""
    return linear_value(training.gumbel_temperature, step)


def in_gma_warmup(training: TrainingConfig, step: int) -> bool:
    """True for the first `gma_warmup_steps` steps (0 … gma_warmup_steps − 1), which train the GMA only."""
    return step < training.gma_warmup_steps


def gma_frozen(training: TrainingConfig, step: int) -> bool:
    """True from 0-based step `gma_freeze_step` on when it is set (> 0): the GMA no longer learns."""
    return 0 < training.gma_freeze_step <= step


def action_readers_frozen(training: TrainingConfig, step: int) -> bool:
    """True from 0-based step `action_freeze_step` on when it is set (> 0): the LMA's action readers
    (`LocalMotionAnalysis.action_readers`) no longer learn."""
    return 0 < training.action_freeze_step <= step
