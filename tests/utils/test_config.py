"""The typed configuration: YAML files, dotted overrides, and errors that name the key."""
import glob
import os

import pytest

from utils.config import Config, config_from_dict, config_to_dict, dump_config, load_config
from utils.errors import ConfigError

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPOSITORY, "configs", "*.yaml"))))
def test_every_shipped_config_loads_and_round_trips(path):
    config = load_config(path)
    assert config_from_dict(config_to_dict(config)) == config


def test_dataset_values_of_the_spec():
    wsprites = load_config(os.path.join(REPOSITORY, "configs", "wsprites.yaml"))
    assert wsprites.data.input_size == [128, 96] and wsprites.data.crop == [0, 0, 128, 96]
    tennis = load_config(os.path.join(REPOSITORY, "configs", "tennis.yaml"))
    # The authors' keys: Tennis trains on every 5th frame (4 skipped), evaluates on every frame; the others skip none.
    assert tennis.data.input_size == [256, 96] and tennis.data.skip_frames == 4 and tennis.evaluation.skip_frames == 0
    bair = load_config(os.path.join(REPOSITORY, "configs", "bair.yaml"))
    assert bair.data.input_size == [256, 256]
    assert wsprites.data.skip_frames == bair.data.skip_frames == wsprites.evaluation.skip_frames == 0
    # FVD sequence lengths of SPEC §5.2
    assert (wsprites.evaluation.observations_count, bair.evaluation.observations_count,
            tennis.evaluation.observations_count) == (12, 30, 16)
    assert tennis.evaluation.detection_metrics and not wsprites.evaluation.detection_metrics


def test_evaluation_protocols_are_the_generation_protocols():
    from model import generation
    from utils import config

    assert generation.RECONSTRUCTION_PROTOCOLS is config.RECONSTRUCTION_PROTOCOLS  # one definition
    assert config.EVALUATION_PROTOCOLS == tuple(generation.RECONSTRUCTION_PROTOCOLS) == ("one_step", "single_image")


def test_loss_names_are_the_weight_fields_gma_terms_first():
    import dataclasses

    from model.losses import LMA_LOSS_NAMES, PERCEPTUAL_LOSS_NAMES
    from utils.config import GMA_LOSS_NAMES, LOSS_NAMES, LossWeightsConfig

    assert LOSS_NAMES == tuple(field.name for field in dataclasses.fields(LossWeightsConfig)) and len(LOSS_NAMES) == 12
    assert GMA_LOSS_NAMES == ("reconstruction_loss", "foreground_loss", "background_loss", "background_perceptual_loss",
                              "binary_mask_loss", "mask_size_loss")
    assert GMA_LOSS_NAMES + LMA_LOSS_NAMES == LOSS_NAMES
    assert PERCEPTUAL_LOSS_NAMES == ("background_perceptual_loss", "multiscale_local_perceptual_loss")


def test_overrides_are_typed_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  root: somewhere\n")
    config = load_config(str(path), ["data.skip_frames=3", "data.crop=[0, 0, 10, 10]",
                                     "data.split_fractions=[1, 0, 0]"])
    assert config.data.root == "somewhere" and config.data.skip_frames == 3
    assert config.data.crop == [0, 0, 10, 10]
    assert config.data.split_fractions == [1.0, 0.0, 0.0] and isinstance(config.data.split_fractions[0], float)
    assert load_config(str(path), ["data.crop=null"]).data.crop is None
    # YAML 1.1 reads 4e-4 as a string; a float field still takes it.
    assert load_config(str(path), ["training.learning_rate=4e-4"]).training.learning_rate == 4e-4
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(str(path), ["training.learning_rate=fast"])
    assert "skip_frames: 3" in dump_config(config)


@pytest.mark.parametrize("overrides, message", [
    (["data.colour=red"], "unknown key 'data.colour'"),
    (["optimiser.lr=1"], "unknown key 'optimiser'"),
    (["data.skip_frames=two"], "data.skip_frames: expected an integer"),
    (["data.skip_frames=1.5"], "data.skip_frames: expected an integer"),
    (["data.load_masks=1"], "data.load_masks: expected true or false"),
    (["data.input_size=5"], "data.input_size: expected a list"),
    (["data.input_size=[128]"], "data.input_size: must be"),
    (["data.style=tiled"], "data.style: must be one of"),
    (["data.split_fractions=[0.5, 0.1, 0.1]"], "data.split_fractions: must be"),
    (["data.observations_count=0"], "data.observations_count: must be >= 1"),
    (["data.crop=[10, 0, 5, 5]"], "data.crop: must be"),
    (["data.num_workers=-1"], "data.num_workers: must be >= 0"),
    (["loss.code_switch_weight=0"], "loss.code_switch_weight: must be > 0"),
    (["loss.action_mask_prediction_weight=-1"], "loss.action_mask_prediction_weight: must be >= 0"),
    (["model.lma.action_mask_predictor_change_weight=10"],
     "model.lma.action_mask_predictor_change_weight: needs model.lma.action_mask_predictor"),
    (["model.lma.action_mask_predictor=true", "model.lma.action_mask_predictor_change_weight=-1"],
     "model.lma.action_mask_predictor_change_weight: must be >= 0"),
    (["model.lma.action_mask_predictor=true", "model.lma.action_mask_predictor_scale=0"],
     "model.lma.action_mask_predictor_scale: must be >= 1"),
    (["model.lma.decoder_skip=true", "model.lma.decoder_skip_mask=true", "model.lma.decoder_mask_prediction=true"],
     "model.lma.decoder_mask_prediction: needs model.lma.action_mask_predictor"),
    (["model.lma.action_mask_predictor=true", "model.lma.decoder_mask_prediction=true"],
     "model.lma.decoder_mask_prediction: needs"),
    (["training.action_freeze_step=-1"], "training.action_freeze_step: must be >= 0"),
    (["loss.action_slowness_weight=-1"], "loss.action_slowness_weight: must be >= 0"),
    (["loss.action_slowness_weight=1", "model.lma.use_gumbel=true"], "loss.action_slowness_weight: is taken on the VQ"),
    (["data=3"], "data: expected a mapping"),
    (["data.root"], "must look like key.subkey=value"),
    (["=3"], "override '=3': the key before '=' has an empty part"),
    (["training..batch_size=2"], "override 'training..batch_size=2': the key before '=' has an empty part"),
    (["data.root.=x"], "override 'data.root.=x': the key before '=' has an empty part"),
    (["training.cpu_kernels=fast"], "training.cpu_kernels: must be one of"),
    (["training.winograd=3"], "training.winograd: expected true or false"),
])
def test_bad_values_name_the_key(tmp_path, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text("name: test\n")
    with pytest.raises(ConfigError, match=message) as error:
        load_config(str(path), overrides)
    # A bad value is reported against the file it was loaded with; a malformed override is the command line's.
    assert str(error.value).startswith("override" if message.startswith(("must look", "override")) else str(path))


@pytest.mark.parametrize("stored, overrides, expected", [
    ("winograd: true", [], "native"), ("winograd: false", [], "plain"),
    ("winograd: false", ["training.cpu_kernels=torch"], "torch")])
def test_the_old_winograd_key_is_read_as_cpu_kernels(tmp_path, capsys, stored, overrides, expected):
    # config.yaml of runs started before training.cpu_kernels replaced training.winograd
    path = tmp_path / "config.yaml"
    path.write_text(f"training:\n  {stored}\n")
    config = load_config(str(path), overrides)
    assert config.training.cpu_kernels == expected and "winograd" not in dump_config(config)
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "training.winograd" in warning and "training.cpu_kernels" in warning


def test_a_partial_section_keeps_the_fields_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  ground_truth_steps:\n    start: 4\n")
    config = load_config(str(path), ["training.observations_count.end=11"])
    assert config.training.ground_truth_steps.start == 4
    assert config.training.ground_truth_steps.end == 1 and config.training.ground_truth_steps.steps == 25_000
    assert config.training.observations_count.end == 11 and config.training.observations_count.start == 6
    assert Config().training.ground_truth_steps.start == 5, "defaults are not modified in place"


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(str(tmp_path / "missing.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as error:
        load_config(str(broken))
    assert "\n" not in str(error.value) and "line 2" in str(error.value)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(listing))
    with pytest.raises(ConfigError, match="a folder, not a configuration file"):
        load_config(str(tmp_path))
    image = tmp_path / "image.yaml"
    image.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(ConfigError, match="image.yaml: not a text file"):
        load_config(str(image))


@pytest.mark.parametrize("text", ["", "\n  \n", "# only a comment\n\n# and another\n"])
def test_an_empty_file_is_refused_not_read_as_all_defaults(tmp_path, text):
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    with pytest.raises(ConfigError, match="empty.yaml: the configuration file is empty") as error:
        load_config(str(empty))
    assert "\n" not in str(error.value)
    (tmp_path / "child.yaml").write_text("base: empty.yaml\nname: child\n")
    with pytest.raises(ConfigError, match="empty.yaml: the configuration file is empty"):
        load_config(str(tmp_path / "child.yaml"))


def test_a_base_file_is_overridden_recursively(tmp_path):
    (tmp_path / "main.yaml").write_text(
        "name: main\ndata:\n  root: videos\n  input_size: [64, 32]\n"
        "training:\n  ground_truth_steps: {start: 4, end: 2}\n  lr_milestones: [10, 20]\n")
    (tmp_path / "ablations").mkdir()
    (tmp_path / "ablations" / "middle.yaml").write_text(
        "base: ../main.yaml\nname: middle\ndata:\n  input_size: [32, 32]\ntraining:\n  ground_truth_steps: {end: 1}\n")
    (tmp_path / "ablations" / "leaf.yaml").write_text("base: middle.yaml\ntraining:\n  lr_milestones: [5]\n")
    config = load_config(str(tmp_path / "ablations" / "leaf.yaml"), ["data.skip_frames=2"])
    assert config.name == "middle" and config.data.root == "videos"
    assert config.data.input_size == [32, 32], "a list replaces the base's list"
    assert (config.training.ground_truth_steps.start, config.training.ground_truth_steps.end) == (4, 1)
    assert config.training.lr_milestones == [5] and config.data.skip_frames == 2


def test_bad_base_files(tmp_path):
    (tmp_path / "missing_base.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml: configuration file not found"):
        load_config(str(tmp_path / "missing_base.yaml"))
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle of bases"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "number.yaml").write_text("base: 3\n")
    with pytest.raises(ConfigError, match="base: expected the path"):
        load_config(str(tmp_path / "number.yaml"))
    (tmp_path / "unknown.yaml").write_text("base: b2.yaml\ndata:\n  rot: x\n")
    (tmp_path / "b2.yaml").write_text("name: b2\n")
    with pytest.raises(ConfigError, match="unknown key 'data.rot'"):
        load_config(str(tmp_path / "unknown.yaml"))
