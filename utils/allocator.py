"""glibc's allocator settings for training on the CPU: large blocks stay in the process.

PyTorch's CPU tensors come straight from `malloc`. glibc serves blocks above its mmap
threshold (128 KiB, adaptive up to 32 MiB) with a fresh `mmap` and returns them on `free`,
and it trims the heap top on free; either way the next tensor of that size starts on pages
the kernel must zero and map again (a page fault per 4 KiB). A training step allocates and
frees tens of GB of activations, so on a 2-core machine that costs seconds per step (figures
in README "Benchmarks"). These settings make glibc keep freed memory for reuse (the process's
resident memory stays near its peak instead of shrinking between steps).

The settings are read by glibc when a process starts, so `restart_with_malloc_tuning()`
re-executes the script with them in GLIBC_TUNABLES (same arguments, same process id, before
torch is imported), and only for a CPU process of train.py or evaluate.py: since torch is not imported yet, the
device is read from the command line (`trains_on_the_cpu`): `--device cpu`, or `--device auto`
(the default) where no NVIDIA GPU is visible — no /dev/nvidiaN device node, or CUDA_VISIBLE_DEVICES
hiding them all (empty, or a first entry that is neither an index nor a GPU-/MIG- UUID, such as -1).
Processes it starts inherit the settings: the training processes of `--num-gpus K --device cpu`
(wanted), and DataLoader workers. A forked worker shares the parent's allocator state, so the
environment alone cannot spare it; `reset_malloc_tuning()`, called first in each worker, puts
glibc's starting thresholds back with `mallopt`. GLASS_MALLOC_TUNING=0 turns it all off; it does
nothing where glibc is not the C library, or when GLIBC_TUNABLES already sets them.
"""
from __future__ import annotations

import ctypes
import glob
import os
import platform
import sys
from typing import Dict, List, Mapping, Optional, Sequence

MALLOC_TUNABLES = ("glibc.malloc.mmap_threshold=17179869184"  # 16 GiB: no block is served by its own mmap
                   ":glibc.malloc.trim_threshold=68719476736")  # 64 GiB: the heap top is not given back
OPT_OUT_VARIABLE = "GLASS_MALLOC_TUNING"
NVIDIA_DEVICE_NODES = "/dev/nvidia[0-9]*"  # one per GPU the NVIDIA driver exposes to this machine or container
# mallopt's parameters (malloc.h) and glibc's starting value of both thresholds (DEFAULT_MMAP_THRESHOLD_MIN,
# DEFAULT_TRIM_THRESHOLD).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_START_THRESHOLD = 128 * 1024


def requested_device(arguments: Sequence[str]) -> str:
    """The value of `--device` in a script's arguments as argparse reads it (`--device cpu`, `--device=cpu`,
    or an unambiguous prefix such as `--dev cpu`; the last one counts), 'auto' where it is absent."""
    device = "auto"
    for index, argument in enumerate(arguments):
        if argument == "--":
            break
        name, equals, value = argument.partition("=")
        if len(name) >= len("--de") and "--device".startswith(name):
            if equals:
                device = value
            elif index + 1 < len(arguments):
                device = arguments[index + 1]
    return device


def nvidia_gpu_visible(environment: Mapping[str, str], device_nodes: Optional[Sequence[str]] = None) -> bool:
    """Whether a CUDA program started with `environment` would find an NVIDIA GPU, judged without CUDA: a
    /dev/nvidiaN device node exists (`device_nodes`: those found, for tests) and CUDA_VISIBLE_DEVICES, when set,
    starts with a device (an index ≥ 0, or a GPU-/MIG- UUID; CUDA stops its list at the first entry that is not)."""
    nodes = glob.glob(NVIDIA_DEVICE_NODES) if device_nodes is None else device_nodes
    if not nodes:
        return False
    if "CUDA_VISIBLE_DEVICES" not in environment:
        return True
    first = environment["CUDA_VISIBLE_DEVICES"].split(",")[0].strip()
    return first.isdigit() or first.startswith(("GPU-", "MIG-"))


def trains_on_the_cpu(arguments: Sequence[str], environment: Mapping[str, str],
                      device_nodes: Optional[Sequence[str]] = None) -> bool:
    """Whether train.py (or evaluate.py) with these arguments runs on the CPU: `--device cpu`, or `--device auto`
    (the default) where `nvidia_gpu_visible` finds no GPU."""
    device = requested_device(arguments)
    return device == "cpu" or (device == "auto" and not nvidia_gpu_visible(environment, device_nodes))


def malloc_tuning_applies(environment: Mapping[str, str]) -> bool:
    """Whether a process started with `environment` would benefit from `tuned_environment`."""
    if environment.get(OPT_OUT_VARIABLE, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    return "glibc.malloc.mmap_threshold" not in environment.get("GLIBC_TUNABLES", "")


def tuned_environment(environment: Mapping[str, str]) -> Dict[str, str]:
    """`environment` with the malloc settings added to GLIBC_TUNABLES (others kept); unchanged where they do not
    apply."""
    tuned = dict(environment)
    if malloc_tuning_applies(environment):
        current = environment.get("GLIBC_TUNABLES", "")
        tuned["GLIBC_TUNABLES"] = f"{current}:{MALLOC_TUNABLES}" if current else MALLOC_TUNABLES
    return tuned


def _command_line() -> List[str]:
    return [sys.executable, *sys.orig_argv[1:]]  # interpreter options (-m, -X …) included


def restart_with_malloc_tuning() -> None:
    """Re-execute this process with `tuned_environment` where it applies and `trains_on_the_cpu` says so (call
    first thing in a training or evaluation script's `__main__`, before heavy imports); returns without doing
    anything otherwise."""
    if not malloc_tuning_applies(os.environ) or not sys.executable or not trains_on_the_cpu(sys.argv[1:], os.environ):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, _command_line(), tuned_environment(os.environ))
    except OSError:  # the interpreter cannot be re-executed (an embedded one): go on with glibc's defaults
        return


def reset_malloc_tuning() -> bool:
    """In a process started from a tuned one that is no training process (a DataLoader worker): glibc's starting
    mmap and trim thresholds (128 KiB) again, set with `mallopt` — fixed ones, as mallopt turns glibc's adaptive
    raising of the mmap threshold off —, and the settings taken out of GLIBC_TUNABLES for the processes it starts.
    Returns whether it reset anything (False where the settings are not this process's)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if MALLOC_TUNABLES not in tunables:
        return False
    rest = ":".join(part for part in tunables.replace(MALLOC_TUNABLES, "").split(":") if part)
    if rest:
        os.environ["GLIBC_TUNABLES"] = rest
    else:
        del os.environ["GLIBC_TUNABLES"]
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return (bool(mallopt(_M_MMAP_THRESHOLD, _GLIBC_START_THRESHOLD))
            and bool(mallopt(_M_TRIM_THRESHOLD, _GLIBC_START_THRESHOLD)))
