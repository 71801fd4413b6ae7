"""Benchmark: seconds per training step, the step's floating-point work and peak memory.

    # W-Sprites and the tiny CPU config, the three cases, all cores of this machine
    python benchmarks/training_step.py

    # the tiny config on 2 threads, channels-last on and off
    python benchmarks/training_step.py --configs configs/wsprites-tiny.yaml --threads 2 --channels-last both

    # a GPU: bf16 autocast, torch.compile
    python benchmarks/training_step.py --device cuda --precision bf16 --compile --repeats 20

    # any config override, e.g. a narrower masking network
    python benchmarks/training_step.py --configs configs/wsprites-tiny.yaml --cases full-t6 \\
        --set model.gma.mask_middle_blocks=1

A step is `utils.training.trainer.Trainer.training_step`, the one `train.py` runs: forward, the real
`model.losses.GlassLoss`, backward, the non-finite-gradient clean-up and an Adam step, with
the config's channels-last, precision and compile options. VGG19 gets random weights (the
ImageNet file is not needed; the arithmetic is the same). The input is a random batch
(B, T, 3, H, W) of the config's batch size and frame size, so data loading is not counted.
Cases (T and T_f are fixed through the config's schedules):

    warmup     T 6, the GMA warm-up (with warmup_mode gma_only the LMA is not run)
    full-t6    T 6, T_f 5 (the start of the curriculum)
    full-t12   T 12, T_f 1 (the end of the W-Sprites curriculum)
    frozen-gma-t6  T 6, T_f 5 with the GMA frozen (training.gma_freeze_step: no GMA backward; a step after the
               freeze, so the step count differs from the others by one — not in the default set)

Each (config, case, channels-last) runs in a fresh subprocess, so that its peak memory is
its own, on the CPU with train.py's allocator settings (utils/allocator.py; `GLASS_MALLOC_TUNING=0`
measures without them). Steps are timed after `--warmup` untimed steps; the median of `--repeats` is
reported. The floating-point work of one step (forward + backward) is counted with
`torch.utils.flop_counter.FlopCounterMode`, which counts convolutions and matrix products
(element-wise work, pooling, interpolation, `grid_sample` and the optimiser are not
counted): once with every convolution direct (the model's arithmetic, the figure set against
the machine's rate, so Winograd layers can take a step above 100 %), and once as executed
where `training.cpu_kernels` ('torch', 'native') runs wide 3×3 layers by Winograd in 4× fewer products
(plus their transforms' small products). The rate is this machine's matrix-multiply rate, measured in the same run
(a timed square `torch.mm`, before and after the cases, with the same threads; fp32, or bf16
with `--precision bf16`). On CUDA, cuDNN runs fp32 convolutions in TF32 by default
(`torch.backends.cudnn.allow_tf32`) while the fp32 reference product does not use TF32, so
an fp32 step can exceed 100 % there. The
process's CPU time per step is printed too: on a shared machine, wall time well above
CPU time / threads means the step waited for the cores.

Memory: on the CPU the peak resident set size of the case's process (`getrusage`
ru_maxrss) and its rise during the steps over the peak reached while building the model,
loss and optimiser (activations, gradients, Adam's moments); tracemalloc does not see
torch's allocations. On CUDA `torch.cuda.max_memory_allocated`, and its rise over the
memory allocated before the first step.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPOSITORY)

import torch  # noqa: E402  (after the repository is on the path, like the imports below)
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from utils.allocator import tuned_environment  # noqa: E402

CASES: Dict[str, Dict[str, Any]] = {
    "warmup": {"observations_count": 6, "ground_truth_steps": 5, "warmup": True},
    "full-t6": {"observations_count": 6, "ground_truth_steps": 5, "warmup": False},
    "full-t12": {"observations_count": 12, "ground_truth_steps": 1, "warmup": False},
    "frozen-gma-t6": {"observations_count": 6, "ground_truth_steps": 5, "warmup": False, "gma_freeze_step": 1},
}
DEFAULT_CASES = ["warmup", "full-t6", "full-t12"]
DEFAULT_CONFIGS = ["configs/wsprites.yaml", "configs/wsprites-tiny.yaml"]
MATMUL_SIZE = {"cpu": 2048, "cuda": 8192}
GIB = 2 ** 30


def matmul_gflops(device: str, dtype: torch.dtype = torch.float32, repeats: int = 5,
                  size: Optional[int] = None) -> float:
    """The median rate of a square `torch.mm` of `size` (default MATMUL_SIZE[device]) in `dtype` on `device`,
    in GFLOP/s (2·n³ per product)."""
    size = size or MATMUL_SIZE[device]
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = []
    for index in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        if index > 0:  # the first product warms the library up
            times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _case_overrides(case: Dict[str, Any], channels_last: bool, arguments: argparse.Namespace) -> List[str]:
    length, ground_truth_steps = case["observations_count"], case["ground_truth_steps"]
    return [
        f"training.observations_count={{start: {length}, end: {length}, start_step: 0, steps: 0}}",
        f"training.ground_truth_steps={{start: {ground_truth_steps}, end: {ground_truth_steps}, "
        f"start_step: 0, steps: 0}}",
        f"training.gma_warmup_steps={10 ** 9 if case['warmup'] else 0}",
        f"training.channels_last={str(channels_last).lower()}",
        f"training.precision={arguments.precision}",
        f"training.compile={str(arguments.compile).lower()}",
        "training.random_vgg_weights=true",
        "data.num_workers=0",
    ] + ([f"training.gma_freeze_step={case['gma_freeze_step']}"] if case.get("gma_freeze_step") else [])


def run_case(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Measure one (config, case, channels-last) in this process; returns the result row."""
    from model.blocks import Conv2d  # imported here: the parent process builds no model
    from utils.config import load_config
    from utils.distributed import initialize
    from utils.training.trainer import Trainer

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    config = load_config(spec["config"], spec["overrides"])
    torch.manual_seed(config.training.seed)
    context = initialize(device)
    trainer = Trainer(config, context)
    width, height = config.data.input_size
    length = config.training.observations_count.start
    batch = {"observations": torch.rand(config.training.batch_size, int(length), 3, height, width) * 2 - 1}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        memory_before = torch.cuda.memory_allocated()
    else:
        memory_before = _peak_rss_bytes()

    # The work of one step, counted on the eager model (the same arithmetic as a compiled one): with
    # direct convolutions (the model's arithmetic), and as executed where Winograd layers do it in fewer products.
    observations = trainer.prepare_observations(batch["observations"])
    step = config.training.gma_freeze_step  # 0, or the first step of the frozen GMA (the frozen-gma case)
    plan = trainer.curriculum(step, observations.shape[1])
    autocast = (torch.autocast(device, dtype=torch.bfloat16) if config.training.precision == "bf16"
                else contextlib.nullcontext())
    winograd_layers = [layer for part in (trainer.model, trainer.loss) for layer in part.modules()
                       if isinstance(layer, Conv2d) and layer.kernels != "plain" and layer.winograd_eligible()]
    kernels = config.training.cpu_kernels
    flops = {}
    for kind in ("direct", "executed") if winograd_layers else ("direct",):
        for layer in winograd_layers:
            layer.kernels = kernels if kind == "executed" else "plain"
        counter = FlopCounterMode(display=False)
        with counter, autocast:
            output = trainer.model(observations, plan["ground_truth_steps"], run_lma=plan["run_lma"],
                                   gumbel_temperature=plan["gumbel_temperature"], freeze_gma=plan["freeze_gma"])
            trainer.loss(observations, output, lma_loss_scale=plan["lma_loss_scale"]).total.backward()
        del output
        trainer.optimizer.zero_grad(set_to_none=True)
        flops[kind] = counter.get_total_flops()
    flops.setdefault("executed", flops["direct"])

    times, cpu_times = [], []
    for index in range(spec["warmup"] + spec["repeats"]):
        if device == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        result = trainer.training_step(batch, step)
        float(result.loss.total)  # waits for the step on a GPU
        if index >= spec["warmup"]:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _peak_rss_bytes()
    return {
        "config": spec["config"], "case": spec["case"], "device": device, "threads": spec["threads"],
        "channels_last": config.training.channels_last, "precision": config.training.precision,
        "compile": config.training.compile, "batch_size": config.training.batch_size, "observations_count": int(length),
        "ground_truth_steps": plan["ground_truth_steps"], "lma_trained": plan["run_lma"],
        "gflop_per_step": flops["direct"] / 1e9, "executed_gflop_per_step": flops["executed"] / 1e9,
        "winograd_layers": len(winograd_layers),
        "seconds_per_step": statistics.median(times), "seconds_min": min(times), "seconds_max": max(times),
        "cpu_seconds_per_step": statistics.median(cpu_times), "repeats": len(times),
        "peak_memory_gib": peak / GIB, "step_memory_gib": (peak - memory_before) / GIB,
        "memory_kind": "cuda_max_memory_allocated" if device == "cuda" else "process_peak_rss",
    }


def _format_row(row: Dict[str, Any], matmul_rate: float) -> str:
    rate = row["gflop_per_step"] / row["seconds_per_step"]
    shape = f"B {row['batch_size']}, T {row['observations_count']}, " + (
        f"T_f {row['ground_truth_steps']}" if row["lma_trained"] else "GMA only")
    executed = (f" ({row['executed_gflop_per_step']:.1f} GFLOP executed: {row['winograd_layers']} Winograd layers)"
                if row["winograd_layers"] else "")
    return (f"{os.path.basename(row['config'])} {row['case']} ({shape}, channels_last {row['channels_last']}): "
            f"{row['gflop_per_step']:.1f} GFLOP per step{executed}, {row['seconds_per_step']:.3f} s per step "
            f"(min {row['seconds_min']:.3f}, max {row['seconds_max']:.3f}; process CPU time "
            f"{row['cpu_seconds_per_step']:.3f} s) = {rate:.1f} GFLOP/s = "
            f"{100 * rate / matmul_rate:.0f} % of the measured matmul rate; "
            f"peak memory {row['peak_memory_gib']:.2f} GiB, "
            f"{row['step_memory_gib']:.2f} GiB of it during the steps ({row['memory_kind']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="config files (default: %(default)s)")
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES),
                        help=f"default: {' '.join(DEFAULT_CASES)}")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: os.cpu_count())")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per case; the median is reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before the timed ones")
    parser.add_argument("--channels-last", choices=("config", "on", "off", "both"), default="config",
                        help="channels-last memory format: as the config says (default), on, off, or both in turn")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 autocast: CUDA only")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model: CUDA only")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every config")
    parser.add_argument("--json", default=None, help="also append the result rows to this JSON-lines file")
    parser.add_argument("--matmul-size", type=int, default=None, metavar="N",
                        help="n of the reference n×n matmul (default: 2048 on the CPU, 8192 on CUDA; a small n only "
                             "makes a quick smoke run quicker, its rate is not the machine's)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args()

    if arguments.child is not None:  # one case, in its own process: print its row as the last line
        print(json.dumps(run_case(json.loads(arguments.child))))
        return 0
    if arguments.device == "cpu" and (arguments.precision != "fp32" or arguments.compile):
        parser.error("--precision bf16 and --compile are measured on CUDA only (--device cuda)")
    if arguments.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to PyTorch")
    if arguments.threads < 1 or arguments.repeats < 1 or arguments.warmup < 0:
        parser.error("--threads and --repeats must be >= 1, --warmup >= 0")
    if arguments.matmul_size is not None and arguments.matmul_size < 1:
        parser.error("--matmul-size must be >= 1")
    matmul_size = arguments.matmul_size or MATMUL_SIZE[arguments.device]

    from utils.config import load_config
    from utils.errors import GlassError
    configs = {}
    for config_path in arguments.configs:
        try:
            configs[config_path] = load_config(config_path, arguments.set)
        except GlassError as error:
            parser.error(str(error))
    channels_last_options = {"on": [True], "off": [False], "both": [True, False]}.get(arguments.channels_last)
    torch.set_num_threads(arguments.threads)
    # The reference rate is in the precision of the step: bf16 products for bf16 autocast.
    matmul_dtype, matmul_name = (torch.bfloat16, "bf16") if arguments.precision == "bf16" else (torch.float32, "fp32")
    matmul_before = matmul_gflops(arguments.device, matmul_dtype, size=matmul_size)
    print(f"{arguments.device}, {arguments.threads} threads, torch {torch.__version__}: {matmul_name} matmul "
          f"{matmul_before:.1f} GFLOP/s (n = {matmul_size})", flush=True)
    # The allocator settings of train.py on the CPU (utils/allocator.py; GLASS_MALLOC_TUNING=0 measures without them).
    environment = dict(os.environ, OMP_NUM_THREADS=str(arguments.threads))
    if arguments.device == "cpu":
        environment = tuned_environment(environment)
    print(f"GLIBC_TUNABLES={environment.get('GLIBC_TUNABLES', '')!r}", flush=True)
    rows = []
    for config_path in arguments.configs:
        options = channels_last_options or [configs[config_path].training.channels_last]
        for case_name in arguments.cases:
            for channels_last in options:
                spec = {"config": config_path, "case": case_name, "device": arguments.device,
                        "threads": arguments.threads, "repeats": arguments.repeats, "warmup": arguments.warmup,
                        "overrides": list(arguments.set) + _case_overrides(CASES[case_name], channels_last, arguments)}
                process = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                                         cwd=REPOSITORY, env=environment, capture_output=True, text=True)
                if process.returncode != 0:
                    error_tail = "\n".join(process.stderr.strip().splitlines()[-20:])
                    print(f"{config_path} {case_name}: failed\n{error_tail}", flush=True)
                    continue
                row = json.loads(process.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(_format_row(row, matmul_before), flush=True)
    matmul_after = matmul_gflops(arguments.device, matmul_dtype, size=matmul_size)
    print(f"{matmul_name} matmul after the cases: {matmul_after:.1f} GFLOP/s (percentages use the first measurement)")
    if arguments.json:
        with open(arguments.json, "a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps({**row, "matmul_precision": matmul_name, "matmul_gflops_before": matmul_before,
                                         "matmul_gflops_after": matmul_after}) + "\n")
    return 0 if len(rows) == len(arguments.configs) * len(arguments.cases) * len(channels_last_options or [None]) else 1


if __name__ == "__main__":
    sys.exit(main())
