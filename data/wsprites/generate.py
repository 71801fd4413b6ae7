"""Generate the W-Sprites dataset (SPEC §1.2) in the on-disk video format (SPEC §1.1).

    # the full default dataset (1296 characters × 10 videos × 90 frames), built-in sprites
    python -m data.wsprites.generate --out datasets/wsprites --workers 2

    # from LPC layer sheets (one folder per layer, N.png each) and a background image
    python -m data.wsprites.generate --out datasets/wsprites --sprites-dir ../shared/lpc \
        --background landscape.png

    # a small set for a quick experiment
    python -m data.wsprites.generate --out datasets/wsprites-small --num-characters 30 \
        --videos-per-character 4 --frames 30

Each video is written into a temporary folder and moved into place when complete, so an
interrupted run never leaves a half video: run the same command again to resume it.
The same seed gives byte-identical files whatever the number of workers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import pickle
import shutil
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from data.wsprites import walk
from data.wsprites.sprites import (
    CELL_SIZE,
    REQUIRED_LAYERS,
    BuiltinSpriteSource,
    LPCDirectorySource,
    SpriteSource,
    character_choices,
)
from utils.cli import run_main
from utils.config import SPLITS
from utils.errors import GlassError
from utils.files import (
    TEMPORARY_PREFIX,
    require_folder_can_be_made,
    sha256_of_file,
    write_folder_atomically,
    write_json_atomically,
)

METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class WSpritesParameters:
    """Everything that determines the dataset's content (stored in its metadata)."""

    frame_width: int = 128  # W of the output frames
    frame_height: int = 96  # H of the output frames
    num_frames: int = 90  # frames per video
    videos_per_character: int = 10
    num_characters: int = 1296  # characters drawn (without repetition) from all layer combinations
    choices_per_layer: int = 6  # variants used per layer (6⁴ = 1296 combinations)
    sprite_p_inertia: float = 0.9
    sprite_step: int = 7  # pixels per sprite move
    background_p_inertia: float = 0.95
    background_step: int = 2  # pixels per background move
    background_range: int = 25  # the background offset stays in [0, range] on each axis
    stay_hold_min: int = 4  # a stay animation is held for a uniform number of frames in [min, max]
    stay_hold_max: int = 8
    split_fractions: Tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test, by character
    seed: int = 0
    png_compress_level: int = 1  # zlib level of the PNG files (1: fast, about 5% larger than 6)

    @property
    def max_sprite_x(self) -> int:
        return self.frame_width - CELL_SIZE - 1  # SPEC: x ∈ [0, 63] for 128-px frames

    @property
    def max_sprite_y(self) -> int:
        return self.frame_height - CELL_SIZE - 1  # SPEC: y ∈ [0, 31] for 96-px frames

    @property
    def background_size(self) -> Tuple[int, int]:
        """(W, H) of the background image: the frame plus the offset range."""
        return self.frame_width + self.background_range, self.frame_height + self.background_range


# --------------------------------------------------------------------------- one video

def video_seed(seed: int, character_id: int, video_index: int) -> np.random.SeedSequence:
    """The random stream of one video: independent of the order and the process it runs in."""
    return np.random.SeedSequence(entropy=seed, spawn_key=(character_id, video_index))


def simulate_video(parameters: WSpritesParameters, seed_sequence: np.random.SeedSequence) -> Dict[str, np.ndarray]:
    """The random walks and animations of one video (no pixels).

    Returns int64 arrays: positions (T, 2), actions (T,), animations (T,), animation_frames
    (T,), background_offsets (T, 2), shifts (T, 2), bg_shifts (T, 2), all (x, y) in pixels.
    """
    sprite_stream, animation_stream, background_stream = (np.random.default_rng(s) for s in seed_sequence.spawn(3))
    positions, actions = walk.random_walk(sprite_stream, parameters.num_frames, parameters.max_sprite_x,
                                          parameters.max_sprite_y, parameters.sprite_step, parameters.sprite_p_inertia)
    animations, animation_frames = walk.choose_animations(animation_stream, actions,
                                                          parameters.stay_hold_min, parameters.stay_hold_max)
    offsets, _ = walk.random_walk(background_stream, parameters.num_frames, parameters.background_range,
                                  parameters.background_range, parameters.background_step,
                                  parameters.background_p_inertia)
    return {
        "positions": positions, "actions": actions, "animations": animations, "animation_frames": animation_frames,
        "background_offsets": offsets,
        "shifts": walk.displacements(positions),
        # The frame shows the window at `offset`: moving the window by +d moves the content by −d.
        "bg_shifts": -walk.displacements(offsets),
    }


def render_video(parameters: WSpritesParameters, simulation: Dict[str, np.ndarray], character_cells: np.ndarray,
                 background: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 and ground-truth masks (T, H, W) uint8 (0/255) of one video."""
    height, width = parameters.frame_height, parameters.frame_width
    num_frames = parameters.num_frames
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    masks = np.zeros((num_frames, height, width), dtype=np.uint8)
    for t in range(num_frames):
        offset_x, offset_y = simulation["background_offsets"][t]
        x, y = simulation["positions"][t]
        frames[t] = background[offset_y:offset_y + height, offset_x:offset_x + width]
        sprite = character_cells[simulation["animations"][t], simulation["animation_frames"][t]]
        alpha = sprite[..., 3:4].astype(np.uint16)
        region = frames[t, y:y + CELL_SIZE, x:x + CELL_SIZE]
        blended = (sprite[..., :3].astype(np.uint16) * alpha + region.astype(np.uint16) * (255 - alpha) + 127) // 255
        frames[t, y:y + CELL_SIZE, x:x + CELL_SIZE] = blended.astype(np.uint8)
        masks[t, y:y + CELL_SIZE, x:x + CELL_SIZE] = np.where(sprite[..., 3] >= 128, 255, 0)
    return frames, masks


def labels_for_pickle(simulation: Dict[str, np.ndarray]) -> Dict[str, list]:
    """`glactions.pkl` content: plain Python lists only (readable by the restricted unpickler)."""
    def pairs(array: np.ndarray) -> List[Tuple[int, int]]:
        return [(int(a), int(b)) for a, b in array]

    return {
        "global": [int(a) for a in simulation["actions"]],
        "local": [int(a) for a in simulation["animations"]],
        "shifts": pairs(simulation["shifts"]),
        "bg_shifts": pairs(simulation["bg_shifts"]),
        "positions": pairs(simulation["positions"]),
        "background_offsets": pairs(simulation["background_offsets"]),
        "animation_frames": [int(a) for a in simulation["animation_frames"]],
    }


def write_video_atomically(destination: str, frames: np.ndarray, masks: np.ndarray, labels: Dict[str, list],
                           compress_level: int) -> None:
    """Write a video folder (frames, masks/, glactions.pkl) with `write_folder_atomically`."""
    def write(folder: str) -> None:
        os.makedirs(os.path.join(folder, "masks"))
        for t in range(len(frames)):
            Image.fromarray(frames[t]).save(os.path.join(folder, f"{t:05d}.png"), compress_level=compress_level)
            Image.fromarray(masks[t]).save(os.path.join(folder, "masks", f"{t:05d}.png"), compress_level=compress_level)
        with open(os.path.join(folder, "glactions.pkl"), "wb") as handle:
            pickle.dump(labels, handle, protocol=4)

    write_folder_atomically(destination, write)


def video_folder_name(character_id: int, video_index: int) -> str:
    return f"sprite_{character_id:04d}_video_{video_index:02d}"


# --------------------------------------------------------------------------- characters and splits

def select_characters(parameters: WSpritesParameters, combinations: int) -> List[int]:
    """Sorted ids of the characters used: all combinations, or a seeded subset."""
    if parameters.num_characters > combinations:
        raise GlassError(f"--num-characters {parameters.num_characters}: the sprite source has only "
                         f"{combinations} layer combinations")
    if parameters.num_characters == combinations:
        return list(range(combinations))
    rng = np.random.default_rng([parameters.seed, 1])
    return sorted(int(i) for i in rng.choice(combinations, size=parameters.num_characters, replace=False))


def split_characters(parameters: WSpritesParameters, characters: Sequence[int]) -> Dict[str, List[int]]:
    """Characters assigned to train / val / test (no character in two splits); each split non-empty."""
    count = len(characters)
    if count < 3:
        raise GlassError(f"--num-characters {count}: need at least 3 characters (one per split)")
    _, val_fraction, test_fraction = parameters.split_fractions
    num_val = max(1, int(round(val_fraction * count)))
    num_test = max(1, int(round(test_fraction * count)))
    num_train = count - num_val - num_test
    if num_train < 1:
        raise GlassError(f"--num-characters {count}: too few characters for the split fractions")
    order = np.random.default_rng([parameters.seed, 2]).permutation(count)
    shuffled = [characters[i] for i in order]
    return {
        "train": sorted(shuffled[:num_train]),
        "val": sorted(shuffled[num_train:num_train + num_val]),
        "test": sorted(shuffled[num_train + num_val:]),
    }


# --------------------------------------------------------------------------- background

def load_background(path: Optional[str], parameters: WSpritesParameters) -> np.ndarray:
    """(H + range, W + range, 3) uint8: an image resized to cover that size and centre-cropped, or the built-in one."""
    width, height = parameters.background_size
    if path is None:
        from data.wsprites import builtin

        return builtin.draw_background(width, height, parameters.seed)
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = max(width / image.width, height / image.height)
            resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                                   Image.BILINEAR)
    except (OSError, ValueError) as error:
        raise GlassError(f"--background {path}: cannot read the image ({error})") from None
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return np.asarray(resized.crop((left, top, left + width, top + height)))


# --------------------------------------------------------------------------- workers

_worker_state: Dict = {}


def _init_worker(parameters: WSpritesParameters, source: SpriteSource, background: np.ndarray,
                 choices_per_layer: Tuple[int, ...], out: str) -> None:
    _worker_state.update(parameters=parameters, source=source, background=background,
                         choices_per_layer=choices_per_layer, out=out)


def _generate_character(job: Tuple[str, int, Tuple[int, ...]]) -> int:
    """Write the listed videos of one character; returns how many were written."""
    split, character_id, video_indices = job
    state = _worker_state
    parameters: WSpritesParameters = state["parameters"]
    cells = state["source"].character_cells(character_choices(character_id, state["choices_per_layer"]))
    for video_index in video_indices:
        simulation = simulate_video(parameters, video_seed(parameters.seed, character_id, video_index))
        frames, masks = render_video(parameters, simulation, cells, state["background"])
        destination = os.path.join(state["out"], split, video_folder_name(character_id, video_index))
        write_video_atomically(destination, frames, masks, labels_for_pickle(simulation),
                               parameters.png_compress_level)
    return len(video_indices)


# --------------------------------------------------------------------------- metadata

def build_metadata(parameters: WSpritesParameters, source: SpriteSource, background_identity: Dict,
                   splits: Dict[str, List[int]], choices_per_layer: Tuple[int, ...], complete: bool) -> Dict:
    num_videos = {split: len(ids) * parameters.videos_per_character for split, ids in splits.items()}
    return {
        "dataset": "W-Sprites",
        "format_version": FORMAT_VERSION,
        "complete": complete,
        "parameters": dataclasses.asdict(parameters),
        "sprite_source": source.identity(),
        "choices_per_layer": dict(zip(source.layers, choices_per_layer)),
        "background": background_identity,
        "global_actions": dict(enumerate(walk.GLOBAL_ACTION_NAMES)),
        "local_actions": dict(enumerate(walk.LOCAL_ACTION_NAMES)),
        "units": {
            "shifts": "pixels of the output frame: the sprite's displacement (dx, dy) from the previous frame, "
                      "x to the right, y down; (0, 0) on the first frame",
            "bg_shifts": "pixels of the output frame: the background content's displacement (dx, dy) from the "
                         "previous frame; (0, 0) on the first frame",
            "positions": "top-left corner (x, y) of the 64×64 sprite in the frame",
            "background_offsets": "top-left corner (x, y) of the frame's window in the background image",
        },
        "label_convention": "global[t] is the walk action that moved the sprite from frame t-1 to frame t "
                            "(frame 0: the initial action); local[t] is the animation shown in frame t and "
                            "animation_frames[t] its frame index (0-7)",
        "counts": {
            "characters": {split: len(ids) for split, ids in splits.items()},
            "videos": num_videos,
            "frames": {split: count * parameters.num_frames for split, count in num_videos.items()},
        },
        "splits": splits,
    }


def _content_identity(metadata: Dict) -> Dict:
    return {key: metadata.get(key) for key in ("format_version", "parameters", "sprite_source", "background")}


# --------------------------------------------------------------------------- the command

def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # argparse's own message would name this function ("invalid _positive value")
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data.wsprites.generate",
        description="Generate W-Sprites (walking LPC characters with known global and local actions) in the "
                    "PVG video format: OUT/{train,val,test}/sprite_<id>_video_<k>/{00000.png,...,masks/,"
                    "glactions.pkl} and OUT/metadata.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = WSpritesParameters()
    parser.add_argument("--out", required=True, help="output dataset folder (created; resumed if it holds an "
                                                     "unfinished dataset with the same parameters)")
    parser.add_argument("--sprites-dir", default=None,
                        help="LPC layer sheets: a folder with body/, bottomwear/, topwear/, hair/ (and optional "
                             "eyes/, shoes/) holding 0.png, 1.png, ...; default: the built-in drawn sprites")
    parser.add_argument("--optional-layers", nargs="*", default=[], choices=["eyes", "shoes"],
                        help="extra layers composited from --sprites-dir")
    parser.add_argument("--background", default=None,
                        help="background image (resized to cover the frame plus the offset range, centre-cropped); "
                             "default: a built-in textured landscape")
    parser.add_argument("--num-characters", type=_positive, default=None,
                        help="characters to draw, a seeded subset of all layer combinations (default: all)")
    parser.add_argument("--choices-per-layer", type=_positive, default=defaults.choices_per_layer,
                        help="variants used per layer (the first N sheets of each layer folder)")
    parser.add_argument("--videos-per-character", type=_positive, default=defaults.videos_per_character)
    parser.add_argument("--frames", type=_positive, default=defaults.num_frames, help="frames per video")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=_positive, default=min(os.cpu_count() or 1, 8),
                        help="processes; the output does not depend on it")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete an existing W-Sprites dataset in --out and generate it again")
    return parser


def _prepare_output(out: str, metadata: Dict, overwrite: bool) -> None:
    """Create `out`, resume a matching unfinished dataset, or refuse unless --overwrite."""
    metadata_path = os.path.join(out, METADATA_FILE)
    require_folder_can_be_made(out, "--out")
    if os.path.isdir(out) and os.listdir(out):
        if not os.path.isfile(metadata_path):
            raise GlassError(f"--out {out}: the folder exists, is not empty and holds no {METADATA_FILE}: "
                             "choose a new or empty folder")
        try:
            with open(metadata_path, "r", encoding="utf-8") as handle:
                existing = json.load(handle)
        except (OSError, ValueError) as error:
            raise GlassError(f"{metadata_path}: unreadable ({error}); delete the folder or choose another --out") \
                from None
        if not isinstance(existing, dict):
            raise GlassError(f"{metadata_path}: not the metadata of a W-Sprites dataset (a JSON object); delete the "
                             "folder or choose another --out")
        if overwrite:
            for name in SPLITS + (METADATA_FILE,):
                path = os.path.join(out, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.remove(path)
        elif _content_identity(existing) != _content_identity(json.loads(json.dumps(metadata))):
            raise GlassError(f"--out {out} holds a W-Sprites dataset made with other parameters, sprites or "
                             "background: pass --overwrite to replace it, or choose another --out")
    for split in SPLITS:
        folder = os.path.join(out, split)
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            if name.startswith(TEMPORARY_PREFIX):  # left by an interrupted run
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    arguments = build_parser().parse_args(argv)
    layers = tuple(REQUIRED_LAYERS) + tuple(arguments.optional_layers)
    if arguments.sprites_dir is None:
        source: SpriteSource = BuiltinSpriteSource(layers)
    else:
        source = LPCDirectorySource(arguments.sprites_dir, layers, max_choices=arguments.choices_per_layer)
    choices_per_layer = tuple(min(arguments.choices_per_layer, source.variant_count(layer)) for layer in source.layers)
    combinations = int(np.prod(choices_per_layer))
    parameters = WSpritesParameters(
        num_frames=arguments.frames, videos_per_character=arguments.videos_per_character,
        num_characters=arguments.num_characters or combinations, choices_per_layer=arguments.choices_per_layer,
        seed=arguments.seed)

    background = load_background(arguments.background, parameters)
    background_identity = ({"kind": "builtin", "size": list(parameters.background_size)}
                           if arguments.background is None else
                           {"kind": "image", "sha256": sha256_of_file(arguments.background),
                            "size": list(parameters.background_size)})
    characters = select_characters(parameters, combinations)
    splits = split_characters(parameters, characters)
    metadata = build_metadata(parameters, source, background_identity, splits, choices_per_layer, complete=False)

    _prepare_output(arguments.out, metadata, arguments.overwrite)
    write_json_atomically(os.path.join(arguments.out, METADATA_FILE), metadata)

    jobs = []
    for split, ids in splits.items():
        for character_id in ids:
            missing = tuple(k for k in range(parameters.videos_per_character) if not os.path.isdir(
                os.path.join(arguments.out, split, video_folder_name(character_id, k))))
            if missing:
                jobs.append((split, character_id, missing))
    total_videos = sum(metadata["counts"]["videos"].values())
    remaining = sum(len(job[2]) for job in jobs)
    print(f"W-Sprites: {len(characters)} characters ({', '.join(f'{s} {len(i)}' for s, i in splits.items())}), "
          f"{total_videos} videos of {parameters.num_frames} frames into {arguments.out}"
          + (f"; resuming, {total_videos - remaining} already done" if remaining < total_videos else ""),
          file=sys.stderr)

    initializer_arguments = (parameters, source, background, choices_per_layer, arguments.out)
    try:
        with tqdm(total=total_videos, initial=total_videos - remaining, unit="video", dynamic_ncols=True,
                  desc="W-Sprites") as progress:
            if arguments.workers == 1 or len(jobs) <= 1:
                _init_worker(*initializer_arguments)
                for job in jobs:
                    progress.update(_generate_character(job))
            else:
                context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
                with context.Pool(arguments.workers, initializer=_init_worker,
                                  initargs=initializer_arguments) as pool:
                    for written in pool.imap_unordered(_generate_character, jobs):
                        progress.update(written)
    except KeyboardInterrupt:
        raise GlassError(f"interrupted: the finished videos are in {arguments.out}; run the same command again "
                         "to resume") from None

    metadata["complete"] = True
    write_json_atomically(os.path.join(arguments.out, METADATA_FILE), metadata)
    print(f"done: {arguments.out} ({sum(metadata['counts']['frames'].values())} frames)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
