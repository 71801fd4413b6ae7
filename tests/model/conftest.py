"""Small GLASS configurations that run on the CPU in milliseconds."""
from typing import Callable

import pytest
import torch

from model.glass import Glass
from tests.small_model import SMALL_INPUT_SIZE, small_model_config
from utils.config import ModelConfig


@pytest.fixture(name="small_model_config")
def small_model_config_fixture() -> Callable[..., ModelConfig]:
    """`small_model_config(**lma_overrides)` → a small `ModelConfig` for 32×16 frames."""
    return small_model_config


@pytest.fixture
def make_small_model() -> Callable[..., Glass]:
    """`make_small_model(**lma_overrides)` → a seeded small `Glass` for 32×16 frames."""
    def make(**lma_overrides) -> Glass:
        torch.manual_seed(0)
        return Glass(small_model_config(**lma_overrides), SMALL_INPUT_SIZE)
    return make


@pytest.fixture
def small_video() -> torch.Tensor:
    """(B=2, T=4, 3, 16, 32) in [−1, 1]."""
    generator = torch.Generator().manual_seed(1)
    return torch.rand(2, 4, 3, 16, 32, generator=generator) * 2 - 1


@pytest.fixture
def calibrated_model(make_small_model, small_video) -> Callable[..., Glass]:
    """`calibrated_model(**lma_overrides)`: a small model in eval mode whose batch-norm running
    statistics are those of `small_video` (with the initial ones, an untrained model in eval mode
    damps its inputs so much that different inputs give outputs equal to 1e-6)."""
    def make(**lma_overrides) -> Glass:
        model = make_small_model(**lma_overrides)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # a cumulative average over the calibration passes
        with torch.no_grad():
            model(small_video, num_ground_truth_steps=1, gumbel_temperature=1.0)
        return model.eval()
    return make
