"""glibc allocator settings: the environment they add, the restart that applies them to CPU training and evaluation,
and their reset in loader workers."""
import os
import subprocess
import sys

import pytest

from utils.allocator import (
    MALLOC_TUNABLES,
    OPT_OUT_VARIABLE,
    malloc_tuning_applies,
    nvidia_gpu_visible,
    requested_device,
    trains_on_the_cpu,
    tuned_environment,
)

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GLIBC = sys.platform.startswith("linux") and __import__("platform").libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not GLIBC, reason="the settings are glibc's: this C library is not glibc")

PRINT_AFTER_RESTART = ("import os, sys; from utils.allocator import restart_with_malloc_tuning; "
                       "restart_with_malloc_tuning(); "
                       "print(os.getpid(), os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")
# MiB of a freed 64 MiB block that stay resident, and GLIBC_TUNABLES, in this process (argument 'here'; 'reset':
# after `reset_malloc_tuning`) or in a forked DataLoader worker that starts with train.py's `start_loader_worker`
# ('worker') or with nothing ('plain worker').
RESIDENT_AFTER_FREE = """
import ctypes, os, sys
from utils.allocator import reset_malloc_tuning

def resident_after_free(_index=0):
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    resident = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    before = resident()
    block = libc.malloc(64 << 20)
    libc.memset(block, 1, 64 << 20)
    libc.free(block)
    return (resident() - before) >> 20, os.environ.get('GLIBC_TUNABLES')

if sys.argv[1].endswith('worker'):
    from torch.utils.data import DataLoader
    from utils.training.batches import start_loader_worker
    loader = DataLoader([0], batch_size=None, num_workers=1, collate_fn=resident_after_free,
                        worker_init_fn=start_loader_worker if sys.argv[1] == 'worker' else None)
    print(*next(iter(loader)))
else:
    if sys.argv[1] == 'reset':
        assert reset_malloc_tuning()
    print(*resident_after_free())
"""


@needs_glibc
def test_tuned_environment_adds_the_settings_and_keeps_other_tunables():
    assert tuned_environment({})["GLIBC_TUNABLES"] == MALLOC_TUNABLES
    other = "glibc.pthread.rseq=0"
    assert tuned_environment({"GLIBC_TUNABLES": other})["GLIBC_TUNABLES"] == f"{other}:{MALLOC_TUNABLES}"
    assert "glibc.malloc.mmap_threshold=17179869184" in MALLOC_TUNABLES


def test_no_change_when_opted_out_or_already_set():
    assert not malloc_tuning_applies({OPT_OUT_VARIABLE: "0"})
    assert "GLIBC_TUNABLES" not in tuned_environment({OPT_OUT_VARIABLE: "0"})
    mine = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}
    assert tuned_environment(mine) == mine


def _run(environment, *arguments):
    command = [sys.executable, "-c", PRINT_AFTER_RESTART, *arguments]
    completed = subprocess.run(command, cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.split(" ", 2)


def _untuned_environment():
    return {key: value for key, value in os.environ.items() if key not in ("GLIBC_TUNABLES", OPT_OUT_VARIABLE)}


@needs_glibc
def test_restart_re_executes_cpu_training_with_the_same_arguments_once():
    environment = _untuned_environment()
    _, tunables, arguments = _run(environment, "--device", "cpu", "an argument")
    assert tunables == MALLOC_TUNABLES and arguments.strip() == "['--device', 'cpu', 'an argument']"
    _, tunables, _ = _run(dict(environment, **{OPT_OUT_VARIABLE: "0"}), "--device", "cpu")
    assert tunables == "None"


@needs_glibc
@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_the_cpu_entry_scripts_restart_with_the_settings_before_their_work(tmp_path, script):
    # a sitecustomize module records each interpreter start's GLIBC_TUNABLES: two starts (the restart) on the CPU,
    # one for --device cuda; --help ends both scripts once their arguments are read
    log = tmp_path / "starts.txt"
    (tmp_path / "sitecustomize.py").write_text(
        f"import os\nwith open({str(log)!r}, 'a') as f:\n    f.write(repr(os.environ.get('GLIBC_TUNABLES')) + '\\n')\n")
    environment = dict(_untuned_environment(), PYTHONPATH=str(tmp_path))
    for device, expected in (("cpu", ["None", repr(MALLOC_TUNABLES)]), ("cuda", ["None"])):
        log.write_text("")
        completed = subprocess.run([sys.executable, script, "--device", device, "--help"], cwd=REPOSITORY,
                                   env=environment, capture_output=True, text=True, timeout=120)
        assert completed.returncode == 0 and "usage:" in completed.stdout, completed.stderr
        assert log.read_text().split() == expected, device


@needs_glibc
def test_no_restart_for_a_gpu_run():
    _, tunables, arguments = _run(_untuned_environment(), "--device=cuda", "an argument")
    assert tunables == "None" and arguments.strip() == "['--device=cuda', 'an argument']"


def test_the_device_is_read_from_the_command_line_as_argparse_reads_it():
    assert requested_device([]) == "auto" and requested_device(["training.seed=1", "--dry-run"]) == "auto"
    assert requested_device(["--device", "cpu"]) == requested_device(["--device=cpu"]) == "cpu"
    assert requested_device(["--dev", "cuda"]) == "cuda"  # argparse takes unambiguous prefixes
    assert requested_device(["--device", "cpu", "--device", "cuda"]) == "cuda"  # the last one counts
    assert requested_device(["--", "--device", "cpu"]) == "auto"


def test_auto_trains_on_the_cpu_where_no_nvidia_gpu_is_visible():
    gpu, none = ["/dev/nvidia0"], []
    assert nvidia_gpu_visible({}, gpu) and not nvidia_gpu_visible({}, none)
    for hidden in ("", "-1", "none", " -1,0"):
        assert not nvidia_gpu_visible({"CUDA_VISIBLE_DEVICES": hidden}, gpu), hidden
    for shown in ("0", "1,0", "GPU-8a6a2d1e-7c3f", "MIG-5f4c"):
        assert nvidia_gpu_visible({"CUDA_VISIBLE_DEVICES": shown}, gpu), shown
    assert trains_on_the_cpu([], {}, none) and not trains_on_the_cpu([], {}, gpu)
    assert trains_on_the_cpu(["--device", "cpu"], {}, gpu) and not trains_on_the_cpu(["--device", "cuda"], {}, none)
    assert trains_on_the_cpu(["--device", "auto"], {"CUDA_VISIBLE_DEVICES": ""}, gpu)


def _resident_after_free(environment, mode):
    command = [sys.executable, "-c", RESIDENT_AFTER_FREE, mode]
    completed = subprocess.run(command, cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    resident, tunables = completed.stdout.split()
    return int(resident), tunables


@needs_glibc
def test_loader_workers_get_glibcs_settings_back():
    environment = dict(_untuned_environment(), OMP_NUM_THREADS="1")
    tuned = tuned_environment(environment)
    kept, tunables = _resident_after_free(tuned, "here")
    assert kept >= 60 and tunables == MALLOC_TUNABLES  # kept for reuse: the point of the settings
    assert abs(_resident_after_free(environment, "here")[0]) <= 4  # glibc's own: a block this large is given back
    kept, tunables = _resident_after_free(tuned, "reset")
    assert abs(kept) <= 4 and tunables == "None"
    # a forked DataLoader worker of a tuned process inherits its allocator state; train.py's worker_init_fn resets it
    kept, tunables = _resident_after_free(tuned, "plain worker")
    assert kept >= 60 and tunables == MALLOC_TUNABLES
    kept, tunables = _resident_after_free(tuned, "worker")
    assert abs(kept) <= 4 and tunables == "None"
