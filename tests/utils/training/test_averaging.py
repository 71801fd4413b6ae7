"""training.weight_average_decay (utils/training/averaging.py): the moving average of the weights — its formula, what
it copies instead of averaging, that it leaves training as it was, its checkpoint entry and resume, and the scripts
reading it (load_trained_model, --trained-weights)."""
import os
import shutil

import pytest
import torch
from torch import nn

from tests.small_model import small_trainer
from utils.checkpoint import AVERAGED_MODEL_KEY
from utils.config import load_config
from utils.errors import GlassError
from utils.training.averaging import (
    WeightAverage,
    average_decay_at,
    module_state_keys,
    parameter_state_key,
    weights_swapped_in,
)
from utils.training.trainer import Trainer

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_decay_warms_up_then_holds_at_the_configured_value():
    assert average_decay_at(0.999, 0) == pytest.approx(0.1)
    assert average_decay_at(0.999, 90) == pytest.approx(0.91)
    assert average_decay_at(0.999, 100_000) == 0.999
    assert average_decay_at(0.5, 90) == 0.5


def test_the_average_follows_the_formula_and_copies_integers_and_the_keys_it_is_given():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    average = WeightAverage(module, 0.9)
    start = {name: tensor.clone() for name, tensor in module.state_dict().items()}
    with torch.no_grad():
        module[0].weight.add_(1.0)
        module[0].bias.add_(2.0)
        module[1].running_mean.add_(3.0)
        module[1].num_batches_tracked.add_(5)
    average.update(module, step=1000, copied={"0.bias"})  # decay 0.9
    state = average.state_dict()
    assert torch.allclose(state["0.weight"], start["0.weight"] + 0.1)
    assert torch.allclose(state["1.running_mean"], start["1.running_mean"] + 0.3)  # statistics are averaged too
    assert torch.equal(state["0.bias"], module[0].bias.detach())  # copied, not averaged
    assert int(state["1.num_batches_tracked"]) == 5
    assert torch.equal(state["1.weight"], start["1.weight"])  # unchanged weights stay
    average.update(module, step=0)  # the warm-up: decay 0.1 at the first step
    assert torch.allclose(state["0.weight"], 0.1 * (start["0.weight"] + 0.1) + 0.9 * module[0].weight.detach())
    average.load_state_dict(module.state_dict())  # restarted at the weights
    assert all(torch.equal(state[name], tensor) for name, tensor in module.state_dict().items())
    with pytest.raises(ValueError, match="decay must be in"):
        WeightAverage(module, 1.0)


def test_weights_swapped_in_holds_the_state_inside_and_restores_the_own_weights_after_anything():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    own = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    other = {name: tensor + 1 if tensor.is_floating_point() else tensor + 5 for name, tensor in own.items()}
    with pytest.raises(RuntimeError, match="inside"):
        with weights_swapped_in(model, other):
            assert all(torch.equal(model.state_dict()[name], other[name]) for name in own)
            with torch.no_grad():
                model[0].weight.mul_(3)  # whatever the block does to the weights
            raise RuntimeError("inside")
    assert all(torch.equal(model.state_dict()[name], own[name]) for name in own)
    with weights_swapped_in(model, None):
        assert all(torch.equal(model.state_dict()[name], own[name]) for name in own)


def test_state_keys_of_submodules_and_parameters():
    module = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    assert module_state_keys(module, [module[1]]) == {"1.weight", "1.bias", "1.running_mean", "1.running_var",
                                                     "1.num_batches_tracked"}
    assert parameter_state_key(module, module[0].bias) == "0.bias"
    with pytest.raises(KeyError):
        parameter_state_key(module, nn.Parameter(torch.zeros(1)))


# --------------------------------------------------------------------------- in the trainer

def trainer(*overrides: str) -> Trainer:
    """A Trainer of the small model for 32×16 frames, two LMA steps after a one-step warm-up."""
    return small_trainer(*overrides)


def batch(step: int) -> dict:
    return {"observations": torch.rand(2, 3, 3, 16, 32, generator=torch.Generator().manual_seed(step)) * 2 - 1}


@pytest.mark.determinism
def test_the_average_leaves_training_bit_identical_and_copies_the_codebook_when_k_means_moves_it():
    plain = trainer("training.codebook_kmeans_init=true")
    averaging = trainer("training.codebook_kmeans_init=true", "training.weight_average_decay=0.5")
    assert plain.weight_average is None and averaging.weight_average is not None
    codebook = parameter_state_key(averaging.model, averaging.model.lma.action_network.codebook)
    for step in range(3):
        plain.training_step(batch(step), step)
        averaging.training_step(batch(step), step)
        if step == 1:  # the first LMA step: k-means sets the codebook, which the average copies as it is
            assert torch.equal(averaging.weight_average.state_dict()[codebook],
                               averaging.model.lma.action_network.codebook.detach())
    trained, averaged = averaging.model.state_dict(), averaging.weight_average.state_dict()
    for name, tensor in plain.model.state_dict().items():
        assert torch.equal(tensor, trained[name]), name  # the average changes nothing in training
    moved = [name for name, tensor in trained.items()
             if tensor.is_floating_point() and not torch.equal(tensor, averaged[name])]
    assert codebook in moved and any(name.startswith("gma.") for name in moved)
    assert any(name.startswith("lma.decoder.") for name in moved)


def test_frozen_action_readers_are_copied_into_the_average():
    averaging = trainer("training.weight_average_decay=0.5", "training.action_freeze_step=2",
                        "model.lma.action_from_masks=true")
    readers = module_state_keys(averaging.model, averaging.model.lma.action_readers())
    assert readers
    for step in range(4):
        averaging.training_step(batch(step), step)
        trained, averaged = averaging.model.state_dict(), averaging.weight_average.state_dict()
        differing = {name for name in readers if not torch.equal(trained[name], averaged[name])}
        if step == 1:  # readers still learning: averaged
            assert differing
        if step >= 2:  # frozen: the average reads the same codes as the trained weights
            assert not differing, sorted(differing)[:3]
    assert any(not torch.equal(trained[name], averaged[name]) for name in trained if name.startswith("lma.decoder."))


def test_the_average_round_trips_through_the_trainer_state_and_starts_at_weights_without_one(capsys):
    first = trainer("training.weight_average_decay=0.5")
    for step in range(2):
        first.training_step(batch(step), step)
    state = first.state_dict()
    assert AVERAGED_MODEL_KEY in state
    resumed = trainer("training.weight_average_decay=0.5")
    resumed.load_state_dict(state)
    assert all(torch.equal(tensor, state[AVERAGED_MODEL_KEY][name])
               for name, tensor in resumed.weight_average.state_dict().items())
    # a run trained without the average, resumed with it: the average starts at the trained weights, and says so
    without = {key: value for key, value in state.items() if key != AVERAGED_MODEL_KEY}
    started = trainer("training.weight_average_decay=0.5")
    started.load_state_dict(without)
    assert all(torch.equal(tensor, state["model"][name])
               for name, tensor in started.weight_average.state_dict().items())
    assert "the average starts at its trained weights" in capsys.readouterr().out
    # and the other way round: the average is dropped with a warning
    plain = trainer()
    plain.load_state_dict(state)
    assert plain.weight_average is None and "averaged weights are dropped" in capsys.readouterr().out


def test_a_damaged_average_stops_a_resume_in_one_line():
    from utils.training.state import resume_training

    averaging = trainer("training.weight_average_decay=0.5")
    state = {**averaging.state_dict(), AVERAGED_MODEL_KEY: [1, 2]}
    with pytest.raises(GlassError, match=r"^ckpt\.pth: its averaged weights \('averaged_model'\) do not fit the model "
                                         r"\(the file holds a list, not a state dict\)$"):
        resume_training(averaging, state, "ckpt.pth")


def test_the_decay_must_be_below_one():
    with pytest.raises(GlassError, match="training.weight_average_decay: must be in"):
        load_config(os.path.join(REPOSITORY, "configs", "wsprites.yaml"), ["training.weight_average_decay=1.0"])


# --------------------------------------------------------------------------- reading it

@pytest.fixture
def averaged_run(trained_run, tmp_path):
    """A copy of the trained run whose latest checkpoint also holds an average: the trained weights + 0.25."""
    folder = tmp_path / "runs" / "tiny"
    shutil.copytree(trained_run["run_folder"], folder)
    path = folder / "checkpoints" / "latest.pth"
    state = torch.load(path, weights_only=True)
    state[AVERAGED_MODEL_KEY] = {name: tensor + 0.25 if tensor.is_floating_point() else tensor.clone()
                                 for name, tensor in state["model"].items()}
    os.remove(path)  # a hard link to step_4.pth: write a file of its own
    torch.save(state, path)
    return {**trained_run, "runs_dir": str(tmp_path / "runs"), "run_folder": str(folder), "state": state}


def test_scripts_read_the_average_unless_asked_for_the_trained_weights(averaged_run):
    from model.trained import load_trained_model

    state = averaged_run["state"]
    averaged = load_trained_model(averaged_run["run_folder"])
    assert averaged.averaged and averaged.describe_weights() == "averaged weights"
    loaded = averaged.model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in state[AVERAGED_MODEL_KEY].items())
    trained = load_trained_model(averaged_run["run_folder"], trained_weights=True)
    assert not trained.averaged and trained.describe_weights() == "trained weights"
    loaded = trained.model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in state["model"].items())
    assert not load_trained_model(averaged_run["run_folder"], step=2).averaged  # a checkpoint without an average


def test_evaluate_records_which_weights_it_read(averaged_run, capsys):
    import json

    import evaluate

    arguments = ["--run-name", "tiny", "--runs-dir", averaged_run["runs_dir"], "--device", "cpu", "--no-progress"]
    assert evaluate.main(arguments) == 0
    assert "(step 4, averaged weights)" in capsys.readouterr().out
    assert evaluate.main([*arguments, "--trained-weights"]) == 0
    assert "(step 4, trained weights)" in capsys.readouterr().out
    with open(os.path.join(averaged_run["run_folder"], "metrics", "evaluate-val-one_step.jsonl"),
              encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    assert [record["weights"] for record in records] == ["averaged", "trained"]
    pictures = sorted(name for name in os.listdir(os.path.join(averaged_run["run_folder"], "metrics"))
                      if name.endswith("-confusion.png"))
    assert pictures == ["evaluate-val-one_step-step_000004-confusion.png",
                        "evaluate-val-one_step-step_000004-trained-weights-confusion.png"]
    assert records[0]["results"]["gt/mask_iou"] != records[1]["results"]["gt/mask_iou"]


def test_play_and_the_generated_videos_name_the_weights_they_read(averaged_run, tmp_path, capsys):
    import json

    import build_evaluation_dataset
    import play
    from data.video_dataset import split_video_folders
    from utils.config import DataConfig
    from utils.evaluation.generated_dataset import default_folder, read_manifest

    image = os.path.join(split_video_folders(DataConfig(root=averaged_run["dataset_root"]), "test")[0], "00000.png")
    common = ["--run-name", "tiny", "--runs-dir", averaged_run["runs_dir"], "--device", "cpu"]
    played = {}
    for extra in ([], ["--trained-weights"]):
        out = str(tmp_path / f"played{len(extra)}")
        assert play.main([*common, "--image", image, "--actions", "right 0", "--out", out, *extra]) == 0
        with open(os.path.join(out, "play.json"), encoding="utf-8") as handle:
            played[len(extra)] = json.load(handle)["weights"]
    assert played == {0: "averaged", 1: "trained"}
    assert "averaged weights" in capsys.readouterr().out
    assert build_evaluation_dataset.main([*common, "--no-progress", "--trained-weights"]) == 0
    folder = default_folder(averaged_run["run_folder"], 4, "one_step", trained_weights=True)
    assert folder.endswith("step_4-one_step-trained-weights") and read_manifest(folder)["weights"] == "trained"
