"""Process groups on the CPU (gloo): the replica consistency check, buffers, collectives; the launcher."""
import os
import traceback

import pytest
import torch
import torch.multiprocessing
from torch import nn

from utils.distributed import (
    _bit_checksums,
    all_gather_objects,
    any_process,
    average_over_processes,
    broadcast_buffers,
    check_replicas_identical,
    free_port,
    initialize,
    shutdown,
)
from utils.errors import GlassError


def test_checksums_see_any_bit_and_any_swap():
    values = torch.randn(1000)
    reference = _bit_checksums(values)
    flipped = values.clone()
    flipped.view(torch.int32)[17] ^= 1  # the lowest mantissa bit of one value
    swapped = values.clone()
    swapped[[3, 4]] = values[[4, 3]]
    assert torch.equal(_bit_checksums(values.clone()), reference)
    assert not torch.equal(_bit_checksums(flipped), reference)
    assert not torch.equal(_bit_checksums(swapped), reference)
    assert _bit_checksums(torch.tensor(True)).shape == (2,) and _bit_checksums(torch.tensor(3)).dtype == torch.int64


def _two_process_checks(rank: int, port: int, result_folder: str) -> None:
    torch.set_num_threads(1)
    try:
        context = initialize("cpu", rank=rank, world_size=2, local_rank=rank, init_method=f"tcp://127.0.0.1:{port}")
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        model(torch.randn(5, 3) * (rank + 1))  # batch-norm statistics now differ between the processes
        with pytest.raises(RuntimeError,
                           match=r"replicas differ in 2 of 7 parameters and buffers, first 1\.running_mean"):
            check_replicas_identical(context, model)
        broadcast_buffers(context, model)
        check_replicas_identical(context, model)
        with torch.no_grad():
            model[0].bias[2] += rank * 1e-7
        with pytest.raises(RuntimeError, match=r"differ in 1 of 7 .* first 0\.bias"):
            check_replicas_identical(context, model)
        assert any_process(context, rank == 1) and not any_process(context, False)
        assert all_gather_objects(context, {"rank": rank}) == [{"rank": 0}, {"rank": 1}]
        assert torch.equal(average_over_processes(context, torch.tensor([float(rank), 4.0])), torch.tensor([0.5, 4.0]))
        shutdown()
        outcome = "ok"
    except BaseException:  # reported to the test through a file: the child's assertion is the message
        outcome = traceback.format_exc()
    with open(os.path.join(result_folder, f"rank{rank}.txt"), "w", encoding="utf-8") as handle:
        handle.write(outcome)


def test_replica_check_and_collectives_with_two_gloo_processes(tmp_path):
    torch.multiprocessing.spawn(_two_process_checks, args=(free_port(), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        outcome = (tmp_path / f"rank{rank}.txt").read_text()
        assert outcome == "ok", outcome


def test_a_single_process_needs_no_group():
    context = initialize("cpu")
    assert context.is_main and not context.is_distributed
    check_replicas_identical(context, nn.Linear(2, 2))
    assert any_process(context, True) and all_gather_objects(context, 5) == [5]


# --------------------------------------------------------------------------- the launcher of train.py and evaluate.py

TORCHRUN_ENVIRONMENT = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29500"}


@pytest.fixture
def restored_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_cpu_threads_are_the_available_cpus_or_the_requested_ones_shared_by_the_processes(monkeypatch):
    from utils.distributed import cpu_threads_per_process

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    assert [cpu_threads_per_process(processes) for processes in (1, 2, 4, 6, 8)] == [6, 3, 1, 1, 1]
    assert [cpu_threads_per_process(processes, num_threads=5) for processes in (1, 2, 8)] == [5, 2, 1]


@pytest.mark.parametrize("num_gpus, device_kind, num_threads, torchrun, message", [
    (0, "cpu", None, False, "--num-gpus: must be >= 1, got 0"),
    (1, "cpu", 0, False, "--num-threads: must be >= 1, got 0"),
    (2, "cpu", None, True, "--num-gpus: launched by torchrun, whose --nproc-per-node sets the processes; "
                           "drop --num-gpus"),
    (3, "cuda", None, False, "--num-gpus 3: only 2 GPUs are visible"),
])
def test_launch_arguments_fail_with_one_line(monkeypatch, num_gpus, device_kind, num_threads, torchrun, message):
    from utils.distributed import check_launch, launch

    for name in TORCHRUN_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    if torchrun:
        for name, value in TORCHRUN_ENVIRONMENT.items():
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(GlassError) as error:
        check_launch(num_gpus, device_kind, num_threads)
    assert str(error.value) == message
    with pytest.raises(GlassError) as error:  # launch checks them too, before anything runs
        launch(pytest.fail, None, device_kind, num_gpus, num_threads)
    assert str(error.value) == message


def test_launch_runs_one_process_here_with_the_requested_threads(monkeypatch, restored_threads):
    from utils.distributed import launch, launches_single_process

    for name in TORCHRUN_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    assert launches_single_process(1) and not launches_single_process(2)
    seen = []
    assert launch(lambda plan, context: seen.append(("run", plan, context.world_size)) or 0, "plan", "cpu", 1, 3,
                  run_single=lambda plan, context: seen.append(("single", plan, torch.get_num_threads())) or 7) == 7
    assert seen == [("single", "plan", 3)]


def test_launch_under_torchrun_shares_the_cpus_of_the_machine(monkeypatch, restored_threads):
    from utils.distributed import launch, launches_single_process

    for name, value in {**TORCHRUN_ENVIRONMENT, "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    assert not launches_single_process(1)
    seen = []
    status = launch(lambda plan, context: seen.append((plan, context.rank, torch.get_num_threads())) or 0, "plan",
                    "cpu", 1, run_single=pytest.fail)
    assert status == 0 and seen == [("plan", 0, 3)]  # 6 CPUs, 2 processes on this machine
