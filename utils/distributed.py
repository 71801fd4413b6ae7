"""Several training processes: starting them, talking between them, and checking that they agree.

A run has one process per GPU (or, on the CPU, per `--num-gpus` process), started by `launch`
(for `train.py` and `evaluate.py`, whose docstrings show the commands) in one of three ways:

- a single process: no process group, every function here is a no-op;
- `--num-gpus K` on one machine: `spawn_local_processes` starts K processes with
  `torch.multiprocessing` and a free localhost TCP port (a fresh rendezvous every time);
- `torchrun`, on one or many machines: the processes meet through the environment it sets
  (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`; env:// rendezvous).

CPU processes share the machine's CPUs by one rule, `cpu_threads_per_process`.

NCCL carries the tensors between GPUs and gloo between CPU processes. Small control messages
(a stop request, RNG states) always go through a gloo group, so they never wait for the GPU.
"""
from __future__ import annotations

import itertools
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing
from torch import nn

from utils.errors import GlassError

DEVICE_CHOICES = ("auto", "cpu", "cuda")
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistributedContext:
    """Where this process stands among the run's processes."""

    rank: int  # 0 … world_size − 1 over all machines
    world_size: int  # number of processes of the run
    local_rank: int  # index of the process on its machine (selects the GPU)
    device: torch.device  # cuda:local_rank, or cpu
    control_group: Any = None  # gloo group for control messages (None: the default group, or no group at all)

    @property
    def is_main(self) -> bool:
        """Rank 0, the only process that writes files and prints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """Whether the environment describes a process group (as `torchrun` sets it up)."""
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


def resolve_device_kind(requested: str) -> str:
    """'cpu' or 'cuda' for `--device auto|cpu|cuda` ('auto' takes CUDA when there is a GPU)."""
    if requested not in DEVICE_CHOICES:
        raise GlassError(f"--device: must be one of {DEVICE_CHOICES}, got {requested!r}")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise GlassError("--device cuda: no CUDA GPU is visible to PyTorch (use --device cpu)")
    return requested


def free_port() -> int:
    """A TCP port that is free on localhost now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def initialize(device_kind: str, rank: int = 0, world_size: int = 1, local_rank: int = 0,
               init_method: Optional[str] = None) -> DistributedContext:
    """Join the run's process group (when `world_size` > 1) and return this process's context.

    `init_method` is 'env://' under torchrun or 'tcp://127.0.0.1:PORT' for spawned processes.
    On CUDA each process takes GPU `local_rank` and NCCL; on the CPU, gloo.
    """
    if device_kind == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise GlassError(f"process {local_rank} of this machine has no GPU: {torch.cuda.device_count()} visible")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    context = DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
    if world_size > 1:
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                device_id=device if device_kind == "cuda" else None)
        # Control messages must not wait for queued GPU work; gloo handles them on the CPU.
        context.control_group = dist.new_group(backend="gloo") if backend == "nccl" else None
    return context


def initialize_from_environment(device_kind: str) -> DistributedContext:
    """`initialize` with the rank, world size and rendezvous that `torchrun` put in the environment."""
    return initialize(device_kind, rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                      local_rank=int(os.environ["LOCAL_RANK"]), init_method="env://")


def shutdown() -> None:
    """Leave the process group, if any."""
    if dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- launching

def _spawned_entry(local_rank: int, worker: Callable[..., None], world_size: int, port: int,
                   worker_arguments: Sequence[Any]) -> None:
    worker(local_rank, world_size, f"tcp://127.0.0.1:{port}", *worker_arguments)


def spawn_local_processes(worker: Callable[..., None], num_processes: int,
                          worker_arguments: Sequence[Any]) -> Optional[int]:
    """Run `worker(local_rank, world_size, init_method, *worker_arguments)` in `num_processes` new processes.

    The rendezvous is a localhost port that is free at launch. SIGINT and SIGTERM received by
    this (parent) process are passed on to the workers, which finish their step, save and
    exit. Returns the number of the signal received, if any, once every worker has ended.
    A worker that fails ends the others; its exit code is raised as `ProcessExitedException`
    (or its exception as `ProcessRaisedException`) by torch.multiprocessing.
    """
    context = torch.multiprocessing.spawn(_spawned_entry,
                                          args=(worker, num_processes, free_port(), tuple(worker_arguments)),
                                          nprocs=num_processes, join=False)
    received: List[int] = []

    def forward_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = {signum: signal.signal(signum, forward_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not context.join():
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return received[0] if received else None


def _worker_process(local_rank: int, world_size: int, init_method: str, run: Callable[[Any, DistributedContext], Any],
                    plan: Any, device_kind: str, threads: Optional[int]) -> None:
    """One of the processes of `run_in_local_processes`; a `GlassError` is printed on one line and exits with 2."""
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        run(plan, initialize(device_kind, local_rank, world_size, local_rank, init_method))
    except GlassError as error:
        print(f"error (process {local_rank}): {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        shutdown()


def run_in_local_processes(run: Callable[[Any, DistributedContext], Any], plan: Any, device_kind: str,
                           num_processes: int, threads: Optional[int]) -> int:
    """`run(plan, context)` in `num_processes` new processes (`spawn_local_processes`; `threads` torch threads
    each, or PyTorch's choice when None); returns the exit status: 0, 2 when a process printed its one-line
    error, or 128 + the number of a SIGINT/SIGTERM received. Other failures of a process are raised."""
    try:
        signal_number = spawn_local_processes(_worker_process, num_processes, (run, plan, device_kind, threads))
    except torch.multiprocessing.ProcessExitedException as error:
        if error.exit_code == 2:
            return 2  # a process printed its one-line error
        raise
    return 128 + signal_number if signal_number is not None else 0


def cpu_threads_per_process(processes_on_this_machine: int, num_threads: Optional[int] = None) -> int:
    """The torch threads of each of `processes_on_this_machine` processes: `num_threads` (an entry script's
    `--num-threads`, the threads of the whole machine) or else the CPUs this process may run on
    (`os.sched_getaffinity`; `os.cpu_count()` where there is none), shared evenly; at least 1."""
    if num_threads is None:
        num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, num_threads // processes_on_this_machine)


def check_launch(num_gpus: int, device_kind: str, num_threads: Optional[int] = None) -> None:
    """The one-line errors of `--num-gpus` and `--num-threads`, for an entry script to raise before any work
    (`launch` checks again)."""
    if num_threads is not None and num_threads < 1:
        raise GlassError(f"--num-threads: must be >= 1, got {num_threads}")
    if num_gpus < 1:
        raise GlassError(f"--num-gpus: must be >= 1, got {num_gpus}")
    if launched_by_torchrun() and num_gpus != 1:
        raise GlassError("--num-gpus: launched by torchrun, whose --nproc-per-node sets the processes; drop --num-gpus")
    if device_kind == "cuda" and num_gpus > torch.cuda.device_count():
        raise GlassError(f"--num-gpus {num_gpus}: only {torch.cuda.device_count()} GPUs are visible")


def launches_single_process(num_gpus: int) -> bool:
    """Whether `launch` runs this process alone: not under torchrun, and `--num-gpus` 1."""
    return not launched_by_torchrun() and num_gpus == 1


def _threads(device_kind: str, processes_on_this_machine: int, num_threads: Optional[int]) -> Optional[int]:
    """Threads to set in each process: on the CPU always, on a GPU only when `--num-threads` asks."""
    if device_kind != "cpu" and num_threads is None:
        return None
    return cpu_threads_per_process(processes_on_this_machine, num_threads)


def launch(run: Callable[[Any, DistributedContext], int], plan: Any, device_kind: str, num_gpus: int,
           num_threads: Optional[int] = None,
           run_single: Optional[Callable[[Any, DistributedContext], int]] = None) -> int:
    """Run `run(plan, context)` in every process of the run and return the exit status, in one of three ways:

    - under `torchrun` (its environment is set): this process joins the group (`initialize_from_environment`)
      and leaves it at the end; its machine's processes are `LOCAL_WORLD_SIZE`;
    - `num_gpus` > 1: `run_in_local_processes` starts that many processes here (`plan` and `run` are pickled,
      so `run` must be a module-level function);
    - otherwise this process alone, without a process group: `run_single(plan, context)` when given (it may
      use what the caller already read, which is not pickled), else `run`.

    Threads (torch.set_num_threads), one rule: with several processes on the CPU each gets
    `cpu_threads_per_process(processes on this machine, num_threads)`; a single process gets `num_threads`
    when given and otherwise keeps PyTorch's choice; on a GPU threads are set only when `num_threads` is given.
    The arguments are checked first (`check_launch`)."""
    check_launch(num_gpus, device_kind, num_threads)
    if launched_by_torchrun():
        threads = _threads(device_kind, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), num_threads)
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            return run(plan, initialize_from_environment(device_kind))
        finally:
            shutdown()
    if not launches_single_process(num_gpus):
        return run_in_local_processes(run, plan, device_kind, num_gpus, _threads(device_kind, num_gpus, num_threads))
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    return (run_single or run)(plan, initialize(device_kind))


# --------------------------------------------------------------------------- collectives

def barrier(context: DistributedContext) -> None:
    """Wait until every process gets here (through the control group, so it never blocks a GPU stream)."""
    if context.is_distributed:
        dist.barrier(group=context.control_group)


def any_process(context: DistributedContext, flag: bool) -> bool:
    """True on every process when `flag` is true on at least one (a CPU all-reduce)."""
    if not context.is_distributed:
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=context.control_group)
    return bool(value.item())


def all_gather_objects(context: DistributedContext, value: Any) -> List[Any]:
    """[value of rank 0, value of rank 1, …] on every process (pickled; small values only)."""
    if not context.is_distributed:
        return [value]
    gathered: List[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value, group=context.control_group)
    return gathered


def average_over_processes(context: DistributedContext, values: torch.Tensor) -> torch.Tensor:
    """The mean of `values` (any shape, on the training device) over the processes."""
    if not context.is_distributed:
        return values
    summed = values.clone()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed / context.world_size


def broadcast_buffers(context: DistributedContext, module: nn.Module) -> None:
    """Give every process rank 0's buffers (batch-norm statistics).

    DistributedDataParallel does this at the start of every forward, so the values used for
    training are always rank 0's; in between, each process's forward has moved its own copy
    with its own batch. Call before saving or checking the replicas.
    """
    broadcast_tensors(context, list(module.buffers()))


def broadcast_tensors(context: DistributedContext, tensors: List[torch.Tensor]) -> None:
    """Give every process rank 0's values of `tensors` (in place; the same list, in the same order, everywhere)."""
    if not context.is_distributed:
        return
    for tensor in tensors:
        dist.broadcast(tensor, src=0)


def _bit_checksums(tensor: torch.Tensor) -> torch.Tensor:
    """Two int64 checksums of a tensor's bytes: their sum and their position-weighted sum.

    Exact integers (no overflow below 2^39 bytes), so equal tensors give equal checksums on
    every process, and a change of any bit, or two values swapped, changes them.
    """
    data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).to(torch.int64)
    weights = torch.arange(data.numel(), device=data.device, dtype=torch.int64) % 65521 + 1
    return torch.stack([data.sum(), (data * weights).sum()])


def check_replicas_identical(context: DistributedContext, module: nn.Module) -> None:
    """Raise `RuntimeError` naming the first parameter or buffer whose bits differ between processes.

    Each process reduces every tensor to checksums (`_bit_checksums`); the element-wise
    minimum and maximum over the processes must be equal. Call `broadcast_buffers` first
    (batch-norm statistics legitimately differ between two forwards).
    """
    if not context.is_distributed:
        return
    named = list(itertools.chain(module.named_parameters(), module.named_buffers()))
    checksums = torch.stack([_bit_checksums(tensor) for _, tensor in named])  # (N, 2) int64
    lowest, highest = checksums.clone(), checksums.clone()
    dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
    dist.all_reduce(highest, op=dist.ReduceOp.MAX)
    differing = (lowest != highest).any(dim=1).nonzero().flatten().tolist()
    if differing:
        names = [named[index][0] for index in differing]
        raise RuntimeError(f"the {context.world_size} model replicas differ in {len(names)} of {len(named)} parameters "
                           f"and buffers, first {names[0]} "
                           f"(all: {', '.join(names[:10])}{' …' if len(names) > 10 else ''})")
