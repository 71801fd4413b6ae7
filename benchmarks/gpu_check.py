"""One unattended check of a GPU machine: every GPU path of the project, each step timed, one report.

    # on a machine with a CUDA GPU: at most 8 minutes (--budget), everything under runs/gpu-check/
    python benchmarks/gpu_check.py
    # where only a few files come back (a lent machine's $OUT): the report, the summary and the logs
    python3 benchmarks/gpu_check.py --out /tmp/gpu-check; status=$?
    cp /tmp/gpu-check/report.json /tmp/gpu-check/summary.txt "$OUT"/
    tar -czf "$OUT"/logs.tgz -C /tmp/gpu-check logs; exit $status
    # a subset (step or group names; what they need runs too), longer timeouts, another folder
    python benchmarks/gpu_check.py --only train,evaluate --timeout-scale 2 --out runs/gpu-check-2

    # the same steps on the CPU at minimal size (small model, a few steps, 1 benchmark repeat): proves the
    # script itself before a GPU sees it (about a minute on 2 idle cores); --device cuda runs that size on a GPU
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu-check-dry

Steps (in this order; `--only` takes their names or groups, e.g. train, torchrun, training-step):

    data                      python -m data.wsprites.generate: a small W-Sprites set (built-in sprites) in OUT/data
    pytest                    python -m pytest --device cuda -m "device or cuda" on the device-parametrised test files
    train-tiny, train-paper   train.py, configs/wsprites-tiny.yaml and configs/wsprites.yaml --random-vgg-weights,
                              a few dozen steps crossing the end of the GMA warm-up (one process)
    resume                    train.py of the paper config again, SIGTERM after some steps (it finishes the step and
                              saves), --resume-step latest to the same N steps, and once more uninterrupted (the
                              control); final weights against train-paper's: both bit-identical on the CPU; on CUDA
                              (cuDNN and atomics are not bit-reproducible) the largest differences are recorded and
                              the resumed run fails only above 10 % of what the weights moved after the stop and above
                              twice the control's share
    torchrun-tiny, torchrun-paper
                              train.py under `python -m torch.distributed.run --standalone` (torchrun; a fresh
                              rendezvous on a free port), one process per GPU (NCCL when more than one; with one GPU
                              train.py makes no process group); --dry-run: 2 CPU processes with gloo
    evaluate, build-evaluation-dataset, evaluate-dataset, play
                              on the train-paper run: evaluate.py, build_evaluation_dataset.py, evaluate_dataset.py
                              --random-feature-weights (every metric whose package is installed: lpips_vgg needs
                              lpips, fid_inception_frames pytorch-fid; --dry-run: mse, motion_mse, psnr, ssim) and one
                              scripted play.py action sequence
    host-syncs                train.py's per-step work (Trainer.training_step and the loss meters) for a warm-up and an
                              LMA step of both configs under torch.cuda.set_sync_debug_mode: how often, and where in
                              Python, a step makes the host wait for the GPU (on the CPU the steps run, nothing is
                              counted)
    training-step-fp32, training-step-bf16, training-step-authors-warmup, training-step-compile
                              benchmarks/training_step.py on configs/wsprites.yaml (random VGG19): s/step, GFLOP/step
                              and peak memory of the warm-up, T 6 and T 12 cases, channels-last on and off; bf16
                              autocast; training.warmup_mode=authors (the LMA run with zero-weighted losses) against
                              our gma_only warm-up; torch.compile. bf16 and compile are CUDA only: on the CPU they are
                              recorded as skipped with the command the GPU run uses

Every step has its own timeout (scaled by --timeout-scale) and the whole run a budget (--budget, 480 s): a step
gets at most what is left, and a step that cannot start in time is recorded as skipped. A failing step is
recorded and the next one runs; a step whose input failed is skipped with the reason. The exit status is 1
when any step failed or was skipped for lack of time or input, 0 otherwise.

Output: OUT/report.json (environment, and per step: name, commands, return code, seconds, the figures parsed
from its output, the tail of its output when it failed), OUT/summary.txt (the same as tables) and
OUT/logs/STEP.log (each step's whole output). OUT is emptied of what an earlier check wrote there; a
folder that an earlier check did not write is refused.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPOSITORY)

from tests.small_model import NO_PERCEPTUAL_LOSSES, SMALL_MODEL  # noqa: E402  (after the repository is on the path)
from utils.cli import run_main  # noqa: E402
from utils.errors import GlassError  # noqa: E402
from utils.files import json_records  # noqa: E402

DEFAULT_OUT = os.path.join("runs", "gpu-check")
MARKER_FILE = ".gpu-check"  # written into OUT, so that a later check may empty it
OWNED_ENTRIES = ("data", "runs", "logs", "bench", "play", "pytest-tmp", "report.json", "summary.txt")
DEFAULT_BUDGET_SECONDS = 480.0
MIN_STEP_SECONDS = 5.0  # a step with less time left than this is skipped
TAIL_CHARACTERS = 4000  # of a failed step's output, in the report
RESUME_CUDA_TOLERANCE = 0.1  # CUDA: the resumed run may differ by this share of what the weights moved after the stop,
RESUME_CUDA_SPREAD_FACTOR = 2.0  # ... or by this many times the share by which a second uninterrupted run differs
TINY_CONFIG = "configs/wsprites-tiny.yaml"
PAPER_CONFIG = "configs/wsprites.yaml"
TEST_FILES = ("tests/model/test_glass.py", "tests/model/test_gma.py", "tests/model/test_lma.py",
              "tests/model/test_losses.py", "tests/model/test_generation.py",
              "tests/utils/evaluation/test_action_metrics.py", "tests/test_play.py")
DRY_RUN_TEST_FILES = ("tests/model/test_gma.py", "tests/model/test_lma.py")  # 3 s; with the losses' 7 s
PLAY_ACTIONS = "right right 1 1 left stay 0*2 down:2 up"  # action ids < 3: valid for the small test model too
DRY_RUN_METRICS = "mse,motion_mse,psnr,ssim"  # the feature-network metrics cost seconds per sequence on a CPU
METRIC_PACKAGES = {"lpips_vgg": "lpips", "fid_inception_frames": "pytorch_fid"}  # imported only by these metrics


# --------------------------------------------------------------------------- sizes and commands

@dataclass
class Sizes:
    """How big each step is: the GPU check, or the minimal `--dry-run`."""

    characters: int  # W-Sprites characters (split 80/10/10 into train/val/test)
    videos_per_character: int
    frames: int  # frames per video
    generation_workers: int
    train_steps: int  # N, optimiser steps of each training run
    warmup_steps: int  # GMA warm-up steps of those runs (the LMA trains after them)
    sigterm_after_rows: int  # the resume step sends SIGTERM once metrics.jsonl has this many rows
    data_workers: int  # data.num_workers of the training runs
    evaluation_observations: int  # evaluation.observations_count (frames per evaluated window)
    evaluation_batch: int
    model_overrides: Tuple[str, ...]  # train.py / training_step.py overrides shrinking the model
    bench_repeats: int
    bench_warmup: int
    bench_fp32_runs: Tuple[Tuple[Tuple[str, ...], str], ...]  # (cases, channels-last) per training_step.py call
    bench_bf16_cases: Tuple[str, ...]
    bench_compile_cases: Tuple[str, ...]
    torchrun_processes: Optional[int]  # CPU processes (gloo) under torchrun; on CUDA always one per visible GPU
    dataset_metrics: Optional[str]  # evaluate_dataset.py --metrics; None: every metric whose package is installed
    bench_threads: Optional[int]  # training_step.py --threads; None: its default
    bench_matmul_size: Optional[int]  # training_step.py --matmul-size (its reference rate); None: its default
    test_files: Tuple[str, ...]  # the pytest step's files (its tests marked `device` or `cuda` run)
    sync_audit_configs: Tuple[str, ...]  # the configs of the host-syncs step
    # Environment variables of every command, where not set already. The dry run uses one OpenMP thread that
    # sleeps when idle: its small steps gain nothing from a second thread, and on a CPU that another job uses,
    # spinning threads made a 6-step training run 13 times slower (94 s instead of 7 s, 2 cores).
    environment: Tuple[Tuple[str, str], ...] = ()


GPU_SIZES = Sizes(characters=48, videos_per_character=2, frames=24, generation_workers=min(8, os.cpu_count() or 1),
                  train_steps=24, warmup_steps=12, sigterm_after_rows=8, data_workers=2, evaluation_observations=12,
                  evaluation_batch=16, model_overrides=(), bench_repeats=5, bench_warmup=2,
                  bench_fp32_runs=((("warmup", "full-t6", "full-t12"), "on"), (("full-t6",), "off")),
                  bench_bf16_cases=("warmup", "full-t6"), bench_compile_cases=("full-t6",), torchrun_processes=None,
                  dataset_metrics=None, bench_threads=None, bench_matmul_size=None, test_files=TEST_FILES,
                  sync_audit_configs=(TINY_CONFIG, PAPER_CONFIG))
DRY_RUN_SIZES = Sizes(characters=6, videos_per_character=2, frames=12, generation_workers=1, train_steps=4,
                      warmup_steps=2, sigterm_after_rows=1, data_workers=0, evaluation_observations=6,
                      evaluation_batch=4,
                      model_overrides=(*SMALL_MODEL, *NO_PERCEPTUAL_LOSSES, "training.batch_size=2"),
                      bench_repeats=1, bench_warmup=0, bench_fp32_runs=((("warmup",), "both"),),
                      bench_bf16_cases=("full-t6",), bench_compile_cases=("full-t6",), torchrun_processes=2,
                      dataset_metrics=DRY_RUN_METRICS, bench_threads=1, bench_matmul_size=256,
                      test_files=DRY_RUN_TEST_FILES, sync_audit_configs=(PAPER_CONFIG,),
                      environment=(("OMP_NUM_THREADS", "1"), ("OMP_WAIT_POLICY", "PASSIVE")))


@dataclass
class Plan:
    """Where everything goes and the commands of every step, for one device and size."""

    out: str  # absolute
    device: str  # 'cpu' or 'cuda'
    dry_run: bool
    sizes: Sizes
    inject_failure: Optional[str] = None  # a step whose first command gets an unknown option (tests only)

    @property
    def data_root(self) -> str:
        return os.path.join(self.out, "data")

    @property
    def runs_dir(self) -> str:
        return os.path.join(self.out, "runs")

    def log_path(self, step: str) -> str:
        return os.path.join(self.out, "logs", f"{step}.log")

    def run_folder(self, run_name: str) -> str:
        return os.path.join(self.runs_dir, run_name)

    def torchrun_processes(self) -> int:
        """Processes under torchrun: one per visible GPU on CUDA; `sizes.torchrun_processes` on the CPU."""
        if self.device == "cpu":
            return self.sizes.torchrun_processes or 1
        import torch

        return max(1, torch.cuda.device_count())

    def generate_command(self) -> List[str]:
        sizes = self.sizes
        return [sys.executable, "-m", "data.wsprites.generate", "--out", self.data_root,
                "--num-characters", str(sizes.characters), "--videos-per-character", str(sizes.videos_per_character),
                "--frames", str(sizes.frames), "--workers", str(sizes.generation_workers)]

    def pytest_command(self) -> List[str]:
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                os.path.join(self.out, "pytest-tmp"), "--device", self.device, "-m", "device or cuda",
                *self.sizes.test_files]

    def train_overrides(self) -> List[str]:
        """train.py's overrides: the data, N steps crossing the warm-up, a row per step, checkpoint and media at the
        end."""
        sizes = self.sizes
        return [*sizes.model_overrides, f"data.root={self.data_root}", f"data.num_workers={sizes.data_workers}",
                f"training.num_steps={sizes.train_steps}", f"training.gma_warmup_steps={sizes.warmup_steps}",
                "training.log_every=1", f"training.checkpoint_every={sizes.train_steps}",
                f"training.media_every={sizes.train_steps}",
                f"evaluation.observations_count={sizes.evaluation_observations}",
                f"evaluation.batch_size={sizes.evaluation_batch}"]

    def train_command(self, config: str, run_name: str, paper: bool, torchrun: bool = False) -> List[str]:
        launcher = [sys.executable]
        if torchrun:  # the module behind the `torchrun` command
            launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                         str(self.torchrun_processes())]
        return [*launcher, "train.py", "--config", config, "--run-name", run_name, "--runs-dir", self.runs_dir,
                "--device", self.device, "--no-progress", *(["--random-vgg-weights"] if paper else []),
                *self.train_overrides()]

    def resume_command(self, run_name: str) -> List[str]:
        return [sys.executable, "train.py", "--run-name", run_name, "--runs-dir", self.runs_dir, "--resume-step",
                "latest", "--device", self.device, "--no-progress", f"training.num_steps={self.sizes.train_steps}"]

    def run_options(self) -> List[str]:
        """The options of the scripts that read the evaluated run (train-paper's)."""
        return ["--run-name", "paper", "--runs-dir", self.runs_dir, "--device", self.device]

    def bench_command(self, kind: str, cases: Sequence[str], channels_last: str = "config") -> List[str]:
        """benchmarks/training_step.py on the paper config; `kind` is fp32, bf16, compile or authors-warmup."""
        sizes = self.sizes
        extra = {"fp32": [], "bf16": ["--precision", "bf16"], "compile": ["--compile"], "authors-warmup": []}[kind]
        overrides = [*sizes.model_overrides, *(["training.warmup_mode=authors"] if kind == "authors-warmup" else [])]
        return [sys.executable, "benchmarks/training_step.py", "--device", self.device, "--configs", PAPER_CONFIG,
                "--cases", *cases, "--channels-last", channels_last, "--repeats", str(sizes.bench_repeats),
                "--warmup", str(sizes.bench_warmup), *(["--threads", str(sizes.bench_threads)] if sizes.bench_threads
                                                       else []),
                *(["--matmul-size", str(sizes.bench_matmul_size)] if sizes.bench_matmul_size else []),
                *extra, "--json", os.path.join(self.out, "bench", f"{kind}.jsonl"),
                *(["--set", *overrides] if overrides else [])]


# --------------------------------------------------------------------------- running commands

def exited(process: subprocess.Popen) -> bool:
    """Whether `process` has ended, without reaping it (until `wait`, its id and its group's stay reserved)."""
    if process.returncode is not None:
        return True
    return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


class StepFailed(Exception):
    """A step's command failed or its output did not hold what the step checks; `returncode` when a command ended."""

    def __init__(self, message: str, returncode: Optional[int] = None):
        super().__init__(message)
        self.returncode = returncode


class StepRunner:
    """Runs one step's commands into its log file, each within the step's deadline, and remembers them."""

    def __init__(self, plan: Plan, name: str, deadline: float):
        self.plan = plan
        self.name = name
        self.deadline = deadline  # time.monotonic() value
        self.log_path = plan.log_path(name)
        self.commands: List[str] = []
        self.returncode: Optional[int] = None
        self._ended_by_itself = False
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    def _log(self, text: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(text)

    def start(self, command: List[str]) -> subprocess.Popen:
        """Start `command` in its own process group (so that a timeout ends its children too), output to the log."""
        if self.plan.inject_failure == self.name and not self.commands:
            command = [*command, "--no-such-option"]  # rejected by every script's argument parser
        self.commands.append(shlex.join(command))
        self._log(f"$ {shlex.join(command)}\n")
        with open(self.log_path, "a", encoding="utf-8") as log:
            return subprocess.Popen(command, cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL,
                                    env={**dict(self.plan.sizes.environment), **os.environ, "PYTHONUNBUFFERED": "1"},
                                    start_new_session=True)

    def wait(self, process: subprocess.Popen, expected: Sequence[int] = (0,)) -> int:
        """Wait for `process` until the deadline (then kill its group: StepFailed); its status must be in `expected`.
        Whatever it left running in its group (data-loader workers, torchrun's processes) is killed."""
        try:
            while not exited(process) and self.seconds_left() > 0:
                time.sleep(0.05)
        finally:  # a timeout, or Ctrl-C of the check: leave nothing running
            self.end_group(process)
        returncode = process.returncode
        if returncode == -signal.SIGKILL and not self._ended_by_itself:
            self.returncode = None
            self._log("[killed: out of time]\n")
            raise StepFailed(f"timed out: {self.commands[-1]}")
        self.returncode = returncode
        self._log(f"[exit status {returncode}]\n")
        if returncode not in expected:
            raise StepFailed(f"exit status {returncode}: {self.commands[-1]}", returncode)
        return returncode

    def run(self, command: List[str]) -> int:
        return self.wait(self.start(command))

    def end_group(self, process: subprocess.Popen) -> None:
        """SIGKILL the process group of `process` (its leader not yet reaped, so its id names no other group), then
        reap it."""
        self._ended_by_itself = exited(process)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()

    def output(self) -> str:
        if not os.path.isfile(self.log_path):
            return ""
        with open(self.log_path, "r", encoding="utf-8", errors="replace") as handle:
            return handle.read()


# --------------------------------------------------------------------------- parsing

def read_jsonl(path: str) -> List[Dict[str, Any]]:
    """Every record of a JSON-lines file; a line that is not a JSON object is a one-line error naming it."""
    return [record for _, record in json_records(path, strict=True)]


def _median_seconds(rows: Sequence[Dict[str, Any]]) -> Optional[float]:
    rates = [row["steps_per_second"] for row in rows if isinstance(row.get("steps_per_second"), (int, float))
             and row["steps_per_second"] > 0]
    return round(statistics.median(1.0 / rate for rate in rates), 4) if rates else None


def training_figures(plan: Plan, run_name: str, output: str) -> Dict[str, Any]:
    """From a run's metrics.jsonl (one row per step) and its log: steps, the last loss, the median seconds per
    step of the warm-up and of the LMA phase (the first row, which holds the start-up, left out), peak memory."""
    rows = read_jsonl(os.path.join(plan.run_folder(run_name), "metrics.jsonl"))
    if not rows:
        raise StepFailed(f"{run_name}: metrics.jsonl has no rows")
    later = rows[1:] or rows
    launched = re.search(r"(\d+) process\(es\) × batch (\d+) on (\w+)", output)
    figures = {"steps": rows[-1]["step"], "final_loss": rows[-1]["loss"],
               "seconds_per_step_warmup": _median_seconds([row for row in later if not row.get("lma_trained")]),
               "seconds_per_step_lma": _median_seconds([row for row in later if row.get("lma_trained")]),
               "peak_memory_gib": round(max(row.get("memory_gib", 0.0) for row in rows), 3),
               "memory_kind": rows[-1].get("memory_kind")}
    if launched:
        figures.update(processes=int(launched.group(1)), batch_per_process=int(launched.group(2)),
                       device=launched.group(3))
    if "lma_codes_used" in rows[-1]:
        figures["lma_codes_used"] = rows[-1]["lma_codes_used"]
    if not all(isinstance(row["loss"], float) for row in rows):
        raise StepFailed(f"{run_name}: a non-finite loss in metrics.jsonl")
    if rows[-1]["step"] != plan.sizes.train_steps:
        raise StepFailed(f"{run_name}: metrics.jsonl ends at step {rows[-1]['step']}, not {plan.sizes.train_steps}")
    return figures


def pytest_figures(output: str) -> Dict[str, Any]:
    """The counts of pytest's last summary line ('3 passed, 2 skipped, 5 deselected in 4.2s')."""
    lines = [line for line in output.splitlines() if re.search(r"\b(passed|failed|skipped|error)", line)
             and re.search(r"\bin [\d.]+s", line)]
    if not lines:
        return {}
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)",
                                                                   lines[-1])}
    skip_reasons = sorted(set(re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", output, flags=re.MULTILINE)))
    return {**counts, **({"skip_reasons": skip_reasons} if skip_reasons else {})}


BENCH_FIELDS = ("config", "case", "precision", "channels_last", "compile", "batch_size", "observations_count",
                "ground_truth_steps", "lma_trained", "seconds_per_step", "seconds_min", "seconds_max", "gflop_per_step",
                "peak_memory_gib", "step_memory_gib", "memory_kind", "matmul_gflops_before")


def bench_rows(plan: Plan, kind: str) -> List[Dict[str, Any]]:
    path = os.path.join(plan.out, "bench", f"{kind}.jsonl")
    if not os.path.isfile(path):
        return []
    rows = []
    for row in read_jsonl(path):
        kept = {name: row.get(name) for name in BENCH_FIELDS}
        kept["config"] = os.path.basename(str(kept["config"]))
        kept["warmup_mode"] = "authors" if kind == "authors-warmup" else "gma_only"
        for name in ("seconds_per_step", "seconds_min", "seconds_max", "gflop_per_step", "peak_memory_gib",
                     "step_memory_gib", "matmul_gflops_before"):
            if isinstance(kept[name], float):
                kept[name] = round(kept[name], 4)
        rows.append(kept)
    return rows


# --------------------------------------------------------------------------- the steps

def step_data(runner: StepRunner) -> Dict[str, Any]:
    runner.run(runner.plan.generate_command())
    with open(os.path.join(runner.plan.data_root, "metadata.json"), "r", encoding="utf-8") as handle:
        counts = json.load(handle)["counts"]
    return {"videos": counts["videos"], "frames": sum(counts["frames"].values())}


def step_pytest(runner: StepRunner) -> Dict[str, Any]:
    process = runner.start(runner.plan.pytest_command())
    try:
        runner.wait(process)
    except StepFailed as failure:
        raise StepFailed(f"{failure} ({pytest_figures(runner.output()) or 'no summary line'})",
                         failure.returncode) from None
    figures = pytest_figures(runner.output())
    if runner.plan.device == "cuda" and not figures.get("passed"):
        raise StepFailed(f"no test ran on the GPU: {figures}")
    return figures


def _train(runner: StepRunner, config: str, run_name: str, paper: bool, torchrun: bool) -> Dict[str, Any]:
    runner.run(runner.plan.train_command(config, run_name, paper, torchrun))
    return training_figures(runner.plan, run_name, runner.output())


def _count_rows(path: str) -> int:
    if not os.path.isfile(path):
        return 0
    with open(path, "r", encoding="utf-8") as handle:
        return sum(1 for line in handle if line.endswith("\n"))


def compare_checkpoints(reference_path: str, resumed_path: str, stopped_path: str) -> Dict[str, Any]:
    """The resumed run's final state against the uninterrupted one's: whether every weight and optimiser state is
    bit-identical, the largest absolute weight difference, and the largest weight change of the reference
    between the stop and the end (the scale a broken resume would show)."""
    import torch

    def load(path: str) -> Dict[str, Any]:
        return torch.load(path, map_location="cpu", weights_only=True)

    reference, resumed, stopped = load(reference_path), load(resumed_path), load(stopped_path)
    names = [name for name, tensor in reference["model"].items() if tensor.is_floating_point()]
    differences = {name: float((reference["model"][name].double() - resumed["model"][name].double()).abs().max())
                   for name in names if reference["model"][name].numel()}
    worst = max(differences, key=differences.get)
    moved = max(float((reference["model"][name].double() - stopped["model"][name].double()).abs().max())
                for name in names if reference["model"][name].numel())
    weights_identical = all(torch.equal(reference["model"][name], resumed["model"][name])
                            for name in reference["model"])
    optimizer_identical = all(
        torch.equal(first[key], second[key]) if isinstance(first[key], torch.Tensor) else first[key] == second[key]
        for first, second in zip(reference["optimizer"]["state"].values(), resumed["optimizer"]["state"].values())
        for key in first)
    return {"reference_step": int(reference["step"]), "resumed_step": int(resumed["step"]),
            "stopped_at_step": int(stopped["step"]), "bit_identical": weights_identical and optimizer_identical,
            "weights_bit_identical": weights_identical, "optimizer_bit_identical": optimizer_identical,
            "max_abs_difference": differences[worst], "max_abs_difference_tensor": worst,
            "max_weight_change_after_stop": moved,
            "difference_over_change": differences[worst] / moved if moved > 0 else None,
            "data_position_equal": reference["data"] == resumed["data"],
            "cpu_rng_equal": torch.equal(reference["rng"][0]["torch"], resumed["rng"][0]["torch"])}


def step_resume(runner: StepRunner) -> Dict[str, Any]:
    """train-paper's run again, stopped by SIGTERM after `sigterm_after_rows` steps, resumed to the same N steps."""
    plan, run_name = runner.plan, "paper-sigterm"
    metrics_path = os.path.join(plan.run_folder(run_name), "metrics.jsonl")
    process = runner.start(plan.train_command(PAPER_CONFIG, run_name, paper=True))
    try:
        while (_count_rows(metrics_path) < plan.sizes.sigterm_after_rows and not exited(process)
               and runner.seconds_left() > 0):
            time.sleep(0.05)
        if not exited(process) and runner.seconds_left() > 0:
            os.kill(process.pid, signal.SIGTERM)  # train.py alone, as a job scheduler does
    except BaseException:
        runner.end_group(process)
        raise
    runner.wait(process, expected=(128 + signal.SIGTERM,))
    stopped_path = os.path.join(plan.run_folder(run_name), "checkpoints", "latest.pth")
    output = runner.output()
    match = re.search(r"stopped by SIGTERM after step (\d+)", output)
    if not match or not os.path.isfile(stopped_path):
        raise StepFailed("train.py did not report stopping by SIGTERM with a checkpoint")
    stopped_step = int(match.group(1))
    if not plan.sizes.sigterm_after_rows <= stopped_step < plan.sizes.train_steps:
        raise StepFailed(f"stopped at step {stopped_step}: outside [{plan.sizes.sigterm_after_rows}, "
                         f"{plan.sizes.train_steps}), the resume would check nothing")
    shutil.copyfile(stopped_path, os.path.join(plan.out, "runs", f"{run_name}-stopped.pth"))
    runner.run(plan.resume_command(run_name))
    figures = compare_checkpoints(os.path.join(plan.run_folder("paper"), "checkpoints", "latest.pth"),
                                  os.path.join(plan.run_folder(run_name), "checkpoints", "latest.pth"),
                                  os.path.join(plan.out, "runs", f"{run_name}-stopped.pth"))
    # The control: train-paper's run once more, uninterrupted. On the CPU it must be bit-identical; on CUDA it shows
    # how far two runs of one command drift apart (cuDNN algorithms, atomics: on an H200 the losses of two such runs
    # already differed in the third digit at step 7), the spread a working resume cannot be asked to beat.
    runner.run(plan.train_command(PAPER_CONFIG, "paper-control", paper=True))
    control = compare_checkpoints(os.path.join(plan.run_folder("paper"), "checkpoints", "latest.pth"),
                                  os.path.join(plan.run_folder("paper-control"), "checkpoints", "latest.pth"),
                                  os.path.join(plan.out, "runs", f"{run_name}-stopped.pth"))
    os.remove(os.path.join(plan.out, "runs", f"{run_name}-stopped.pth"))
    figures.update({"control_bit_identical": control["bit_identical"],
                    "control_max_abs_difference": control["max_abs_difference"],
                    "control_difference_over_change": control["difference_over_change"]})
    figures["device"] = plan.device
    if figures["resumed_step"] != plan.sizes.train_steps or not figures["data_position_equal"]:
        raise StepFailed(f"the resumed run ended at step {figures['resumed_step']} with data position equal "
                         f"{figures['data_position_equal']}")
    if plan.device != "cpu":
        figures["note"] = ("CUDA kernels are not bit-reproducible (cuDNN algorithms, atomics), so the resumed run may "
                           "differ as a second uninterrupted run does (control_*); a broken resume differs by about "
                           "what the weights moved after the stop")
    failure = resume_failure(figures, plan.device)
    if failure:
        raise StepFailed(failure)
    return figures


def resume_failure(figures: Dict[str, Any], device: str) -> Optional[str]:
    """Why the resume step fails, from `step_resume`'s figures, or None. CPU: the resumed run and the control must
    both be bit-identical to the uninterrupted run. CUDA: the resumed run's largest weight difference may be up to
    `RESUME_CUDA_TOLERANCE` of what the weights moved after the stop, or `RESUME_CUDA_SPREAD_FACTOR` times the
    control's share, whichever is larger."""
    if device == "cpu":
        if not figures["bit_identical"]:
            return (f"CPU: the resumed run is not bit-identical to the uninterrupted one (max abs difference "
                    f"{figures['max_abs_difference']:.3g} in {figures['max_abs_difference_tensor']})")
        if not figures["control_bit_identical"]:
            return (f"CPU: two uninterrupted runs of one command differ (max abs difference "
                    f"{figures['control_max_abs_difference']:.3g})")
        return None
    ratio, spread = figures["difference_over_change"], figures["control_difference_over_change"] or 0.0
    allowed = max(RESUME_CUDA_TOLERANCE, RESUME_CUDA_SPREAD_FACTOR * spread)
    if ratio is not None and ratio > allowed:
        return (f"the resumed run differs by {figures['max_abs_difference']:.3g}, {100 * ratio:.0f} % of what the "
                f"weights moved after the stop (> {100 * allowed:.0f} %: a second uninterrupted run differs by "
                f"{100 * spread:.0f} %)")
    return None


def step_evaluate(runner: StepRunner) -> Dict[str, Any]:
    plan = runner.plan
    runner.run([sys.executable, "evaluate.py", *plan.run_options(), "--no-progress"])
    record = read_jsonl(os.path.join(plan.run_folder("paper"), "metrics", "evaluate-val-one_step.jsonl"))[-1]
    results = record["results"]
    chosen = {key: round(value, 4) for key, value in results.items() if isinstance(value, float) and key in (
        "gt/mask_iou", "gt/sprite_shift_direction_match", "gt/local_action_nmi", "re/mask_iou", "re/codes_used",
        "re/foreground_psnr", "re/frame_psnr")}
    return {"windows": record["counts"]["windows"], "step": record["step"], **chosen}


def step_build_evaluation_dataset(runner: StepRunner) -> Dict[str, Any]:
    plan = runner.plan
    runner.run([sys.executable, "build_evaluation_dataset.py", *plan.run_options(), "--no-progress"])
    folder = os.path.join(plan.run_folder("paper"), "evaluation_dataset",
                          f"step_{plan.sizes.train_steps}-one_step")
    with open(os.path.join(folder, "manifest.json"), "r", encoding="utf-8") as handle:
        return {"videos": len(json.load(handle)["videos"])}


def available_dataset_metrics() -> Tuple[List[str], List[str]]:
    """evaluate_dataset.py's default W-Sprites metrics whose Python package is installed, and notes on those left
    out."""
    import importlib.util

    from utils.evaluation.video_quality import default_metrics

    chosen, left_out = [], []
    for name in default_metrics(False):
        package = METRIC_PACKAGES.get(name)
        if package is not None and importlib.util.find_spec(package) is None:
            left_out.append(f"{name}: the package {package} is not installed")
        else:
            chosen.append(name)
    return chosen, left_out


def step_evaluate_dataset(runner: StepRunner) -> Dict[str, Any]:
    plan = runner.plan
    if plan.sizes.dataset_metrics:
        metrics, left_out = plan.sizes.dataset_metrics, []
    else:
        chosen, left_out = available_dataset_metrics()
        metrics = ",".join(chosen)
    runner.run([sys.executable, "evaluate_dataset.py", *plan.run_options(), "--random-feature-weights",
                "--no-progress", "--metrics", metrics])
    folder = os.path.join(plan.run_folder("paper"), "evaluation_dataset", f"step_{plan.sizes.train_steps}-one_step")
    with open(os.path.join(folder, "metrics.json"), "r", encoding="utf-8") as handle:
        record = json.load(handle)
    results = record["results"]
    averages = {key: round(value, 4) for key, value in results.items()
                if isinstance(value, float) and (key.endswith("/avg") or "/" not in key)}
    return {"sequences": record["sequences"], "metrics": record["metrics"], **averages,
            "seconds_per_sequence": {name: round(seconds, 4)
                                     for name, seconds in record["seconds_per_sequence"].items()},
            "notes": record["notes"], **({"left_out": left_out} if left_out else {})}


def audit_host_syncs(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The child of the host-syncs step: for each config of `spec`, four training steps of `train.py`'s loop
    (`Trainer.training_step`, `LossMeter.add`, `LMAMeter.add`) on a random pinned batch, warm-up then LMA; the
    second step of each phase (after the phase's first-step probe) runs under `torch.cuda.set_sync_debug_mode`,
    which warns at every operation that makes the host wait for the GPU. Returns, per config and phase, the
    number of such waits and where in Python they happen. On the CPU the steps run and no wait is counted."""
    import warnings

    import torch

    from utils.config import load_config
    from utils.distributed import initialize
    from utils.run_logger import LMAMeter, LossMeter, lma_step_statistics  # noqa: F401  (the loop's per-step work)
    from utils.training.trainer import Trainer

    device = spec["device"]
    context = initialize(device)
    audits: Dict[str, Any] = {}
    for config_path in spec["configs"]:
        config = load_config(config_path, [*spec["overrides"], "training.random_vgg_weights=true",
                                           "training.gma_warmup_steps=2", "data.num_workers=0",
                                           "training.observations_count={start: 6, end: 6, start_step: 0, steps: 0}"])
        torch.manual_seed(0)
        trainer = Trainer(config, context)
        width, height = config.data.input_size
        observations = torch.rand(config.training.batch_size, 6, 3, height, width) * 2 - 1
        batch = {"observations": observations.pin_memory() if device == "cuda" else observations}
        meter, lma_meter = LossMeter(), LMAMeter()
        phases: Dict[str, Any] = {}
        for step in range(4):
            audited = {1: "warmup", 3: "lma"}.get(step)
            if audited and device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = trainer.training_step(batch, step)
                meter.add(result.loss.total, result.loss.terms)
                lma_meter.add(result.lma_statistics)
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("default")
            if audited:
                syncs = [warning for warning in caught if "synchroniz" in str(warning.message)]
                places: Dict[str, int] = {}
                for warning in syncs:
                    place = f"{os.path.relpath(warning.filename, REPOSITORY)}:{warning.lineno}"
                    places[place] = places.get(place, 0) + 1
                phases[audited] = {"host_syncs": len(syncs) if device == "cuda" else None,
                                   "where": dict(sorted(places.items(), key=lambda item: -item[1]))}
        meter.summarize(context)
        audits[os.path.basename(config_path)] = phases
    return audits


def step_host_syncs(runner: StepRunner) -> Dict[str, Any]:
    plan = runner.plan
    spec = {"device": plan.device, "configs": list(plan.sizes.sync_audit_configs),
            "overrides": list(plan.sizes.model_overrides)}
    runner.run([sys.executable, os.path.join("benchmarks", "gpu_check.py"), "--audit-host-syncs", json.dumps(spec)])
    lines = [line for line in runner.output().splitlines() if line.startswith("{")]
    if not lines:
        raise StepFailed("the audit printed no result")
    audits = json.loads(lines[-1])
    figures: Dict[str, Any] = {f"{config.split('.')[0]}_{phase}_syncs": result["host_syncs"]
                               for config, phases in audits.items() for phase, result in phases.items()}
    figures["audits"] = audits
    if plan.device != "cuda":
        figures["note"] = "the steps ran; counting the host waits needs CUDA (torch.cuda.set_sync_debug_mode)"
    return figures


def step_play(runner: StepRunner) -> Dict[str, Any]:
    plan = runner.plan
    test_videos = sorted(os.listdir(os.path.join(plan.data_root, "test")))
    image = os.path.join(plan.data_root, "test", test_videos[0], "00000.png")
    folder = os.path.join(plan.out, "play")
    runner.run([sys.executable, "play.py", *plan.run_options(), "--image", image, "--actions", PLAY_ACTIONS,
                "--out", folder])
    with open(os.path.join(folder, "play.json"), "r", encoding="utf-8") as handle:
        record = json.load(handle)
    return {"frames": len(os.listdir(os.path.join(folder, "frames"))), "steps": len(record["steps"]),
            "device": record["device"], "mp4": os.path.isfile(os.path.join(folder, "video.mp4"))}


def _bench(runner: StepRunner, kind: str, runs: Sequence[Tuple[Sequence[str], str]]) -> Dict[str, Any]:
    os.makedirs(os.path.join(runner.plan.out, "bench"), exist_ok=True)
    for cases, channels_last in runs:
        runner.run(runner.plan.bench_command(kind, cases, channels_last))
    rows = bench_rows(runner.plan, kind)
    if not rows:
        raise StepFailed(f"benchmarks/training_step.py wrote no row to bench/{kind}.jsonl")
    return {"cases": len(rows), "rows": rows}


def step_bench_fp32(runner: StepRunner) -> Dict[str, Any]:
    return _bench(runner, "fp32", runner.plan.sizes.bench_fp32_runs)


def step_bench_bf16(runner: StepRunner) -> Dict[str, Any]:
    return _bench(runner, "bf16", [(runner.plan.sizes.bench_bf16_cases, "config")])


def step_bench_compile(runner: StepRunner) -> Dict[str, Any]:
    return _bench(runner, "compile", [(runner.plan.sizes.bench_compile_cases, "config")])


def step_bench_authors(runner: StepRunner) -> Dict[str, Any]:
    """The warm-up case with training.warmup_mode=authors, against the gma_only warm-up of training-step-fp32 (when it
    ran)."""
    figures = _bench(runner, "authors-warmup", [(("warmup",), "config")])
    authors = figures["rows"][0]
    ours = [row for row in bench_rows(runner.plan, "fp32") if row["case"] == "warmup"
            and row["channels_last"] == authors["channels_last"]]
    if ours:
        figures["gma_only_seconds_per_step"] = ours[0]["seconds_per_step"]
        figures["authors_over_gma_only_seconds"] = round(authors["seconds_per_step"] / ours[0]["seconds_per_step"], 3)
        figures["authors_over_gma_only_gflop"] = round(authors["gflop_per_step"] / ours[0]["gflop_per_step"], 3)
    return figures


@dataclass
class Step:
    """One step of the check."""

    name: str
    group: str  # --only accepts it too
    run: Callable[[StepRunner], Dict[str, Any]]  # returns the figures; raises StepFailed
    timeout: float  # seconds on a GPU (scaled by --timeout-scale)
    dry_run_timeout: float  # seconds with --dry-run
    needs: Tuple[str, ...] = ()  # steps whose output it reads
    cuda_only: bool = False
    gpu_commands: Callable[[Plan], List[List[str]]] = field(default=lambda plan: [])  # shown when skipped on the CPU


STEPS: List[Step] = [
    Step("data", "data", step_data, 60, 30),
    Step("pytest", "pytest", step_pytest, 150, 90),
    Step("train-tiny", "train", lambda runner: _train(runner, TINY_CONFIG, "tiny", paper=False, torchrun=False),
         90, 45, needs=("data",)),
    Step("train-paper", "train", lambda runner: _train(runner, PAPER_CONFIG, "paper", paper=True, torchrun=False),
         120, 45, needs=("data",)),
    Step("resume", "resume", step_resume, 180, 60, needs=("data", "train-paper")),
    Step("torchrun-tiny", "torchrun",
         lambda runner: _train(runner, TINY_CONFIG, "tiny-torchrun", paper=False, torchrun=True), 90, 60,
         needs=("data",)),
    Step("torchrun-paper", "torchrun",
         lambda runner: _train(runner, PAPER_CONFIG, "paper-torchrun", paper=True, torchrun=True), 120, 60,
         needs=("data",)),
    Step("evaluate", "evaluate", step_evaluate, 90, 45, needs=("data", "train-paper")),
    Step("build-evaluation-dataset", "build-evaluation-dataset", step_build_evaluation_dataset, 90, 45,
         needs=("data", "train-paper")),
    Step("evaluate-dataset", "evaluate-dataset", step_evaluate_dataset, 180, 45,
         needs=("data", "train-paper", "build-evaluation-dataset")),
    Step("play", "play", step_play, 60, 45, needs=("data", "train-paper")),
    Step("host-syncs", "host-syncs", step_host_syncs, 90, 45),
    Step("training-step-fp32", "training-step", step_bench_fp32, 240, 60),
    Step("training-step-bf16", "training-step", step_bench_bf16, 120, 60, cuda_only=True,
         gpu_commands=lambda plan: [plan.bench_command("bf16", plan.sizes.bench_bf16_cases)]),
    Step("training-step-authors-warmup", "training-step", step_bench_authors, 90, 60),
    Step("training-step-compile", "training-step", step_bench_compile, 300, 60, cuda_only=True,
         gpu_commands=lambda plan: [plan.bench_command("compile", plan.sizes.bench_compile_cases)]),
]
STEP_NAMES = [step.name for step in STEPS]
GROUPS = sorted({step.group for step in STEPS} - set(STEP_NAMES))


def select_steps(only: Optional[str]) -> Tuple[List[Step], List[str]]:
    """The steps named by --only (names or groups, comma-separated) and those they need, in the check's order;
    also the names added because a chosen step needs them."""
    if only is None:
        return list(STEPS), []
    words = [word.strip() for word in only.split(",") if word.strip()]
    unknown = [word for word in words if word not in STEP_NAMES and word not in GROUPS]
    if unknown or not words:
        raise GlassError(f"--only: unknown step {', '.join(unknown) or '(none given)'}; "
                         f"steps: {', '.join(STEP_NAMES)}; groups: {', '.join(GROUPS)}")
    chosen = {step.name for step in STEPS if step.name in words or step.group in words}
    needed = {need for step in STEPS if step.name in chosen for need in step.needs}
    return [step for step in STEPS if step.name in chosen | needed], sorted(needed - chosen)


# --------------------------------------------------------------------------- the report

def environment(plan: Plan) -> Dict[str, Any]:
    import torch

    info: Dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "torch": torch.__version__, "cpu_count": os.cpu_count(),
                            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), gpus=torch.cuda.device_count(),
                    gpu=torch.cuda.get_device_name(0), gpu_capability=list(torch.cuda.get_device_capability(0)),
                    gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1))
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True,
                                        timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def _tail(text: str) -> str:
    return text[-TAIL_CHARACTERS:]


def _short_figures(figures: Dict[str, Any], width: int = 110) -> str:
    parts = []
    for key, value in figures.items():
        if isinstance(value, (dict, list)):
            continue
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(f"{key}={shown}")
    text = " ".join(parts)
    return text if len(text) <= width else text[:width - 1] + "…"


def format_summary(report: Dict[str, Any]) -> str:
    """The report as plain-text tables: the steps, then the training-step rows."""
    env = report["environment"]
    lines = [f"GPU check {'(dry run) ' if report['dry_run'] else ''}on {report['device']}: "
             f"{'PASSED' if report['passed'] else 'FAILED'} in {report['seconds']:.1f} s "
             f"(budget {report['budget_seconds']:.0f} s); torch {env['torch']}, "
             + (f"{env.get('gpu')} (CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')})" if env.get("gpu")
                else f"{env['cpu_count']} CPUs") + f"; commit {env.get('commit')}", ""]
    header = f"{'step':<29} {'status':<8} {'rc':>4} {'seconds':>8}  figures"
    lines += [header, "-" * len(header)]
    for step in report["steps"]:
        returncode = "" if step["returncode"] is None else str(step["returncode"])
        detail = step.get("reason") or _short_figures(step["figures"])
        lines.append(f"{step['name']:<29} {step['status']:<8} {returncode:>4} {step['seconds']:>8.1f}  {detail}")
    bench = [row for step in report["steps"] for row in step["figures"].get("rows", [])]
    if bench:
        lines += ["", "training step (benchmarks/training_step.py)",
                  f"{'config':<16} {'case':<9} {'warm-up':<9} {'precision':<9} {'ch-last':<7} {'compile':<7} "
                  f"{'s/step':>8} {'GFLOP':>8} {'peak GiB':>9}"]
        for row in bench:
            warmup_mode = row["warmup_mode"] if row["case"] == "warmup" else "-"
            lines.append(f"{row['config']:<16} {row['case']:<9} {warmup_mode:<9} {row['precision']:<9} "
                         f"{str(row['channels_last']):<7} {str(row['compile']):<7} {row['seconds_per_step']:>8.4f} "
                         f"{row['gflop_per_step']:>8.1f} {row['peak_memory_gib']:>9.2f}")
    failed = [step for step in report["steps"] if step["status"] == "failed"]
    for step in failed:
        lines += ["", f"--- {step['name']}: {step.get('reason', '')}", step.get("output_tail", "")[-1500:]]
    return "\n".join(lines) + "\n"


def write_report(plan: Plan, report: Dict[str, Any]) -> None:
    from utils.files import write_atomically, write_json_atomically

    write_json_atomically(os.path.join(plan.out, "report.json"), report)

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(format_summary(report))

    write_atomically(os.path.join(plan.out, "summary.txt"), write)


# --------------------------------------------------------------------------- the check

def run_step(plan: Plan, step: Step, timeout: float, results: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Run one step (or record why not) and return its report entry."""
    entry: Dict[str, Any] = {"name": step.name, "group": step.group, "status": "skipped", "commands": [],
                             "command": None, "returncode": None, "seconds": 0.0, "timeout_seconds": round(timeout, 1),
                             "figures": {}, "log": os.path.relpath(plan.log_path(step.name), plan.out)}
    if step.cuda_only and plan.device != "cuda":
        commands = [shlex.join(command) for command in step.gpu_commands(gpu_plan(plan))]
        return {**entry, "reason": "skipped: CUDA only", "commands": commands,
                "command": commands[0] if commands else None}
    missing = [need for need in step.needs if results.get(need, {}).get("status") != "passed"]
    if missing:
        return {**entry, "reason": f"skipped: needs {', '.join(missing)}, which did not pass"}
    if timeout < MIN_STEP_SECONDS:
        return {**entry, "reason": f"skipped: out of time budget ({timeout:.0f} s left)"}
    runner = StepRunner(plan, step.name, time.monotonic() + timeout)
    start = time.perf_counter()
    try:
        figures = step.run(runner)
        entry.update(status="passed", figures=figures)
    except StepFailed as failure:
        entry.update(status="failed", reason=str(failure))
        if failure.returncode is not None:
            runner.returncode = failure.returncode
    except Exception as error:  # a bug of this script or an unreadable output: recorded, and the check goes on
        entry.update(status="failed", reason=f"{type(error).__name__}: {error}")
    entry.update(seconds=round(time.perf_counter() - start, 2), commands=runner.commands,
                 command=runner.commands[0] if runner.commands else None, returncode=runner.returncode)
    if entry["status"] == "failed":
        entry["output_tail"] = _tail(runner.output())
    return entry


def gpu_plan(plan: Plan) -> Plan:
    """The plan of the full GPU check in the same folder (the commands shown for CUDA-only steps)."""
    return dataclasses.replace(plan, device="cuda", dry_run=False, sizes=GPU_SIZES, inject_failure=None)


def check_out(out: str) -> None:
    """Refuse a non-empty OUT that no check wrote (a check empties what an earlier one wrote there)."""
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, MARKER_FILE)):
        raise GlassError(f"--out {out}: a non-empty folder that no gpu_check wrote; choose another folder")


def prepare_out(out: str) -> None:
    """Create OUT, or empty what an earlier check wrote there (`check_out` first)."""
    check_out(out)
    os.makedirs(out, exist_ok=True)
    for name in OWNED_ENTRIES:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    with open(os.path.join(out, MARKER_FILE), "w", encoding="utf-8") as handle:
        handle.write("written by benchmarks/gpu_check.py; emptied by the next check\n")


def resolve_device(requested: str, dry_run: bool) -> str:
    import torch

    if requested == "cpu":
        if not dry_run:
            raise GlassError("--device cpu: the full check is for a GPU; --dry-run runs its steps on the CPU at "
                             "minimal size")
        return "cpu"
    if requested == "auto" and dry_run:
        return "cpu"
    if not torch.cuda.is_available():
        raise GlassError(f"--device {requested}: no CUDA GPU is visible to PyTorch; --dry-run checks this script on "
                         f"the CPU at minimal size")
    return "cuda"


def parse_arguments(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto: CUDA, or an error where there is no GPU (with --dry-run: the CPU); "
                             "cpu needs --dry-run")
    parser.add_argument("--dry-run", action="store_true",
                        help="every step at minimal size (small model, a few steps, one benchmark repeat), on the CPU "
                             "unless --device cuda; CUDA-only steps are recorded as skipped on the CPU")
    parser.add_argument("--only", "--steps", dest="only", metavar="NAMES",
                        help=f"comma-separated steps or groups to run (and the steps they need); steps: "
                             f"{', '.join(STEP_NAMES)}; groups: {', '.join(GROUPS)}")
    parser.add_argument("--timeout-scale", type=float, default=1.0, metavar="X",
                        help="multiply every step's timeout by X (default 1)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_SECONDS, metavar="SECONDS",
                        help="wall-clock limit of the whole check; each step gets at most what is left "
                             "(default: %(default)s)")
    parser.add_argument("--inject-failure", metavar="STEP", help=argparse.SUPPRESS)  # tests: that step's command fails
    parser.add_argument("--audit-host-syncs", metavar="SPEC", help=argparse.SUPPRESS)  # the host-syncs step's child
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    started, start_time = time.monotonic(), datetime.datetime.now(datetime.timezone.utc)
    arguments = parse_arguments(argv)
    if arguments.audit_host_syncs is not None:
        print(json.dumps(audit_host_syncs(json.loads(arguments.audit_host_syncs))))
        return 0
    if not arguments.timeout_scale > 0 or not arguments.budget > 0:
        raise GlassError("--timeout-scale and --budget must be > 0")
    steps, added = select_steps(arguments.only)
    check_out(os.path.abspath(arguments.out))
    if arguments.inject_failure is not None and arguments.inject_failure not in STEP_NAMES:
        raise GlassError(f"--inject-failure: unknown step {arguments.inject_failure!r}")
    device = resolve_device(arguments.device, arguments.dry_run)
    plan = Plan(out=os.path.abspath(arguments.out), device=device, dry_run=arguments.dry_run,
                sizes=DRY_RUN_SIZES if arguments.dry_run else GPU_SIZES, inject_failure=arguments.inject_failure)
    prepare_out(plan.out)
    report: Dict[str, Any] = {
        "created": start_time.isoformat(timespec="seconds"), "command": [sys.executable, *sys.argv],
        "device": device, "dry_run": plan.dry_run, "budget_seconds": arguments.budget,
        "timeout_scale": arguments.timeout_scale, "only": arguments.only, "added_as_needed": added,
        "environment": environment(plan), "steps": [], "passed": False, "seconds": 0.0}
    results: Dict[str, Dict[str, Any]] = {}
    print(f"GPU check {'(dry run) ' if plan.dry_run else ''}on {device} into {plan.out}: "
          f"{', '.join(step.name for step in steps)}", flush=True)
    for step in steps:
        left = arguments.budget - (time.monotonic() - started)
        timeout = min((step.dry_run_timeout if plan.dry_run else step.timeout) * arguments.timeout_scale, left)
        entry = run_step(plan, step, timeout, results)
        results[step.name] = entry
        report["steps"].append(entry)
        report["seconds"] = round(time.monotonic() - started, 2)
        print(f"{step.name:<29} {entry['status']:<8} {entry['seconds']:>7.1f} s  "
              f"{entry.get('reason') or _short_figures(entry['figures'], 80)}", flush=True)
        write_report(plan, report)  # after every step: a killed check still leaves what it measured
    report["passed"] = all(entry["status"] == "passed" or entry.get("reason") == "skipped: CUDA only"
                           for entry in report["steps"])
    report["seconds"] = round(time.monotonic() - started, 2)
    write_report(plan, report)
    print(f"{'passed' if report['passed'] else 'FAILED'} in {report['seconds']:.1f} s: "
          f"{os.path.join(plan.out, 'report.json')}, {os.path.join(plan.out, 'summary.txt')}", flush=True)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    run_main(main)
