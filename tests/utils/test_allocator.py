"""glibc allocator settings: the environment they add and the restart that applies them."""
import os
import subprocess
import sys

import pytest

from utils.allocator import MALLOC_TUNABLES, OPT_OUT_VARIABLE, malloc_tuning_applies, tuned_environment

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GLIBC = sys.platform.startswith("linux") and __import__("platform").libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not GLIBC, reason="the settings are glibc's: this C library is not glibc")

PRINT_AFTER_RESTART = ("import os, sys; from utils.allocator import restart_with_malloc_tuning; "
                       "restart_with_malloc_tuning(); print(os.getpid(), os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")


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


def _run(environment):
    command = [sys.executable, "-c", PRINT_AFTER_RESTART, "an argument"]
    completed = subprocess.run(command, cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.split(" ", 2)


@needs_glibc
def test_restart_re_executes_with_the_same_arguments_once():
    environment = {key: value for key, value in os.environ.items() if key not in ("GLIBC_TUNABLES", OPT_OUT_VARIABLE)}
    _, tunables, arguments = _run(environment)
    assert tunables == MALLOC_TUNABLES and arguments.strip() == "['an argument']"
    _, tunables, _ = _run(dict(environment, **{OPT_OUT_VARIABLE: "0"}))
    assert tunables == "None"
