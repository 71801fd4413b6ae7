"""build_evaluation_dataset.py on the tiny trained run: the on-disk contract with evaluate_dataset.py,
the real first frame, resuming, refusing foreign folders, one-line errors."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import build_evaluation_dataset
import evaluate_dataset
from data.video_dataset import VideoDataset
from utils.checkpoint import read_run_config
from utils.cli import run_main
from utils.evaluation.generated_dataset import MANIFEST_KEYS, read_manifest
from utils.media import to_uint8_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build(trained_run, out, *extra) -> int:
    return build_evaluation_dataset.main(["--run-name", trained_run["run_name"], "--runs-dir", trained_run["runs_dir"],
                                          "--out", str(out), "--device", "cpu", "--no-progress", *extra])


def test_writes_every_test_window_with_the_real_first_frame_and_a_manifest(trained_run, tmp_path):
    out = tmp_path / "generated"
    assert build(trained_run, out) == 0
    manifest = read_manifest(str(out))
    assert set(MANIFEST_KEYS) <= set(manifest) and manifest["step"] == trained_run["steps"]
    assert manifest["protocol"] == "one_step" and manifest["split"] == "test" and manifest["observations_count"] == 6
    assert manifest["run_folder"] == os.path.abspath(trained_run["run_folder"]) and manifest["comparable"] is True
    config = read_run_config(trained_run["run_folder"], [])
    real = VideoDataset(config.data, "test", sampling="all", observations_count=6)
    assert len(manifest["videos"]) == len(real) > 0
    assert (sorted(name for name in os.listdir(out) if name != "manifest.json")
            == [v["name"] for v in manifest["videos"]])
    for index, video in enumerate(manifest["videos"]):
        sample = real[index]
        assert (video["source_video"], video["start_frame"]) == (sample["video_name"], int(sample["start_frame"]))
        frames = sorted(os.listdir(out / video["name"]))
        assert frames == [f"{number:05d}.png" for number in range(6)]
        first = np.asarray(Image.open(out / video["name"] / "00000.png").convert("RGB"))
        assert first.shape == (96, 128, 3)
        assert np.array_equal(first, to_uint8_images(sample["observations"][0]))
    # the contract holds: evaluate_dataset.py reads the folder (metrics that need no pretrained network)
    config_path = os.path.join(trained_run["run_folder"], "config.yaml")
    assert evaluate_dataset.main(["--config", config_path, "--generated", str(out), "--metrics", "mse,psnr,ssim",
                                  "--device", "cpu", "--no-progress"]) == 0
    with open(out / "metrics.json", encoding="utf-8") as handle:
        record = json.load(handle)
    assert record["step"] == trained_run["steps"] and record["protocol"] == "one_step"


def test_a_rerun_writes_only_missing_videos_and_clears_partial_folders(trained_run, tmp_path):
    out = tmp_path / "generated"
    assert build(trained_run, out, "--protocol", "single_image", "--step", "2") == 0
    assert read_manifest(str(out))["protocol"] == "single_image" and read_manifest(str(out))["step"] == 2
    kept = out / "00000" / "00003.png"
    stamp = os.stat(kept).st_mtime_ns
    for name in os.listdir(out / "00001"):
        os.remove(out / "00001" / name)
    os.rmdir(out / "00001")
    (out / ".tmp-00002-123-abcd").mkdir()  # left by an interrupted run (utils.files.write_folder_atomically)
    (out / ".partial-00002-abc").mkdir()  # and by one of the versions before it
    os.remove(out / "manifest.json")
    assert build(trained_run, out, "--protocol", "single_image", "--step", "2") == 0
    assert os.stat(kept).st_mtime_ns == stamp, "a finished video was rewritten"
    assert len(os.listdir(out / "00001")) == 6
    assert not [name for name in os.listdir(out) if name.startswith(".")]  # no temporary folder is left
    assert read_manifest(str(out))["videos"][1]["name"] == "00001"


def test_refuses_a_foreign_folder_and_names_bad_input(trained_run, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    argv = ["--run-name", trained_run["run_name"], "--runs-dir", trained_run["runs_dir"], "--device", "cpu",
            "--no-progress"]
    a_file = foreign / "notes.txt"
    for extra, message in [(["--out", str(foreign)], "holds other files"), (["--step", "3"], "step_3.pth: no such"),
                           (["--out", str(tmp_path / "x"), "evaluation.protocol=nope"], "evaluation.protocol"),
                           (["--out", str(a_file)], f"{a_file}: exists and is not a folder"),
                           (["--out", str(a_file / "sub")], f"{a_file / 'sub'}: cannot create the folder (Not a dir")]:
        with pytest.raises(SystemExit) as exit_info:
            run_main(build_evaluation_dataset.main, argv + extra)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and message in error, error
    assert (foreign / "notes.txt").read_text() == "mine" and len(os.listdir(foreign)) == 1


def test_a_crash_while_writing_leaves_no_partial_video(trained_run, tmp_path, monkeypatch):
    """A failure in the middle of a video (here the 9th PNG, the 3rd frame of the 2nd video) leaves the first video
    complete, no folder named like a video with missing frames, and no manifest; the re-run completes it."""
    import utils.evaluation.generated_dataset as library

    written = []
    real_save_png = library.save_png

    def failing_save_png(image, path):
        if len(written) == 8:
            raise OSError("disk full (simulated)")
        written.append(path)
        real_save_png(image, path)

    monkeypatch.setattr(library, "save_png", failing_save_png)
    out = tmp_path / "generated"
    with pytest.raises(OSError, match="simulated"):
        build(trained_run, out)
    videos = sorted(name for name in os.listdir(out) if not name.startswith("."))
    assert videos == ["00000"] and len(os.listdir(out / "00000")) == 6 and not (out / "manifest.json").exists()
    monkeypatch.setattr(library, "save_png", real_save_png)
    assert build(trained_run, out) == 0
    assert all(len(os.listdir(out / video["name"])) == 6 for video in read_manifest(str(out))["videos"])
    assert not any(name.startswith(".") for name in os.listdir(out))
