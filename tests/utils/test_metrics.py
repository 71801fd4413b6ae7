"""Action and segmentation metrics against hand-computed values."""
import math

import pytest
import torch

from utils.metrics import direction_matches, shift_errors, shifts_to_pixels, soft_iou


def test_shifts_to_pixels_uses_half_the_frame_size():
    shifts = torch.tensor([[0.07, 0.0], [0.0, -0.1], [2.0, 2.0]])
    pixels = shifts_to_pixels(shifts, [128, 96])
    assert torch.allclose(pixels, torch.tensor([[0.07 * 64, 0.0], [0.0, -4.8], [128.0, 96.0]]))


def test_soft_iou_binary_and_soft():
    a = torch.zeros(4, 4)
    b = torch.zeros(4, 4)
    a[:2, :2] = 1  # 4 pixels
    b[:2, :3] = 1  # 6 pixels, 4 shared
    assert soft_iou(a, b).item() == pytest.approx(4 / 6)
    assert soft_iou(a, a).item() == 1.0
    soft = torch.tensor([0.5, 0.5])
    true = torch.tensor([1.0, 0.0])
    # Σ m·m* = 0.5; Σ 1 − (1−m)(1−m*) = (1 − 0.5·0) + (1 − 0.5·1) = 1.5
    assert soft_iou(soft, true).item() == pytest.approx(0.5 / 1.5)
    assert soft_iou(torch.zeros(3), torch.zeros(3)).item() == 1.0
    with pytest.raises(ValueError):
        soft_iou(torch.zeros(3), torch.zeros(4))


def test_direction_match_uses_45_degrees_and_ignores_still_truth():
    true = torch.tensor([[7.0, 0.0], [7.0, 0.0], [7.0, 0.0], [0.0, 0.0], [0.0, -7.0], [0.0, 7.0]])
    angle = math.radians(44)
    predicted = torch.tensor([[1.0, 0.0], [math.cos(angle), math.sin(angle)], [1.0, 1.01],
                              [5.0, 5.0], [0.0, -0.1], [0.0, 0.0]])
    matches = direction_matches(predicted, true)
    assert matches.tolist() == [True, True, False, True, False]  # the zero true shift is left out


def test_shift_errors_are_l2_pixels():
    errors = shift_errors(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, -2.0]]))
    assert errors.tolist() == [5.0, 2.0]
