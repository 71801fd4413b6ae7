"""`python -m model` and the model section of the configuration schema."""
import subprocess
import sys
from pathlib import Path

import pytest

from model.__main__ import main
from model.glass import Glass
from utils.config import ModelConfig, load_config
from utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
WSPRITES = str(ROOT / "configs" / "wsprites.yaml")
MODULES = ("masking network", "shift predictors", "inpainter", "encoder", "compressor", "action network", "dynamics",
           "decoder")


def test_summary_prints_every_module_and_their_total(capsys):
    assert main(["--config", WSPRITES]) == 0
    lines = capsys.readouterr().out.splitlines()
    counts = {line[:18].strip(): int(line[18:].replace(",", "")) for line in lines[1:]}
    assert list(counts) == list(MODULES) + ["total"]
    assert counts["total"] == sum(counts[name] for name in MODULES)
    # The compressor conv1×1 64→8 with bias, and the 6×16 codebook inside the action network.
    assert counts["compressor"] == 64 * 8 + 8
    assert main(["--config", WSPRITES, "model.lma.num_actions=9"]) == 0
    more_actions = {line[:18].strip(): int(line[18:].replace(",", ""))
                    for line in capsys.readouterr().out.splitlines()[1:]}
    assert more_actions["action network"] - counts["action network"] == 3 * 16


def test_summary_rejects_a_bad_key_in_one_line_with_status_2():
    result = subprocess.run([sys.executable, "-m", "model", "--config", WSPRITES, "model.lma.num_actionz=4"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "model.lma.num_actionz" in result.stderr


@pytest.mark.parametrize("override, key", [
    ("model.lma.num_actions=0", "model.lma.num_actions"),
    ("model.lma.vq_loss_form=vq", "model.lma.vq_loss_form"),
    ("model.lma.decoder_channels=[128,64]", "model.lma.decoder_channels"),
    ("model.lma.direction_sizes=[128,128,128,32]", "model.lma.direction_sizes"),
    ("model.gma.inpainter_decoder_channels=[64,32]", "model.gma.inpainter_decoder_channels"),
    ("model.gma.shift_predictor_downsampling=[2,2]", "model.gma.shift_predictor_downsampling"),
    ("model.gma.generation_mask_dilation=2", "model.gma.generation_mask_dilation"),
    ("model.lma.use_gumbel=3", "model.lma.use_gumbel"),
])
def test_bad_model_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(WSPRITES, [override])


def test_frames_that_do_not_fit_the_networks_are_refused_when_building():
    assert ModelConfig().state_resolution([256, 96]) == (12, 32)
    with pytest.raises(ConfigError, match=r"data\.input_size.*divisible by 16"):
        Glass(ModelConfig(), [120, 96])


@pytest.mark.parametrize("config, dynamics, total", [
    ("wsprites.yaml", 532_448, 18_163_052),
    ("bair.yaml", 665_568, 18_296_108),
    ("tennis.yaml", 2_219_728, 19_887_684),  # noise 8 reaches the ModConv inputs too, as in the authors' model
])
def test_parameter_counts_equal_the_authors_models(config, dynamics, total):
    # The authors' release (Araachie/glass 1cc1a71) built with their configs, less the action network's unused
    # `mapping` MLP: the same totals.
    loaded = load_config(str(ROOT / "configs" / config))
    counts = Glass(loaded.model, loaded.data.input_size).parameter_counts()
    assert counts["dynamics"] == dynamics
    assert counts["total"] == total
