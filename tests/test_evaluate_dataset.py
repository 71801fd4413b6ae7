"""evaluate_dataset.py end to end on a tiny fake evaluation dataset (random feature weights)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import evaluate_dataset
from utils.evaluation import feature_networks, video_quality
from utils.evaluation.video_quality import REGISTRY

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "wsprites.yaml")
SEQUENCES, FRAMES, WIDTH, HEIGHT = 16, 3, 32, 24


pytestmark = pytest.mark.usefixtures("two_torch_threads")


def _write_video(folder: str, frames: np.ndarray) -> None:
    os.makedirs(folder, exist_ok=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(os.path.join(folder, f"{index:05d}.png"))


@pytest.fixture
def evaluation_folders(tmp_path):
    """A real test split of 8 videos × 6 frames (2 windows of 3 each: 16 sequences) and a generated folder:
    frame 0 real, the others real plus noise, following build_evaluation_dataset.py's contract."""
    rng = np.random.default_rng(0)
    root, generated = str(tmp_path / "data"), str(tmp_path / "generated")
    videos = []
    for video in range(8):
        frames = rng.integers(0, 256, size=(2 * FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
        _write_video(os.path.join(root, "test", f"video_{video}"), frames)
        for window in range(2):
            name = f"{len(videos):05d}"
            window_frames = frames[window * FRAMES:(window + 1) * FRAMES].astype(np.int16)
            noisy = np.clip(window_frames + rng.integers(-40, 41, size=window_frames.shape), 0, 255).astype(np.uint8)
            noisy[0] = window_frames[0]
            _write_video(os.path.join(generated, name), noisy)
            videos.append({"name": name, "source_video": f"video_{video}", "start_frame": window * FRAMES})
    manifest = {"format": 1, "run_folder": "runs/fake", "step": 7, "checkpoint": "runs/fake/checkpoints/step_7.pth",
                "protocol": "one_step", "split": "test", "observations_count": FRAMES, "skip_frames": 0,
                "data_root": root, "comparable": True, "videos": videos}
    with open(os.path.join(generated, "manifest.json"), "w") as handle:
        json.dump(manifest, handle)
    overrides = [f"data.root={root}", "data.crop=null", f"data.input_size=[{WIDTH}, {HEIGHT}]",
                 f"evaluation.observations_count={FRAMES}", "evaluation.batch_size=8"]
    return root, generated, overrides


def test_end_to_end_with_random_feature_weights(evaluation_folders, capsys, monkeypatch):
    root, generated, overrides = evaluation_folders
    # Smaller network inputs than the standard 299 and 224 keep the test cheap; the layers and the flow are the same.
    monkeypatch.setattr(feature_networks, "FID_INCEPTION_SIZE", 80)
    monkeypatch.setattr(feature_networks, "I3D_SIZE", 64)
    # The 2048×2048 matrix root of FID costs about a minute on 2 cores; frechet_distance has its own tests, here
    # the diagonal closed form stands in for it.
    monkeypatch.setattr(video_quality, "frechet_distance", lambda mu1, sigma1, mu2, sigma2: float(
        ((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2)
        - 2 * np.sqrt(np.clip(np.diag(sigma1) * np.diag(sigma2), 0, None)).sum()))
    assert evaluate_dataset.main(["--config", CONFIG, "--generated", generated, "--random-feature-weights",
                                  "--device", "cpu", "--no-progress", *overrides]) == 0
    with open(os.path.join(generated, "metrics.json")) as handle:
        record = json.load(handle)
    assert record["comparable"] is False and record["step"] == 7 and record["protocol"] == "one_step"
    results = record["results"]
    for name in ("mse", "motion_mse", "psnr", "ssim", "lpips_vgg", "vgg19_cosine"):
        for suffix in ("0", "1", "2", "avg", "var", "var/1"):
            assert f"{name}/{suffix}" in results, f"{name}/{suffix}"
        assert name in record["seconds_per_sequence"]
    assert results["mse/0"] == pytest.approx(0, abs=1e-12) and results["mse/avg"] > 0  # frame 0 is the real frame
    assert results["ssim/0"] == pytest.approx(1.0) and results["ssim/avg"] < 1
    assert results["fvd_i3d_k400/sequences"] == 16 and results["fvd_i3d_k400"] >= 0
    assert results["fid_inception_frames/frames"] == SEQUENCES * FRAMES and results["fid_inception_frames"] >= 0
    assert "tennis_add" not in results
    with open(os.path.join(generated, "metrics.jsonl")) as handle:
        lines = handle.read().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["comparable"] is False
    assert "comparable: false" in capsys.readouterr().out


def test_generated_frames_equal_to_the_real_ones_score_perfectly(evaluation_folders, tmp_path):
    root, generated, overrides = evaluation_folders
    for video in range(8):  # replace the generated frames by the real ones
        for window in range(2):
            for frame in range(FRAMES):
                source = os.path.join(root, "test", f"video_{video}", f"{window * FRAMES + frame:05d}.png")
                Image.open(source).save(os.path.join(generated, f"{2 * video + window:05d}", f"{frame:05d}.png"))
    assert evaluate_dataset.main(["--config", CONFIG, "--generated", generated, "--metrics", "mse,psnr,ssim,motion_mse",
                                  "--device", "cpu", "--no-progress", *overrides]) == 0
    with open(os.path.join(generated, "metrics.json")) as handle:
        record = json.load(handle)
    results = record["results"]
    assert (results["mse/avg"] == pytest.approx(0, abs=1e-12)
            and results["motion_mse/avg"] == pytest.approx(0, abs=1e-12))
    assert results["ssim/avg"] == pytest.approx(1)
    assert results["psnr/avg"] == pytest.approx(80, abs=1e-6)
    assert record["comparable"] is True  # no feature network involved, and the manifest says comparable


def _exit_status(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        from utils.cli import run_main
        run_main(evaluate_dataset.main, argv)
    return exit_info.value.code, capsys.readouterr().err


def test_missing_weights_stop_before_any_work_with_one_message(evaluation_folders, tmp_path, monkeypatch, capsys):
    root, generated, overrides = evaluation_folders
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    status, error = _exit_status(["--config", CONFIG, "--generated", generated, "--device", "cpu", *overrides],
                                 capsys)
    assert status == 2 and error.startswith("error: 4 feature-network weight file(s) missing")
    for name in ("pt_inception-2015-12-05-6726825d.pth", "rgb_imagenet.pt", "vgg16-397923af.pth",
                 "vgg19-dcbb9e9d.pth"):
        assert name in error
    assert "Traceback" not in error
    assert not os.path.exists(os.path.join(generated, "metrics.json"))


def test_the_generated_folder_is_checked_before_the_feature_weights(evaluation_folders, tmp_path, monkeypatch,
                                                                     capsys):
    root, generated, overrides = evaluation_folders
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # every weight file missing too
    missing = str(tmp_path / "does_not_exist")
    status, error = _exit_status(["--config", CONFIG, "--generated", missing, "--device", "cpu", *overrides], capsys)
    assert (status, error) == (2, f"error: {missing}: no such folder (--generated)\n")
    a_file = os.path.join(generated, "manifest.json")
    status, error = _exit_status(["--config", CONFIG, "--generated", a_file, "--device", "cpu", *overrides], capsys)
    assert (status, error) == (2, f"error: {a_file}: not a folder (--generated)\n")
    # a folder without a manifest (not written by build_evaluation_dataset.py), and a manifest that does not match
    status, error = _exit_status(["--config", CONFIG, "--generated", root, "--device", "cpu", *overrides], capsys)
    assert status == 2 and error.startswith(f"error: {os.path.join(root, 'manifest.json')}: missing")
    status, error = _exit_status(["--config", CONFIG, "--generated", generated, "--device", "cpu", *overrides,
                                  "evaluation.observations_count=4"], capsys)
    assert status == 2 and "observations_count 3, the config says evaluation.observations_count=4" in error
    # --run-name: the run folder is named, not a config.yaml inside it
    status, error = _exit_status(["--run-name", "nothing", "--runs-dir", str(tmp_path), "--device", "cpu"], capsys)
    missing_run = os.path.join(str(tmp_path), "nothing")
    assert (status, error) == (2, f"error: {missing_run}: no such run folder (check --run-name and --runs-dir)\n")


def test_broken_generated_folders_are_one_line_errors(evaluation_folders, capsys):
    root, generated, overrides = evaluation_folders
    arguments = ["--config", CONFIG, "--generated", generated, "--metrics", "mse", "--device", "cpu",
                 "--no-progress", *overrides]
    os.remove(os.path.join(generated, "00003", "00002.png"))
    status, error = _exit_status(arguments, capsys)
    assert status == 2 and "00003: 2 frames, expected 3" in error
    os.remove(os.path.join(generated, "manifest.json"))
    status, error = _exit_status(arguments, capsys)
    assert status == 2 and "manifest.json: missing" in error and len(error.strip().splitlines()) == 1


def test_unknown_metric_is_refused(evaluation_folders, capsys):
    root, generated, overrides = evaluation_folders
    status, error = _exit_status(["--config", CONFIG, "--generated", generated, "--metrics", "mse,fvd",
                                  *overrides], capsys)
    assert status == 2 and "unknown fvd" in error and all(name in error for name in REGISTRY)
