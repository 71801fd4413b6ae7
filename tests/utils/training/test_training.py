"""The trainer's library pieces: sharded resumable data order, RNG states, stop requests, CPU float settings."""
import os
import random
import signal

import numpy as np
import pytest
import torch

from utils.config import load_config
from utils.distributed import DistributedContext
from utils.errors import DatasetError
from utils.schedules import observations_count_at
from utils.training.batches import ShardSampler, TrainingBatches
from utils.training.state import capture_rng_state, restore_rng_state
from utils.training.stopping import StopRequest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_shards_cover_each_epoch_and_depend_only_on_seed_and_epoch():
    shards = [ShardSampler(7, rank, 2, seed=3) for rank in (0, 1)]
    assert [len(sampler) for sampler in shards] == [4, 4]
    for epoch in (0, 1):
        for sampler in shards:
            sampler.set_epoch(epoch)
        first, second = list(shards[0]), list(shards[1])
        assert sorted(set(first) | set(second)) == list(range(7)), "every item once, one padded repeat"
        assert len(set(first) & set(second)) <= 1
        assert list(ShardSampler(7, 0, 2, seed=3).shard(epoch)) == first, "reproducible from (seed, epoch)"
    assert ShardSampler(7, 0, 1, seed=3).shard(0) != ShardSampler(7, 0, 1, seed=3).shard(1)
    sampler = ShardSampler(7, 0, 1, seed=3)
    sampler.set_epoch(1, start_position=5)
    assert list(sampler) == sampler.shard(1)[5:] and len(sampler) == 2


@pytest.mark.determinism
@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_resumed_stream_continues_with_the_same_batches(dataset_root, num_workers):
    config = load_config(os.path.join(REPOSITORY, "configs", "wsprites.yaml"), [
        f"data.root={dataset_root}", f"data.num_workers={num_workers}", "training.batch_size=2",
        "training.observations_count={start: 2, end: 5, start_step: 0, steps: 6}"])
    context = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))

    def describe(batch):
        return batch["video_index"].tolist(), batch["start_frame"].tolist(), batch["observations"].shape[1]

    stream = TrainingBatches(config, context, first_step=0)
    batches = iter(stream)
    uninterrupted = []
    for step in range(7):
        uninterrupted.append(describe(next(batches)))
        if step == 3:
            state = stream.state()
    assert state == {"epoch": 1, "position": 2}, "3 batches of 2 per epoch: the 4th step ends inside epoch 1"
    assert [length for _, _, length in uninterrupted] == [observations_count_at(config.training, s) for s in range(7)]
    assert len({tuple(videos) for videos, _, _ in uninterrupted[:3]}) == 3

    resumed = iter(TrainingBatches(config, context, first_step=4, **state))
    assert [describe(next(resumed)) for _ in range(3)] == uninterrupted[4:]


def test_too_few_videos_for_a_step_is_a_dataset_error(dataset_root):
    config = load_config(os.path.join(REPOSITORY, "configs", "wsprites.yaml"),
                         [f"data.root={dataset_root}", "training.batch_size=4"])
    context = DistributedContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(DatasetError, match="fewer than the 8 of one step"):
        TrainingBatches(config, context, first_step=0)


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # leaves a cached Gaussian in NumPy's state
    path = str(tmp_path / "rng.pth")
    torch.save(capture_rng_state(torch.device("cpu")), path)
    expected = (random.random(), np.random.normal(), np.random.random(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(torch.load(path, weights_only=True), torch.device("cpu"))
    observed = (random.random(), np.random.normal(), np.random.random(), torch.rand(3))
    assert observed[:3] == expected[:3] and torch.equal(observed[3], expected[3])


def test_stop_request_keeps_the_first_signal_and_restores_handlers():
    previous = signal.getsignal(signal.SIGTERM)
    stop = StopRequest()
    assert not stop.requested
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)  # a second signal while stopping is ignored, not a KeyboardInterrupt
    assert stop.requested and stop.signal_name() == "SIGTERM"
    stop.close()
    assert signal.getsignal(signal.SIGTERM) is previous


@pytest.mark.parametrize("flush", [True, False])
def test_the_cpu_trainer_flushes_denormals_when_configured(flush):
    from tests.small_model import NO_PERCEPTUAL_LOSSES, SMALL_MODEL
    from utils.distributed import initialize
    from utils.training.trainer import Trainer

    config = load_config(os.path.join(REPOSITORY, "configs", "wsprites.yaml"),
                         [*SMALL_MODEL, *NO_PERCEPTUAL_LOSSES, f"training.flush_denormal={str(flush).lower()}"])
    previous = torch.tensor([1e-39]) * 1.0 == 0  # the state before (other tests may have set it)
    try:
        torch.set_flush_denormal(False)
        Trainer(config, initialize("cpu"))
        denormal = torch.tensor([1e-39], dtype=torch.float32)
        assert bool((denormal * 1.0 == 0).item()) is flush
    finally:
        torch.set_flush_denormal(bool(previous.item()))


def test_preserved_buffers_and_random_state_leave_no_trace():
    from utils.training.state import preserved_buffers, preserved_random_state

    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).train()
    before = {name: buffer.clone() for name, buffer in module.named_buffers()}
    references = dict(module.named_buffers())
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    expected = (random.random(), np.random.random(), torch.rand(2))
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    with preserved_random_state(torch.device("cpu")), preserved_buffers(module):
        module(torch.randn(5, 3))  # moves the running statistics and the count
        random.random(), np.random.random()
        assert not torch.equal(module[1].running_mean, before["1.running_mean"])
    assert all(torch.equal(buffer, before[name]) for name, buffer in module.named_buffers())
    assert all(buffer is references[name] for name, buffer in module.named_buffers())  # restored in place
    observed = (random.random(), np.random.random(), torch.rand(2))
    assert observed[:2] == expected[:2] and torch.equal(observed[2], expected[2])


@pytest.mark.determinism
def test_the_trainer_state_round_trips_through_a_weights_only_file(tmp_path, one_torch_thread):
    from tests.small_model import NO_PERCEPTUAL_LOSSES, SMALL_MODEL
    from utils.distributed import initialize
    from utils.training.trainer import Trainer

    config = load_config(os.path.join(REPOSITORY, "configs", "wsprites.yaml"),
                         [*SMALL_MODEL, *NO_PERCEPTUAL_LOSSES, "training.gma_warmup_steps=0",
                          "training.observations_count={start: 3, end: 3}",
                          "training.ground_truth_steps={start: 1, end: 1}"])
    count = observations_count_at(config.training, 0)
    batches = [{"observations": torch.rand(1, count, 3, 96, 128, generator=torch.Generator().manual_seed(seed)) * 2 - 1}
               for seed in range(2)]
    torch.manual_seed(0)
    trained = Trainer(config, initialize("cpu"))
    trained.training_step(batches[0], 0)
    trained.code_usage += torch.arange(trained.code_usage.numel())
    path = str(tmp_path / "trainer.pth")
    torch.save(trained.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert sorted(state) == ["code_usage", "grad_scaler", "model", "optimizer", "scheduler"]

    torch.manual_seed(1)  # other initial weights: everything must come from the state
    resumed = Trainer(config, initialize("cpu"))
    resumed.load_state_dict(state)
    assert torch.equal(resumed.code_usage, trained.code_usage)
    assert resumed.scheduler.state_dict() == trained.scheduler.state_dict()
    torch.manual_seed(2)
    trained.training_step(batches[1], 1)
    torch.manual_seed(2)
    resumed.training_step(batches[1], 1)
    for (name, parameter), other in zip(trained.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(parameter, other), name  # the same step from the same state: bit-identical

    without_usage = {key: value for key, value in state.items() if key != "code_usage"}  # before the codebook options
    fresh = Trainer(config, initialize("cpu"))
    fresh.load_state_dict(without_usage)
    assert not fresh.code_usage.any()


def test_action_freeze_step_holds_what_reads_the_actions_while_the_rest_learns(one_torch_thread):
    """training.action_freeze_step 1: step 0 trains the action encoder, network and codebook; from step 1 on they and
    their BatchNorm statistics stay bit-identical (eval mode), no codebook restart happens although one is due at
    every step, and the dynamics and decoder still learn."""
    from tests.small_model import NO_PERCEPTUAL_LOSSES, SMALL_MODEL
    from utils.distributed import initialize
    from utils.training.trainer import Trainer

    config = load_config(os.path.join(REPOSITORY, "configs", "wsprites.yaml"),
                         [*SMALL_MODEL, *NO_PERCEPTUAL_LOSSES, "training.gma_warmup_steps=0",
                          "training.observations_count={start: 3, end: 3}",
                          "training.ground_truth_steps={start: 2, end: 2}", "model.lma.action_from_masks=true",
                          "training.codebook_restart_every=1", "training.action_freeze_step=1"])
    batches = [{"observations": torch.rand(2, 3, 3, 96, 128, generator=torch.Generator().manual_seed(seed)) * 2 - 1}
               for seed in range(3)]
    torch.manual_seed(0)
    trainer = Trainer(config, initialize("cpu"))
    lma = trainer.model.lma

    def snapshot(module):
        return {name: value.detach().clone() for name, value in [*module.named_parameters(), *module.named_buffers()]}

    def changed(before, module):
        now = snapshot(module)
        return [name for name in before if not torch.equal(before[name], now[name])]

    readers = {"encoder": lma.action_encoder, "network": lma.action_network}
    before = {key: snapshot(module) for key, module in readers.items()}
    decoder_before = snapshot(lma.decoder)
    trainer.training_step(batches[0], 0)
    assert all(changed(before[key], module) for key, module in readers.items())  # they learn before the step
    assert trainer.action_modules_frozen(0) == []
    for step in (1, 2):
        before = {key: snapshot(module) for key, module in readers.items()}
        decoder_before = snapshot(lma.decoder)
        result = trainer.training_step(batches[step], step)
        assert all(changed(before[key], module) == [] for key, module in readers.items()), step
        assert changed(decoder_before, lma.decoder), step
        assert float(result.lma_statistics["codes_restarted"]) == 0
        assert not lma.action_network.training and not lma.action_encoder.training and lma.decoder.training
    assert trainer.action_modules_frozen(5) == [lma.action_encoder, lma.action_network]


def test_gma_freeze_step_holds_the_gma_and_leaves_the_lma_step_as_it_was(one_torch_thread):
    """training.gma_freeze_step 2: steps 0 and 1 train the GMA; at steps 2 and 3 its parameters stay bit-identical
    and no GMA parameter gets a gradient, its loss terms are still reported, and the LMA's step at the freeze is the
    one an unfrozen twin makes on the same batch (the LMA reads the GMA's outputs detached). A freeze inside the GMA
    warm-up is refused."""
    import copy

    from tests.small_model import NO_PERCEPTUAL_LOSSES, SMALL_MODEL
    from utils.distributed import initialize
    from utils.errors import ConfigError
    from utils.schedules import gma_frozen
    from utils.training.trainer import Trainer

    overrides = [*SMALL_MODEL, *NO_PERCEPTUAL_LOSSES, "training.observations_count={start: 3, end: 3}",
                 "training.ground_truth_steps={start: 2, end: 2}"]
    path = os.path.join(REPOSITORY, "configs", "wsprites.yaml")
    with pytest.raises(ConfigError, match="gma_freeze_step"):
        load_config(path, [*overrides, "training.gma_warmup_steps=3", "training.gma_freeze_step=2"])
    with pytest.raises(ConfigError, match="gma_freeze_step"):
        load_config(path, [*overrides, "training.gma_freeze_step=-1"])
    config = load_config(path, [*overrides, "training.gma_warmup_steps=1", "training.gma_freeze_step=2"])
    assert [gma_frozen(config.training, step) for step in range(4)] == [False, False, True, True]
    twin_config = load_config(path, [*overrides, "training.gma_warmup_steps=1"])
    batches = [{"observations": torch.rand(2, 3, 3, 96, 128, generator=torch.Generator().manual_seed(seed)) * 2 - 1}
               for seed in range(4)]
    torch.manual_seed(0)
    trainer = Trainer(config, initialize("cpu"))
    twin = Trainer(twin_config, initialize("cpu"))
    twin.model.load_state_dict(copy.deepcopy(trainer.model.state_dict()))

    def snapshot(module):
        return {name: value.detach().clone() for name, value in module.named_parameters()}

    for step in range(4):
        gma_before = snapshot(trainer.model.gma)
        result = trainer.training_step(batches[step], step)
        twin.training_step(batches[step], step)
        gma_after = snapshot(trainer.model.gma)
        moved = [name for name in gma_before if not torch.equal(gma_before[name], gma_after[name])]
        if step < 2:
            assert moved, step
        else:
            assert moved == [], step
            assert all(parameter.grad is None for parameter in trainer.model.gma.parameters())
            assert all(torch.isfinite(result.loss.terms[name]) for name in ("reconstruction_loss", "background_loss"))
            twin_gma = snapshot(twin.model.gma)
            assert any(not torch.equal(twin_gma[name], gma_after[name]) for name in twin_gma), "the twin's GMA learns"
        if step in (1, 2):  # the LMA trains from step 1; at step 2 both GMAs are still the same, so are its inputs
            for (name, ours), (_, theirs) in zip(trainer.model.lma.named_parameters(),
                                                 twin.model.lma.named_parameters()):
                assert torch.equal(ours, theirs), (step, name)


def test_gma_freeze_average_freezes_the_gma_at_its_moving_average(one_torch_thread):
    """training.gma_freeze_average: at the freeze step (2) the GMA's parameters become the moving average's after
    step 1, and stay so; the LMA's do not. It is refused without the freeze or without an average."""
    from tests.small_model import NO_PERCEPTUAL_LOSSES, SMALL_MODEL
    from utils.distributed import initialize
    from utils.errors import ConfigError
    from utils.training.trainer import Trainer

    overrides = [*SMALL_MODEL, *NO_PERCEPTUAL_LOSSES, "training.observations_count={start: 3, end: 3}",
                 "training.ground_truth_steps={start: 2, end: 2}", "training.gma_warmup_steps=1",
                 "training.gma_freeze_average=true"]
    path = os.path.join(REPOSITORY, "configs", "wsprites.yaml")
    for missing in (["training.weight_average_decay=0.5"], ["training.gma_freeze_step=2"]):
        with pytest.raises(ConfigError, match="gma_freeze_average"):
            load_config(path, [*overrides, *missing])
    config = load_config(path, [*overrides, "training.weight_average_decay=0.5", "training.gma_freeze_step=2"])
    batches = [{"observations": torch.rand(2, 3, 3, 96, 128, generator=torch.Generator().manual_seed(seed)) * 2 - 1}
               for seed in range(4)]
    torch.manual_seed(0)
    trainer = Trainer(config, initialize("cpu"))
    for step in range(2):
        trainer.training_step(batches[step], step)
    average = {name: tensor.clone() for name, tensor in trainer.weight_average.state_dict().items()}
    gma = [name for name, _ in trainer.model.named_parameters() if name.startswith("gma.")]
    lma = [name for name, _ in trainer.model.named_parameters() if name.startswith("lma.decoder.")]
    parameters = dict(trainer.model.named_parameters())
    assert any(not torch.equal(parameters[name], average[name]) for name in gma), "0.5: the average lags"
    for step in (2, 3):
        trainer.training_step(batches[step], step)
        assert all(torch.equal(parameters[name], average[name]) for name in gma), step
        assert any(not torch.equal(parameters[name], average[name]) for name in lma), step


def test_the_freeze_refits_the_readers_statistics_first_when_asked(one_torch_thread, dataset_root, capsys):
    """training.action_freeze_refit_batches 2: at the freeze step (1) the readers' running statistics become those
    `refit_action_reader_statistics` gives with the weights after step 0 on two training batches; their parameters
    stay as they were, and at step 2 nothing of them changes. A refit without a freeze is refused."""
    import copy

    from model.glass import refit_action_reader_statistics
    from tests.small_model import NO_PERCEPTUAL_LOSSES, SMALL_MODEL
    from utils.distributed import initialize
    from utils.errors import ConfigError
    from utils.evaluation.action_metrics import reader_refit_batches
    from utils.training.trainer import Trainer

    overrides = [*SMALL_MODEL, *NO_PERCEPTUAL_LOSSES, "training.gma_warmup_steps=0", f"data.root={dataset_root}",
                 "training.observations_count={start: 3, end: 3}", "training.ground_truth_steps={start: 2, end: 2}",
                 "model.lma.action_from_masks=true", "evaluation.observations_count=3", "evaluation.batch_size=2",
                 "data.num_workers=0"]
    with pytest.raises(ConfigError, match="action_freeze_refit_batches"):
        load_config(os.path.join(REPOSITORY, "configs", "wsprites.yaml"),
                    [*overrides, "training.action_freeze_refit_batches=2"])
    config = load_config(os.path.join(REPOSITORY, "configs", "wsprites.yaml"),
                         [*overrides, "training.action_freeze_step=1", "training.action_freeze_refit_batches=2"])
    batches = [{"observations": torch.rand(2, 3, 3, 96, 128, generator=torch.Generator().manual_seed(seed)) * 2 - 1}
               for seed in range(3)]
    torch.manual_seed(0)
    trainer = Trainer(config, initialize("cpu"))
    lma = trainer.model.lma
    trainer.training_step(batches[0], 0)
    expected = copy.deepcopy(trainer.model)
    assert refit_action_reader_statistics(expected, reader_refit_batches(config, 2, torch.device("cpu"))) == 2

    def readers(model):
        return {name: value.detach().clone() for name, value in model.state_dict().items()
                if name.startswith(("lma.action_encoder.", "lma.action_network."))}

    before = readers(trainer.model)
    trainer.training_step(batches[1], 1)
    after = readers(trainer.model)
    statistics = [name for name in after if name.endswith(("running_mean", "running_var"))]
    assert statistics and all(not torch.equal(before[name], after[name]) for name in statistics)
    assert all(torch.equal(after[name], value) for name, value in readers(expected).items() if name in statistics)
    assert all(torch.equal(before[name], after[name]) for name in after if name not in statistics
               and not name.endswith("num_batches_tracked"))
    assert "refitted from 2 training batch(es)" in capsys.readouterr().out
    trainer.training_step(batches[2], 2)
    assert all(torch.equal(after[name], value) for name, value in readers(trainer.model).items())
    assert not lma.action_network.training and lma.decoder.training


def test_a_resumed_trainer_takes_a_changed_learning_rate_schedule_from_its_config():
    from tests.small_model import NO_PERCEPTUAL_LOSSES, SMALL_MODEL
    from utils.distributed import initialize
    from utils.training.trainer import Trainer

    overrides = [*SMALL_MODEL, *NO_PERCEPTUAL_LOSSES, "training.learning_rate=0.001"]
    config = load_config(os.path.join(REPOSITORY, "configs", "wsprites.yaml"), overrides)
    trained = Trainer(config, initialize("cpu"))
    for _ in range(6):  # six steps as a run would take them, without computing any
        trained.optimizer.step()
        trained.scheduler.step()
    state = trained.state_dict()

    same = Trainer(config, initialize("cpu"))  # the schedule unchanged: the state as saved
    same.load_state_dict(state)
    assert same.scheduler.state_dict() == trained.scheduler.state_dict()

    changed = load_config(os.path.join(REPOSITORY, "configs", "wsprites.yaml"),
                          [*overrides, "training.lr_milestones=[4,10]", "training.lr_gamma=0.1"])
    resumed = Trainer(changed, initialize("cpu"))
    resumed.load_state_dict(state)
    assert resumed.scheduler.last_epoch == 6
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # milestone 4 passed, 10 not yet
    assert resumed.scheduler.get_last_lr() == [resumed.optimizer.param_groups[0]["lr"]]
    for step in range(6, 11):
        resumed.optimizer.step()
        resumed.scheduler.step()
        expected = 1e-4 if step + 1 < 10 else 1e-5  # the learning rate of the next step
        assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(expected)

    faster = load_config(os.path.join(REPOSITORY, "configs", "wsprites.yaml"),
                         [*overrides, "training.learning_rate=0.002", "training.lr_milestones=[4,10]",
                          "training.lr_gamma=0.1"])
    resumed = Trainer(faster, initialize("cpu"))
    resumed.load_state_dict(state)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(2e-4)  # the new rate, milestone 4 passed
    assert resumed.scheduler.base_lrs == [0.002]
