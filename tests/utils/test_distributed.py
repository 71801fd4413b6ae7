"""Process groups on the CPU (gloo): the replica consistency check, buffers, collectives."""
import os
import traceback

import pytest
import torch
import torch.multiprocessing
from torch import nn

from utils.distributed import (_bit_checksums, all_gather_objects, any_process, average_over_processes, broadcast_buffers,
                               check_replicas_identical, free_port, initialize, shutdown)


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
        with pytest.raises(RuntimeError, match=r"replicas differ in 2 of 7 parameters and buffers, first 1\.running_mean"):
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
