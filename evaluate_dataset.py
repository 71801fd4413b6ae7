"""Measure a generated evaluation dataset against the real test sequences (SPEC §5.2).

    # the folder written by build_evaluation_dataset.py (runs/R/evaluation_dataset/step_N-PROTOCOL/)
    python evaluate_dataset.py --config configs/wsprites.yaml \\
        --generated runs/wsprites/evaluation_dataset/step_300000-one_step

    # the same folder found from the run (latest step and the config's protocol unless given; config from the run)
    python evaluate_dataset.py --run-name wsprites [--runs-dir runs] [--step 300000] [--protocol one_step]

    # a subset of the metrics, on the CPU with 2 threads
    python evaluate_dataset.py --config configs/wsprites.yaml --generated DIR --metrics mse,psnr,ssim \\
        --device cpu --num-threads 2

    # a dry run without the pretrained feature networks (random weights; results marked "comparable": false)
    python evaluate_dataset.py --config configs/wsprites.yaml --generated DIR --random-feature-weights

Metrics (utils/video_quality.REGISTRY): mse, motion_mse, psnr, ssim, lpips_vgg, vgg19_cosine
(per frame position and averaged), fid_inception_frames, fvd_i3d_k400, and on Tennis
(evaluation.detection_metrics) tennis_add, tennis_mdr. Feature-network weights come from the
torch hub cache or the config (evaluation.inception_weights, i3d_weights, lpips_weights,
detector_weights, loss.vgg_weights); every missing file is listed in one message before any
work (exit status 2). Results go to DIR/metrics.json (replaced) and one line of DIR/metrics.jsonl
(appended), and a table is printed. One GPU at most (`--device auto` takes it when there is one).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from utils.checkpoint import read_run_config
from utils.cli import run_main
from utils.config import Config, load_config
from utils.distributed import DEVICE_CHOICES, resolve_device_kind
from utils.errors import GlassError
from utils.evaluation.feature_networks import build_feature_networks, check_feature_weights
from utils.evaluation.generated_dataset import (
    default_folder,
    latest_folder,
    load_generated_video,
    read_manifest,
    real_windows,
)
from utils.evaluation.video_quality import REGISTRY, MetricAccumulator, default_metrics
from utils.files import append_json_line, write_json_atomically


def parse_arguments(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python evaluate_dataset.py", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a YAML file in configs/ (default with --run-name: the run's config.yaml)")
    parser.add_argument("--generated", metavar="DIR", help="the folder written by build_evaluation_dataset.py")
    parser.add_argument("--run-name", help="find DIR as RUNS_DIR/RUN_NAME/evaluation_dataset/step_N-PROTOCOL")
    parser.add_argument("--runs-dir", default="runs", help="folder holding the run folders (default: runs)")
    parser.add_argument("--step", type=int, help="with --run-name: the step (default: the latest one there)")
    parser.add_argument("--protocol", help="with --run-name: the protocol (default: evaluation.protocol)")
    parser.add_argument("--metrics", help=f"comma-separated subset of: {', '.join(REGISTRY)} (default: all that apply)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="auto: CUDA when a GPU is visible")
    parser.add_argument("--random-feature-weights", action="store_true",
                        help="tests and dry runs only: feature networks with random weights; results not comparable")
    parser.add_argument("--num-threads", type=int, help="CPU threads of PyTorch (torch.set_num_threads)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted config overrides, e.g. evaluation.batch_size=8")
    return parser.parse_args(argv)


def resolve_generated_folder(arguments: argparse.Namespace, config: Config) -> str:
    """--generated, or RUNS_DIR/RUN_NAME/evaluation_dataset/step_N-PROTOCOL (N: --step or the latest)."""
    if arguments.generated:
        return arguments.generated
    protocol = arguments.protocol or config.evaluation.protocol
    run_folder = os.path.join(arguments.runs_dir, arguments.run_name)
    if arguments.step is not None:
        return default_folder(run_folder, arguments.step, protocol)
    return latest_folder(run_folder, protocol)


def print_table(results: Dict[str, object], comparable: bool, notes: List[str]) -> None:
    width = max(len(key) for key in results) if results else 10
    for key, value in results.items():
        if "/var" in key:
            continue
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    for note in notes:
        print(f"note: {note}")
    if not comparable:
        print("comparable: false (random feature weights, or a non-comparable generated dataset)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    arguments = parse_arguments(argv)
    if bool(arguments.generated) == bool(arguments.run_name):
        raise GlassError("give either --generated DIR or --run-name R")
    # the folder to measure is checked first: a mistyped path should not be reported as missing feature weights
    if arguments.generated and not os.path.isdir(arguments.generated):
        raise GlassError(f"{arguments.generated}: " + ("not a folder" if os.path.exists(arguments.generated)
                                                       else "no such folder") + " (--generated)")
    if arguments.num_threads is not None:
        torch.set_num_threads(arguments.num_threads)
    if arguments.config:
        config = load_config(arguments.config, arguments.overrides)
    elif arguments.run_name:
        config = read_run_config(os.path.join(arguments.runs_dir, arguments.run_name), arguments.overrides)
    else:
        raise GlassError("--config: required with --generated")
    folder = resolve_generated_folder(arguments, config)
    manifest = read_manifest(folder)
    count = config.evaluation.observations_count
    if manifest["observations_count"] != count:
        raise GlassError(f"{os.path.join(folder, 'manifest.json')}: observations_count {manifest['observations_count']}"
                         f", the config says evaluation.observations_count={count}")
    if manifest["skip_frames"] != config.evaluation.skip_frames:
        raise GlassError(f"{os.path.join(folder, 'manifest.json')}: skip_frames {manifest['skip_frames']}, the config "
                         f"says evaluation.skip_frames={config.evaluation.skip_frames}")
    metrics = default_metrics(config.evaluation.detection_metrics)
    if arguments.metrics:
        metrics = [name.strip() for name in arguments.metrics.split(",") if name.strip()]
        unknown = [name for name in metrics if name not in REGISTRY]
        if unknown:
            raise GlassError(f"--metrics: unknown {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    networks_needed = sorted({REGISTRY[name].network for name in metrics if REGISTRY[name].network})
    if not arguments.random_feature_weights:
        check_feature_weights(config, networks_needed)  # every missing file in one message, before any work
    device = torch.device(resolve_device_kind(arguments.device))

    dataset, indices = real_windows(config, manifest, count)
    size = tuple(config.data.input_size)
    networks = build_feature_networks(config, networks_needed, device, arguments.random_feature_weights)
    accumulator = MetricAccumulator(metrics, networks)

    videos = manifest["videos"]
    batch_size = config.evaluation.batch_size
    progress = tqdm(total=len(videos), unit="seq", disable=arguments.no_progress, desc="evaluating")
    for begin in range(0, len(videos), batch_size):
        chosen = range(begin, min(begin + batch_size, len(videos)))
        real = torch.stack([(dataset[indices[i]]["observations"][:, :3] + 1) / 2 for i in chosen])
        generated = torch.stack([load_generated_video(os.path.join(folder, videos[i]["name"]), count, size)
                                 for i in chosen])
        accumulator.add(real.to(device), generated.to(device))
        progress.update(len(chosen))
    progress.close()
    results, notes = accumulator.results()

    comparable = bool(manifest["comparable"]) and not arguments.random_feature_weights
    record = {"run_folder": manifest["run_folder"], "step": manifest["step"], "checkpoint": manifest["checkpoint"],
              "protocol": manifest["protocol"], "split": manifest["split"], "observations_count": count,
              "sequences": len(videos), "metrics": metrics, "comparable": comparable,
              "random_feature_weights": arguments.random_feature_weights, "device": device.type,
              "notes": notes,
              "seconds_per_sequence": {name: seconds / len(videos) for name, seconds in accumulator.seconds.items()},
              "results": results}
    record = append_json_line(os.path.join(folder, "metrics.jsonl"), record)  # with the time
    write_json_atomically(os.path.join(folder, "metrics.json"), record)
    print_table(results, comparable, notes)
    print(f"written: {os.path.join(folder, 'metrics.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
