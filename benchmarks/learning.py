"""Benchmark of learning (not of speed): train a config longer, evaluate it every N steps, draw the curves.

    # the embedded default for about an hour on 2 cores (2,400 steps), evaluated every 200 steps
    python benchmarks/learning.py --config configs/wsprites-tiny.yaml --steps 2400 --eval-every 200 \\
        --run-name learning-tiny
    # any change to compare against it: the same command with overrides
    python benchmarks/learning.py --run-name learning-tiny-lr --steps 2400 training.learning_rate=2e-3
    # the first run's config (the c2 recipe of the README's *Local actions*) for 2,000 steps, its action readers'
    # statistics refitted for each evaluation (docs/local-actions.md, eleventh round: 71 min of training and
    # 5–8 min per evaluation on one core of a 2-core AVX2 CPU)
    python benchmarks/learning.py --config configs/wsprites-c2.yaml --run-name learning-c2 --steps 2000 \
        --eval-every 250 --refit-reader-norm 50

It runs `train.py` (the schedules of the config, `training.num_steps` set to --steps and
checkpoints every --eval-every steps), then `evaluate.py` on every checkpoint (its split, both
reconstruction protocols), and writes RUNS_DIR/RUN/learning.json (one record per evaluated step:
the evaluation's values and the means of the training log's LMA values since the previous evaluated step) and
RUNS_DIR/RUN/learning.png: one panel per curve — mask soft IoU (GT, RE one-step, RE single-image),
sprite direction within 45°, local-action NMI (split and per character, with their random
floors), codes used (GT, RE) and the training interval's, the code effect (all transitions,
switches, the training log's switches, and on switches with the best code per transition: the
renderer's ceiling; bars: evaluate.py's 90 % interval over characters), the code difference ratio
with the NMI of codes and character, generated-foreground PSNR (RE one-step, RE single-image) and the training log's
ground-truth and autoregressive PSNR; grey dashed lines are issue 21's targets (mask IoU 0.7, RE
0.5, 45° 0.9, NMI 0.15 / 0.35, 4 codes, 1 dB on switches, ratio 0.25). So one picture shows
whether a change helps the local half learn. An existing run folder is continued: steps already
trained and checkpoints already evaluated (with the same --refit-reader-norm) are not done again.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from PIL import Image, ImageDraw  # noqa: E402

from utils.cli import run_main  # noqa: E402
from utils.errors import GlassError  # noqa: E402
from utils.files import json_records, write_atomically, write_json_atomically  # noqa: E402

# (panel title, [(label, source, key)], [(label, target)]): source 'eval' is evaluate.py's results, 'train' the
# metrics.jsonl row; the targets (grey lines) are issue 21's for an embedded default that shows local actions.
PANELS: List[Tuple[str, List[Tuple[str, str, str]], List[Tuple[str, float]]]] = [
    ("mask soft IoU", [("GT", "eval", "gt/mask_iou"), ("RE 1-step", "eval", "re/mask_iou"),
                       ("RE 1-image", "eval", "re_single_image/mask_iou")], [("GT", 0.7), ("RE 1-step", 0.5)]),
    ("sprite direction within 45°", [("GT", "eval", "gt/sprite_shift_direction_match"),
                                     ("RE 1-step", "eval", "re/sprite_shift_direction_match")], [("GT", 0.9)]),
    ("local-action NMI", [("split", "eval", "gt/local_action_nmi"),
                          ("per character", "eval", "gt/local_action_nmi_per_character"),
                          ("floor", "eval", "random/local_action_nmi"),
                          ("floor per char.", "eval", "random/local_action_nmi_per_character")],
     [("split", 0.15), ("per character", 0.35)]),
    ("codes used", [("GT (val)", "eval", "gt/codes_used"), ("RE 1-step", "eval", "re/codes_used"),
                    ("training interval", "train", "lma_codes_used")], [("GT", 4.0)]),
    ("code effect (dB): inferred minus random codes", [("all", "eval", "gt/code_effect_db"),
                                                       ("switches", "eval", "gt/code_effect_switch_db"),
                                                       ("train switches", "train", "lma_code_effect_switch_db"),
                                                       ("best code, switches", "eval",
                                                        "gt/code_effect_best_switch_db")],
     [("switches", 1.0)]),
    ("two codes' difference / real change; codes-character NMI",
     [("ratio", "eval", "gt/code_difference_ratio"), ("codes-character", "eval", "gt/code_character_nmi")],
     [("ratio", 0.25)]),
    ("foreground PSNR (dB)", [("RE 1-step", "eval", "re/foreground_psnr"),
                              ("RE 1-image", "eval", "re_single_image/foreground_psnr"),
                              ("train GT steps", "train", "lma_foreground_psnr_gt"),
                              ("train AR steps", "train", "lma_foreground_psnr_ar")], []),
]
# evaluate.py's 90 % interval over characters, drawn as a bar through the point of the series it belongs to
INTERVALS = {"gt/code_effect_db": ("gt/code_effect_low_db", "gt/code_effect_high_db"),
             "gt/code_effect_switch_db": ("gt/code_effect_switch_low_db", "gt/code_effect_switch_high_db")}
TARGET_COLOUR = (150, 150, 150)
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (148, 103, 189)]


def run(command: List[str]) -> None:
    print("+", " ".join(command), flush=True)
    if subprocess.run(command, cwd=ROOT).returncode != 0:
        raise GlassError(f"{command[1]} failed (its message is above): {' '.join(command)}")


def records_by_step(path: str,
                    keep: Callable[[Dict[str, Any]], bool] = lambda record: True) -> Dict[int, Dict[str, Any]]:
    """The JSON lines of `path` that `keep` accepts, keyed by their "step" (a later line of a step wins); {} without
    the file; a one-line GlassError naming the file and line for a line that is not a record with a step."""
    records: Dict[int, Dict[str, Any]] = {}
    if os.path.isfile(path):
        for number, record in json_records(path, strict=True):
            try:
                step = int(record["step"])
            except (ValueError, TypeError, KeyError) as error:
                raise GlassError(f"{path}: line {number} is not a JSON record with a step ({error})") from None
            if keep(record):
                records[step] = record
    return records


def evaluated_steps(run_folder: str, split: str, refit_reader_norm: int) -> Dict[int, Dict[str, Any]]:
    """The run's evaluations of `split` made with `refit_reader_norm` refit batches (0: the checkpoint's statistics;
    records from before the option read as 0), keyed by step: an evaluation with other statistics is not reused."""
    return records_by_step(os.path.join(run_folder, "metrics", f"evaluate-{split}-one_step.jsonl"),
                           lambda record: int(record.get("reader_norm_refit_batches", 0)) == refit_reader_norm)


def training_rows(run_folder: str) -> Dict[int, Dict[str, Any]]:
    return records_by_step(os.path.join(run_folder, "metrics.jsonl"))


def _finite(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(float(value)) else None


def interval_means(rows: Dict[int, Dict[str, Any]], first: int, last: int) -> Dict[str, Any]:
    """The training log's LMA values over the steps first < step <= last: each number averaged over the rows
    where it is finite (a span without a switch logs no switch effect), anything else (flags, histograms) from
    the interval's last row; {} when no row falls in it."""
    steps = sorted(step for step in rows if first < step <= last)
    if not steps:
        return {}
    means: Dict[str, Any] = {}
    for key, value in rows[steps[-1]].items():
        if not key.startswith("lma_"):
            continue
        numbers = [number for number in (_finite(rows[step].get(key)) for step in steps) if number is not None]
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        means[key] = sum(numbers) / len(numbers) if is_number and numbers else value
    return means


def draw_curves(records: Sequence[Dict[str, Any]], path: str, title: str) -> None:
    """One panel per entry of PANELS, steps on x; a plain PIL drawing (no plotting library needed)."""
    width, height, margin = 520, 260, 46
    image = Image.new("RGB", (width * 2, height * math.ceil(len(PANELS) / 2) + 24), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), title, fill="black")
    steps = [record["step"] for record in records]
    for index, (panel, series, targets) in enumerate(PANELS):
        left, top = (index % 2) * width, 24 + (index // 2) * height
        x0, y0, x1, y1 = left + margin, top + 22, left + width - 12, top + height - 30
        values = [_finite(record[source].get(key)) for record in records for _, source, key in series]
        values += [_finite(record[source].get(bound)) for record in records for _, source, key in series
                   for bound in INTERVALS.get(key, ())]
        values = [value for value in values if value is not None] + [target for _, target in targets]
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        if high - low < 1e-9:
            low, high = low - 0.5, high + 0.5
        draw.rectangle([x0, y0, x1, y1], outline=(160, 160, 160))
        draw.text((x0, top + 4), panel, fill="black")
        for fraction in (0.0, 0.5, 1.0):
            y = y1 - fraction * (y1 - y0)
            draw.text((left + 2, y - 6), f"{low + fraction * (high - low):.3g}", fill=(90, 90, 90))
        first, last = (min(steps), max(steps)) if steps else (0, 1)
        span = max(last - first, 1)
        for step in (first, last):
            draw.text((x0 + (step - first) / span * (x1 - x0) - 10, y1 + 4), str(step), fill=(90, 90, 90))

        def point(step: int, value: float) -> Tuple[float, float]:
            return x0 + (step - first) / span * (x1 - x0), y1 - (value - low) / (high - low) * (y1 - y0)

        for label, target in targets:  # dashed, labelled at the right end
            y = point(first, target)[1]
            for x in range(int(x0), int(x1), 8):
                draw.line([(x, y), (min(x + 4, x1), y)], fill=TARGET_COLOUR, width=1)
            draw.text((x1 - 6 * len(label) - 30, y - 12), f"{label} {target:g}", fill=TARGET_COLOUR)
        for number, (label, source, key) in enumerate(series):
            colour = COLOURS[number % len(COLOURS)]
            points = [point(record["step"], value) for record in records
                      if (value := _finite(record[source].get(key))) is not None]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for record in records:  # the interval over characters, where evaluate.py gave one
                bounds = [_finite(record[source].get(bound)) for bound in INTERVALS.get(key, ())]
                if bounds and None not in bounds:
                    (x, y_low), (_, y_high) = point(record["step"], bounds[0]), point(record["step"], bounds[1])
                    draw.line([(x, y_low), (x, y_high)], fill=colour, width=1)
                    for y in (y_low, y_high):
                        draw.line([(x - 4, y), (x + 4, y)], fill=colour, width=1)
            for x, y in points:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
            draw.text((x0 + 6 + 118 * number, y1 + 14), label, fill=colour)
    write_atomically(path, lambda temporary: image.save(temporary, format="PNG"))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/wsprites-tiny.yaml")
    parser.add_argument("--run-name", default="learning-tiny")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--steps", type=int, default=2400, help="training steps (training.num_steps)")
    parser.add_argument("--eval-every", type=int, default=200, help="checkpoint and evaluate every N steps")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--refit-reader-norm", type=int, default=0, metavar="N",
                        help="evaluate.py --refit-reader-norm N: the action readers' BatchNorm statistics recomputed "
                             "from N training batches before each evaluation (default 0: the checkpoint's)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides for training")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.eval_every < 1:
        parser.error("--steps and --eval-every must be >= 1")
    if args.refit_reader_norm < 0:
        parser.error("--refit-reader-norm must be >= 0")
    run_folder = os.path.join(args.runs_dir, args.run_name)
    python = sys.executable
    latest = os.path.join(run_folder, "checkpoints", "latest.pth")
    common = ["--run-name", args.run_name, "--runs-dir", args.runs_dir, "--device", args.device, "--no-progress"]
    settings = [f"training.num_steps={args.steps}", f"training.checkpoint_every={args.eval_every}", *args.overrides]
    if os.path.isfile(latest):
        run([python, "train.py", *common, "--resume-step", "latest", *settings])
    else:
        run([python, "train.py", "--config", args.config, *common, *settings])

    split = "val"
    done = evaluated_steps(run_folder, split, args.refit_reader_norm)
    wanted = [step for step in range(args.eval_every, args.steps + 1, args.eval_every)]
    if args.steps not in wanted:
        wanted.append(args.steps)
    for step in wanted:
        if step not in done and os.path.isfile(os.path.join(run_folder, "checkpoints", f"step_{step}.pth")):
            run([python, "evaluate.py", "--run-name", args.run_name, "--runs-dir", args.runs_dir, "--step", str(step),
                 "--device", args.device, "--no-progress", "--refit-reader-norm", str(args.refit_reader_norm)])
    done = evaluated_steps(run_folder, split, args.refit_reader_norm)
    rows = training_rows(run_folder)
    records = []
    previous = 0
    for step in sorted(done):
        records.append({"step": step, "eval": done[step]["results"], "histograms": done[step].get("histograms", {}),
                        "train": interval_means(rows, previous, step)})
        previous = step
    summary = {"config": args.config, "overrides": args.overrides, "steps": args.steps, "eval_every": args.eval_every,
               "split": split, "records": records}
    write_json_atomically(os.path.join(run_folder, "learning.json"), summary)
    draw_curves(records, os.path.join(run_folder, "learning.png"),
                f"{args.run_name}: {args.config} {' '.join(args.overrides)} (evaluate.py on {split})")
    for record in records:
        values = record["eval"]
        print(f"step {record['step']:>6}: IoU {values.get('gt/mask_iou', float('nan')):.3f} RE-1step IoU "
              f"{values.get('re/mask_iou', float('nan')):.3f} NMI {values.get('gt/local_action_nmi', float('nan')):.3f}"
              f" per char {values.get('gt/local_action_nmi_per_character', float('nan')):.3f} codes "
              f"{values.get('gt/codes_used', float('nan')):.0f} fg PSNR "
              f"{values.get('re/foreground_psnr', float('nan')):.2f}"
              f" / 1-image {values.get('re_single_image/foreground_psnr', float('nan')):.2f} code effect "
              f"{values.get('gt/code_effect_db', float('nan')):.3f} / switches "
              f"{values.get('gt/code_effect_switch_db', float('nan')):.3f} dB ratio "
              f"{values.get('gt/code_difference_ratio', float('nan')):.2f}")
    print(f"wrote {os.path.join(run_folder, 'learning.json')} and learning.png")
    return 0


if __name__ == "__main__":
    run_main(main)
