"""The evaluation dataset (SPEC §5.2, STYLE habit 13): generated test videos on disk, then measured.

`build_evaluation_dataset.py` writes, and `evaluate_dataset.py` reads, a folder
(default `runs/R/evaluation_dataset/step_N-PROTOCOL/`) holding

    00000/00000.png … 000{T-1}.png   one video per test window of T = evaluation.observations_count
                                     frames at the model size (data.input_size), RGB PNG: frame 0
                                     is the real first frame, frames 1 … T−1 the reconstruction
    manifest.json                    written last: {format, run_folder, step, checkpoint, weights, protocol,
                                     split, observations_count, skip_frames, data_root, comparable,
                                     videos: [{name, source_video, start_frame}, …]}

The real counterpart of a video is the window of T frames from `start_frame` of the test video
`source_video`, as `VideoDataset(config.data, "test", sampling="all", observations_count=T)`
cuts it. Each video folder appears complete or not at all (`utils.files.write_folder_atomically`); a
re-run skips the finished ones.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from data.video_dataset import VideoDataset, collate_videos
from model.generation import reconstruct
from model.trained import TRAINED_WEIGHTS_SUFFIX, TrainedModel
from utils.config import Config
from utils.errors import GlassError
from utils.files import TEMPORARY_PREFIX, write_folder_atomically, write_json_atomically
from utils.media import save_png, to_uint8_images

MANIFEST_FORMAT = 1
MANIFEST_FILE = "manifest.json"
MANIFEST_KEYS = ("format", "run_folder", "step", "checkpoint", "protocol", "split", "observations_count",
                 "skip_frames", "data_root", "comparable", "videos")
EVALUATION_SPLIT = "test"  # SPEC §5.2: every test sequence
EVALUATION_FOLDER = "evaluation_dataset"  # inside the run folder
# What an interrupted run leaves: write_folder_atomically's folders, and '.partial-' ones of earlier versions
_TEMPORARY_PREFIXES = (TEMPORARY_PREFIX, ".partial-")


def default_folder(run_folder: str, step: int, protocol: str, trained_weights: bool = False) -> str:
    """runs/R/evaluation_dataset/step_N-PROTOCOL, or step_N-PROTOCOL-trained-weights for the weights training left
    (build_evaluation_dataset.py --trained-weights), so that a run's averaged and trained weights never share a
    folder."""
    suffix = TRAINED_WEIGHTS_SUFFIX if trained_weights else ""
    return os.path.join(run_folder, EVALUATION_FOLDER, f"step_{step}-{protocol}{suffix}")


def latest_folder(run_folder: str, protocol: str) -> str:
    """The evaluation dataset of `protocol` with the highest step in RUN/evaluation_dataset/."""
    parent = os.path.join(run_folder, EVALUATION_FOLDER)
    steps = [int(match.group(1)) for name in (os.listdir(parent) if os.path.isdir(parent) else [])
             if (match := re.fullmatch(rf"step_(\d+)-{re.escape(protocol)}", name))]
    if not steps:
        raise GlassError(f"{parent}: no step_N-{protocol} folder (run build_evaluation_dataset.py first)")
    return default_folder(run_folder, max(steps), protocol)


def read_manifest(folder: str) -> dict:
    """DIR/manifest.json, checked against the contract above; any fault is a one-line GlassError."""
    path = os.path.join(folder, MANIFEST_FILE)
    if not os.path.isfile(path):
        raise GlassError(f"{path}: missing (not a finished evaluation dataset of build_evaluation_dataset.py)")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as error:
        raise GlassError(f"{path}: not readable JSON ({' '.join(str(error).split())})") from None
    if not isinstance(manifest, dict) or any(key not in manifest for key in MANIFEST_KEYS):
        missing = [key for key in MANIFEST_KEYS if not isinstance(manifest, dict) or key not in manifest]
        raise GlassError(f"{path}: malformed manifest, missing {', '.join(missing)}")
    if manifest["format"] != MANIFEST_FORMAT:
        raise GlassError(f"{path}: manifest format {manifest['format']!r}, this code reads {MANIFEST_FORMAT}")
    videos = manifest["videos"]
    if (not isinstance(videos, list) or not videos or not all(
            isinstance(video, dict) and isinstance(video.get("name"), str)
            and isinstance(video.get("source_video"), str) and isinstance(video.get("start_frame"), int)
            for video in videos)):
        raise GlassError(f"{path}: malformed manifest: 'videos' must be a non-empty list of "
                         f"{{name, source_video, start_frame}}")
    return manifest


def _is_complete(folder: str, count: int) -> bool:
    return os.path.isdir(folder) and all(os.path.isfile(os.path.join(folder, f"{index:05d}.png"))
                                         for index in range(count))


def prepare_output_folder(folder: str, overwrite: bool) -> None:
    """Create `folder`; with `overwrite` empty it first. A non-empty folder that is not an evaluation
    dataset (no manifest, no video or partial folders) is refused rather than written into."""
    if os.path.isdir(folder) and os.listdir(folder):
        ours = all(name == MANIFEST_FILE or name.startswith(_TEMPORARY_PREFIXES) or name.isdigit()
                   for name in os.listdir(folder))
        if not ours:
            raise GlassError(f"{folder}: exists and holds other files; choose another --out or remove it")
        if overwrite:
            shutil.rmtree(folder)
    elif os.path.exists(folder) and not os.path.isdir(folder):
        raise GlassError(f"{folder}: exists and is not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:  # a file where a folder above it should be, no permission, …
        raise GlassError(f"{folder}: cannot create the folder ({error.strerror or error})") from None
    for name in os.listdir(folder):  # left by an interrupted run
        if name.startswith(_TEMPORARY_PREFIXES):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def _write_video(folder: str, name: str, frames: torch.Tensor) -> None:
    """frames (T, 3, H, W) in [−1, 1] → folder/name/00000.png …, atomically (an incomplete folder of another
    writer is replaced whole)."""
    def write(temporary: str) -> None:
        for index, image in enumerate(to_uint8_images(frames)):
            save_png(image, os.path.join(temporary, f"{index:05d}.png"))

    write_folder_atomically(os.path.join(folder, name), write)


def build_evaluation_dataset(trained: TrainedModel, run_folder: str, folder: str, protocol: str, device: torch.device,
                             comparable: bool, overwrite: bool = False,
                             progress: Optional[Callable[[int], Any]] = None) -> Dict[str, Any]:
    """Write the reconstruction of every test window of `trained.config` into `folder`; returns the manifest.

    `progress(n)` is called after each batch with the number of windows done in it.
    """
    config = trained.config
    count = config.evaluation.observations_count
    dataset = VideoDataset(config.evaluation_data(), EVALUATION_SPLIT, sampling="all", observations_count=count)
    if len(dataset) == 0:
        raise GlassError(f"{config.data.root}: no test window of {count} frames (evaluation.observations_count)")
    prepare_output_folder(folder, overwrite)
    loader = DataLoader(dataset, batch_size=config.evaluation.batch_size, collate_fn=collate_videos,
                        num_workers=min(config.data.num_workers, 2), pin_memory=device.type == "cuda")
    videos: List[Dict[str, Any]] = []
    for batch in loader:
        names = [f"{len(videos) + offset:05d}" for offset in range(len(batch["video_name"]))]
        videos.extend({"name": name, "source_video": source, "start_frame": int(start)}
                      for name, source, start in zip(names, batch["video_name"], batch["start_frame"]))
        missing = [index for index, name in enumerate(names) if overwrite or not _is_complete(
            os.path.join(folder, name), count)]
        if missing:
            observations = batch["observations"][missing].to(device)
            with torch.no_grad():
                frames = reconstruct(trained.model, observations, protocol).frames.cpu()
            for row, index in enumerate(missing):
                _write_video(folder, names[index], frames[row])
        if progress is not None:
            progress(len(names))
    manifest = {"format": MANIFEST_FORMAT, "run_folder": os.path.abspath(run_folder), "step": trained.step,
        "checkpoint": os.path.abspath(trained.path), "weights": trained.weights,
        "protocol": protocol, "split": EVALUATION_SPLIT, "observations_count": count,
        "skip_frames": config.evaluation.skip_frames, "data_root": os.path.abspath(config.data.root),
        "comparable": comparable, "videos": videos}
    write_json_atomically(os.path.join(folder, MANIFEST_FILE), manifest)
    return manifest


# --------------------------------------------------------------------------- reading it back


def load_generated_video(folder: str, count: int, size: Tuple[int, int]) -> torch.Tensor:
    """(T, 3, H, W) in [0, 1] from folder/00000.png …; the count and the size (W, H) must match."""
    if not os.path.isdir(folder):
        raise GlassError(f"{folder}: missing generated video folder")
    frames = sorted(name for name in os.listdir(folder) if re.fullmatch(r"\d{5}\.png", name))
    if len(frames) != count:
        raise GlassError(f"{folder}: {len(frames)} frames, expected {count} (evaluation.observations_count)")
    images = []
    for name in frames:
        path = os.path.join(folder, name)
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except OSError as error:
            raise GlassError(f"{path}: not a readable image ({error})") from None
        if image.size != size:
            raise GlassError(f"{path}: {image.size[0]}×{image.size[1]} pixels, expected {size[0]}×{size[1]} "
                             f"(data.input_size)")
        images.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(images)


def real_windows(config: Config, manifest: dict, count: int) -> Tuple[VideoDataset, List[int]]:
    """The test dataset and, per manifest video, the index of its real window."""
    dataset = VideoDataset(config.evaluation_data(), manifest.get("split", "test"), sampling="all",
                           observations_count=count)
    index_of = {(dataset.videos[video_index].name, start): index
                for index, (video_index, start) in enumerate(dataset.windows)}
    indices = []
    for video in manifest["videos"]:
        key = (video["source_video"], video["start_frame"])
        if key not in index_of:
            raise GlassError(f"manifest video {video['name']}: no real window of {count} frames starting at frame "
                             f"{video['start_frame']} of '{video['source_video']}' in {config.data.root} "
                             f"({dataset.split} split)")
        indices.append(index_of[key])
    return dataset, indices
