"""Schedules (SPEC §4.2): values at the known steps of the W-Sprites and Tennis curricula."""
import dataclasses

import pytest

from utils.config import LinearScheduleConfig, TrainingConfig
from utils.schedules import (
    action_readers_frozen,
    ground_truth_steps_at,
    gumbel_temperature_at,
    in_gma_warmup,
    linear_value,
    observations_count_at,
    stepped_value,
)


def test_linear_value_before_during_after():
    schedule = LinearScheduleConfig(start=2.0, end=4.0, start_step=10, steps=4)
    assert [linear_value(schedule, step) for step in (0, 9, 10, 11, 12, 13, 14, 15, 1000)] == [
        2.0, 2.0, 2.0, 2.5, 3.0, 3.5, 4.0, 4.0, 4.0]


def test_linear_value_zero_steps_jumps_at_start_step():
    schedule = LinearScheduleConfig(start=6, end=12, start_step=100, steps=0)
    assert linear_value(schedule, 99) == 6.0
    assert linear_value(schedule, 100) == 12.0
    assert linear_value(schedule, 101) == 12.0


def test_wsprites_observations_count():
    training = TrainingConfig()  # W-Sprites: 6 until 50k, then linear (floor) to 12 over 30k steps
    expected = {0: 6, 49_999: 6, 50_000: 6, 50_004: 6, 54_999: 6, 55_000: 7, 60_000: 8, 79_999: 11, 80_000: 12,
                10 ** 6: 12}
    assert {step: observations_count_at(training, step) for step in expected} == expected
    assert all(isinstance(observations_count_at(training, step), int) for step in expected)


def test_tennis_observations_count_ends_at_11():
    training = TrainingConfig(observations_count=LinearScheduleConfig(start=6, end=11, start_step=50_000, steps=30_000))
    assert observations_count_at(training, 80_000) == 11
    assert observations_count_at(training, 10 ** 6) == 11
    assert observations_count_at(training, 56_000) == 7  # 6 + 5·6000/30000 = 7.0 exactly


def test_wsprites_ground_truth_steps_truncate_the_decrement_as_the_authors():
    training = TrainingConfig()  # 5 → 1 over 25k steps from step 0
    length = 12  # long enough that the clamp to T−1 does not bite
    # The authors' start − int(scale·(start − end)): 5 for the first quarter, 1 only from step 25,000.
    expected = {0: 5, 1: 5, 6_249: 5, 6_250: 4, 12_499: 4, 12_500: 3, 18_749: 3, 18_750: 2, 18_751: 2,
                24_999: 2, 25_000: 1, 25_001: 1, 10 ** 6: 1}
    assert {step: ground_truth_steps_at(training, step, length) for step in expected} == expected


def test_stepped_value_matches_the_authors_formula_at_every_step():
    def authors(start, end, start_step, steps, step):  # their Trainer.calculate_num_(gt_)observations
        if step < start_step:
            return start
        if step > start_step + steps:
            return end
        scale = (step - start_step) / steps
        return start + int(scale * (end - start)) if end >= start else start - int(scale * (start - end))

    for start, end, start_step, steps in [(5, 1, 0, 25_000), (5, 1, 3_000, 25_000), (6, 12, 50_000, 30_000),
                                          (6, 11, 50_000, 30_000), (5, 1, 450, 170), (3, 3, 0, 10)]:
        schedule = LinearScheduleConfig(start=start, end=end, start_step=start_step, steps=steps)
        for step in range(0, start_step + steps + 3, max(1, (start_step + steps) // 4000)):
            assert stepped_value(schedule, step) == authors(start, end, start_step, steps, step), (start, end, step)


def test_ground_truth_steps_clamped_to_length_minus_one():
    training = TrainingConfig()
    assert ground_truth_steps_at(training, 0, 6) == 5
    assert ground_truth_steps_at(training, 0, 4) == 3
    assert ground_truth_steps_at(training, 0, 2) == 1
    low = dataclasses.replace(training, ground_truth_steps=LinearScheduleConfig(start=1, end=1, start_step=0, steps=0))
    assert ground_truth_steps_at(low, 0, 6) == 1
    with pytest.raises(ValueError, match="at least 2 frames"):
        ground_truth_steps_at(training, 0, 1)


def test_tennis_ground_truth_steps_start_at_3000():
    training = TrainingConfig(ground_truth_steps=LinearScheduleConfig(start=5, end=1, start_step=3_000, steps=25_000))
    assert [ground_truth_steps_at(training, step, 11) for step in (0, 2_999, 3_000, 3_001, 28_000)] == [5, 5, 5, 5, 1]


def test_gumbel_temperature_end_points():
    training = TrainingConfig(gumbel_temperature=LinearScheduleConfig(start=1.0, end=0.1, start_step=1_000,
                                                                      steps=9_000))
    assert gumbel_temperature_at(training, 0) == 1.0
    assert gumbel_temperature_at(training, 1_000) == 1.0
    assert gumbel_temperature_at(training, 5_500) == pytest.approx(0.55)
    assert gumbel_temperature_at(training, 10_000) == pytest.approx(0.1)
    assert gumbel_temperature_at(training, 10 ** 6) == pytest.approx(0.1)


def test_gma_warmup_boundary():
    training = TrainingConfig()  # gma_warmup_steps = 3000, steps count from 0
    assert in_gma_warmup(training, 0)
    assert in_gma_warmup(training, 2_999)
    assert not in_gma_warmup(training, 3_000)
    assert not in_gma_warmup(dataclasses.replace(training, gma_warmup_steps=0), 0)


def test_the_action_readers_freeze_from_their_step_on_and_never_when_off():
    training = dataclasses.replace(TrainingConfig(), action_freeze_step=750)
    assert not action_readers_frozen(training, 749)
    assert action_readers_frozen(training, 750) and action_readers_frozen(training, 10_000)
    assert not any(action_readers_frozen(TrainingConfig(), step) for step in (0, 1, 10_000))  # 0 = off
