"""Action and segmentation metrics of a trained GLASS run (SPEC §5.1) on the windows of one split.

NMI of the local actions, shift errors and directions, soft mask IoU — of the predictions on the real videos
against the labels (GT), of those on their reconstructions (RE), and between the two (CO).

    # one GPU (or the CPU when there is none): the run's latest checkpoint, the validation split
    python evaluate.py --run-name wsprites
    # a given checkpoint, the test split, the single-image protocol (T_f = 1) for the reconstructions
    python evaluate.py --run-name wsprites --step 300000 --split test --protocol single_image
    # the dataset (data and evaluation settings) of another config file; the model is always the run's
    python evaluate.py --config configs/wsprites.yaml --run-name wsprites data.root=/data/wsprites
    # the action readers' BatchNorm statistics recomputed from 50 training batches first (see --help)
    python evaluate.py --run-name wsprites --refit-reader-norm 50
    # training characters (the first 30 videos of the training split) beside the validation split's unseen ones
    python evaluate.py --run-name wsprites --split train --max-videos 30

    # several GPUs of this machine, one process each (NCCL); or torchrun
    python evaluate.py --run-name wsprites --num-gpus 4
    torchrun --nproc-per-node 4 evaluate.py --run-name wsprites

    # the CPU, K processes (gloo)
    python evaluate.py --run-name wsprites-tiny --device cpu
    python evaluate.py --run-name wsprites-tiny --device cpu --num-gpus 2

The model is rebuilt from RUNS_DIR/RUN_NAME/config.yaml and checkpoints/step_N.pth (latest.pth
without --step). It runs on every non-overlapping window of evaluation.observations_count
frames of the split (default evaluation.split, 'val'); the reconstructions use
evaluation.protocol (default one_step: T_f = T−1, the authors' evaluation). The metrics and
their alignment with the labels are defined in utils/evaluation/action_metrics.py. A table is printed and one
JSON line appended to RUNS_DIR/RUN_NAME/metrics/evaluate-SPLIT-PROTOCOL.jsonl (step, split,
protocol, checkpoint, time, every value, and what was skipped and why on data without labels). Beside it, in
metrics/: on labelled data the codes per true local action as a picture (…-step_N-confusion.png), and the
local-action sheet with each code's usual shift (…-step_N-local-actions.png: from the split's first characters,
each code held for 6 steps with the median shift of the transitions given it, as the table's last rows say).
Several processes split the windows by whole batches and give the single-process result.
"""
from __future__ import annotations

import argparse
import functools
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

if __name__ == "__main__":  # before torch is imported: glibc reads its allocator settings at process start
    from utils.allocator import restart_with_malloc_tuning
    restart_with_malloc_tuning()  # on the CPU only, judged from --device (utils/allocator.py)

import numpy as np
import torch
from tqdm import tqdm

from data.video_dataset import VideoDataset
from model.glass import refit_action_reader_statistics
from model.trained import TrainedModel
from utils.cli import TRAINED_WEIGHTS_HELP, run_main
from utils.config import RECONSTRUCTION_PROTOCOLS, SPLITS
from utils.distributed import (
    DEVICE_CHOICES,
    DistributedContext,
    check_launch,
    launch,
    launches_single_process,
    resolve_device_kind,
)
from utils.errors import GlassError
from utils.evaluation.action_metrics import (
    confusion_path,
    confusion_row_labels,
    evaluate_run,
    evaluation_dataset,
    format_table,
    load_run_for_evaluation,
    metrics_path,
    reader_refit_batches,
    result_record,
    shard_indices,
    usual_shift_sheet,
    usual_shift_sheet_path,
    usual_shift_steps,
)
from utils.files import append_json_line
from utils.media import confusion_image, save_png

Loaded = Tuple[TrainedModel, bool, VideoDataset]  # the run, whether it is comparable, its evaluation windows


@dataclass
class EvaluationPlan:
    """What every evaluation process needs, decided once before they start."""

    run_folder: str
    step: Optional[int]
    config_path: Optional[str]
    overrides: List[str]
    device_kind: str
    show_progress: bool
    refit_reader_norm: int = 0
    trained_weights: bool = False  # --trained-weights


def parse_arguments(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python evaluate.py", description=__doc__.splitlines()[0],
                                     epilog="Full commands (one GPU, several GPUs, torchrun, CPU): see the top of "
                                            "evaluate.py.", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-name", required=True, help="the run folder's name: RUNS_DIR/RUN_NAME")
    parser.add_argument("--runs-dir", default="runs", help="folder holding the run folders (default: runs)")
    parser.add_argument("--config", help="take the data and evaluation settings from this file instead of the run's "
                                         "config.yaml (the model is always the run's)")
    parser.add_argument("--step", type=int, metavar="N", help="use checkpoints/step_N.pth (default: latest.pth)")
    parser.add_argument("--split", choices=SPLITS, help="the split to evaluate (default: evaluation.split, 'val')")
    parser.add_argument("--max-videos", type=int, metavar="N",
                        help="only the split's first N videos, by folder name (evaluation.max_videos; default: all); "
                             "with --split train, training characters to compare with the validation split's unseen "
                             "ones")
    parser.add_argument("--protocol", choices=list(RECONSTRUCTION_PROTOCOLS),
                        help="reconstruction for RE and CO: one_step (T_f = T−1) or single_image (T_f = 1); "
                             "default: evaluation.protocol")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="processes on this machine, one per GPU (with --device cpu: CPU processes with gloo)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="auto: CUDA when a GPU is visible")
    parser.add_argument("--num-threads", type=int,
                        help="CPU threads of PyTorch on this machine, shared evenly by its processes (default: one "
                             "process keeps PyTorch's choice; several CPU processes share the CPUs it may use)")
    parser.add_argument("--refit-reader-norm", type=int, default=0, metavar="N",
                        help="first recompute the action readers' BatchNorm running statistics from N batches of the "
                             "training split with the checkpoint's weights (their plain average; nothing is written "
                             "to the checkpoint); 0 (default): the checkpoint's statistics")
    parser.add_argument("--trained-weights", action="store_true", help=TRAINED_WEIGHTS_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted config overrides, e.g. evaluation.batch_size=8 data.root=/data/wsprites")
    return parser.parse_intermixed_args(argv)


def run_process(plan: EvaluationPlan, context: DistributedContext, loaded: Optional[Loaded] = None) -> int:
    """Evaluate this process's share of the windows; rank 0 prints the table and appends the JSON line.
    `loaded`: the run and its evaluation windows, already read by a single-process `main` (moved to the device
    here); each process of a multi-process run reads its own."""
    if loaded is None:
        trained, comparable = load_run_for_evaluation(plan.run_folder, plan.step, context.device, plan.overrides,
                                                      plan.config_path, plan.trained_weights)
        dataset = evaluation_dataset(trained.config)
    else:
        trained, comparable, dataset = loaded
        trained.model.to(context.device)
    evaluation = trained.config.evaluation
    protocol = evaluation.protocol
    if plan.refit_reader_norm:
        refitted = refit_action_reader_statistics(trained.model, reader_refit_batches(
            trained.config, plan.refit_reader_norm, context.device))
        if context.is_main:
            print(f"the action readers' BatchNorm statistics refitted from {refitted} training batch(es)" if refitted
                  else "no BatchNorm in the action readers: nothing to refit")
    if context.is_main:
        videos = "" if evaluation.max_videos is None else f" (its first {len(dataset.all_videos)} videos)"
        print(f"{trained.path} (step {trained.step}, {trained.describe_weights()}): split {evaluation.split}{videos}, "
              f"windows of {evaluation.observations_count} frames, protocol {protocol}, {context.world_size} "
              f"process(es) on {context.device.type}")
    share = len(shard_indices(len(dataset), evaluation.batch_size, context.rank, context.world_size))
    with tqdm(desc="windows", unit="window", total=share, disable=not (plan.show_progress and context.is_main)) as bar:
        result = evaluate_run(trained, protocol, context, progress=bar.update, dataset=dataset)
    if result is None:
        return 0
    print(format_table(result, protocol))
    if not comparable:
        print("comparable: false: the run trained with random VGG19 weights")
    path = metrics_path(plan.run_folder, evaluation.split, protocol)
    record = result_record(result, trained, plan.run_folder, protocol, comparable, context.world_size)
    record["reader_norm_refit_batches"] = plan.refit_reader_norm
    append_json_line(path, record)
    print(f"appended to {path}")
    if result.confusion is not None:
        picture = save_png(confusion_image(np.array(result.confusion), confusion_row_labels(len(result.confusion)),
                                           [f"code {code}" for code in range(len(result.confusion[0]))]),
                           confusion_path(plan.run_folder, evaluation.split, protocol, trained.step,
                                          plan.trained_weights))
        print(f"wrote {picture}")
    if result.code_shifts is not None:
        sheet = usual_shift_sheet(trained.model, dataset, result.code_shifts, trained.config.data.input_size)
        picture = save_png(sheet, usual_shift_sheet_path(plan.run_folder, evaluation.split, protocol, trained.step,
                                                         plan.trained_weights))
        print(f"wrote {picture} (each code held 6 steps with its usual shift, from the split's first characters)")
        print("play.py steps, each code with its usual shift: " +
              " ".join(usual_shift_steps(result.code_shifts, trained.config.data.input_size)))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    arguments = parse_arguments(argv)
    overrides = list(arguments.overrides)
    if arguments.split:
        overrides.append(f"evaluation.split={arguments.split}")
    if arguments.protocol:
        overrides.append(f"evaluation.protocol={arguments.protocol}")
    if arguments.max_videos is not None:
        overrides.append(f"evaluation.max_videos={arguments.max_videos}")
    device_kind = resolve_device_kind(arguments.device)
    check_launch(arguments.num_gpus, device_kind, arguments.num_threads)
    if arguments.refit_reader_norm < 0:
        raise GlassError(f"--refit-reader-norm: must be >= 0 batches, got {arguments.refit_reader_norm}")
    plan = EvaluationPlan(run_folder=os.path.join(arguments.runs_dir, arguments.run_name), step=arguments.step,
                          config_path=arguments.config, overrides=overrides, device_kind=device_kind,
                          show_progress=not arguments.no_progress, refit_reader_norm=arguments.refit_reader_norm,
                          trained_weights=arguments.trained_weights)
    # Every bad input (run, checkpoint, config keys, data) fails here, once, before processes start; a single
    # process then uses what was read (the checkpoint is read and the windows are listed once).
    trained, comparable = load_run_for_evaluation(plan.run_folder, plan.step, torch.device("cpu"), plan.overrides,
                                                  plan.config_path, plan.trained_weights)
    loaded: Loaded = (trained, comparable, evaluation_dataset(trained.config))
    single = functools.partial(run_process, loaded=loaded) if launches_single_process(arguments.num_gpus) else None
    del trained, loaded  # several processes each read their own
    return launch(run_process, plan, device_kind, arguments.num_gpus, arguments.num_threads, run_single=single)


if __name__ == "__main__":
    run_main(main)
