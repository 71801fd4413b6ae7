"""Train GLASS (SPEC §4) on a dataset in the PVG video format.

    # one GPU (or the CPU when there is none); the run folder is runs/wsprites/
    python train.py --config configs/wsprites.yaml --run-name wsprites

    # several GPUs of this machine, one process each (DistributedDataParallel, NCCL)
    python train.py --config configs/wsprites.yaml --run-name wsprites --num-gpus 4

    # torchrun: one machine, or several (run on each; node 0's address as the endpoint)
    torchrun --nproc-per-node 8 train.py --config configs/wsprites.yaml --run-name wsprites
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id wsprites \\
        train.py --config configs/wsprites.yaml --run-name wsprites

    # the CPU: the small configuration (its header generates its data); K CPU processes (gloo): --num-gpus K
    python train.py --config configs/wsprites-tiny.yaml --run-name wsprites-tiny --device cpu
    python train.py --config configs/wsprites-tiny.yaml --run-name wsprites-tiny-2 --device cpu --num-gpus 2

    # a smoke run of the paper's model without VGG19's ImageNet weights (recorded as not comparable)
    python train.py --config configs/wsprites.yaml --run-name smoke --random-vgg-weights training.num_steps=20

    # continue a run from its latest checkpoint (or --resume-step 5000); key=value overrides still apply
    python train.py --run-name wsprites --resume-step latest training.num_steps=400000

    # print the resolved configuration and the parameter counts, write nothing
    python train.py --config configs/wsprites.yaml --run-name wsprites --dry-run model.lma.num_actions=9

The run folder runs/NAME/ gets config.yaml before the first step, metrics.jsonl (one JSON
line every training.log_every steps), media/ (every training.media_every steps) and
checkpoints/step_N.pth + latest.pth (every training.checkpoint_every steps and at the end).
Batch sizes are per process. Ctrl-C or SIGTERM finishes the current step, saves a checkpoint
and exits (status 128 + the signal). A resumed run continues exactly: on the CPU, N + M steps
in one go and N steps, resume, M steps give bit-identical weights. Multi-machine runs need
the run folder on a shared file system to resume.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence

if __name__ == "__main__":  # before torch is imported: glibc reads its allocator settings at process start
    from utils.allocator import restart_with_malloc_tuning
    restart_with_malloc_tuning()  # CPU training only, judged from --device (utils/allocator.py)


from model.glass import build_model  # noqa: E402
from utils.checkpoint import (
    MEDIA_FOLDER,
    has_checkpoints,
    load_checkpoint,
    parse_resume_step,
    prepare_run_folder,
    read_run_config,
    resume_checkpoint_path,
    save_checkpoint,
)
from utils.cli import run_main
from utils.config import Config, check_frames_fit, config_to_dict, dump_config, load_config
from utils.distributed import (
    DEVICE_CHOICES,
    DistributedContext,
    any_process,
    barrier,
    check_launch,
    launch,
    resolve_device_kind,
)
from utils.errors import GlassError
from utils.files import require_folder_can_be_made
from utils.run_logger import LMAMeter, LossMeter, RunLogger
from utils.training.batches import MediaBatch, TrainingBatches
from utils.training.state import process_seed, resume_training, seed_everything, training_checkpoint
from utils.training.stopping import StopRequest
from utils.training.trainer import Trainer, check_device_support

RANDOM_VGG_WARNING = ("comparable: false: VGG19 has random weights (--random-vgg-weights), so the perceptual losses "
                      "differ from the paper's; for tests and smoke runs only")


@dataclass
class RunPlan:
    """Everything a training process needs, decided once before the processes start."""

    config: Config
    run_name: str
    run_folder: str
    resume_path: Optional[str]  # the checkpoint to continue from; None for a new run
    device_kind: str  # 'cpu' or 'cuda'
    use_wandb: bool
    show_progress: bool


def parse_arguments(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python train.py", description=__doc__.splitlines()[0],
                                     epilog="Full commands (one GPU, several GPUs, torchrun, CPU): "
                                            "see the top of train.py.")
    parser.add_argument("--config",
                        help="a YAML file in configs/ (new runs; a resumed run uses its stored config.yaml)")
    parser.add_argument("--run-name", required=True, help="the run folder's name: RUNS_DIR/RUN_NAME")
    parser.add_argument("--runs-dir", default="runs", help="folder holding the run folders (default: runs)")
    parser.add_argument("--resume-step", metavar="N|-1|latest",
                        help="continue the run from checkpoints/step_N.pth, or latest.pth with -1 or 'latest'")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="processes on this machine, one per GPU (with --device cpu: CPU processes with gloo); "
                             "not with torchrun, whose --nproc-per-node sets it")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="auto: CUDA when a GPU is visible")
    parser.add_argument("--random-seed", type=int,
                        help="overrides training.seed (processes use seed·world_size + rank)")
    parser.add_argument("--random-vgg-weights", action="store_true",
                        help="VGG19 with random weights for the perceptual losses (tests and smoke runs: the run is "
                             "recorded as not comparable with the paper)")
    parser.add_argument("--wandb", action="store_true",
                        help="also log to Weights & Biases (project 'glass'; WANDB_MODE=offline logs to the run "
                             "folder)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved configuration and the parameter counts, then exit (writes nothing)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (status lines only)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted config overrides, e.g. training.batch_size=8 model.lma.num_actions=9")
    return parser.parse_intermixed_args(argv)


def resolve_configuration(arguments: argparse.Namespace, run_folder: str) -> Config:
    """The run's configuration: --config (a new run) or the run's config.yaml (a resumed one), then the overrides."""
    overrides: List[str] = list(arguments.overrides)
    if arguments.random_seed is not None:
        overrides.append(f"training.seed={arguments.random_seed}")
    if arguments.random_vgg_weights:
        overrides.append("training.random_vgg_weights=true")
    if arguments.resume_step is not None:
        if arguments.config:
            raise GlassError("--config: a resumed run uses the config.yaml of its folder; give changes as key=value "
                             "overrides instead")
        return read_run_config(run_folder, overrides)  # checks that the frames fit the model, naming the file
    if not arguments.config:
        raise GlassError("--config is required to start a run (or continue one with --resume-step)")
    return check_frames_fit(load_config(arguments.config, overrides), arguments.config)


def print_summary(config: Config) -> None:
    model = build_model(config)
    height, width = model.frame_size
    print(f"{config.name}: frames {width}×{height}, {config.model.lma.num_actions} local actions")
    for name, count in model.parameter_counts().items():
        print(f"{name:<18} {count:>12,}")


def run_process(plan: RunPlan, context: DistributedContext) -> int:
    """The training loop of one process; returns the exit status (128 + signal when stopped by one)."""
    config, training = plan.config, plan.config.training
    seed_everything(process_seed(training, context))
    trainer = Trainer(config, context)
    first_step, data_position = 0, {"epoch": 0, "position": 0}
    if plan.resume_path is not None:
        checkpoint = load_checkpoint(plan.resume_path)
        data_position = resume_training(trainer, checkpoint, plan.resume_path)
        first_step = int(checkpoint["step"])
        del checkpoint
    batches = TrainingBatches(config, context, first_step, **data_position)
    logger: Optional[RunLogger] = None
    media: Optional[MediaBatch] = None
    if context.is_main:
        prepare_run_folder(plan.run_folder, config, first_step,
                           RANDOM_VGG_WARNING if training.random_vgg_weights else "")
        logger = RunLogger(plan.run_folder, plan.run_name, {**config_to_dict(config), "world_size": context.world_size},
                           context.device, first_step, training.num_steps, comparable=not training.random_vgg_weights,
                           use_wandb=plan.use_wandb, show_progress=plan.show_progress)
        media = MediaBatch(config)
        resumed = f"resumed from {plan.resume_path} at step {first_step}" if plan.resume_path else "new run"
        logger.message(f"{plan.run_folder}: {resumed}; {len(batches.dataset)} training videos, "
                       f"{context.world_size} process(es) × batch {training.batch_size} on {context.device.type}")
    barrier(context)

    stop = StopRequest()
    meter, lma_meter = LossMeter(), LMAMeter()
    try:
        batch_stream = iter(batches)
        for step in range(first_step, training.num_steps):
            batch = next(batch_stream)
            result = trainer.training_step(batch, step)
            steps_done = step + 1
            meter.add(result.loss.total, result.loss.terms)
            lma_meter.add(result.lma_statistics)
            if steps_done % training.log_every == 0 or steps_done == training.num_steps:
                losses = {**meter.summarize(context), **lma_meter.summarize(context)}
                if result.ran_lma:  # the code effect on this step's batch (README "Training", metrics.jsonl)
                    losses.update(trainer.code_effect(batch, step))
                if logger is not None:
                    logger.log_scalars(steps_done, {"lr": result.learning_rate,
                                                    "observations_count": result.observations_count,
                                                    "ground_truth_steps": result.ground_truth_steps,
                                                    "lma_trained": result.ran_lma, **losses})
            if media is not None and (steps_done % training.media_every == 0 or steps_done == training.num_steps):
                files = trainer.write_media(media.observations(step), step, os.path.join(plan.run_folder, MEDIA_FOLDER))
                logger.log_media(steps_done, files)
            stopping = any_process(context, stop.requested)
            if steps_done % training.checkpoint_every == 0 or steps_done == training.num_steps or stopping:
                state = training_checkpoint(trainer, batches, steps_done, result)
                if state is not None:
                    path = save_checkpoint(plan.run_folder, state)
                    logger.message(f"saved {path}")
            if logger is not None:
                logger.step_done()
            if stopping:
                if logger is not None:
                    logger.message(f"stopped by {stop.signal_name()} after step {steps_done}; continue with: python "
                                   f"train.py --run-name {plan.run_name} --runs-dir {os.path.dirname(plan.run_folder)} "
                                   f"--resume-step latest")
                barrier(context)
                return 128 + stop.signal_number if stop.signal_number is not None else 0
    finally:
        stop.close()
        if logger is not None:
            logger.close()
    barrier(context)
    return 0


def remove_failed_new_run_folder(run_folder: str, new_folder: bool) -> None:
    """Bad input found once training has begun (a truncated frame, say) stops a new run with a one-line error;
    the folder this command made for it goes too while it holds no checkpoint, so nothing half-made stays."""
    if new_folder and not has_checkpoints(run_folder) and os.environ.get("RANK", "0") == "0":
        shutil.rmtree(run_folder, ignore_errors=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    arguments = parse_arguments(argv)
    if not arguments.run_name or os.sep in arguments.run_name or arguments.run_name in (".", ".."):
        raise GlassError(f"--run-name: expected a folder name, got {arguments.run_name!r}")
    run_folder = os.path.join(arguments.runs_dir, arguments.run_name)
    resume_step = parse_resume_step(arguments.resume_step) if arguments.resume_step is not None else None
    config = resolve_configuration(arguments, run_folder)
    device_kind = resolve_device_kind(arguments.device)
    check_device_support(config.training, device_kind)
    if arguments.dry_run:
        print(dump_config(config), end="")
        print_summary(config)
        return 0

    resume_path = None
    if arguments.resume_step is not None:
        resume_path = resume_checkpoint_path(run_folder, resume_step)
    elif has_checkpoints(run_folder):
        raise GlassError(f"{run_folder} already holds checkpoints: continue it with --resume-step latest, "
                         f"or choose another --run-name")
    else:
        require_folder_can_be_made(run_folder, "run folder")
    check_launch(arguments.num_gpus, device_kind)
    if config.training.random_vgg_weights:
        print(f"warning: {RANDOM_VGG_WARNING}", file=sys.stderr)
    plan = RunPlan(config=config, run_name=arguments.run_name, run_folder=run_folder, resume_path=resume_path,
                   device_kind=device_kind, use_wandb=arguments.wandb, show_progress=not arguments.no_progress)
    new_folder = resume_path is None and not os.path.exists(run_folder)
    try:
        status = launch(run_process, plan, device_kind, arguments.num_gpus)
    except GlassError:
        remove_failed_new_run_folder(run_folder, new_folder)
        raise
    if status == 2:  # a process started by launch printed its one-line error
        remove_failed_new_run_folder(run_folder, new_folder)
    return status


if __name__ == "__main__":
    run_main(main)
