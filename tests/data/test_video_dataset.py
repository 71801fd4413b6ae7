"""The PVG-format dataset: tensors, labels, options and every error of SPEC §1.1."""
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, SequentialSampler

from data.safe_pickle import safe_load
from data.video_dataset import (
    ScheduledLengthBatchSampler,
    VideoDataset,
    collate_videos,
    index_video,
    split_video_folders,
)
from data.wsprites import generate
from utils.config import DataConfig
from utils.errors import DatasetError


def write_video(folder, frames, masks=None, labels=None, actions=None, extension=".png"):
    """frames: list of (H, W, 3|4) uint8 arrays."""
    os.makedirs(folder, exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(os.path.join(folder, f"{t:05d}{extension}"))
    if masks is not None:
        os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
        for t, mask in enumerate(masks):
            Image.fromarray(mask).save(os.path.join(folder, "masks", f"{t:05d}.png"))
    if labels is not None:
        with open(os.path.join(folder, "glactions.pkl"), "wb") as handle:
            pickle.dump(labels, handle)
    if actions is not None:
        with open(os.path.join(folder, "actions.pkl"), "wb") as handle:
            pickle.dump(actions, handle)


def constant_frames(count, height=8, width=10):
    """Frame t is filled with the value 10·t, so a frame is recognisable from its pixels."""
    return [np.full((height, width, 3), 10 * t, np.uint8) for t in range(count)]


def to_pixels(tensor):
    return (tensor + 1) * 127.5


@pytest.fixture(scope="module")
def wsprites(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("wsprites") / "set")
    assert generate.main(["--out", out, "--num-characters", "10", "--videos-per-character", "2",
                          "--frames", "20", "--workers", "1"]) == 0
    return out


def test_wsprites_sample_tensors_and_labels(wsprites):
    config = DataConfig(root=wsprites, crop=[0, 0, 128, 96], observations_count=6)
    dataset = VideoDataset(config, "train", sampling="first")
    assert len(dataset) == 16
    sample = dataset[3]
    assert sample["observations"].shape == (6, 3, 96, 128) and sample["observations"].dtype == torch.float32
    assert -1.0 <= sample["observations"].min() and sample["observations"].max() <= 1.0
    assert sample["masks"].shape == (6, 1, 96, 128)
    video = os.path.join(wsprites, "train", sample["video_name"])
    expected_frame = np.asarray(Image.open(os.path.join(video, "00002.png")), dtype=np.float32)
    assert torch.allclose(to_pixels(sample["observations"][2]).permute(1, 2, 0), torch.from_numpy(expected_frame),
                          atol=1e-3)
    expected_mask = np.asarray(Image.open(os.path.join(video, "masks", "00004.png")), dtype=np.float32) / 255
    assert torch.equal(sample["masks"][4, 0], torch.from_numpy(expected_mask))
    with open(os.path.join(video, "glactions.pkl"), "rb") as handle:
        labels = pickle.load(handle)
    assert sample["global_actions"].tolist() == labels["global"][:6]
    assert sample["local_actions"].tolist() == labels["local"][:6]
    assert sample["global_shifts"].tolist() == [list(s) for s in labels["shifts"][:6]]
    assert sample["background_shifts"].tolist() == [list(s) for s in labels["bg_shifts"][:6]]
    assert sample["sprite_id"].item() == int(sample["video_name"].split("_")[1])
    assert sample["has_masks"].item() and sample["has_actions"].item()


def test_collate_and_loader_batches(wsprites):
    dataset = VideoDataset(DataConfig(root=wsprites, observations_count=4), "train")
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate_videos)))
    assert batch["observations"].shape == (3, 4, 3, 96, 128)
    assert batch["masks"].shape == (3, 4, 1, 96, 128)
    assert batch["global_actions"].shape == (3, 4) and batch["global_actions"].dtype == torch.int64
    assert batch["global_shifts"].shape == (3, 4, 2) and batch["background_shifts"].shape == (3, 4, 2)
    assert batch["local_actions"].shape == (3, 4) and batch["sprite_id"].shape == (3,)
    assert len(batch["video_name"]) == 3


def test_length_follows_the_schedule_with_workers(wsprites):
    dataset = VideoDataset(DataConfig(root=wsprites, observations_count=6), "train")
    batch_sampler = ScheduledLengthBatchSampler(SequentialSampler(dataset), 2, lambda b: 2 + b % 5)
    loader = DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate_videos, num_workers=2)
    lengths = [batch["observations"].shape[1] for batch in loader]
    assert lengths == [2, 3, 4, 5, 6, 2, 3, 4]
    # The batch count runs on across epochs (and starts where a resumed run left off).
    assert [batch["observations"].shape[1] for batch in loader][:2] == [5, 6]
    resumed = ScheduledLengthBatchSampler(SequentialSampler(dataset), 2, lambda b: 2 + b % 5, first_batch=3)
    assert [batch[0][1] for batch in resumed][:2] == [5, 6]


def test_random_windows_are_reproducible_per_epoch(wsprites):
    dataset = VideoDataset(DataConfig(root=wsprites, observations_count=3), "train", seed=5)
    starts = [dataset[i]["start_frame"].item() for i in range(len(dataset))]
    assert starts == [dataset[i]["start_frame"].item() for i in range(len(dataset))]
    assert max(starts) <= 20 - 3 and len(set(starts)) > 3
    dataset.set_epoch(1)
    assert starts != [dataset[i]["start_frame"].item() for i in range(len(dataset))]
    all_windows = VideoDataset(DataConfig(root=wsprites, observations_count=6), "train", sampling="all")
    assert len(all_windows) == 16 * 3  # 20 frames hold 3 non-overlapping windows of 6
    assert [all_windows[i]["start_frame"].item() for i in range(3)] == [0, 6, 12]


def test_skip_frames_stacking_and_summed_shifts(tmp_path):
    count = 9
    labels = {"global": list(range(count)), "local": [t % 3 for t in range(count)],
              "shifts": [(t, -t) for t in range(count)], "bg_shifts": [(1, 0)] * count}
    write_video(str(tmp_path / "train" / "v"), constant_frames(count), labels=labels)
    # skip_frames 2: two source frames skipped between observations (frame i·(2+1)), the authors' meaning.
    config = DataConfig(root=str(tmp_path), input_size=[10, 8], observations_count=3, skip_frames=2,
                        observation_stacking=2)
    dataset = VideoDataset(config, "train", sampling="first")
    assert dataset.window_length(3) == 7
    sample = dataset[0]
    assert sample["observations"].shape == (3, 6, 8, 10)
    values = to_pixels(sample["observations"][:, :, 0, 0]).round()
    # Observation t shows frame 3t, then (newest first) frame 3t − 3, clamped at 0.
    assert values.tolist() == [[0, 0, 0, 0, 0, 0], [30, 30, 30, 0, 0, 0], [60, 60, 60, 30, 30, 30]]
    assert sample["global_actions"].tolist() == [0, 3, 6]
    assert sample["local_actions"].tolist() == [0, 0, 0]
    # Shift of observation t = sum of the per-frame shifts since the previous observation.
    assert sample["global_shifts"].tolist() == [[0, 0], [1 + 2 + 3, -6], [4 + 5 + 6, -15]]
    assert sample["background_shifts"].tolist() == [[1, 0], [3, 0], [3, 0]]
    assert not sample["has_masks"].item() and sample["masks"].abs().sum() == 0
    assert sample["sprite_id"].item() == -1


def test_tennis_spacing_trains_on_every_fifth_frame_and_evaluates_on_every_frame(tmp_path):
    from utils.config import Config, EvaluationConfig
    count = 26  # frame values 10·t stay below 256
    labels = {"global": list(range(count)), "local": [t % 3 for t in range(count)],
              "shifts": [(1, 2)] * count, "bg_shifts": [(0, -1)] * count}
    write_video(str(tmp_path / "train" / "v"), constant_frames(count), labels=labels)
    config = Config(data=DataConfig(root=str(tmp_path), input_size=[10, 8], observations_count=6, skip_frames=4),
                    evaluation=EvaluationConfig(skip_frames=0))
    training = VideoDataset(config.data, "train", sampling="first")[0]
    assert to_pixels(training["observations"][:, 0, 0, 0]).round().tolist() == [0, 50, 100, 150, 200, 250]
    assert training["global_actions"].tolist() == [0, 5, 10, 15, 20, 25]
    # Each observation's shift sums the five per-frame shifts since the previous observation (frame 0: its own).
    assert training["global_shifts"].tolist() == [[1, 2]] + [[5, 10]] * 5
    assert training["background_shifts"].tolist() == [[0, -1]] + [[0, -5]] * 5
    evaluated = VideoDataset(config.evaluation_data(), "train", sampling="all", observations_count=6)
    assert len(evaluated) == 4  # every frame: 26 frames hold 4 windows of 6
    assert evaluated[1]["global_actions"].tolist() == [6, 7, 8, 9, 10, 11]
    assert evaluated[1]["global_shifts"].tolist() == [[1, 2]] * 6
    assert config.data.skip_frames == 4  # evaluation_data changes a copy


def test_crop_resize_and_shift_units(tmp_path):
    frame = np.zeros((40, 60, 3), np.uint8)
    frame[:20, :30] = 200  # the top-left quarter of the crop below
    write_video(str(tmp_path / "test" / "v"), [frame, frame], masks=[frame[..., 0], frame[..., 0]],
                labels={"shifts": [(0, 0), (8, 4)], "bg_shifts": [(0, 0), (-2, 2)]})
    config = DataConfig(root=str(tmp_path), crop=[0, 0, 40, 40], input_size=[20, 10], observations_count=2)
    sample = VideoDataset(config, "test", sampling="first")[0]
    assert sample["observations"].shape == (2, 3, 10, 20)
    pixels = to_pixels(sample["observations"][0, 0])
    assert pixels[:4, :4].min() > 190 and pixels[6:, 17:].max() < 10  # bright block stays top-left
    assert sample["masks"].shape == (2, 1, 10, 20) and sample["masks"].max() <= 1.0
    # Shifts are converted from source pixels to pixels of the returned 20×10 frames.
    assert sample["global_shifts"][1].tolist() == [4.0, 1.0]
    assert sample["background_shifts"][1].tolist() == [-1.0, 0.5]
    with pytest.raises(DatasetError, match="exceeds the image size"):
        VideoDataset(DataConfig(root=str(tmp_path), crop=[0, 0, 100, 40], observations_count=2), "test")[0]


def test_transparent_frames_are_composited_over_white(tmp_path):
    frame = np.zeros((4, 4, 4), np.uint8)
    frame[:2] = (255, 0, 0, 255)  # opaque red top, transparent bottom
    write_video(str(tmp_path / "val" / "v"), [frame, frame])
    sample = VideoDataset(DataConfig(root=str(tmp_path), input_size=[4, 4], observations_count=2), "val")[0]
    pixels = to_pixels(sample["observations"][0]).round()
    assert pixels[:, 0, 0].tolist() == [255, 0, 0] and pixels[:, 3, 3].tolist() == [255, 255, 255]


def test_actions_pkl_labels_both(tmp_path):
    write_video(str(tmp_path / "train" / "v"), constant_frames(3), actions=[1, 2, 0])
    sample = VideoDataset(DataConfig(root=str(tmp_path), input_size=[10, 8], observations_count=3),
                          "train", sampling="first")[0]
    assert sample["global_actions"].tolist() == [1, 2, 0] and sample["local_actions"].tolist() == [1, 2, 0]


def test_flat_style_splits_partition_the_videos(tmp_path):
    for k in range(20):
        write_video(str(tmp_path / f"clip{k:02d}"), constant_frames(2))
    config = DataConfig(root=str(tmp_path), style="flat", split_fractions=[0.6, 0.2, 0.2], input_size=[10, 8],
                        observations_count=2)
    splits = {split: split_video_folders(config, split) for split in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [12, 4, 4]
    assert len(set(sum(splits.values(), []))) == 20
    assert split_video_folders(config, "val") == splits["val"]  # deterministic
    assert len(VideoDataset(config, "test")) == 4


def test_short_videos_are_left_out(tmp_path):
    write_video(str(tmp_path / "train" / "long"), constant_frames(6))
    write_video(str(tmp_path / "train" / "short"), constant_frames(3))
    dataset = VideoDataset(DataConfig(root=str(tmp_path), input_size=[10, 8], observations_count=5), "train")
    assert len(dataset) == 1 and dataset.skipped_short == 1
    with pytest.raises(DatasetError, match="no video has the 7 frames"):
        VideoDataset(DataConfig(root=str(tmp_path), input_size=[10, 8], observations_count=7), "train")


# --------------------------------------------------------------------------- errors name the file

def test_missing_root_and_split_folder(tmp_path):
    with pytest.raises(DatasetError, match="dataset root not found"):
        VideoDataset(DataConfig(root=str(tmp_path / "nowhere")), "train")
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(DatasetError, match=r"notes.txt: a file, not a dataset folder \(data.root\)"):
        VideoDataset(DataConfig(root=str(tmp_path / "notes.txt")), "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match=r"val: missing split folder"):
        VideoDataset(DataConfig(root=str(tmp_path)), "val")
    with pytest.raises(DatasetError, match="holds no videos"):
        VideoDataset(DataConfig(root=str(tmp_path)), "train")


def test_gap_in_frame_numbers_names_the_missing_frame(tmp_path):
    folder = tmp_path / "train" / "gappy"
    write_video(str(folder), constant_frames(5))
    os.remove(folder / "00002.png")
    with pytest.raises(DatasetError, match=r"gappy.00002\.png: missing frame"):
        index_video(str(folder))


def test_mixed_extensions_and_empty_video(tmp_path):
    folder = tmp_path / "mixed"
    write_video(str(folder), constant_frames(2))
    Image.fromarray(constant_frames(3)[2]).save(folder / "00002.jpg")
    with pytest.raises(DatasetError, match="several image extensions"):
        index_video(str(folder))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: no frames"):
        index_video(str(tmp_path / "empty"))


def test_mask_count_mismatch(tmp_path):
    folder = tmp_path / "v"
    write_video(str(folder), constant_frames(4), masks=[np.zeros((8, 10), np.uint8)] * 3)
    with pytest.raises(DatasetError, match=r"masks: 3 masks for 4 frames"):
        index_video(str(folder))


def test_action_file_length_mismatch(tmp_path):
    write_video(str(tmp_path / "a"), constant_frames(4), labels={"global": [0, 1, 2], "shifts": [(0, 0)] * 4})
    with pytest.raises(DatasetError, match=r"glactions\.pkl: 'global' has 3 entries but the video has 4 frames"):
        index_video(str(tmp_path / "a"))
    write_video(str(tmp_path / "b"), constant_frames(4), actions=[0] * 5)
    with pytest.raises(DatasetError, match=r"actions\.pkl: 'actions' has 5 entries"):
        index_video(str(tmp_path / "b"))
    write_video(str(tmp_path / "c"), constant_frames(2), labels={"shifts": [1, 2]})
    with pytest.raises(DatasetError, match=r"'shifts' must hold \(dx, dy\) pairs"):
        index_video(str(tmp_path / "c"))


def test_unreadable_image_is_named(tmp_path):
    folder = tmp_path / "train" / "broken"
    write_video(str(folder), constant_frames(3))
    (folder / "00001.png").write_bytes(b"\x89PNG garbage")
    dataset = VideoDataset(DataConfig(root=str(tmp_path), input_size=[10, 8], observations_count=3), "train")
    with pytest.raises(DatasetError, match=r"broken.00001\.png: unreadable image"):
        dataset[0]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_action_pickles_cannot_run_code(tmp_path):
    write_video(str(tmp_path / "evil"), constant_frames(2), labels={"global": [0, 0], "payload": _Exploit()})
    with pytest.raises(DatasetError, match=r"glactions\.pkl: unreadable action file \(refused to load"):
        index_video(str(tmp_path / "evil"))
    write_video(str(tmp_path / "evil2"), constant_frames(2), actions=_Exploit())
    with pytest.raises(DatasetError, match="refused"):
        index_video(str(tmp_path / "evil2"))


def test_action_pickles_accept_plain_data_and_numpy_numbers(tmp_path):
    path = tmp_path / "labels.pkl"
    content = {"global": [np.int64(3), 1], "shifts": [(np.float32(1.5), 2.0)], "name": "x", "t": (1, None, True)}
    path.write_bytes(pickle.dumps(content))
    loaded = safe_load(str(path))
    assert loaded == {"global": [3, 1], "shifts": [(1.5, 2.0)], "name": "x", "t": (1, None, True)}
    assert type(loaded["global"][0]) is int
    path.write_bytes(pickle.dumps(np.zeros(3)))  # arrays are not plain data
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        safe_load(str(path))
