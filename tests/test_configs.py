"""Every YAML file under configs/ loads and builds its model; the ablation files change exactly
what their name says; the tiny config stays CPU-sized (its forward and backward are counted on
the meta device). The ablation switches themselves are tested on small models in tests/model/."""
import glob
import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from model.glass import build_model
from model.losses import GlassLoss
from utils.config import config_to_dict, load_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CONFIG_FILES = sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True))
WSPRITES = os.path.join(CONFIGS, "wsprites.yaml")

# ablation file → the one value it changes with respect to configs/wsprites.yaml (SPEC §4.2)
ABLATIONS = {
    "wsprites-actions4": ("model.lma.num_actions", 4),
    "wsprites-actions9": ("model.lma.num_actions", 9),
    "wsprites-actions12": ("model.lma.num_actions", 12),
    "wsprites-gumbel": ("model.lma.use_gumbel", True),
    "wsprites-plain-direction": ("model.lma.use_plain_direction", True),
    "wsprites-no-modconv": ("model.lma.modulated_conv", False),
    "wsprites-joint-input": ("model.lma.joint_input", True),
    "wsprites-no-reconstruction-loss": ("loss.weights.reconstruction_loss", 0.0),
    "wsprites-no-foreground-loss": ("loss.weights.foreground_loss", 0.0),
    "wsprites-no-background-loss": ("loss.weights.background_loss", 0.0),
    "wsprites-no-background-perceptual-loss": ("loss.weights.background_perceptual_loss", 0.0),
    "wsprites-no-binary-mask-loss": ("loss.weights.binary_mask_loss", 0.0),
    "wsprites-no-mask-size-loss": ("loss.weights.mask_size_loss", 0.0),
    "wsprites-no-local-loss": ("loss.weights.multiscale_local_reconstruction_loss", 0.0),
}


def _flatten(values, prefix=""):
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, prefix + key + "."))
        else:
            flat[prefix + key] = value
    return flat


def test_config_files_are_found():
    names = {os.path.relpath(path, CONFIGS) for path in CONFIG_FILES}
    assert {"wsprites.yaml", "bair.yaml", "tennis.yaml", "wsprites-tiny.yaml"} <= names
    assert {f"ablations/{name}.yaml" for name in ABLATIONS} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda path: os.path.relpath(path, CONFIGS))
def test_config_loads_and_its_model_builds(path):
    config = load_config(path)
    with torch.device("meta"):  # shapes only: no memory, no initialisation arithmetic
        model = build_model(config)
    assert model.lma.action_network.codebook.shape[0] == config.model.lma.num_actions
    assert model.frame_size == (config.data.input_size[1], config.data.input_size[0])


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_changes_exactly_its_value(name):
    key, value = ABLATIONS[name]
    base = _flatten(config_to_dict(load_config(WSPRITES)))
    ablation = _flatten(config_to_dict(load_config(os.path.join(CONFIGS, "ablations", name + ".yaml"))))
    differences = {k for k in base if base[k] != ablation[k]}
    assert ablation["name"] == name and ablation[key] == value
    if name == "wsprites-gumbel":  # its temperature schedule is repeated in the file, unchanged: the authors'
        assert [ablation[f"training.gumbel_temperature.{k}"] for k in ("start", "end", "start_step", "steps")] == [
            1.0, 0.4, 3_000, 30_000]
        assert [base[f"training.gumbel_temperature.{k}"] for k in ("start", "end", "start_step", "steps")] == [
            1.0, 0.4, 3_000, 30_000]
    assert differences == {"name", key}


def test_c2_config_is_the_tiny_one_with_the_local_actions_recipe():
    tiny = _flatten(config_to_dict(load_config(os.path.join(CONFIGS, "wsprites-tiny.yaml"))))
    c2 = _flatten(config_to_dict(load_config(os.path.join(CONFIGS, "wsprites-c2.yaml"))))
    assert {key: c2[key] for key in c2 if c2[key] != tiny[key]} == {
        "name": "wsprites-c2", "data.root": "datasets/wsprites-c2", "model.lma.action_from_masks": True,
        "model.lma.decoder_action": True, "model.lma.decoder_warp": 4.0, "model.lma.action_shift_input": 300.0,
        "model.lma.num_actions": 9, "loss.code_switch_weight": 10.0,
        "training.action_freeze_step": 1000, "training.action_freeze_refit_batches": 50,
        "training.lr_milestones": [3000], "training.lr_gamma": 0.1}
    # the freeze and the learning-rate drop act in longer runs only: the first run's 1,000 steps end before them
    assert c2["training.num_steps"] == c2["training.action_freeze_step"] < c2["training.lr_milestones"][0]


def test_c3_config_is_the_c2_one_with_the_longer_run_recipe():
    c2 = _flatten(config_to_dict(load_config(os.path.join(CONFIGS, "wsprites-c2.yaml"))))
    c3 = _flatten(config_to_dict(load_config(os.path.join(CONFIGS, "wsprites-c3.yaml"))))
    assert {key: c3[key] for key in c3 if c3[key] != c2[key]} == {
        "name": "wsprites-c3", "data.root": "datasets/wsprites-c3", "model.lma.glimpse": [64, 80],
        "model.lma.num_actions": 16, "model.lma.hidden_size": 32, "model.lma.decoder_channels": [64, 32, 16],
        "training.num_steps": 4000, "training.lr_milestones": [2000], "training.lr_gamma": 0.3,
        "training.weight_average_decay": 0.999, "training.gma_freeze_step": 2000, "training.gma_freeze_average": True}
    # the run goes past the readers' freeze and the learning-rate drop, where the GMA freezes at its average
    assert c3["training.action_freeze_step"] < c3["training.lr_milestones"][0] < c3["training.num_steps"]
    assert c3["training.gma_freeze_step"] == c3["training.lr_milestones"][0]


def test_tiny_config_is_cpu_sized():
    config = load_config(os.path.join(CONFIGS, "wsprites-tiny.yaml"))
    training = config.training
    assert config.data.input_size == [128, 96] and training.batch_size == 4
    assert not GlassLoss.needs_vgg(config.loss)  # no ImageNet weights needed
    assert training.gma_warmup_steps < training.num_steps
    assert training.ground_truth_steps.start_step + training.ground_truth_steps.steps <= training.num_steps
    assert training.num_steps // training.media_every == 4 and training.num_steps // training.checkpoint_every == 4
    with torch.device("meta"):
        model = build_model(config)
        loss = GlassLoss(config.loss, None)
        observations = torch.empty(4, 6, 3, 96, 128)
    counter = FlopCounterMode(display=False)
    with counter:
        loss(observations, model(observations, num_ground_truth_steps=5)).total.backward()
    # num_steps was chosen for this much work per step (71 GFLOP); a wider network needs a new choice.
    assert counter.get_total_flops() < 80e9


# Our opt-in options for the local half and the values that reproduce the authors' model.
AUTHORS_VALUES = {"model.lma.decoder_skip": False, "model.lma.decoder_skip_mask": False,
                  "model.lma.decoder_action": False, "model.lma.decoder_warp": 0.0,
                  "model.lma.decoder_warp_draw": True, "model.lma.decoder_warp_mirror": False,
                  "model.lma.action_state_difference": False, "model.lma.action_mirror_features": False,
                  "model.lma.action_target_only": False, "model.lma.action_shift_input": 0.0,
                  "model.lma.shift_refinement": 0,
                  "model.lma.vq_commitment": 1.0, "model.lma.winner_take_all": False,
                  "model.lma.winner_take_all_balanced": False, "model.lma.action_matching": False,
                  "model.lma.action_mask_predictor": False, "model.lma.decoder_mask_prediction": False,
                  "model.lma.action_mask_predictor_change_weight": 0.0, "model.lma.action_mask_predictor_scale": 4,
                  "model.lma.autoregressive_share": 0.0, "model.lma.action_from_masks": False,
                  "model.lma.action_from_changes": False, "model.lma.action_colour_jitter": False,
                  "model.lma.decoder_action_film": False, "model.lma.decoder_palette": 0, "model.lma.glimpse": None,
                  "model.lma.action_reader_norm": "batch",
                  "model.gma.input_scale": 1,
                  "loss.local_change_weight": 0.0,
                  "loss.code_switch_weight": 1.0, "loss.action_slowness_weight": 0.0,
                  "loss.action_choice_weight": 1.0,
                  "loss.action_mask_prediction_weight": 1.0, "training.codebook_kmeans_init": False,
                  "training.codebook_restart_every": 0, "training.action_freeze_step": 0,
                  "training.action_freeze_refit_batches": 0, "training.weight_average_decay": 0.0,
                  "training.colour_permutation": 0.0, "training.gma_freeze_step": 0,
                  "training.gma_freeze_average": False}


# The CPU-sized configs turn some of those options on; every other config is a paper config.
CPU_CONFIGS = ("wsprites-tiny.yaml", "wsprites-c2.yaml", "wsprites-c3.yaml")


@pytest.mark.parametrize("path", [path for path in CONFIG_FILES if os.path.basename(path) not in CPU_CONFIGS],
                         ids=lambda path: os.path.relpath(path, CONFIGS))
def test_paper_configs_keep_the_authors_model(path):
    values = _flatten(config_to_dict(load_config(path)))
    assert {key: values[key] for key in AUTHORS_VALUES} == AUTHORS_VALUES
