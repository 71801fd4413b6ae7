"""Videos in the Playable-Video-Generation folder format (SPEC §1.1), as PyTorch datasets.

    config = load_config("configs/wsprites.yaml").data
    dataset = VideoDataset(config, "train")                 # one random window per video
    loader = DataLoader(dataset, batch_size=4, shuffle=True, collate_fn=collate_videos)
    batch = next(iter(loader))                              # batch["observations"]: (B, T, 3·stack, H, W)
    image = load_image("frame.png", config, fit="auto")     # (3, H, W): one image prepared as the frames are

A video is a folder of frames `00000.png, 00001.png, …` (one image extension per video),
optionally `masks/00000.png, …` (L mode, 0/255), `glactions.pkl` (dict with `global`,
`local`, `shifts`, `bg_shifts`, one entry per frame) or `actions.pkl` (a list of ints used
as both global and local labels). Every video is indexed and checked when the dataset is
built; an error names the offending file.

The sequence length T can change while training (the curriculum of SPEC §4.2): pass
`(index, T)` pairs instead of indices, for example with `ScheduledLengthBatchSampler`,
which asks a schedule for the T of every batch, so it works with any number of workers.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from data.safe_pickle import safe_load
from utils.config import SPLITS, DataConfig
from utils.errors import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_FRAME_NAME = re.compile(r"^(\d{5})(\.[A-Za-z]+)$")
_SPRITE_NAME = re.compile(r"^sprite_(\d+)_video_\d+$")
SAMPLING_MODES = ("random", "first", "all")
_LABEL_KEYS = ("global", "local", "shifts", "bg_shifts")


@dataclass
class VideoRecord:
    """One indexed video: its frame (and mask) paths and per-frame labels."""

    path: str
    frame_paths: List[str]
    mask_paths: Optional[List[str]]
    global_actions: np.ndarray  # (N,) int64
    local_actions: np.ndarray  # (N,) int64
    shifts: np.ndarray  # (N, 2) float32, the foreground's displacement from the previous frame, source pixels
    background_shifts: np.ndarray  # (N, 2) float32
    has_actions: bool
    sprite_id: int

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def __len__(self) -> int:
        return len(self.frame_paths)


# --------------------------------------------------------------------------- indexing

def _numbered_images(folder: str, what: str) -> List[str]:
    """Sorted paths of `NNNNN.ext` images in `folder`, checked to be 0, 1, 2, … with one extension."""
    numbered: Dict[int, str] = {}
    extensions = set()
    for name in os.listdir(folder):
        match = _FRAME_NAME.match(name)
        if match and match.group(2).lower() in IMAGE_EXTENSIONS:
            numbered[int(match.group(1))] = name
            extensions.add(match.group(2).lower())
    if not numbered:
        raise DatasetError(f"{folder}: no {what} (expected 00000.png, 00001.png, ...)")
    if len(extensions) > 1:
        raise DatasetError(f"{folder}: {what} with several image extensions {sorted(extensions)}; use one per video")
    extension = extensions.pop()
    for number in range(len(numbered)):
        if number not in numbered:
            raise DatasetError(f"{os.path.join(folder, f'{number:05d}{extension}')}: missing {what[:-1]} "
                               f"(the numbers have a gap; found {len(numbered)} files up to "
                               f"{max(numbered):05d}{extension})")
    return [os.path.join(folder, numbered[number]) for number in range(len(numbered))]


def _load_pickle(path: str):
    try:
        return safe_load(path)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise DatasetError(f"{path}: unreadable action file ({error})") from None


def _per_frame(path: str, key: str, values, count: int, pairs: bool) -> np.ndarray:
    if not isinstance(values, (list, tuple)):
        raise DatasetError(f"{path}: '{key}' must be a list, got {type(values).__name__}")
    if len(values) != count:
        raise DatasetError(f"{path}: '{key}' has {len(values)} entries but the video has {count} frames")
    try:
        array = np.asarray(values, dtype=np.float32 if pairs else np.int64)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: '{key}' must hold {'(dx, dy) pairs' if pairs else 'integers'}") from None
    if pairs and array.shape != (count, 2):
        raise DatasetError(f"{path}: '{key}' must hold (dx, dy) pairs, got shape {array.shape}")
    return array


def index_video(path: str) -> VideoRecord:
    """Check one video folder and read its labels; raises `DatasetError` naming the bad file."""
    frame_paths = _numbered_images(path, "frames")
    count = len(frame_paths)
    mask_folder = os.path.join(path, "masks")
    mask_paths = None
    if os.path.isdir(mask_folder):
        mask_paths = _numbered_images(mask_folder, "masks")
        if len(mask_paths) != count:
            raise DatasetError(f"{mask_folder}: {len(mask_paths)} masks for {count} frames")

    global_actions = np.zeros(count, dtype=np.int64)
    local_actions = np.zeros(count, dtype=np.int64)
    shifts = np.zeros((count, 2), dtype=np.float32)
    background_shifts = np.zeros((count, 2), dtype=np.float32)
    has_actions = False
    glactions_path = os.path.join(path, "glactions.pkl")
    actions_path = os.path.join(path, "actions.pkl")
    if os.path.isfile(glactions_path):
        labels = _load_pickle(glactions_path)
        if not isinstance(labels, dict):
            raise DatasetError(f"{glactions_path}: expected a dict with keys {_LABEL_KEYS}, "
                               f"got {type(labels).__name__}")
        if "global" in labels:
            global_actions = _per_frame(glactions_path, "global", labels["global"], count, pairs=False)
        if "local" in labels:
            local_actions = _per_frame(glactions_path, "local", labels["local"], count, pairs=False)
        if "shifts" in labels:
            shifts = _per_frame(glactions_path, "shifts", labels["shifts"], count, pairs=True)
        if "bg_shifts" in labels:
            background_shifts = _per_frame(glactions_path, "bg_shifts", labels["bg_shifts"], count, pairs=True)
        has_actions = True
    elif os.path.isfile(actions_path):
        global_actions = _per_frame(actions_path, "actions", _load_pickle(actions_path), count, pairs=False)
        local_actions = global_actions.copy()
        has_actions = True

    match = _SPRITE_NAME.match(os.path.basename(os.path.normpath(path)))
    return VideoRecord(path=path, frame_paths=frame_paths, mask_paths=mask_paths, global_actions=global_actions,
                       local_actions=local_actions, shifts=shifts, background_shifts=background_shifts,
                       has_actions=has_actions, sprite_id=int(match.group(1)) if match else -1)


def _video_folders(folder: str) -> List[str]:
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if not name.startswith(".") and os.path.isdir(os.path.join(folder, name)))


def split_video_folders(config: DataConfig, split: str) -> List[str]:
    """The video folders of one split: `root/split/*` (splitted) or a seeded share of `root/*` (flat)."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {SPLITS}")
    if not os.path.isdir(config.root):
        raise DatasetError(f"{config.root}: " + ("a file, not a dataset folder" if os.path.exists(config.root)
                                                 else "dataset root not found") + " (data.root)")
    if config.style == "splitted":
        folder = os.path.join(config.root, split)
        if not os.path.isdir(folder):
            raise DatasetError(f"{folder}: missing split folder (data.style is 'splitted': the root must hold "
                               f"{', '.join(s + '/' for s in SPLITS)})")
        return _video_folders(folder)
    folders = _video_folders(config.root)
    order = np.random.default_rng(config.split_seed).permutation(len(folders))
    num_val = int(round(config.split_fractions[1] * len(folders)))
    num_test = int(round(config.split_fractions[2] * len(folders)))
    num_train = len(folders) - num_val - num_test
    bounds = {"train": (0, num_train), "val": (num_train, num_train + num_val),
              "test": (num_train + num_val, len(folders))}[split]
    return sorted(folders[i] for i in order[bounds[0]:bounds[1]])


# --------------------------------------------------------------------------- images

def _open_image(path: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"{path}: unreadable image ({error})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB; an image with transparency is composited over white (SPEC §1.1)."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    return image.convert("RGB")


# How `fit_image` treats an image: 'dataset' — exactly as the dataset's frames (data.crop, which must
# fit, then resize); 'center' — ignore data.crop, centre-crop to the model's aspect ratio, then resize;
# 'auto' — 'dataset' when data.crop fits in the image and keeps more than half of its width and of its
# height (the image looks like a frame of the dataset), else 'center' (a photo twice the frame size or
# more would otherwise lose all but a corner).
FIT_MODES = ("auto", "dataset", "center")


def _centre_crop_to_aspect(image: Image.Image, width: int, height: int) -> Image.Image:
    """The largest centred box of the aspect ratio width:height (unchanged when it already has it)."""
    crop_width = min(image.width, round(image.height * width / height))
    crop_height = min(image.height, round(image.width * height / width))
    if (crop_width, crop_height) == image.size:
        return image
    left, upper = (image.width - crop_width) // 2, (image.height - crop_height) // 2
    return image.crop((left, upper, left + crop_width, upper + crop_height))


def fit_image(image: Image.Image, config: DataConfig, resample: int = Image.BILINEAR, fit: str = "dataset",
              name: Optional[str] = None) -> Image.Image:
    """Crop and resize a PIL image to `config.input_size` as `fit` says (see `FIT_MODES`); `name`
    (default: the image's file name) is the file an error names."""
    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    crop = tuple(config.crop) if config.crop is not None else None
    output_size = tuple(config.input_size)  # (W, H)
    if fit == "auto":
        looks_like_a_frame = (crop is not None and crop[2] <= image.width and crop[3] <= image.height
                              and 2 * (crop[2] - crop[0]) > image.width and 2 * (crop[3] - crop[1]) > image.height)
        fit = "dataset" if looks_like_a_frame else "center"
    if fit == "center":
        image = _centre_crop_to_aspect(image, *output_size)
    elif crop is not None:
        if crop[2] > image.width or crop[3] > image.height:
            raise DatasetError(f"{name or getattr(image, 'filename', '?')}: data.crop {list(crop)} exceeds the "
                               f"image size {image.width}×{image.height}")
        image = image.crop(crop)
    if image.size != output_size:
        image = image.resize(output_size, resample)
    return image


def prepare_image(image: Image.Image, config: DataConfig, fit: str = "dataset",
                  name: Optional[str] = None) -> torch.Tensor:
    """A PIL image as the model sees a frame: (3, H, W) float32 in [-1, 1], composited over white,
    cropped and resized bilinearly (`fit`: see `FIT_MODES`; 'dataset' is what `VideoDataset` does)."""
    array = np.asarray(fit_image(_to_rgb(image), config, Image.BILINEAR, fit, name or getattr(image, "filename", None)),
                       dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).div_(127.5).sub_(1.0)


def load_image(path: str, config: DataConfig, fit: str = "dataset") -> torch.Tensor:
    """`prepare_image` of the image file at `path`; an unreadable file is a `DatasetError` naming it."""
    return prepare_image(_open_image(path), config, fit, name=path)


class VideoDataset(Dataset):
    """Samples of `observations_count` frames, `skip_frames` source frames skipped between two, from videos of
    one split.

    `sampling`: 'random' — one window per video, its start drawn from a generator seeded
    by (seed, epoch, index), so the data order is reproducible whatever the workers;
    'first' — the first window of each video; 'all' — every non-overlapping window.
    Videos shorter than one window are left out (their count is in `skipped_short`). `max_videos`: only the
    split's first videos (by folder name).
    """

    def __init__(self, config: DataConfig, split: str, sampling: str = "random", seed: int = 0,
                 observations_count: Optional[int] = None, max_videos: Optional[int] = None):
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
        self.config = config
        self.split = split
        self.sampling = sampling
        self.seed = seed
        self.epoch = 0
        self.all_videos = [index_video(path) for path in split_video_folders(config, split)[:max_videos]]
        if not self.all_videos:
            raise DatasetError(f"{config.root}: the '{split}' split holds no videos")
        self.crop = tuple(config.crop) if config.crop is not None else None
        self.output_size = tuple(config.input_size)  # (W, H)
        self._source_sizes: Dict[str, Tuple[int, int]] = {}
        self.set_observations_count(observations_count or config.observations_count)

    # -- length of the samples ------------------------------------------------------
    def window_length(self, observations_count: int) -> int:
        """Source frames spanned by one sample (stacked frames before the first one are clamped, not needed)."""
        return (observations_count - 1) * self.config.frame_spacing() + 1

    def set_observations_count(self, observations_count: int) -> None:
        """Change T for the following samples (in this process; see `ScheduledLengthBatchSampler` for workers)."""
        if observations_count < 1:
            raise ValueError(f"observations_count must be >= 1, got {observations_count}")
        self.observations_count = observations_count
        length = self.window_length(observations_count)
        self.videos = [video for video in self.all_videos if len(video) >= length]
        self.skipped_short = len(self.all_videos) - len(self.videos)
        if not self.videos:
            raise DatasetError(f"{self.config.root} ({self.split}): no video has the {length} frames needed for "
                               f"{observations_count} observations with skip_frames={self.config.skip_frames}")
        self.windows: List[Tuple[int, int]] = []
        if self.sampling == "all":
            self.windows = [(video_index, start) for video_index, video in enumerate(self.videos)
                            for start in range(0, len(video) - length + 1, length)]

    def set_epoch(self, epoch: int) -> None:
        """Change the random windows drawn in 'random' mode (call before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.windows) if self.sampling == "all" else len(self.videos)

    # -- reading ------------------------------------------------------------------------
    def load_frame(self, path: str) -> torch.Tensor:
        """(3, H, W) float32 in [-1, 1]: composited over white, cropped, resized bilinearly."""
        return load_image(path, self.config)

    def load_mask(self, path: str) -> torch.Tensor:
        """(1, H, W) float32 in [0, 1]."""
        image = fit_image(_open_image(path).convert("L"), self.config, Image.BILINEAR, name=path)
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).unsqueeze(0)

    def _shift_scale(self, video: VideoRecord) -> np.ndarray:
        """Source pixels → output pixels, so shifts are in pixels of the returned frames."""
        if self.crop is not None:
            source_width, source_height = self.crop[2] - self.crop[0], self.crop[3] - self.crop[1]
        else:
            if video.path not in self._source_sizes:
                self._source_sizes[video.path] = _open_image(video.frame_paths[0]).size
            source_width, source_height = self._source_sizes[video.path]
        return np.array([self.output_size[0] / source_width, self.output_size[1] / source_height], dtype=np.float32)

    def _start_frame(self, video_index: int, index: int, length: int) -> int:
        video = self.videos[video_index]
        if self.sampling == "first":
            return 0
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return int(rng.integers(0, len(video) - length + 1))

    def __getitem__(self, item: Union[int, Tuple[int, int]]) -> Dict[str, object]:
        """A sample; `item` is an index or an (index, observations_count) pair.

        Returns observations (T, 3·stack, H, W) in [-1, 1]; masks (T, 1, H, W) in [0, 1];
        global_actions, local_actions (T,) int64; global_shifts, background_shifts (T, 2)
        in output pixels, each the displacement since the previous observation; sprite_id,
        video_index, start_frame () int64; has_masks, has_actions () bool; video_name str.
        """
        index, observations_count = item if isinstance(item, tuple) else (item, self.observations_count)
        length = self.window_length(observations_count)
        if self.sampling == "all":
            if observations_count != self.observations_count:
                raise ValueError("in 'all' mode change T with set_observations_count, not per item")
            video_index, start = self.windows[index]
        else:
            video_index = index
            start = self._start_frame(video_index, index, length)
        video = self.videos[video_index]
        if len(video) < length:
            raise DatasetError(f"{video.path}: {len(video)} frames, fewer than the {length} needed for "
                               f"{observations_count} observations")
        skip, stack = self.config.frame_spacing(), self.config.observation_stacking
        frame_numbers = [start + t * skip for t in range(observations_count)]

        cache: Dict[int, torch.Tensor] = {}

        def frame(number: int) -> torch.Tensor:
            number = max(number, 0)  # stacking clamps at the start of the video
            if number not in cache:
                cache[number] = self.load_frame(video.frame_paths[number])
            return cache[number]

        observations = torch.stack([torch.cat([frame(number - k * skip) for k in range(stack)], dim=0)
                                    for number in frame_numbers])
        has_masks = video.mask_paths is not None and self.config.load_masks
        if has_masks:
            masks = torch.stack([self.load_mask(video.mask_paths[number]) for number in frame_numbers])
        else:
            masks = torch.zeros(observations_count, 1, self.output_size[1], self.output_size[0])

        # The displacement between consecutive observations is the sum over the skipped frames.
        cumulative_shifts = np.cumsum(video.shifts, axis=0)
        cumulative_background = np.cumsum(video.background_shifts, axis=0)

        def since_previous(cumulative: np.ndarray, number: int) -> np.ndarray:
            previous = number - skip
            return cumulative[number] - (cumulative[previous] if previous >= 0 else 0.0)

        scale = self._shift_scale(video) if video.has_actions else np.ones(2, dtype=np.float32)
        shifts = np.stack([since_previous(cumulative_shifts, n) for n in frame_numbers]) * scale
        background_shifts = np.stack([since_previous(cumulative_background, n) for n in frame_numbers]) * scale
        return {
            "observations": observations,
            "masks": masks,
            "global_actions": torch.from_numpy(video.global_actions[frame_numbers]),
            "global_shifts": torch.from_numpy(shifts.astype(np.float32)),
            "local_actions": torch.from_numpy(video.local_actions[frame_numbers]),
            "background_shifts": torch.from_numpy(background_shifts.astype(np.float32)),
            "sprite_id": torch.tensor(video.sprite_id, dtype=torch.int64),
            "video_index": torch.tensor(video_index, dtype=torch.int64),
            "start_frame": torch.tensor(start, dtype=torch.int64),
            "has_masks": torch.tensor(has_masks),
            "has_actions": torch.tensor(video.has_actions),
            "video_name": video.name,
        }


def collate_videos(samples: Sequence[Dict[str, object]]) -> Dict[str, object]:
    """Stack samples of one T into a batch: tensors gain a leading B, `video_name` becomes a list.

    observations (B, T, 3·stack, H, W), masks (B, T, 1, H, W), global_actions (B, T),
    global_shifts (B, T, 2), local_actions (B, T), background_shifts (B, T, 2),
    sprite_id (B,), video_index (B,), start_frame (B,), has_masks (B,), has_actions (B,).
    """
    lengths = {sample["observations"].shape[0] for sample in samples}
    if len(lengths) != 1:
        raise ValueError(f"samples of one batch must share T, got {sorted(lengths)}")
    batch: Dict[str, object] = {}
    for key, value in samples[0].items():
        values = [sample[key] for sample in samples]
        batch[key] = torch.stack(values) if isinstance(value, torch.Tensor) else list(values)
    return batch


class ScheduledLengthBatchSampler(Sampler[List[Tuple[int, int]]]):
    """Batches of (index, T) pairs where T = `length_at_batch(b)` for the b-th batch drawn.

    The count of batches runs on across epochs (start it at the resumed step with
    `first_batch`), so a curriculum written as a pure function of the step sets the
    length of every batch, whatever the number of DataLoader workers and their prefetching.
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, length_at_batch: Callable[[int], int],
                 drop_last: bool = True, first_batch: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.batch_size = batch_size
        self.length_at_batch = length_at_batch
        self.drop_last = drop_last
        self.batches_drawn = first_batch

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        batch: List[int] = []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                yield self._with_length(batch)
                batch = []
        if batch and not self.drop_last:
            yield self._with_length(batch)

    def _with_length(self, indices: List[int]) -> List[Tuple[int, int]]:
        length = int(self.length_at_batch(self.batches_drawn))
        self.batches_drawn += 1
        return [(index, length) for index in indices]

    def __len__(self) -> int:
        count = len(self.sampler)  # type: ignore[arg-type]
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)
