"""Write the reconstructions of every test sequence of a run, for evaluate_dataset.py (SPEC §5.2).

    # the run's latest checkpoint, the config's protocol (one_step: T_f = T−1, the authors' evaluation)
    python build_evaluation_dataset.py --run-name wsprites
    # a given step, the single-image protocol (T_f = 1), a chosen folder, on the CPU
    python build_evaluation_dataset.py --run-name wsprites --step 300000 --protocol single_image \
        --out /data/eval --device cpu
    # then measure it
    python evaluate_dataset.py --run-name wsprites --step 300000 --protocol single_image

The model is rebuilt from the run's config.yaml; `--config FILE` takes the data and evaluation
settings from another file (e.g. a dataset elsewhere); dotted key=value overrides apply on top. Each test window of
`evaluation.observations_count` frames becomes one video folder of that many PNG frames at the
model size: frame 0 the real first frame, then the reconstruction. Default folder:
RUNS_DIR/RUN_NAME/evaluation_dataset/step_N-PROTOCOL/, with manifest.json written last (format in
utils/evaluation/generated_dataset.py). Videos are written atomically; a re-run continues where an
interrupted one stopped (--overwrite starts again). One GPU at most (--device auto takes it).
Several GPUs: run one process per checkpoint or protocol.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from utils.cli import TRAINED_WEIGHTS_HELP, run_main
from utils.config import RECONSTRUCTION_PROTOCOLS
from utils.distributed import DEVICE_CHOICES, resolve_device_kind
from utils.evaluation.action_metrics import load_run_for_evaluation
from utils.evaluation.generated_dataset import build_evaluation_dataset, default_folder


def parse_arguments(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python build_evaluation_dataset.py", description=__doc__.splitlines()[0],
                                     epilog="Full commands: see the top of build_evaluation_dataset.py.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-name", required=True, help="the run folder's name: RUNS_DIR/RUN_NAME")
    parser.add_argument("--runs-dir", default="runs", help="folder holding the run folders (default: runs)")
    parser.add_argument("--config", help="take the data and evaluation settings from this file instead of the run's "
                                         "config.yaml (the model is always the run's)")
    parser.add_argument("--step", type=int, metavar="N", help="use checkpoints/step_N.pth (default: latest.pth)")
    parser.add_argument("--protocol", choices=list(RECONSTRUCTION_PROTOCOLS),
                        help="one_step (T_f = T−1) or single_image (T_f = 1); default: evaluation.protocol")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: RUN/evaluation_dataset/step_N-PROTOCOL)")
    parser.add_argument("--overwrite", action="store_true", help="empty the output folder first")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="auto: CUDA when a GPU is visible")
    parser.add_argument("--num-threads", type=int, help="CPU threads of PyTorch (torch.set_num_threads)")
    parser.add_argument("--trained-weights", action="store_true", help=TRAINED_WEIGHTS_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted config overrides, e.g. evaluation.batch_size=8 data.root=/data/wsprites")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.num_threads is not None:
        torch.set_num_threads(arguments.num_threads)
    run_folder = os.path.join(arguments.runs_dir, arguments.run_name)
    device = torch.device(resolve_device_kind(arguments.device))
    # data and evaluation settings from --config when given; the model always from the run
    trained, comparable = load_run_for_evaluation(run_folder, arguments.step, device, arguments.overrides,
                                                  arguments.config, arguments.trained_weights)
    config = trained.config
    protocol = arguments.protocol or config.evaluation.protocol
    folder = arguments.out or default_folder(run_folder, trained.step, protocol, arguments.trained_weights)
    print(f"{trained.path} (step {trained.step}, {trained.describe_weights()}) → {folder}: test windows of "
          f"{config.evaluation.observations_count} frames, protocol {protocol}, {device.type}")
    with tqdm(desc="videos", unit="video", disable=arguments.no_progress) as bar:
        manifest = build_evaluation_dataset(trained, run_folder, folder, protocol, device, comparable,
                                            overwrite=arguments.overwrite, progress=bar.update)
    print(f"{len(manifest['videos'])} videos and manifest.json in {folder}"
          + ("" if comparable else " (comparable: false: the run used random VGG19 weights)"))
    return 0


if __name__ == "__main__":
    run_main(main)
