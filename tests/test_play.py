"""play.py on the tiny trained run of conftest: play, action files, motion transfer, reconstruction,
action matrices, default output folders and one-line errors. Tests taking `device` play on the
device of `pytest --device` (tests/conftest.py); the others on the CPU."""
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import play
from data.video_dataset import load_image, split_video_folders
from utils.config import DataConfig
from utils.errors import GlassError
from utils.play.actions import mp4_available

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_ACTIONS = 3  # tests/small_model.py
FPS = 5.0  # 200 ms per GIF frame


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared CPU, two OpenMP threads wait for each other whenever another
    process holds a core, which made these small models 50× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def videos(trained_run):
    """Two video folders of the run's dataset (test and val splits)."""
    data = DataConfig(root=trained_run["dataset_root"])
    return split_video_folders(data, "test")[0], split_video_folders(data, "val")[0]


def _run(trained_run, *arguments: str, device: torch.device = torch.device("cpu")) -> None:
    assert play.main(["--run-name", trained_run["run_name"], "--runs-dir", trained_run["runs_dir"],
                      "--device", device.type, "--fps", str(FPS), *arguments]) == 0


def _gif_frames_and_duration(path: str):
    with Image.open(path) as gif:
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
        return gif.n_frames, sum(durations), gif.size


def _check_video(folder: str, frame_count: int) -> None:
    frames, total_duration, size = _gif_frames_and_duration(os.path.join(folder, "video.gif"))
    # Pillow merges identical consecutive frames into a longer one: the total duration counts them all.
    assert total_duration == frame_count * 200 and frames <= frame_count and size == (128, 96)
    assert sorted(os.listdir(os.path.join(folder, "frames"))) == [f"{index:05d}.png" for index in range(frame_count)]
    if mp4_available():
        import av

        with av.open(os.path.join(folder, "video.mp4")) as container:
            assert sum(1 for _ in container.decode(video=0)) == frame_count


def test_play_an_action_string(trained_run, videos, tmp_path, device):
    image = os.path.join(videos[0], "00000.png")
    out = str(tmp_path / "played")
    _run(trained_run, "--image", image, "--actions", "right right 2 2 left stay 0*2 0.05,-0.02:1", "--out", out,
         device=device)
    _check_video(out, 1 + 9)
    # Frame 0 is the input image as the model sees it.
    first = np.asarray(Image.open(os.path.join(out, "frames", "00000.png")))
    expected = (((load_image(image, DataConfig(crop=[0, 0, 128, 96])) + 1) * 127.5).round().permute(1, 2, 0)
                .byte().numpy())
    assert np.array_equal(first, expected)
    record = json.load(open(os.path.join(out, "play.json")))
    assert record["step"] == trained_run["steps"] and record["checkpoint"].endswith("latest.pth")
    assert record["device"] == device.type
    assert [(step["global_shift"], step["local_action"]) for step in record["steps"]] == [
        ([0.07, 0.0], 0), ([0.07, 0.0], 0), ([0.0, 0.0], 2), ([0.0, 0.0], 2), ([-0.07, 0.0], 2), ([0.0, 0.0], 2),
        ([0.0, 0.0], 0), ([0.0, 0.0], 0), ([0.05, -0.02], 1)]


def test_play_an_action_file_from_a_chosen_checkpoint(trained_run, videos, tmp_path):
    actions = tmp_path / "moves.yaml"
    actions.write_text("- right*3\n- {shift: [0.0, 0.1], action: 1}\n")
    out = str(tmp_path / "from_file")
    _run(trained_run, "--step", "2", "--image", os.path.join(videos[1], "00003.png"), "--actions-file", str(actions),
         "--out", out)
    _check_video(out, 1 + 4)
    record = json.load(open(os.path.join(out, "play.json")))
    assert record["step"] == 2 and record["checkpoint"].endswith("step_2.pth")


def test_transfer_and_reconstruct(trained_run, videos, tmp_path, device):
    source, target = videos
    transferred = str(tmp_path / "transfer")
    _run(trained_run, "--image", os.path.join(target, "00000.png"), "--transfer", source, "--max-frames", "5",
         "--out", transferred, device=device)
    _check_video(transferred, 5)
    record = json.load(open(os.path.join(transferred, "play.json")))
    assert record["protocol"] == "motion_transfer" and record["frames"] == 5 and len(record["inferred"]) == 4
    assert all(0 <= row["local_action"] < NUM_ACTIONS for row in record["inferred"])
    for row in record["inferred"]:  # pixels of the 128 × 96 frame: dx·W/2, dy·H/2
        for name in ("global_shift", "background_shift"):
            assert row[f"{name}_pixels"] == pytest.approx([row[name][0] * 64, row[name][1] * 48], abs=2e-3)
    comparison_frames, duration, size = _gif_frames_and_duration(os.path.join(transferred, "comparison.gif"))
    assert duration == 5 * 200 and size[0] > 2 * 128  # source | transferred, side by side

    for protocol, ground_truth_steps in (("single_image", 1), ("one_step", 5)):
        out = str(tmp_path / protocol)
        _run(trained_run, "--reconstruct", source, "--protocol", protocol, "--max-frames", "6", "--out", out,
             device=device)
        _check_video(out, 6)
        record = json.load(open(os.path.join(out, "play.json")))
        assert record["protocol"] == protocol and record["num_ground_truth_steps"] == ground_truth_steps
        first = np.asarray(Image.open(os.path.join(out, "frames", "00000.png")))
        assert np.array_equal(first, np.asarray(Image.open(os.path.join(source, "00000.png")).convert("RGB")))


def test_grid_of_global_and_local_actions(trained_run, videos, tmp_path, device):
    images = tmp_path / "starts"
    images.mkdir()
    for index, video in enumerate(videos):
        shutil.copy(os.path.join(video, "00000.png"), images / f"start_{index}.png")
    out = str(tmp_path / "grid")
    _run(trained_run, "--grid", "--image", str(images), "--grid-frames", "3", "--out", out, device=device)
    assert sorted(os.listdir(out)) == ["global_actions.gif", "global_actions_sheet.png", "local_actions.gif",
                                       "local_actions_sheet.png", "play.json"]
    for name, columns in (("global_actions", 5), ("local_actions", NUM_ACTIONS)):
        _, duration, (width, height) = _gif_frames_and_duration(os.path.join(out, f"{name}.gif"))
        assert duration == (1 + 3) * 200  # the start frame, then 3 generated frames
        assert width > columns * 128 and 2 * 96 < height < 3 * 96 + 40  # 2 rows (start images) × columns
        sheet = Image.open(os.path.join(out, f"{name}_sheet.png"))
        assert sheet.width > 4 * 128 and sheet.height > 2 * columns * 96  # one row per (start, action), 4 times
    assert json.load(open(os.path.join(out, "play.json")))["images"] == ["start_0.png", "start_1.png"]


def _usual_shift_record(step, time, code_0_dx, split="val"):
    """An evaluate.py JSON line with the usual shifts of three codes (pixels): code 0 right by `code_0_dx`, code 1
    unused, code 2 up 8 px."""
    usual = [{"transitions": 4, "dx": code_0_dx, "dy": 0.0, "direction": "right", "share": 0.75},
             {"transitions": 0, "dx": None, "dy": None, "direction": None, "share": 0.0},
             {"transitions": 2, "dx": 0.0, "dy": -8.0}]  # an older record: no direction, no share
    return json.dumps({"step": step, "split": split, "time": time, "code_usual_shift": usual}) + "\n"


def test_grid_with_usual_shifts_draws_each_local_action_with_the_shift_of_the_latest_evaluation(trained_run, videos,
                                                                                                 tmp_path):
    from model.generation import local_action_matrix
    from model.trained import load_trained_model
    from utils.play.actions import load_start_image
    from utils.training.media import action_matrix_media

    runs = tmp_path / "runs"
    shutil.copytree(trained_run["run_folder"], runs / "copy")  # the shared run is read-only for tests
    metrics = runs / "copy" / "metrics"
    metrics.mkdir(exist_ok=True)

    record = _usual_shift_record
    # the latest record of step 4 (by time, across files) wins; another step's, a line that is no record and a line
    # cut by a crash do not
    (metrics / "evaluate-val-one_step.jsonl").write_text(
        record(4, "2026-01-02T00:00:00Z", 16.0) + record(2, "2026-01-03T00:00:00Z", 32.0) + "[4]\n"
        + '{"step": 4, "cod')
    (metrics / "evaluate-test-one_step.jsonl").write_text(record(4, "2026-01-01T00:00:00Z", -16.0, "test"))
    image = os.path.join(videos[0], "00000.png")
    out = tmp_path / "grid"
    assert play.main(["--run-name", "copy", "--runs-dir", str(runs), "--device", "cpu", "--grid", "--grid-frames", "2",
                      "--image", image, "--usual-shifts", "--out", str(out)]) == 0
    saved = json.load(open(out / "play.json"))
    assert saved["usual_shifts_from"] == "evaluate-val-one_step.jsonl (val, 2026-01-02T00:00:00Z)"
    # pixels → affine_grid units of the 128 × 96 frame; the unused code goes without a shift
    assert saved["local_columns"] == [{"action": 0, "shift": [0.25, 0.0]}, {"action": 1, "shift": [0.0, 0.0]},
                                      {"action": 2, "shift": [0.0, pytest.approx(-1 / 6, abs=1e-6)]}]
    trained = load_trained_model(str(runs / "copy"))
    start = load_start_image(image, trained.config.data, "auto")[None]
    shifts = torch.tensor([[0.25, 0.0], [0.0, 0.0], [0.0, -1 / 6]])
    names = ["code 0, shift +16.0 +0.0 px (75%)", "code 1, unused: no shift", "code 2, shift +0.0 -8.0 px"]
    _, expected = action_matrix_media(local_action_matrix(trained.model, start, 2, action_shifts=shifts), start,
                                      names, [os.path.basename(image)])
    sheet = np.asarray(Image.open(out / "local_actions_sheet.png").convert("RGB"))
    assert sheet.shape == expected.shape and np.abs(sheet.astype(int) - expected.astype(int)).max() <= 1
    # without a record of the checkpoint: a one-line error naming the folder, nothing written
    (metrics / "evaluate-val-one_step.jsonl").write_text(record(4, "2026-01-02T00:00:00Z", 16.0))
    with pytest.raises(GlassError, match=r"metrics: no evaluate.py record of step 2 with the usual shifts of 3 "
                                         r"codes; run evaluate.py on that checkpoint first \(--step 2\)$"):
        play.main(["--run-name", "copy", "--runs-dir", str(runs), "--device", "cpu", "--grid", "--step", "2",
                   "--image", image, "--usual-shifts", "--out", str(tmp_path / "none")])
    assert not os.path.exists(tmp_path / "none")


def test_serve_with_usual_shifts_gives_each_action_button_its_usual_shift(trained_run, tmp_path, monkeypatch):
    """`--serve --usual-shifts`: the page's info carries each action's step with the shift of the checkpoint's latest
    evaluate.py record (affine_grid units; the unused code a bare step) and its label; without a record, a one-line
    error before any server starts."""
    import urllib.request

    import utils.play.server

    runs = tmp_path / "runs"
    shutil.copytree(trained_run["run_folder"], runs / "copy")  # the shared run is read-only for tests
    metrics = runs / "copy" / "metrics"
    metrics.mkdir(exist_ok=True)
    (metrics / "evaluate-val-one_step.jsonl").write_text(_usual_shift_record(4, "2026-01-02T00:00:00Z", 16.0))
    infos = []

    def serve_once(http_server, *arguments, **keywords):  # answers one request, /api/info, instead of serving on
        thread = threading.Thread(target=http_server.handle_request)
        thread.start()
        with urllib.request.urlopen(f"http://127.0.0.1:{http_server.server_address[1]}/api/info", timeout=60) as answer:
            infos.append(json.load(answer))
        thread.join(timeout=60)

    monkeypatch.setattr(utils.play.server._LocalHTTPServer, "serve_forever", serve_once)
    arguments = ["--run-name", "copy", "--runs-dir", str(runs), "--device", "cpu", "--serve", "--port", "0",
                 "--usual-shifts"]
    assert play.main(arguments) == 0
    (info,) = infos
    assert info["action_steps"] == ["0.250,0.000:0", "1", "0.000,-0.167:2"]
    assert info["action_labels"] == ["code 0, shift +16.0 +0.0 px (75%)", "code 1, unused: no shift",
                                     "code 2, shift +0.0 -8.0 px"]
    assert info["usual_shifts_from"] == "evaluate-val-one_step.jsonl (val, 2026-01-02T00:00:00Z)"
    (metrics / "evaluate-val-one_step.jsonl").write_text(_usual_shift_record(2, "2026-01-02T00:00:00Z", 16.0))
    with pytest.raises(GlassError, match=r"metrics: no evaluate.py record of step 4 with the usual shifts of 3 codes"):
        play.main(arguments)
    assert len(infos) == 1


def test_default_output_folder_is_in_the_run(trained_run, videos, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(trained_run["run_folder"], runs / "copy")  # the shared run is read-only for tests
    assert play.main(["--run-name", "copy", "--runs-dir", str(runs), "--device", "cpu", "--grid", "--grid-frames", "1",
                      "--image", os.path.join(videos[0], "00000.png")]) == 0
    (folder,) = os.listdir(runs / "copy" / "play")
    assert folder.startswith("grid-") and os.path.isfile(runs / "copy" / "play" / folder / "global_actions.gif")


@pytest.mark.parametrize("arguments, message", [
    (["--run-name", "nope", "--image", "IMAGE", "--actions", "right"], r"nope: no such run folder"),
    (["--step", "3", "--image", "IMAGE", "--actions", "right"],
     r"step_3.pth: no such checkpoint \(steps available: 2, 4\)"),
    (["--image", "missing.png", "--actions", "right"], r"missing.png: no such image file"),
    (["--image", "NOT_AN_IMAGE", "--actions", "right"], r"notes.png: unreadable image"),
    (["--image", "IMAGE", "--actions", "right 5"],
     r"--actions: token 2 '5': local action 5 is out of range: this model has 3 actions"),
    (["--image", "IMAGE", "--transfer", "nowhere"], r"nowhere: no such video folder"),
    (["--image", "IMAGE", "--reconstruct", "VIDEO"], r"--image: not used with --reconstruct"),
    (["--image", "IMAGE", "--image", "IMAGE", "--actions", "right"], r"--actions: needs exactly one --image \(got 2\)"),
    (["--image", "IMAGE", "--actions", ""], r"^--actions: no steps given$"),
    (["--image", "IMAGE", "--transfer", ""], r"^--transfer: expected a path, got an empty string$"),
    (["--image", "IMAGE", "--actions-file", ""], r"^--actions-file: expected a path, got an empty string$"),
    (["--image", "", "--actions", "right"], r"^--image: expected a path, got an empty string$"),
    (["--image", "VIDEO", "--actions", "right"], r"_video_\d+: a folder, not an image file$"),
    (["--image", "IMAGE", "--actions", "right", "--usual-shifts"], r"^--usual-shifts: only with --grid or --serve"),
    (["--image", "IMAGE", "--actions", "right", "--out", "NOT_AN_IMAGE"], r"notes.png: .*notes.png is a file, not a"),
    (["--image", "IMAGE", "--actions", "right", "--out", "UNDER_A_FILE"], r"notes.png/out: .*notes.png is a file, not"),
])
def test_errors_are_one_line_and_name_the_bad_input(trained_run, videos, tmp_path, arguments, message):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    substitutions = {"NOT_AN_IMAGE": str(notes), "IMAGE": os.path.join(videos[0], "00000.png"), "VIDEO": videos[0],
                     "UNDER_A_FILE": str(notes / "out")}
    arguments = [substitutions.get(argument, argument) for argument in arguments]
    if "--run-name" not in arguments:
        arguments = ["--run-name", trained_run["run_name"], *arguments]
    with pytest.raises(GlassError, match=message) as caught:
        play.main(["--runs-dir", trained_run["runs_dir"], "--device", "cpu", "--out", str(tmp_path / "out"),
                   *arguments])
    assert "\n" not in str(caught.value)
    assert not os.path.exists(tmp_path / "out")  # nothing written on errors


def test_command_line_error_exits_with_status_2(trained_run, videos):
    result = subprocess.run([sys.executable, "play.py", "--run-name", trained_run["run_name"], "--runs-dir",
                             trained_run["runs_dir"], "--device", "cpu", "--image",
                             os.path.join(videos[0], "00000.png"), "--actions", "right jump"],
                            cwd=REPOSITORY, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --actions: token 2 'jump': unknown direction 'jump' "
                                                  "(expected one of right, left, down, up, stay)"]


def test_help_documents_the_action_language(capsys):
    with pytest.raises(SystemExit):
        play.parse_arguments(["--help"])
    help_text = capsys.readouterr().out
    for expected in ("DIRECTION:ACTION", "DX,DY:ACTION", "STEP*N", "--transfer VIDEO_DIR", "--serve", "--grid-frames",
                     "right right 3 3 left stay 0"):
        assert expected in help_text


def test_serve_wires_the_run_into_a_local_server(trained_run, monkeypatch, capsys):
    import utils.play.server

    served = []

    def serve_once(http_server, *arguments, **keywords):  # instead of serving until Ctrl-C
        served.append(http_server.server_address)

    monkeypatch.setattr(utils.play.server._LocalHTTPServer, "serve_forever", serve_once)
    _run(trained_run, "--serve", "--port", "0", "--max-upload-mb", "0.5")
    (host, port), = served
    assert host == "127.0.0.1" and port > 0
    assert f"2 start image(s); open http://127.0.0.1:{port}/" in capsys.readouterr().out
