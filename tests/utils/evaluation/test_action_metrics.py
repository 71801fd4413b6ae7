"""utils.evaluation: the per-window records on the tiny trained run (RE is the GT metrics of the reconstruction,
CO is bounded and exact against itself), the reduction on hand-made records (alignment, skips, floor), sharding.
The trained run's model runs where `pytest --device` says (tests/conftest.py)."""
import math

import pytest
import torch

from data.video_dataset import collate_videos
from model.generation import reconstruct
from utils.evaluation.action_metrics import (
    evaluation_dataset,
    format_table,
    load_run_for_evaluation,
    shard_indices,
    summarize,
    window_records,
)
from utils.metrics import shifts_to_pixels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(trained_run, device):
    """The tiny trained run's model on `device`, whether it is comparable, and a CPU batch of 3 evaluation windows."""
    trained, comparable = load_run_for_evaluation(trained_run["run_folder"], None, device)
    dataset = evaluation_dataset(trained.config)
    batch = collate_videos([dataset[index] for index in range(min(3, len(dataset)))])
    return trained, comparable, batch


def test_re_is_the_gt_evaluation_of_the_reconstruction(tiny, device):
    trained, comparable, batch = tiny
    assert comparable and trained.config.evaluation.observations_count == 6
    size = trained.config.data.input_size
    records = window_records(trained.model, batch, "one_step", size, device)
    frames = reconstruct(trained.model, batch["observations"].to(device), "one_step").frames
    again = window_records(trained.model, {**batch, "observations": frames}, "one_step", size, device)
    assert all(value.device.type == "cpu" for value in records.values())  # records are gathered on the CPU
    for field in ("action_ids", "sprite_shifts", "background_shifts"):
        assert torch.equal(records[f"generated_{field}"], again[f"real_{field}"]), field
    assert torch.equal(records["re_mask_intersection"], again["gt_mask_intersection"])
    assert torch.equal(records["re_mask_union"], again["gt_mask_union"])
    assert records["real_action_ids"].shape == (3, 5) and records["real_sprite_shifts"].shape == (3, 5, 2)
    assert torch.equal(records["true_local_actions"], batch["local_actions"][:, 1:])
    num_actions = trained.config.model.lma.num_actions
    result = summarize(records, num_actions, seed=0)
    re_only = summarize({**again, "generated_action_ids": again["real_action_ids"]}, num_actions, seed=0)
    for key in ("local_action_nmi", "sprite_shift_error_mean", "background_shift_direction_match", "mask_iou"):
        if f"gt/{key}" in re_only.results:
            assert result.results[f"re/{key}"] == pytest.approx(re_only.results[f"gt/{key}"], abs=1e-12), key


def test_co_is_bounded_and_exact_when_the_two_analyses_agree(tiny, device):
    trained, _, batch = tiny
    records = window_records(trained.model, batch, "single_image", trained.config.data.input_size, device)
    result = summarize(records, trained.config.model.lma.num_actions, seed=0).results
    assert 0.0 <= result["co/mask_iou"] <= 1.0 and 0.0 <= result["co/local_action_nmi"] <= 1.0
    assert (result["co/sprite_shift_error_min"] <= result["co/sprite_shift_error_mean"]
            <= result["co/sprite_shift_error_max"])
    # CO of the real analysis against itself: zero errors, every direction matched, NMI 1
    same = {**records, "generated_action_ids": records["real_action_ids"],
            "generated_sprite_shifts": records["real_sprite_shifts"],
            "generated_background_shifts": records["real_background_shifts"]}
    exact = summarize(same, 3, seed=0).results
    assert exact["co/sprite_shift_error_max"] == 0.0 and exact["co/background_shift_direction_match"] == 1.0
    assert exact["co/local_action_nmi"] == pytest.approx(1.0)


def _records(predicted_ids, true_local, predicted_shifts, true_shifts, sprite_ids, has_actions=True, has_masks=True):
    count = len(sprite_ids)
    shifts = torch.tensor(predicted_shifts, dtype=torch.float32)
    return {"sprite_id": torch.tensor(sprite_ids), "has_masks": torch.full((count,), has_masks),
            "has_actions": torch.full((count,), has_actions), "true_local_actions": torch.tensor(true_local),
            "true_sprite_shifts": torch.tensor(true_shifts, dtype=torch.float32),
            "true_background_shifts": torch.tensor(true_shifts, dtype=torch.float32),
            **{f"{name}_{field}": value for name in ("real", "generated") for field, value in
               (("action_ids", torch.tensor(predicted_ids)), ("sprite_shifts", shifts), ("background_shifts", shifts))},
            **{f"{variant}_mask_{part}": torch.full((count,), value, dtype=torch.float64)
               for variant in ("gt", "re", "co", "all_foreground")
               for part, value in (("intersection", 1.0), ("union", 4.0))}}


def test_summary_on_hand_made_records():
    # two windows of 3 transitions; ids are a renaming of the labels for character 1, constant for character 2
    records = _records(predicted_ids=[[0, 0, 1], [2, 2, 2]], true_local=[[5, 5, 7], [5, 7, 5]],
                       predicted_shifts=[[[7.0, 0.0], [0.0, 0.0], [1.0, 1.0]], [[0.0, 3.0], [0.0, 0.0], [0.0, 0.0]]],
                       true_shifts=[[[7.0, 0.0], [0.0, 0.0], [0.0, 1.0]], [[0.0, 7.0], [0.0, 0.0], [-4.0, 0.0]]],
                       sprite_ids=[1, 2])
    result = summarize(records, num_actions=3, seed=0)
    values = result.results
    assert values["gt/local_action_nmi_per_character"] == pytest.approx(0.5)  # 1 for character 1, 0 for 2
    # codes {0, 1} for character 1 and {2} for 2: the character is the code's first bit — NMI of ids and characters
    # = I / mean(H(ids), H(chars)) with H(ids) = H(1/3, 1/6, 1/2), H(chars) = log 2 and I = H(chars)
    entropy_ids = -sum(p * math.log(p) for p in (1 / 3, 1 / 6, 1 / 2))
    assert values["gt/code_character_nmi"] == pytest.approx(math.log(2) / ((entropy_ids + math.log(2)) / 2))
    assert 0.0 <= values["random/code_character_nmi"] <= 1.0
    assert values["gt/sprite_shift_error_min"] == 0.0 and values["gt/sprite_shift_error_max"] == 4.0
    assert values["gt/sprite_shift_error_mean"] == pytest.approx((0 + 0 + 1 + 4 + 0 + 4) / 6)
    # moving true shifts: (7,0) ✓, (0,1) vs (1,1) at exactly 45° ✗ (cosine = 1/√2 is not > 1/√2),
    # (0,7) ✓, (−4,0) ✗
    assert values["gt/sprite_shift_direction_match"] == pytest.approx(0.5)
    assert result.counts["sprite_moving_transitions"] == 4
    assert values["gt/mask_iou"] == pytest.approx(0.25) and values["co/mask_iou"] == pytest.approx(0.25)
    assert 0.0 <= values["random/local_action_nmi"] <= 1.0 and values["all_foreground/mask_iou"] == pytest.approx(0.25)
    assert summarize(records, 3, seed=0).results == values, "seeded"
    assert summarize(records, 3, seed=1).results["random/local_action_nmi"] != values["random/local_action_nmi"] or \
        summarize(records, 3, seed=2).results["random/local_action_nmi"] != values["random/local_action_nmi"]


def test_unlabelled_records_report_what_was_skipped():
    records = _records(predicted_ids=[[0, 1]], true_local=[[0, 0]], predicted_shifts=[[[1.0, 0.0], [0.0, 1.0]]],
                       true_shifts=[[[0.0, 0.0], [0.0, 0.0]]], sprite_ids=[-1], has_actions=False, has_masks=False)
    result = summarize(records, num_actions=3, seed=0)
    label_free = ("/codes_used", "/code_perplexity")  # the code histograms need no labels
    assert not any(key.startswith(("gt/", "re/", "random/")) and not key.endswith(label_free)
                   for key in result.results), result.results
    assert result.results["gt/codes_used"] == 2 and result.histograms["gt"] == [1, 1, 0]
    assert {"co/local_action_nmi", "co/sprite_shift_error_mean", "co/mask_iou"} <= set(result.results)
    skipped = " | ".join(f"{key}: {reason}" for key, reason in result.skipped.items())
    for text in ("local_action_nmi: no window has action labels", "gt: mask_iou: no ground-truth masks",
                 "all_foreground: mask_iou: no ground-truth masks",
                 "per_character: no video folder name", "sprite_shift_*: no window has action labels"):
        assert text in skipped, skipped
    # labels without shifts (actions.pkl): NMI computed, shifts skipped
    labelled = summarize({**records, "has_actions": torch.tensor([True])}, 3, seed=0)
    assert "gt/local_action_nmi" in labelled.results and "gt/sprite_shift_error_mean" not in labelled.results
    assert "every true sprite shift is zero" in labelled.skipped["gt, re: sprite_shift_*"]


def test_shards_are_whole_batches_covering_every_window_once():
    shards = [shard_indices(11, 3, rank, 2) for rank in range(2)]
    assert shards == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9, 10]]
    assert sorted(shards[0] + shards[1]) == list(range(11)) and shard_indices(2, 4, 1, 2) == []


def test_shift_pixels_follow_the_frame_size():
    assert torch.equal(shifts_to_pixels(torch.tensor([[1.0, -1.0]]), [128, 96]), torch.tensor([[64.0, -48.0]]))


def test_local_half_rows_codes_histograms_and_psnr_over_the_split():
    records = _records(predicted_ids=[[0, 0, 2], [2, 2, 2]], true_local=[[0, 0, 1], [1, 1, 1]],
                       predicted_shifts=[[[1.0, 0.0]] * 3] * 2, true_shifts=[[[1.0, 0.0]] * 3] * 2, sprite_ids=[1, 2],
                       has_actions=True, has_masks=False)
    elements = 3 * 3 * 4 * 4  # T−1 frames of 3×4×4 per window
    records.update({"image_elements": torch.tensor([elements, elements], dtype=torch.float64),
                    # window 0: MSE 0.01·… ; the split's PSNR uses Σ errors / Σ elements
                    "generated_foreground_squared_error": torch.tensor([0.0004 * elements, 0.0012 * elements],
                                                                       dtype=torch.float64),
                    "generated_frame_squared_error": torch.tensor([0.04 * elements, 0.04 * elements],
                                                                  dtype=torch.float64),
                    "other_action_ids": torch.tensor([[1, 1, 1], [1, 1, 1]]),
                    "other_foreground_squared_error": torch.tensor([0.04, 0.04], dtype=torch.float64) * elements,
                    "other_frame_squared_error": torch.tensor([0.04, 0.04], dtype=torch.float64) * elements})
    for key in ("other_sprite_shifts", "other_background_shifts"):
        records[key] = records[key.replace("other", "generated")]
    result = summarize(records, num_actions=3, seed=0, protocol="one_step")
    assert result.histograms["gt"] == [2, 0, 4] and result.results["gt/codes_used"] == 2
    assert result.results["gt/code_perplexity"] == pytest.approx(
        math.exp(-(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))))
    assert (result.histograms["re_single_image"] == [0, 6, 0]
            and result.results["re_single_image/code_perplexity"] == 1.0)
    assert result.results["re/foreground_psnr"] == pytest.approx(10 * math.log10(4 / 0.0008))  # mean MSE 8e-4
    assert result.results["re/frame_psnr"] == pytest.approx(20.0)
    assert result.results["re_single_image/foreground_psnr"] == pytest.approx(20.0)
    assert "re_single_image/local_action_nmi" in result.results
    table = format_table(result, "one_step")
    assert "RE 1-image" in table and "code histogram GT: 2 0 4" in table and "generated foreground PSNR" in table


def test_code_difference_over_the_split_is_a_ratio_of_region_sums():
    records = _records(predicted_ids=[[0, 1], [1, 0]], true_local=[[0, 1], [1, 1]],
                       predicted_shifts=[[[1.0, 0.0]] * 2] * 2, true_shifts=[[[1.0, 0.0]] * 2] * 2, sprite_ids=[1, 2])
    records.update({"code_difference": torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64),
                    "real_change": torch.tensor([[4.0, 4.0], [8.0, 0.0]], dtype=torch.float64),
                    "region": torch.tensor([[10.0, 10.0], [20.0, 0.0]], dtype=torch.float64)})
    result = summarize(records, num_actions=2, seed=0)
    assert result.results["gt/code_difference"] == pytest.approx(4.0 / 40.0)
    assert result.results["gt/real_change"] == pytest.approx(16.0 / 40.0)
    assert result.results["gt/code_difference_ratio"] == pytest.approx(0.25)
    assert "two codes' next frames differ by" in format_table(result)
    empty = summarize({**records, "region": torch.zeros(2, 2, dtype=torch.float64)}, num_actions=2, seed=0)
    assert "gt/code_difference" not in empty.results and "no character region" in empty.skipped["gt: code_difference"]


def test_each_codes_usual_shift_is_the_median_of_the_shifts_of_its_transitions():
    from utils.evaluation.action_metrics import UsualShift, usual_shift_steps
    from utils.play.actions import parse_actions

    # code 0: shifts (−2, 0), (−3, 0), (−2, 1), all left → median (−2, 0); code 2: one stay; code 1 unused;
    # code 3: two steps of 2 px down (the still limit is under 2 px)
    records = _records(predicted_ids=[[0, 0, 2], [0, 3, 3]], true_local=[[0, 0, 1], [1, 1, 1]],
                       predicted_shifts=[[[-2.0, 0.0], [-3.0, 0.0], [0.0, 0.0]], [[-2.0, 1.0], [0.0, 2.0],
                                                                                  [0.0, 2.0]]],
                       true_shifts=[[[1.0, 0.0]] * 3] * 2, sprite_ids=[1, 2])
    result = summarize(records, num_actions=4, seed=0)
    assert result.code_shifts[0] == (3, -2.0, 0.0, "left", 1.0) and result.code_shifts[2] == (1, 0.0, 0.0, "still", 1.0)
    assert result.code_shifts[3] == (2, 0.0, 2.0, "down", 1.0)
    count, dx, dy, direction, share = result.code_shifts[1]
    assert count == 0 and math.isnan(dx) and math.isnan(dy) and direction == "" and share == 0.0
    table = format_table(result)
    assert "each code's usual foreground shift" in table and "left  (-2.00, +0.00) 100%" in table
    # the counts are the code histogram of the real videos
    assert [row.count for row in result.code_shifts] == result.histograms["gt"]
    # as play.py steps (affine_grid units of a 128 × 96 frame), the unused code left out; the language reads them
    steps = usual_shift_steps(result.code_shifts, [128, 96])
    assert steps == ["-0.031,0.000:0", "0.000,0.000:2", "0.000,0.042:3"]
    parsed = parse_actions(" ".join(steps), num_actions=4)
    assert [step.local_action for step in parsed] == [0, 2, 3]
    assert parsed[0].global_shift == pytest.approx((-2.0 / 64, 0.0), abs=1e-3)
    # a value that rounds to zero is printed without a minus sign
    assert usual_shift_steps([UsualShift(1, -0.01, -0.0, "still", 1.0)], [128, 96]) == ["0.000,0.000:0"]


def test_a_code_taken_two_ways_gets_its_most_common_direction_not_the_still_median_of_all():
    from utils.evaluation.action_metrics import code_usual_shifts, shift_directions

    # a front walk read as one code: 2 steps up, 2 down and a still one; the median over all five would be (0, 0)
    shifts = torch.tensor([[0.0, -7.0], [0.0, 7.0], [0.5, 0.0], [0.0, -6.0], [1.0, 6.0]])
    (usual,) = code_usual_shifts(torch.zeros(5, dtype=torch.long), shifts, 1)
    # up and down tie at 2: the first in SHIFT_DIRECTIONS' order (down) wins; the lower middle of its two dy
    assert usual == (5, 0.0, 6.0, "down", pytest.approx(0.4))
    (usual,) = code_usual_shifts(torch.zeros(4, dtype=torch.long), shifts[[0, 1, 3, 2]], 1)
    assert usual == (4, 0.0, -7.0, "up", pytest.approx(0.5))
    # still under 2 px; else the longer axis, x on a tie; y grows downwards
    directions = shift_directions(torch.tensor([[1.9, 0.0], [2.0, 0.0], [-3.0, 3.0], [1.0, -3.0], [0.0, 2.5]]))
    assert directions.tolist() == [0, 1, 2, 4, 3]


def test_the_usual_shift_sheet_plays_each_code_with_its_shift_from_one_start_per_character(tiny, device):
    import numpy as np

    from model.generation import local_action_matrix
    from utils.evaluation.action_metrics import UsualShift, usual_shift_sheet
    from utils.training.media import action_matrix_media

    trained, _, _ = tiny
    dataset = evaluation_dataset(trained.config)
    width, height = trained.config.data.input_size
    num_actions = trained.config.model.lma.num_actions
    # code 0 moves right by 4 px, code 1 was never chosen (no shift), the others stay
    code_shifts = [UsualShift(5, 4.0, 0.0, "right", 0.8), UsualShift(0, math.nan, math.nan, "", 0.0)] + [
        UsualShift(1, 0.0, 0.0, "still", 1.0)] * (num_actions - 2)
    sheet = usual_shift_sheet(trained.model, dataset, code_shifts, trained.config.data.input_size, num_frames=2)
    # the split holds one character: one start, the first window's first frame
    start = dataset[0]["observations"][:1, :3].to(device)
    shifts = torch.zeros(num_actions, 2)
    shifts[0, 0] = 4.0 / (width / 2.0)
    expected = local_action_matrix(trained.model, start, 2, action_shifts=shifts.to(device))
    names = ["code 0, shift +4.0 +0.0 px (80%)", "code 1, unused: no shift"] + [
        f"code {code}, shift +0.0 +0.0 px" for code in range(2, num_actions)]
    _, reference = action_matrix_media(expected.cpu(), start.cpu(), names)
    assert sheet.shape == reference.shape and np.abs(sheet.astype(int) - reference.astype(int)).max() <= 1


def test_local_action_confusion_counts_the_codes_of_every_true_action():
    from utils.evaluation.action_metrics import confusion_row_labels, local_action_confusion

    labels = torch.tensor([[0, 0, 2], [2, 1, 1]])
    ids = torch.tensor([[1, 1, 0], [0, 2, 2]])
    assert local_action_confusion(labels, ids, 3).tolist() == [[0, 2, 0], [0, 0, 2], [2, 0, 0]]
    assert confusion_row_labels(3) == ["walk-front", "walk-left", "walk-right"]
    assert confusion_row_labels(12)[11] == "label 11"


def test_code_effect_over_switches_other_transitions_and_each_true_action():
    """The code effect over all labelled transitions, the switches, the other transitions and each true local
    action's transitions: 10·log10(Σ random / Σ inferred) over each selection; shown in the table."""
    records = _records(predicted_ids=[[0, 1, 1], [1, 0, 0]], true_local=[[0, 0, 1], [1, 1, 1]],
                       predicted_shifts=[[[1.0, 0.0]] * 3] * 2, true_shifts=[[[1.0, 0.0]] * 3] * 2, sprite_ids=[1, 2])
    records.update({"code_inferred_squared_error": torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]),
                    "code_random_squared_error": torch.tensor([[10.0, 1.0, 4.0], [2.0, 2.0, 2.0]]),
                    "switches": torch.tensor([[False, False, True], [False, False, False]]),
                    "code_best_squared_error": torch.tensor([[1.0, 0.5, 0.5], [1.0, 2.0, 2.0]]),
                    "switch_kinds": torch.tensor([[0, 0, 1], [0, 0, 0]])})
    result = summarize(records, num_actions=2, seed=0)
    values = result.results
    assert values["gt/code_effect_db"] == pytest.approx(10 * math.log10(21 / 9))
    assert values["gt/code_effect_best_db"] == pytest.approx(10 * math.log10(21 / 7))
    assert values["gt/code_effect_best_switch_db"] == pytest.approx(10 * math.log10(4 / 0.5))
    assert values["gt/code_effect_switch_db"] == pytest.approx(10 * math.log10(4 / 1))
    assert values["gt/code_effect_non_switch_db"] == pytest.approx(10 * math.log10(17 / 8))
    (walk_front, front_count), (walk_left, left_count) = result.label_code_effects
    assert walk_front == pytest.approx(10 * math.log10(11 / 2)) and front_count == 2
    assert walk_left == pytest.approx(10 * math.log10(10 / 7)) and left_count == 4
    table = format_table(result)
    assert "on the other transitions (dB)" in table and "code effect per true local action" in table
    assert "best code per transition (dB)" in table
    # per kind of switch: the one switch (a turn between front and side), none of the other two kinds
    (turn, turn_db, turn_best, turn_count), (_, side_db, _, side_count), _ = result.switch_kind_code_effects
    assert turn.startswith("turn front") and turn_count == 1 and side_count == 0 and math.isnan(side_db)
    assert turn_db == pytest.approx(10 * math.log10(4 / 1)) and turn_best == pytest.approx(10 * math.log10(4 / 0.5))
    assert "code effect per kind of switch" in table and f"  {turn:<22}{turn_db:>8.3f}{turn_best:>8.3f}     1" in table
    without_best = summarize({key: value for key, value in records.items() if key != "code_best_squared_error"},
                             num_actions=2, seed=0).results
    assert "gt/code_effect_best_db" not in without_best and "gt/code_effect_best_switch_db" not in without_best
    assert f"  walk-front        {walk_front:>8.3f}     2" in table
    unlabelled = summarize({**records, "has_actions": torch.tensor([False, False])}, num_actions=2, seed=0)
    assert unlabelled.label_code_effects is None and "gt/code_effect_non_switch_db" not in unlabelled.results


def test_code_effect_against_codes_drawn_as_used_is_not_raised_by_an_unused_code():
    """The usage baseline: the expected error of random codes drawn as often as the split's inferred codes are used,
    exactly, from every row's drawing; an unused code that draws badly raises the uniform baseline, not this one,
    and a decoder that draws every code alike has 0 dB."""
    ids = [[0, 0, 1], [0, 0, 0]]  # usage 5/6, 1/6, 0
    records = _records(predicted_ids=ids, true_local=[[0, 0, 1], [0, 0, 0]],
                       predicted_shifts=[[[1.0, 0.0]] * 3] * 2, true_shifts=[[[1.0, 0.0]] * 3] * 2, sprite_ids=[1, 2])
    # each transition's inferred code draws it with error 1, the other used code with 4, code 2 (unused) with 100
    rows = torch.tensor([[[1.0, 4.0, 100.0] if code == 0 else [4.0, 1.0, 100.0] for code in window] for window in ids])
    inferred = torch.ones(2, 3)
    records.update({"code_inferred_squared_error": inferred,
                    "code_random_squared_error": torch.tensor([[100.0, 4.0, 100.0], [1.0, 100.0, 4.0]]),
                    "code_row_squared_error": rows,
                    "switches": torch.tensor([[False, False, True], [False, False, False]])})
    values = summarize(records, num_actions=3, seed=0).results
    # five transitions of code 0: 5/6·1 + 1/6·4 = 1.5 each; the one of code 1: 5/6·4 + 1/6·1 = 3.5
    assert values["gt/code_effect_usage_db"] == pytest.approx(10 * math.log10((5 * 1.5 + 3.5) / 6))
    assert values["gt/code_effect_usage_switch_db"] == pytest.approx(10 * math.log10(3.5 / 1))
    assert values["gt/code_effect_db"] > values["gt/code_effect_usage_db"] + 10  # the unused code's 100s
    assert "against codes drawn as used (dB)" in format_table(summarize(records, num_actions=3, seed=0))
    alike = summarize({**records, "code_row_squared_error": torch.ones(2, 3, 3)}, num_actions=3, seed=0).results
    assert alike["gt/code_effect_usage_db"] == pytest.approx(0.0)
    without = summarize({key: value for key, value in records.items() if key != "code_row_squared_error"},
                        num_actions=3, seed=0).results
    assert "gt/code_effect_usage_db" not in without and "gt/code_effect_usage_switch_db" not in without


def test_the_code_effect_gets_an_interval_over_characters_when_the_split_holds_two_or_more():
    records = _records(predicted_ids=[[0, 0, 1], [0, 1, 1]], true_local=[[0, 0, 1], [0, 1, 1]],
                       predicted_shifts=[[[1.0, 0.0]] * 3] * 2, true_shifts=[[[1.0, 0.0]] * 3] * 2, sprite_ids=[1, 2])
    records.update({"code_inferred_squared_error": torch.ones(2, 3),
                    "code_random_squared_error": torch.tensor([[1.0, 1.0, 1.0], [10.0, 10.0, 10.0]]),
                    "switches": torch.tensor([[False, False, True], [False, True, False]])})
    result = summarize(records, num_actions=3, seed=0)
    values = result.results
    for prefix in ("gt/code_effect", "gt/code_effect_switch"):
        assert values[prefix + "_low_db"] == pytest.approx(0.0) and values[prefix + "_high_db"] == pytest.approx(10.0)
        assert values[prefix + "_low_db"] <= values[prefix + "_db"] <= values[prefix + "_high_db"]
    assert "90% over characters, from (dB)" in format_table(result)
    one_character = summarize({**records, "sprite_id": torch.tensor([1, 1])}, num_actions=3, seed=0).results
    assert "gt/code_effect_db" in one_character and "gt/code_effect_low_db" not in one_character
    assert "gt/code_effect_switch_low_db" not in one_character


def test_recorded_usual_shifts_name_the_file_of_a_malformed_record(tmp_path):
    import json

    from utils.errors import GlassError
    from utils.evaluation.action_metrics import recorded_usual_shifts

    metrics = tmp_path / "metrics"
    metrics.mkdir()
    entry = {"transitions": 3, "dy": 1.0}  # no dx
    (metrics / "evaluate-val-one_step.jsonl").write_text(json.dumps({"step": 7, "code_usual_shift": [entry]}) + "\n")
    with pytest.raises(GlassError, match=r"evaluate-val-one_step.jsonl.*: a code_usual_shift entry of step 7 is "
                                         r"malformed \(KeyError: 'dx'\)$"):
        recorded_usual_shifts(str(tmp_path), 7, 1)
    # a record with another number of codes is not this model's
    with pytest.raises(GlassError, match=r"no evaluate.py record of step 7 with the usual shifts of 2 codes"):
        recorded_usual_shifts(str(tmp_path), 7, 2)
    with pytest.raises(GlassError, match=r"no evaluate.py record of step 7"):
        recorded_usual_shifts(str(tmp_path / "elsewhere"), 7, 1)
