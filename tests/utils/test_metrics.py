"""Action and segmentation metrics against hand-computed values."""
import math

import pytest
import torch

from utils.metrics import (
    direction_matches,
    iou_from_sums,
    pixels_to_shifts,
    shift_errors,
    shifts_to_pixels,
    soft_iou,
    soft_iou_sums,
)


def test_shifts_to_pixels_uses_half_the_frame_size():
    shifts = torch.tensor([[0.07, 0.0], [0.0, -0.1], [2.0, 2.0]])
    pixels = shifts_to_pixels(shifts, [128, 96])
    assert torch.allclose(pixels, torch.tensor([[0.07 * 64, 0.0], [0.0, -4.8], [128.0, 96.0]]))
    assert torch.allclose(pixels_to_shifts(pixels, [128, 96]), shifts)  # and back


def test_soft_iou_binary_and_soft():
    a = torch.zeros(4, 4)
    b = torch.zeros(4, 4)
    a[:2, :2] = 1  # 4 pixels
    b[:2, :3] = 1  # 6 pixels, 4 shared
    assert soft_iou(a, b) == pytest.approx(4 / 6)
    assert soft_iou(a, a) == 1.0
    soft = torch.tensor([0.5, 0.5])
    true = torch.tensor([1.0, 0.0])
    # Σ m·m* = 0.5; Σ 1 − (1−m)(1−m*) = (1 − 0.5·0) + (1 − 0.5·1) = 1.5
    assert soft_iou(soft, true) == pytest.approx(0.5 / 1.5)
    assert soft_iou(torch.zeros(3), torch.zeros(3)) == 1.0
    with pytest.raises(ValueError):
        soft_iou(torch.zeros(3), torch.zeros(4))


def test_the_sums_per_item_give_the_iou_over_all_items():
    """evaluate.py reports one IoU over a split from per-window sums: it must equal soft_iou of all windows at once."""
    generator = torch.Generator().manual_seed(0)
    predicted, true = (torch.rand(5, 3, 1, 8, 8, generator=generator),
                       (torch.rand(5, 3, 1, 8, 8, generator=generator) > 0.7).float())
    intersection, union = soft_iou_sums(predicted, true)
    assert intersection.shape == union.shape == (5,) and intersection.dtype == torch.float64
    assert iou_from_sums(intersection, union) == pytest.approx(soft_iou(predicted, true), rel=1e-12)
    assert iou_from_sums(intersection[:2], union[:2]) == pytest.approx(soft_iou(predicted[:2], true[:2]), rel=1e-12)
    assert iou_from_sums(torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)) == 1.0


def test_direction_match_uses_45_degrees_and_ignores_still_truth():
    true = torch.tensor([[7.0, 0.0], [7.0, 0.0], [7.0, 0.0], [0.0, 0.0], [0.0, -7.0], [0.0, 7.0]])
    angle = math.radians(44)
    predicted = torch.tensor([[1.0, 0.0], [math.cos(angle), math.sin(angle)], [1.0, 1.01],
                              [5.0, 5.0], [0.0, -0.1], [0.0, 0.0]])
    matches = direction_matches(predicted, true)
    assert matches.tolist() == [True, True, False, True, False]  # the zero true shift is left out
    # exactly 45° is not within 45° (cosine > 1/√2, strictly); just inside is
    assert direction_matches(torch.tensor([[1.0, 1.0], [1.0, 0.999]]),
                             torch.tensor([[1.0, 0.0], [1.0, 0.0]])).tolist() == [False, True]


def test_shift_errors_are_l2_pixels():
    errors = shift_errors(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, -2.0]]))
    assert errors.tolist() == [5.0, 2.0]


def test_nmi_of_identical_permuted_and_independent_labelings():
    from utils.metrics import normalized_mutual_information as nmi

    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert nmi(labels, labels) == pytest.approx(1.0)
    assert nmi(labels, torch.tensor([5, 5, 3, 3, 9, 9])) == pytest.approx(1.0), "names of the classes do not matter"
    # B splits every class of A evenly: independent, I = 0
    assert nmi(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])) == pytest.approx(0.0, abs=1e-12)
    assert nmi(torch.tensor([3, 3, 3]), torch.tensor([7, 7, 7])) == 1.0  # one class each (scikit-learn's convention)
    assert nmi(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 1, 0, 1])) == 0.0


def test_nmi_on_a_hand_computed_case():
    from utils.metrics import normalized_mutual_information as nmi

    # A = [0,0,1,1], B = [0,0,0,1]: H(A) = ln 2; H(B) = −(3/4 ln 3/4 + 1/4 ln 1/4);
    # H(A,B) over the pairs (0,0) ×2, (1,0), (1,1) = −(1/2 ln 1/2 + 2 · 1/4 ln 1/4) = 1.5 ln 2
    h_a = math.log(2)
    h_b = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    h_ab = 1.5 * math.log(2)
    expected = (h_a + h_b - h_ab) / ((h_a + h_b) / 2)
    assert nmi(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 1])) == pytest.approx(expected, abs=1e-12)


def test_nmi_of_random_ids_is_near_zero_and_groups_are_averaged():
    from utils.metrics import mean_nmi_per_group
    from utils.metrics import normalized_mutual_information as nmi

    generator = torch.Generator().manual_seed(0)
    true = torch.randint(0, 6, (20000,), generator=generator)
    assert nmi(torch.randint(0, 6, (20000,), generator=generator), true) < 0.01
    predicted = torch.tensor([0, 0, 1, 1, 0, 1, 0, 1])
    true = torch.tensor([4, 4, 2, 2, 4, 4, 2, 2])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])  # group 0 agrees perfectly, group 1 is independent
    assert mean_nmi_per_group(predicted, true, groups) == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ValueError, match="1-D labelings"):
        nmi(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))


def test_code_histogram_codes_used_and_perplexity_of_known_histograms():
    from utils.metrics import code_histogram, codes_used, perplexity
    histogram = code_histogram(torch.tensor([[0, 0, 2], [2, 5, 0]]), 6)
    assert histogram.tolist() == [3, 0, 2, 0, 0, 1] and codes_used(histogram) == 3
    assert perplexity(torch.tensor([7, 0, 0, 0])) == pytest.approx(1.0)  # one code takes everything
    assert perplexity(torch.tensor([5, 5, 5, 5, 0, 0])) == pytest.approx(4.0)  # four codes share equally
    p = torch.tensor([0.5, 0.25, 0.25])
    assert perplexity(torch.tensor([2, 1, 1])) == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert perplexity(torch.zeros(3)) == 0.0 and codes_used(torch.zeros(3)) == 0
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        code_histogram(torch.tensor([6]), 6)


def test_psnr_of_known_errors():
    from utils.metrics import psnr
    target = torch.zeros(2, 3, 4, 4)
    assert psnr(target + 0.02, target) == pytest.approx(10 * math.log10(4 / 0.0004))  # range 2 ([-1, 1])
    assert psnr(target + 0.1, target, value_range=1.0) == pytest.approx(20.0)
    assert psnr(target, target) == math.inf


def test_switch_transitions_are_where_the_label_changes():
    from utils.metrics import switch_transitions

    labels = torch.tensor([[0, 0, 3, 3, 1], [5, 5, 5, 5, 5]])
    assert switch_transitions(labels).tolist() == [[False, True, False, True], [False, False, False, False]]
    with pytest.raises(ValueError, match="must be"):
        switch_transitions(torch.tensor([1, 2, 3]))


def test_switch_kinds_tell_turns_between_front_and_side_from_side_to_side_and_same_view():
    from data.wsprites.walk import LOCAL_ACTION_NAMES
    from utils.metrics import SWITCH_KINDS, switch_kinds

    # walk-front → walk-left (turn front/side) → walk-right (side to side) → spellcast-right (same view) →
    # spellcast-front (turn side/front) → spellcast-front (no switch); slash-left → walk-left (same view)
    labels = torch.tensor([[0, 1, 2, 5, 3, 3], [7, 1, 1, 1, 1, 1]])
    assert switch_kinds(labels, LOCAL_ACTION_NAMES).tolist() == [[1, 2, 3, 1, 0], [3, 0, 0, 0, 0]]
    assert SWITCH_KINDS[0].startswith("turn front") and len(SWITCH_KINDS) == 3
    with pytest.raises(ValueError, match="-front, -left or -right"):
        switch_kinds(labels, ["left", "right", "up"])
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        switch_kinds(labels, ["a-front", "a-left", "a-right"])


def test_code_effect_is_zero_when_the_code_changes_nothing_and_positive_when_the_inferred_code_draws_better():
    from utils.metrics import code_effect_db

    errors = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert code_effect_db(errors, errors.clone()) == 0.0  # a decoder that ignores the code
    assert code_effect_db(errors, errors * 10) == pytest.approx(10.0)  # random codes: 10× the squared error
    assert code_effect_db(errors, errors / 2) == pytest.approx(-10 * math.log10(2))
    selected = torch.tensor([[False, True], [False, False]])
    assert code_effect_db(errors, errors + torch.tensor([[0.0, 2.0], [9.0, 9.0]]), selected) == pytest.approx(
        10 * math.log10(4 / 2))
    assert math.isnan(code_effect_db(errors, errors, torch.zeros(2, 2, dtype=torch.bool)))
    assert code_effect_db(torch.zeros(2), torch.ones(2)) == math.inf
    with pytest.raises(ValueError, match="shapes differ"):
        code_effect_db(errors, errors[0])


def test_code_effect_interval_redraws_whole_characters():
    from utils.metrics import code_effect_db, code_effect_interval

    inferred = torch.ones(4, 3)
    # characters 7 and 9 (two windows each): the code is worth 10 dB on 9's transitions, nothing on 7's
    random = torch.tensor([[1.0] * 3, [1.0] * 3, [10.0] * 3, [10.0] * 3])
    groups = torch.tensor([7, 7, 9, 9])
    low, high = code_effect_interval(inferred, random, groups)
    # the redraws hold 7 twice (0 dB), 9 twice (10 dB) or both (about 7.4 dB), each pair as likely as in the split
    assert low == pytest.approx(0.0) and high == pytest.approx(10.0)
    assert low <= code_effect_db(inferred, random) <= high
    assert code_effect_interval(inferred, random, groups) == (low, high)  # seeded
    # every character alike: no spread; the selected transitions only; unknown characters (< 0) left out
    alike = code_effect_interval(inferred, inferred * 10, groups)
    assert alike[0] == pytest.approx(10.0) and alike[1] == pytest.approx(10.0)
    first = torch.tensor([[True, False, False]] * 4)
    assert code_effect_interval(inferred, random + torch.tensor([0.0, 5.0, 5.0]), groups, first) == pytest.approx(
        (0.0, 10.0))
    assert all(math.isnan(bound) for bound in code_effect_interval(inferred, random, torch.tensor([7, 7, -1, -1])))
    assert all(math.isnan(bound) for bound in code_effect_interval(inferred, random, groups,
                                                                   torch.tensor([[True] * 3] * 2 + [[False] * 3] * 2)))
    with pytest.raises(ValueError, match="shapes differ"):
        code_effect_interval(inferred, random[:, :2], groups)


def test_code_effect_per_label_selects_each_labels_transitions_and_marks_absent_labels_nan():
    from utils.metrics import code_effect_per_label

    inferred = torch.tensor([[1.0, 2.0, 4.0], [1.0, 1.0, 1.0]])
    random = torch.tensor([[10.0, 2.0, 4.0], [10.0, 1.0, 1.0]])
    labels = torch.tensor([[0, 2, 2], [0, 2, 2]])  # no transition of label 1
    (first, first_count), (second, second_count), (third, third_count) = code_effect_per_label(inferred, random, labels)
    assert first == pytest.approx(10.0) and first_count == 2
    assert math.isnan(second) and second_count == 0
    assert third == 0.0 and third_count == 4  # the decoder draws these the same with any code
    assert code_effect_per_label(inferred[:0], random[:0], labels[:0]) == []
