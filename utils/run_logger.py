"""What a training run reports: a progress bar, a status line every `log_every` steps, the same
scalars as one JSON line each in runs/NAME/metrics.jsonl, and, when asked, in Weights & Biases.

    meter = LossMeter()
    meter.add(result.total, result.terms)                  # every step (stays on the device)
    losses = meter.summarize(context)                      # every log_every steps, on every process
    logger.log_scalars(step, {**losses, "lr": ...})        # rank 0: status line, metrics.jsonl, wandb

Only rank 0 creates a `RunLogger`. Steps are counted as optimiser steps done: the row of
step N describes the interval that ends with the N-th step.
"""
from __future__ import annotations

import math
import os
import resource
import secrets
import sys
import time
from typing import Any, Dict, Optional

import torch
from tqdm import tqdm

from utils.checkpoint import METRICS_FILE, WANDB_ID_FILE
from utils.distributed import DistributedContext, average_over_processes
from utils.errors import GlassError
from utils.files import append_json_line
from utils.metrics import codes_used, perplexity

WANDB_PROJECT = "glass"


def peak_memory(device: torch.device) -> Dict[str, Any]:
    """{'memory_gib': peak GiB, 'memory_kind': what was measured}: allocated CUDA memory on a GPU,
    the process's peak resident set size on the CPU."""
    if device.type == "cuda":
        return {"memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30, "memory_kind": "cuda_peak_allocated"}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    bytes_per_unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux
    return {"memory_gib": peak * bytes_per_unit / 2 ** 30, "memory_kind": "process_peak_rss"}


class LossMeter:
    """Sums of the loss and its terms since the last summary, kept on the device (no synchronisation per step).

    A term may be missing from some steps (the LMA terms before the end of the warm-up): each
    name is averaged over the steps that had it.
    """

    def __init__(self) -> None:
        self.sums: Dict[str, torch.Tensor] = {}
        self.counts: Dict[str, int] = {}

    def add(self, total: torch.Tensor, terms: Dict[str, torch.Tensor]) -> None:
        """Record one step: the total loss and the (detached) terms, each a scalar tensor."""
        for name, value in {"loss": total, **terms}.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
            self.counts[name] = self.counts.get(name, 0) + 1

    def summarize(self, context: DistributedContext) -> Dict[str, float]:
        """Means over the recorded steps and over the processes (a collective: every process calls it); resets."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        means = torch.stack([self.sums[name] / self.counts[name] for name in names])
        self.sums, self.counts = {}, {}
        return dict(zip(names, average_over_processes(context, means).tolist()))


def lma_step_statistics(output: Any, num_actions: int) -> Optional[Dict[str, torch.Tensor]]:
    """What `LMAMeter` needs from one training step's output (a `model.glass.GlassOutput`), as device tensors
    (no host synchronisation):
    the histogram of the action ids, the spread of z (the per-dimension standard deviation over the
    step's transitions, averaged over dimensions) and the squared error of f̂ₜ₊₁ against the GMA's fₜ₊₁
    at full size, summed apart over the ground-truth steps (t < T_f) and the autoregressive ones.
    None when the LMA did not run (the gma_only warm-up)."""
    lma = output.lma
    if lma is None:
        return None
    with torch.no_grad():
        ids = lma.action_ids.flatten()
        vectors = lma.action_vectors.flatten(0, 1).float()
        spread = vectors.std(dim=0).mean() if vectors.shape[0] > 1 else vectors.new_zeros(())
        errors = (lma.generated_foregrounds[0].float() - output.gma.foregrounds[:, 1:].float()).pow(2)
        split = lma.num_ground_truth_steps
        # new_full: a fill on the device, where new_tensor would copy a host value to the GPU and wait for it
        return {"code_counts": torch.nn.functional.one_hot(ids, num_actions).sum(dim=0).float(),
                "z_spread": spread, "ground_truth_squared_error": errors[:, :split].sum(),
                "ground_truth_elements": errors.new_full((), float(errors[:, :split].numel())),
                "autoregressive_squared_error": errors[:, split:].sum(),
                "autoregressive_elements": errors.new_full((), float(errors[:, split:].numel()))}


class LMAMeter:
    """The local half's health over a logging interval (SPEC has no such numbers; they show a collapse while
    it happens): `lma_codes_used` (codes chosen by at least one transition), `lma_code_perplexity`
    (exp of the entropy of the code histogram: 1 = one code, K = all equally), `lma_z_spread` (mean over
    the interval's steps of the spread of z, see `lma_step_statistics`), and `lma_foreground_psnr_gt` /
    `lma_foreground_psnr_ar`: the PSNR (images in [−1, 1], peak-to-peak 2) of the generated
    foregrounds against the GMA's over the ground-truth and the autoregressive steps of the interval
    (the latter absent when every step had T_f = T − 1); `lma_codes_restarted` counts the codebook
    rows the opt-in codebook options replaced. Sums stay on the device between summaries."""

    def __init__(self) -> None:
        self.sums: Dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, statistics: Optional[Dict[str, torch.Tensor]]) -> None:
        if statistics is None:
            return
        for name, value in statistics.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
        self.steps += 1

    def summarize(self, context: DistributedContext) -> Dict[str, Any]:
        """The interval's values, over the processes (a collective when some step ran the LMA); resets."""
        if not self.steps:
            return {}
        names = sorted(self.sums)
        flat = torch.cat([self.sums[name].reshape(-1) for name in names])
        flat = average_over_processes(context, flat)
        sums, offset = {}, 0
        for name in names:
            size = self.sums[name].numel()
            sums[name] = flat[offset:offset + size].reshape(self.sums[name].shape).double().cpu()
            offset += size
        steps, self.sums, self.steps = self.steps, {}, 0
        row: Dict[str, Any] = {"lma_codes_used": codes_used(sums["code_counts"]),
                               "lma_code_perplexity": perplexity(sums["code_counts"]),
                               "lma_code_histogram": [round(float(c) / float(sums["code_counts"].sum()), 4)
                                                      for c in sums["code_counts"]],
                               "lma_z_spread": float(sums["z_spread"]) / steps}
        if "codes_restarted" in sums:  # training.codebook_restart_every / codebook_kmeans_init
            row["lma_codes_restarted"] = int(round(float(sums["codes_restarted"])))
        for kind, key in (("ground_truth", "gt"), ("autoregressive", "ar")):
            elements = float(sums[f"{kind}_elements"])
            if elements > 0:
                mse = float(sums[f"{kind}_squared_error"]) / elements
                row[f"lma_foreground_psnr_{key}"] = 10 * math.log10(4.0 / mse) if mse > 0 else math.inf
        return row


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_status_line(row: Dict[str, Any], total_steps: int) -> str:
    """One line: step, T, T_f, the loss and its terms ('_loss' dropped), lr, steps/s, memory."""
    parts = [f"step {row['step']}/{total_steps}", f"T {row['observations_count']}", f"T_f {row['ground_truth_steps']}",
             f"loss {_number(row['loss'])}"]
    for name, value in row.items():
        if name.endswith("_loss"):
            parts.append(f"{name[:-len('_loss')]} {_number(value)}")
    if "lma_codes_used" in row:
        parts.append(f"codes {row['lma_codes_used']} (perplexity {row['lma_code_perplexity']:.2f})")
        parts += [f"fg PSNR {kind} {row[key]:.2f}" for kind, key in (("gt", "lma_foreground_psnr_gt"),
                                                                       ("ar", "lma_foreground_psnr_ar")) if key in row]
    if "lma_code_effect_db" in row:
        switch = row.get("lma_code_effect_switch_db")
        parts.append(f"code effect {row['lma_code_effect_db']:.2f} dB"
                     + ("" if switch is None else f" (switches {switch:.2f})"))
    parts += [f"lr {row['lr']:.3g}", f"{row['steps_per_second']:.2f} steps/s",
              f"{'GPU' if row['memory_kind'].startswith('cuda') else 'RSS'} {row['memory_gib']:.2f} GiB"]
    return " | ".join(parts)


class WandbRun:
    """A Weights & Biases run (opt-in with --wandb); the mode (online, offline) comes from WANDB_MODE.

    Starts at once so that a missing login fails before training, with a one-line hint. The
    wandb id is kept in the run folder, so a resumed run continues the same wandb run.
    """

    def __init__(self, run_folder: str, run_name: str, config: Dict[str, Any]):
        try:
            import wandb
        except ImportError:
            raise GlassError("--wandb: the wandb package is not installed (pip install wandb)") from None
        self.wandb = wandb
        id_path = os.path.join(run_folder, WANDB_ID_FILE)
        if os.path.isfile(id_path):
            with open(id_path, "r", encoding="utf-8") as handle:
                run_id = handle.read().strip()
        else:
            run_id = secrets.token_hex(6)  # wandb ids are short lowercase alphanumeric strings
            with open(id_path, "w", encoding="utf-8") as handle:
                handle.write(run_id + "\n")
        try:
            self.run = wandb.init(project=WANDB_PROJECT, name=run_name, id=run_id, resume="allow", config=config,
                                  dir=run_folder)
        except Exception as error:  # wandb raises its own error types for logins, networks and settings
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise GlassError(f"--wandb: wandb could not start ({first_line[:200]}); log in with `wandb login`, "
                             f"or set WANDB_MODE=offline to log to the run folder only") from None

    def log(self, step: int, scalars: Dict[str, Any]) -> None:
        self.run.log({name: value for name, value in scalars.items() if isinstance(value, (int, float))}, step=step)

    def log_media(self, step: int, files: Dict[str, str]) -> None:
        """PNG files as images, GIFs as videos."""
        self.run.log({name: self.wandb.Video(path) if path.endswith(".gif") else self.wandb.Image(path)
                      for name, path in files.items()}, step=step)

    def finish(self) -> None:
        self.run.finish()


class RunLogger:
    """Rank 0's reporting: the tqdm bar, status lines, metrics.jsonl and wandb."""

    def __init__(self, run_folder: str, run_name: str, config: Dict[str, Any], device: torch.device, first_step: int,
                 total_steps: int, comparable: bool, use_wandb: bool, show_progress: bool = True):
        self.device = device
        self.metrics_path = os.path.join(run_folder, METRICS_FILE)
        self.total_steps = total_steps
        self.comparable = comparable
        self.wandb = WandbRun(run_folder, run_name, config) if use_wandb else None
        self.progress = tqdm(total=total_steps, initial=first_step, desc=run_name, unit="step", dynamic_ncols=True,
                             disable=not show_progress, file=sys.stderr)
        self.last_time = time.perf_counter()
        self.last_step = first_step

    def message(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        self.progress.write(text, file=sys.stdout)
        sys.stdout.flush()

    def step_done(self) -> None:
        self.progress.update(1)

    def log_scalars(self, step: int, scalars: Dict[str, Any]) -> Dict[str, Any]:
        """Add steps/s, memory and `comparable` to `scalars`, then print, append to metrics.jsonl (with the time,
        `append_json_line`) and send to wandb; returns the row."""
        now = time.perf_counter()
        steps_per_second = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, step
        row = {"step": step, **scalars, "steps_per_second": steps_per_second, **peak_memory(self.device),
               "comparable": self.comparable}
        for name, value in list(row.items()):
            if isinstance(value, float) and not math.isfinite(value):
                row[name] = str(value)  # JSON has no NaN or infinity
        self.message(format_status_line(row, self.total_steps))
        row = append_json_line(self.metrics_path, row)
        if self.wandb is not None:
            self.wandb.log(step, row)
        return row

    def log_media(self, step: int, files: Dict[str, str]) -> None:
        if self.wandb is not None and files:
            self.wandb.log_media(step, files)

    def close(self) -> None:
        self.progress.close()
        if self.wandb is not None:
            self.wandb.finish()
