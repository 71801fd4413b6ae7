"""glibc's allocator settings for training on the CPU: large blocks stay in the process.

PyTorch's CPU tensors come straight from `malloc`. glibc serves blocks above its mmap
threshold (128 KiB, adaptive up to 32 MiB) with a fresh `mmap` and returns them on `free`,
and it trims the heap top on free; either way the next tensor of that size starts on pages
the kernel must zero and map again (a page fault per 4 KiB). A training step allocates and
frees tens of GB of activations, so on a 2-core machine that is seconds per step: measured
here, a 100 MB `clone()` runs at 3.7 GB/s fresh and 17 GB/s on reused memory, and a W-Sprites
warm-up step takes 22.2 s instead of 15.4 s (README "Benchmarks"). These settings make glibc
keep freed memory for reuse (the process's resident memory stays near its peak instead of
shrinking between steps).

The settings are read by glibc when a process starts, so `restart_with_malloc_tuning()`
re-executes the script with them in GLIBC_TUNABLES (same arguments, same process id, before
torch is imported). Processes it starts inherit them. GLASS_MALLOC_TUNING=0 turns it off;
it does nothing where glibc is not the C library, or when GLIBC_TUNABLES already sets them.
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Dict, List, Mapping

MALLOC_TUNABLES = ("glibc.malloc.mmap_threshold=17179869184"  # 16 GiB: no block is served by its own mmap
                   ":glibc.malloc.trim_threshold=68719476736")  # 64 GiB: the heap top is not given back
OPT_OUT_VARIABLE = "GLASS_MALLOC_TUNING"


def malloc_tuning_applies(environment: Mapping[str, str]) -> bool:
    """Whether a process started with `environment` would benefit from `tuned_environment`."""
    if environment.get(OPT_OUT_VARIABLE, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    return "glibc.malloc.mmap_threshold" not in environment.get("GLIBC_TUNABLES", "")


def tuned_environment(environment: Mapping[str, str]) -> Dict[str, str]:
    """`environment` with the malloc settings added to GLIBC_TUNABLES (others kept); unchanged where they do not apply."""
    tuned = dict(environment)
    if malloc_tuning_applies(environment):
        current = environment.get("GLIBC_TUNABLES", "")
        tuned["GLIBC_TUNABLES"] = f"{current}:{MALLOC_TUNABLES}" if current else MALLOC_TUNABLES
    return tuned


def _command_line() -> List[str]:
    return [sys.executable, *sys.orig_argv[1:]]  # interpreter options (-m, -X …) included


def restart_with_malloc_tuning() -> None:
    """Re-execute this process with `tuned_environment` where it applies (call first thing in a script's
    `__main__`, before heavy imports); returns without doing anything where it does not."""
    if not malloc_tuning_applies(os.environ) or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, _command_line(), tuned_environment(os.environ))
    except OSError:  # the interpreter cannot be re-executed (an embedded one): go on with glibc's defaults
        return
