"""Animate an image with a trained GLASS model (SPEC §3.3): play it step by step, transfer the
motion of a real video onto it, reconstruct a real video, draw the action matrices, or play in
a web page.

    # play: per step a global shift and a local action (the action language: python play.py --help)
    python play.py --run-name wsprites-c2 --image sprite.png --actions "right right 3 3 left stay 0"
    python play.py --run-name wsprites-c2 --step 310 --image sprite.png --actions-file moves.yaml --out demo

    # motion transfer: the shifts and local actions inferred from a real video, applied to the image
    python play.py --run-name wsprites-c2 --image sprite.png \\
        --transfer datasets/wsprites-c2/test/sprite_0011_video_00

    # reconstruction of a real video from its first frame (T_f = 1; --protocol one_step: T_f = T-1)
    python play.py --run-name wsprites-c2 --reconstruct datasets/wsprites-c2/test/sprite_0011_video_00

    # the global- and local-action matrices of the paper's supplementary figures (GIF + PNG sheets)
    python play.py --run-name wsprites-c2 --grid --image a.png --image b.png --grid-frames 8
    python play.py --run-name wsprites-c2 --grid        # from first frames of the dataset's test videos
    python play.py --run-name wsprites-c2 --grid --usual-shifts   # each local action with its usual shift

    # a web page at http://127.0.0.1:8000/ (this machine only): arrow keys, space, 1..K, 0 = reset
    python play.py --run-name wsprites-c2 --serve --port 8000
    python play.py --run-name wsprites-c2 --serve --usual-shifts  # keys 1..K: each action with its usual shift

    # the GPU is used when there is one (--device auto); --device cpu forces the CPU
    python play.py --run-name wsprites --device cpu --image sprite.png --actions "right*8"

Files go to runs/NAME/play/MODE-YYYYmmdd-HHMMSS/ (or --out DIR): video.gif, video.mp4 (when PyAV,
the `video` extra, is installed), frames/00000.png … (frame 0 is the input image as the model
sees it), play.json (the checkpoint, the inputs and every step's actions); --transfer and
--reconstruct add comparison.gif (real | generated); --grid writes global_actions.gif,
global_actions_sheet.png, local_actions.gif and local_actions_sheet.png.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

# Set before torch loads OpenMP: threads waiting at the end of a parallel op sleep instead of spinning,
# so frames stay fast when other jobs share the CPU (2 cores, another job running, 2 threads:
# 1.1 s → 47 ms per frame of configs/wsprites.yaml). OMP_WAIT_POLICY=ACTIVE in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402 (after the OpenMP setting)

from data.video_dataset import FIT_MODES
from model.generation import NAMED_SHIFTS, reconstruct, transfer_motion
from model.trained import TrainedModel, load_trained_model
from utils.cli import TRAINED_WEIGHTS_HELP, run_main
from utils.config import RECONSTRUCTION_PROTOCOLS
from utils.distributed import DEVICE_CHOICES, resolve_device_kind
from utils.errors import GlassError
from utils.evaluation.action_metrics import (
    UsualShift,
    recorded_usual_shifts,
    usual_grid_shifts,
    usual_shift_label,
    usual_shift_tokens,
)
from utils.files import require_folder_can_be_made
from utils.media import save_gif, save_png, to_uint8_images
from utils.play.actions import (
    ACTION_LANGUAGE_HELP,
    dataset_start_frames,
    default_output_folder,
    image_paths,
    load_start_image,
    load_video,
    motion_record,
    parse_actions,
    play_actions,
    read_action_file,
    side_by_side,
    write_record,
    write_video,
)
from utils.training.media import action_matrices

GRID_DEFAULT_STARTS = 4  # start images taken from the dataset when --grid has no --image
SERVE_DEFAULT_STARTS = 8  # start images offered by the web page from the dataset


def parse_arguments(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python play.py", description=__doc__.split("\n\n")[0],
        epilog=ACTION_LANGUAGE_HELP + "\n\nFull commands: see the top of play.py.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-name", required=True, help="the run folder's name: RUNS_DIR/RUN_NAME")
    parser.add_argument("--runs-dir", default="runs", help="folder holding the run folders (default: runs)")
    parser.add_argument("--step", type=int, metavar="N", help="use checkpoints/step_N.pth (default: latest.pth)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="auto: CUDA when a GPU is visible")
    parser.add_argument("--trained-weights", action="store_true", help=TRAINED_WEIGHTS_HELP)
    parser.add_argument("--num-threads", type=int, metavar="N",
                        help="PyTorch CPU threads (default: PyTorch's choice, one per core)")
    mode = parser.add_argument_group("what to do (exactly one)").add_mutually_exclusive_group(required=True)
    mode.add_argument("--actions", metavar="STRING", help="play these steps from --image (the action language below)")
    mode.add_argument("--actions-file", metavar="FILE", help="play the steps of a JSON or YAML file from --image")
    mode.add_argument("--transfer", metavar="VIDEO_DIR",
                      help="apply the global and local actions inferred from this video folder to --image")
    mode.add_argument("--reconstruct", metavar="VIDEO_DIR", help="reconstruct this video folder from its first frame")
    mode.add_argument("--grid", action="store_true",
                      help="the global-action matrix (right, left, down, up, stay) and the local-action matrix for "
                           "each --image (default: first frames of the dataset's test videos)")
    mode.add_argument("--serve", action="store_true", help="serve the play page on http://127.0.0.1:PORT/")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--image", action="append", default=[], metavar="IMAGE",
                        help="the start image; for --grid and --serve repeatable, or a folder of images (default "
                             "there: first frames of videos of the run's dataset, test split, else val)")
    inputs.add_argument("--fit", choices=FIT_MODES, default="auto",
                        help="how an image is fitted to the model's frame size: dataset = data.crop then resize, "
                             "as training frames; center = centre-crop to the model's aspect ratio, then resize; "
                             "auto (default) = dataset when data.crop fits in the image and keeps more than half "
                             "its width and height, else center")
    inputs.add_argument("--default-action", type=int, default=0, metavar="K",
                        help="the current local action before a step names one (default 0)")
    inputs.add_argument("--protocol", choices=list(RECONSTRUCTION_PROTOCOLS), default="single_image",
                        help="--reconstruct: single_image (T_f = 1, from the first frame only; default) or one_step "
                             "(T_f = T-1, every step from the real frame: the authors' evaluation)")
    inputs.add_argument("--max-frames", type=int, metavar="N",
                        help="--transfer/--reconstruct: use the first N frames of the video (spaced by "
                             "evaluation.skip_frames, as evaluate.py reads videos; default: all)")
    inputs.add_argument("--grid-frames", type=int, default=8, metavar="N",
                        help="--grid: frames generated per action after the start image (default 8)")
    inputs.add_argument("--usual-shifts", action="store_true",
                        help="--grid: draw each local action with the shift it usually comes with in real videos "
                             "(from the run's latest evaluate.py record of this checkpoint) instead of no shift; a "
                             "walk code read with its walk's shift is then drawn walking. --serve: the page's "
                             "action buttons and number keys step each action with that shift")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--out", metavar="DIR", help="output folder (default: RUNS_DIR/RUN_NAME/play/MODE-TIMESTAMP)")
    outputs.add_argument("--fps", type=float, default=8.0, help="frames per second of the GIF and MP4 (default 8)")
    server = parser.add_argument_group("--serve")
    server.add_argument("--port", type=int, default=8000, metavar="PORT",
                        help="port on 127.0.0.1 (default 8000; 0: any free port)")
    server.add_argument("--max-upload-mb", type=float, default=10.0, metavar="MB",
                        help="largest accepted upload (default 10 MB)")
    server.add_argument("--max-sessions", type=int, default=8, metavar="N",
                        help="sessions kept; the least recently used is dropped for a new one (default 8)")
    server.add_argument("--max-session-frames", type=int, default=300, metavar="N",
                        help="generated frames per session (default 300)")
    return parser.parse_args(argv)


def _mode(arguments: argparse.Namespace) -> str:
    for name in ("actions", "actions_file", "transfer", "reconstruct", "grid", "serve"):
        if getattr(arguments, name) not in (None, False):  # `--actions ""` is the actions mode, with no steps
            return {"actions_file": "actions"}.get(name, name)
    raise AssertionError("argparse requires one mode")


def check_arguments(arguments: argparse.Namespace) -> None:
    """Combinations argparse cannot check; each problem is a one-line `GlassError`."""
    mode = _mode(arguments)
    for name in ("actions_file", "transfer", "reconstruct"):  # e.g. an unset shell variable
        if getattr(arguments, name) == "":
            raise GlassError(f"--{name.replace('_', '-')}: expected a path, got an empty string")
    if "" in arguments.image:
        raise GlassError("--image: expected a path, got an empty string")
    if mode in ("actions", "transfer") and len(arguments.image) != 1:
        raise GlassError(f"--{mode.replace('_', '-')}: needs exactly one --image (got {len(arguments.image)})")
    if mode == "reconstruct" and arguments.image:
        raise GlassError("--image: not used with --reconstruct (the video's first frame is the start image)")
    if arguments.usual_shifts and mode not in ("grid", "serve"):
        raise GlassError("--usual-shifts: only with --grid or --serve (it sets the shift each local action is drawn "
                         "with)")
    if arguments.step is not None and arguments.step < 0:
        raise GlassError(f"--step: must be a checkpoint step >= 0, got {arguments.step}")
    for name in ("max_frames", "grid_frames", "max_sessions", "max_session_frames"):
        value = getattr(arguments, name)
        if value is not None and value < (2 if name == "max_frames" else 1):
            raise GlassError(f"--{name.replace('_', '-')}: must be >= {2 if name == 'max_frames' else 1}, got {value}")
    if arguments.num_threads is not None and arguments.num_threads < 1:
        raise GlassError(f"--num-threads: must be >= 1, got {arguments.num_threads}")
    if not arguments.fps > 0:
        raise GlassError(f"--fps: must be > 0, got {arguments.fps}")
    if not arguments.max_upload_mb > 0:
        raise GlassError(f"--max-upload-mb: must be > 0, got {arguments.max_upload_mb}")
    if arguments.out:
        require_folder_can_be_made(arguments.out, "--out")


def _record(trained: TrainedModel, run_name: str, mode: str, device: torch.device, **extra: Any) -> Dict[str, Any]:
    return {"mode": mode, "run_name": run_name, "checkpoint": trained.path, "step": trained.step,
            "weights": trained.weights, "device": device.type, **extra}


def run_actions(arguments: argparse.Namespace, trained: TrainedModel, device: torch.device,
                folder: str) -> Dict[str, str]:
    num_actions = trained.model.num_actions
    if arguments.actions is not None:
        steps = parse_actions(arguments.actions, num_actions, arguments.default_action)
    else:
        steps = read_action_file(arguments.actions_file, num_actions, arguments.default_action)
    image = load_start_image(arguments.image[0], trained.config.data, arguments.fit).to(device)
    frames = to_uint8_images(play_actions(trained.model, image, steps))
    paths = write_video(frames, folder, arguments.fps)
    paths["record"] = write_record(folder, _record(
        trained, arguments.run_name, "actions", device, image=arguments.image[0], fit=arguments.fit,
        actions=arguments.actions, actions_file=arguments.actions_file, fps=arguments.fps,
        steps=[{"frame": index + 1, **step.to_dict()} for index, step in enumerate(steps)]))
    return paths


def run_video(arguments: argparse.Namespace, trained: TrainedModel, device: torch.device,
              folder: str) -> Dict[str, str]:
    """--transfer and --reconstruct: generate from a real video's inferred motion."""
    video_folder = arguments.transfer or arguments.reconstruct
    video = load_video(video_folder, trained.config.evaluation_data(), arguments.fit, arguments.max_frames).to(device)
    if arguments.transfer:
        image = load_start_image(arguments.image[0], trained.config.data, arguments.fit).to(device)
        result = transfer_motion(trained.model, video[None], image[None])
        labels = ["source video", "transferred"]
    else:
        result = reconstruct(trained.model, video[None], protocol=arguments.protocol)
        labels = ["real", f"{result.protocol} (T_f={result.num_ground_truth_steps})"]
    generated = result.frames[0]
    paths = write_video(to_uint8_images(generated), folder, arguments.fps)
    paths["comparison"] = save_gif(side_by_side([video, generated], labels), os.path.join(folder, "comparison.gif"),
                                   arguments.fps)
    paths["record"] = write_record(folder, _record(
        trained, arguments.run_name, "transfer" if arguments.transfer else "reconstruct", device,
        video=video_folder, image=arguments.image[0] if arguments.transfer else None, fit=arguments.fit,
        protocol=result.protocol, num_ground_truth_steps=result.num_ground_truth_steps, frames=int(video.shape[0]),
        skip_frames=trained.config.evaluation.skip_frames, fps=arguments.fps,
        inferred=motion_record(result, trained.model.frame_size)))
    return paths


def _start_images(arguments: argparse.Namespace, trained: TrainedModel, max_from_dataset: int,
                  required: bool) -> List[Tuple[str, torch.Tensor]]:
    """(name, image (3, H, W)) for --image values, else first frames of the dataset's test/val videos."""
    if arguments.image:
        named = [(os.path.basename(path), path) for path in image_paths(arguments.image)]
    else:
        named = dataset_start_frames(trained.config.data, max_from_dataset)
        if not named and required:
            raise GlassError(f"--grid: no --image given and the run's dataset ({trained.config.data.root}) has no "
                             f"test or val videos on this machine; pass --image FILE or a folder")
    return [(name, load_start_image(path, trained.config.data, arguments.fit)) for name, path in named]


def _recorded_usual_shifts(arguments: argparse.Namespace,
                           trained: TrainedModel) -> Tuple[str, List[UsualShift], List[str]]:
    """--usual-shifts: the latest evaluate.py record of the checkpoint's usual shifts (`recorded_usual_shifts`) →
    (the record's description, the shifts, each code's label)."""
    source, usual = recorded_usual_shifts(os.path.join(arguments.runs_dir, arguments.run_name), trained.step,
                                          trained.model.num_actions)
    return source, usual, [usual_shift_label(code, entry) for code, entry in enumerate(usual)]


def run_grid(arguments: argparse.Namespace, trained: TrainedModel, device: torch.device, folder: str) -> Dict[str, str]:
    starts = _start_images(arguments, trained, GRID_DEFAULT_STARTS, required=True)
    names = [name for name, _ in starts]
    start_frames = torch.stack([image for _, image in starts]).to(device)
    num_actions = trained.model.num_actions
    local_columns: List[Any] = list(range(num_actions))
    shifts, labels, usual_from = None, None, None
    if arguments.usual_shifts:
        usual_from, usual, labels = _recorded_usual_shifts(arguments, trained)
        shifts = usual_grid_shifts(usual, trained.config.data.input_size).to(device)
        local_columns = [{"action": code, "shift": [round(value, 6) for value in shift]}
                         for code, shift in enumerate(shifts.tolist())]
    paths: Dict[str, str] = {}
    for name, (video, sheet) in action_matrices(trained.model, start_frames, arguments.grid_frames, row_names=names,
                                                local_action=arguments.default_action, local_action_shifts=shifts,
                                                local_column_names=labels).items():
        paths[name] = save_gif(video, os.path.join(folder, f"{name}.gif"), arguments.fps)
        paths[name + "_sheet"] = save_png(sheet, os.path.join(folder, f"{name}_sheet.png"))
    paths["record"] = write_record(folder, _record(
        trained, arguments.run_name, "grid", device, images=names, fit=arguments.fit,
        grid_frames=arguments.grid_frames, global_local_action=arguments.default_action,
        global_columns=dict(NAMED_SHIFTS), local_columns=local_columns, usual_shifts_from=usual_from,
        fps=arguments.fps))
    return paths


def run_server(arguments: argparse.Namespace, trained: TrainedModel) -> int:
    from utils.play.server import PlayServer, ServerLimits, UsualShifts, create_http_server

    usual_shifts = None
    if arguments.usual_shifts:
        usual_from, usual, labels = _recorded_usual_shifts(arguments, trained)
        usual_shifts = UsualShifts(usual_shift_tokens(usual, trained.config.data.input_size), labels, usual_from)
    starts = _start_images(arguments, trained, SERVE_DEFAULT_STARTS, required=False)
    limits = ServerLimits(max_sessions=arguments.max_sessions, max_frames=arguments.max_session_frames,
                          max_upload_bytes=int(arguments.max_upload_mb * 2 ** 20), fps=arguments.fps)
    server = PlayServer(trained.model, trained.config.data, starts, limits, fit=arguments.fit,
                        title=f"{arguments.run_name} (step {trained.step})", usual_shifts=usual_shifts)
    http_server = create_http_server(server, arguments.port)
    port = http_server.server_address[1]
    print(f"{trained.path}: {len(starts)} start image(s); open http://127.0.0.1:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        http_server.serve_forever()
    finally:
        http_server.server_close()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    arguments = parse_arguments(argv)
    check_arguments(arguments)
    device = torch.device(resolve_device_kind(arguments.device))
    if arguments.num_threads is not None:
        torch.set_num_threads(arguments.num_threads)
    run_folder = os.path.join(arguments.runs_dir, arguments.run_name)
    trained = load_trained_model(run_folder, arguments.step, device, trained_weights=arguments.trained_weights)
    if trained.config.training.channels_last:
        # As in training: the channels-last convolution kernels make a frame about 15 % faster on the CPU.
        trained.model.to(memory_format=torch.channels_last)
    if arguments.serve:
        return run_server(arguments, trained)
    mode = _mode(arguments)
    folder = arguments.out or default_output_folder(run_folder, mode)
    runner = {"actions": run_actions, "transfer": run_video, "reconstruct": run_video, "grid": run_grid}[mode]
    paths = runner(arguments, trained, device, folder)
    print(f"{trained.path} (step {trained.step}, {trained.describe_weights()}) → {folder}")
    for kind, path in paths.items():
        print(f"  {kind:<22} {path}")
    return 0


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
