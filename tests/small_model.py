"""Overrides that shrink configs/wsprites.yaml to a model that trains in a fraction of a second per
step on one CPU thread (128×96 frames kept): shared by the tests of train.py and of the scripts that
read a trained run."""
import dataclasses
import os

import torch

from utils.config import GMAConfig, LMAConfig, ModelConfig, load_config

SMALL_MODEL = [
    "model.gma.mask_first_channels=8", "model.gma.mask_middle_channels=16", "model.gma.mask_middle_blocks=1",
    "model.gma.mask_up_channels=8", "model.gma.shift_predictor_channels=[4, 4, 4, 8, 8]",
    "model.gma.shift_predictor_hidden=[8, 8]", "model.gma.inpainter_encoder_channels=[4, 4, 4, 8, 8]",
    "model.gma.inpainter_decoder_channels=[8, 4, 4, 4]", "model.lma.encoder_stem_channels=4",
    "model.lma.encoder_block_channels=[4, 8, 8, 8, 8]", "model.lma.encoder_state_channels=8", "model.lma.state_size=4",
    "model.lma.action_trunk_channels=[8, 8]", "model.lma.direction_sizes=[8, 8, 8, 8]",
    "model.lma.action_mlp_hidden=[8, 8]", "model.lma.action_dim=4", "model.lma.num_actions=3",
    "model.lma.hidden_size=4", "model.lma.decoder_channels=[8, 8, 4]",
]
NO_PERCEPTUAL_LOSSES = ["loss.weights.background_perceptual_loss=0", "loss.weights.multiscale_local_perceptual_loss=0"]


# --------------------------------------------------------------------------- a model config for 32×16 frames
SMALL_INPUT_SIZE = [32, 16]  # [W, H]: the LMA state is 2×4, the dynamics' half resolution 1×2


def small_model_config(**lma_overrides) -> ModelConfig:
    gma = GMAConfig(mask_first_channels=8, mask_middle_channels=16, mask_middle_blocks=1, mask_up_channels=8,
                    shift_predictor_channels=[4, 4, 4, 8, 8], shift_predictor_hidden=[8, 8],
                    inpainter_encoder_channels=[4, 4, 4, 8, 8], inpainter_decoder_channels=[8, 4, 4, 4])
    lma = LMAConfig(encoder_stem_channels=4, encoder_block_channels=[4, 8, 8, 8, 8], encoder_state_channels=8,
                    state_size=4, action_trunk_channels=[8, 8], direction_sizes=[8, 8, 8, 8], action_mlp_hidden=[8, 8],
                    action_dim=4, num_actions=3, hidden_size=4, decoder_channels=[8, 8, 4])
    lma = dataclasses.replace(lma, **lma_overrides)
    lma.check("model.lma.")
    return ModelConfig(gma=gma, lma=lma)


# --------------------------------------------------------------------------- a trainer for 32×16 frames
def small_trainer(*overrides: str):
    """A seeded Trainer of the small model for 32×16 frames, windows of 3 with T_f 2, LMA steps after a one-step
    warm-up; `overrides` as train.py's key=value."""
    from utils.distributed import initialize
    from utils.training.trainer import Trainer

    wsprites = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "wsprites.yaml")
    config = load_config(wsprites, [*SMALL_MODEL, *NO_PERCEPTUAL_LOSSES, "data.input_size=[32, 16]",
                                    "training.gma_warmup_steps=1", "training.observations_count={start: 3, end: 3}",
                                    "training.ground_truth_steps={start: 2, end: 2}", *overrides])
    torch.manual_seed(0)
    return Trainer(config, initialize("cpu"))
