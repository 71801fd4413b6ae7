"""The W-Sprites generator end to end: files, splits, determinism, resuming, LPC sheets."""
import hashlib
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data.wsprites import generate
from data.wsprites.sprites import (
    ANIMATION_CELLS,
    LPCDirectorySource,
    alpha_composite,
    character_choices,
    cut_animation_cells,
    read_lpc_sheet,
)
from utils.errors import GlassError

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
LPC_DIR = os.path.join(REPOSITORY, "..", "shared", "lpc")
needs_lpc = pytest.mark.skipif(not os.path.isdir(os.path.join(LPC_DIR, "body")),
                               reason="the LPC sheets of ../shared/lpc are not present beside the repository")

SMALL = ["--num-characters", "10", "--videos-per-character", "2", "--frames", "12"]


def tree_digest(root):
    """{relative path: sha256} of every file below root."""
    digests = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                digests[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("wsprites") / "set")
    assert generate.main(["--out", out, "--workers", "1", *SMALL]) == 0
    return out


def test_layout_labels_and_metadata(small_dataset):
    with open(os.path.join(small_dataset, "metadata.json")) as handle:
        metadata = json.load(handle)
    assert metadata["complete"] is True
    assert metadata["local_actions"]["0"] == "walk-front" and metadata["local_actions"]["8"] == "slash-right"
    assert metadata["global_actions"]["4"] == "stay"
    assert "pixels" in metadata["units"]["shifts"] and "pixels" in metadata["units"]["bg_shifts"]
    assert metadata["counts"]["videos"] == {"train": 16, "val": 2, "test": 2}
    videos = sorted(os.listdir(os.path.join(small_dataset, "train")))
    assert len(videos) == 16 and all(v.startswith("sprite_") and "_video_" in v for v in videos)
    video = os.path.join(small_dataset, "train", videos[0])
    frames = sorted(f for f in os.listdir(video) if f.endswith(".png"))
    assert frames == [f"{t:05d}.png" for t in range(12)]
    assert sorted(os.listdir(os.path.join(video, "masks"))) == frames
    frame = np.asarray(Image.open(os.path.join(video, "00000.png")))
    mask = np.asarray(Image.open(os.path.join(video, "masks", "00000.png")))
    assert frame.shape == (96, 128, 3) and mask.shape == (96, 128)
    assert set(np.unique(mask)) <= {0, 255}
    assert 0.01 < (mask > 0).mean() < 0.2  # a 64×64 cell in a 128×96 frame, the character a part of it
    with open(os.path.join(video, "glactions.pkl"), "rb") as handle:
        labels = pickle.load(handle)
    for key in ("global", "local", "shifts", "bg_shifts"):
        assert len(labels[key]) == 12
    assert labels["shifts"][0] == (0, 0) and labels["bg_shifts"][0] == (0, 0)
    # The mask sits where the positions say.
    x, y = labels["positions"][0]
    rows, columns = np.nonzero(mask)
    assert x <= columns.min() and columns.max() < x + 64 and y <= rows.min() and rows.max() < y + 64


def test_sprite_moves_as_the_shift_labels_say(small_dataset):
    """The mask's bounding box moves by the stored shift (in output pixels) from frame to frame."""
    checked = 0
    for split in ("train", "val", "test"):
        for name in sorted(os.listdir(os.path.join(small_dataset, split))):
            video = os.path.join(small_dataset, split, name)
            with open(os.path.join(video, "glactions.pkl"), "rb") as handle:
                labels = pickle.load(handle)
            for t in range(1, 12):
                positions = labels["positions"]
                assert tuple(np.subtract(positions[t], positions[t - 1])) == labels["shifts"][t]
                checked += 1
    assert checked == 20 * 11


def test_background_moves_by_bg_shifts(small_dataset):
    """Away from the sprite, frame t equals frame t-1 shifted by the background shift."""
    video = os.path.join(small_dataset, "train", sorted(os.listdir(os.path.join(small_dataset, "train")))[0])
    with open(os.path.join(video, "glactions.pkl"), "rb") as handle:
        labels = pickle.load(handle)
    moving = [t for t in range(1, 12) if labels["bg_shifts"][t] != (0, 0)]
    assert moving, "pick a video whose background moves"
    t = moving[0]
    dx, dy = labels["bg_shifts"][t]
    previous = np.asarray(Image.open(os.path.join(video, f"{t - 1:05d}.png"))).astype(int)
    current = np.asarray(Image.open(os.path.join(video, f"{t:05d}.png"))).astype(int)
    masks = [np.asarray(Image.open(os.path.join(video, "masks", f"{k:05d}.png"))) for k in (t - 1, t)]
    # content at (x, y) in t-1 appears at (x + dx, y + dy) in t
    height, width = 96, 128
    ys, xs = np.mgrid[max(0, -dy):min(height, height - dy), max(0, -dx):min(width, width - dx)]
    clear = (masks[0][ys, xs] == 0) & (masks[1][ys + dy, xs + dx] == 0)
    assert np.array_equal(previous[ys, xs][clear], current[ys + dy, xs + dx][clear])


def test_splits_are_disjoint_by_character(tmp_path):
    out = str(tmp_path / "set")
    assert generate.main(["--out", out, "--num-characters", "40", "--videos-per-character", "1",
                          "--frames", "2", "--workers", "1"]) == 0
    characters = {}
    for split in ("train", "val", "test"):
        names = os.listdir(os.path.join(out, split))
        characters[split] = {int(name.split("_")[1]) for name in names}
    assert (len(characters["train"]), len(characters["val"]), len(characters["test"])) == (32, 4, 4)
    assert not characters["train"] & characters["val"]
    assert not characters["train"] & characters["test"]
    assert not characters["val"] & characters["test"]


def test_same_seed_gives_identical_files_whatever_the_workers(small_dataset, tmp_path):
    out = str(tmp_path / "two-workers")
    assert generate.main(["--out", out, "--workers", "2", *SMALL]) == 0
    assert tree_digest(out) == tree_digest(small_dataset)
    other_seed = str(tmp_path / "other-seed")
    assert generate.main(["--out", other_seed, "--workers", "1", "--seed", "1", *SMALL]) == 0
    assert tree_digest(other_seed) != tree_digest(small_dataset)


def test_interrupted_run_resumes_to_the_same_files(small_dataset, tmp_path):
    out = tmp_path / "resumed"
    assert generate.main(["--out", str(out), "--workers", "1", *SMALL]) == 0
    # Simulate an interruption: one video missing, a half-written temporary folder, metadata not complete.
    victim = sorted((out / "train").iterdir())[3]
    for path in sorted(victim.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    victim.rmdir()
    half = out / "train" / f".tmp-{victim.name}-999"
    half.mkdir()
    (half / "00000.png").write_bytes(b"partial")
    metadata = json.loads((out / "metadata.json").read_text())
    metadata["complete"] = False
    (out / "metadata.json").write_text(json.dumps(metadata))
    assert generate.main(["--out", str(out), "--workers", "1", *SMALL]) == 0
    assert not half.exists()
    assert tree_digest(str(out)) == tree_digest(small_dataset)


def test_refuses_other_parameters_and_foreign_folders_unless_overwrite(small_dataset, tmp_path):
    out = tmp_path / "set"
    assert generate.main(["--out", str(out), "--workers", "1", *SMALL]) == 0
    with pytest.raises(GlassError, match="other parameters"):
        generate.main(["--out", str(out), "--workers", "1", *SMALL[:-1], "13"])
    assert generate.main(["--out", str(out), "--workers", "1", "--overwrite", *SMALL[:-1], "13"]) == 0
    video = sorted((out / "train").iterdir())[0]
    assert len(list(video.glob("*.png"))) == 13
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        with pytest.raises(GlassError, match="not empty"):
            generate.main(["--out", str(foreign), *extra, *SMALL])
    assert (foreign / "notes.txt").read_text() == "mine"


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path):
    """SIGINT to the whole process group (what a terminal's Ctrl-C sends) with worker processes."""
    import signal
    import time

    out = tmp_path / "set"
    # The child gets SIGINT's default disposition back: a suite started in the background by a
    # non-interactive shell (`(cmd &)`) ignores SIGINT, and the generator would inherit that and complete.
    command = [sys.executable, "-m", "data.wsprites.generate", "--out", str(out), "--num-characters", "10",
               "--videos-per-character", "4", "--frames", "40", "--workers", "2"]
    process = subprocess.Popen(command, cwd=REPOSITORY, start_new_session=True, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not any((out / "train").glob("sprite_*")):
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted") and "resume" in stderr
    assert json.loads((out / "metadata.json").read_text())["complete"] is False
    finished = len(list((out / "train").glob("sprite_*")))
    assert 0 < finished < 32
    assert generate.main(command[3:]) == 0
    assert json.loads((out / "metadata.json").read_text())["complete"] is True
    assert len(list((out / "train").glob("sprite_*"))) == 32
    assert not list(out.glob("*/.tmp-*"))


def test_command_line_errors_are_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "data.wsprites.generate", "--out", str(tmp_path / "x"),
                             "--sprites-dir", str(tmp_path / "nowhere")],
                            cwd=REPOSITORY, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "nowhere" in result.stderr
    assert not (tmp_path / "x").exists()


def test_an_out_that_is_a_file_or_a_foreign_metadata_file_is_refused(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for out in (a_file, a_file / "set"):
        with pytest.raises(GlassError, match=f"--out {out}: {a_file} is a file, not a folder"):
            generate.main(["--out", str(out), "--workers", "1", *SMALL])
    assert a_file.read_text() == "mine"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "metadata.json").write_text("[1, 2]")
    for extra in ([], ["--overwrite"]):
        with pytest.raises(GlassError, match="metadata.json: not the metadata of a W-Sprites dataset"):
            generate.main(["--out", str(foreign), *extra, *SMALL])
    assert sorted(os.listdir(foreign)) == ["metadata.json"]


@pytest.mark.parametrize("option, value", [("--num-characters", "abc"), ("--num-characters", "0"),
                                           ("--num-characters", "-3"), ("--frames", "1.5")])
def test_a_count_that_is_not_a_positive_whole_number_names_the_option(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        generate.main(["--out", str(tmp_path / "set"), *SMALL, option, value])
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and last_line.startswith(f"python -m data.wsprites.generate: error: argument "
                                                              f"{option}: ")
    assert value in last_line and "_positive" not in last_line
    assert not (tmp_path / "set").exists()


def test_character_choices_cover_all_combinations():
    combos = {character_choices(i, (6, 6, 6, 6)) for i in range(1296)}
    assert len(combos) == 1296
    assert character_choices(0, (6, 6, 6, 6)) == (0, 0, 0, 0)
    assert character_choices(7, (6, 6, 6, 6)) == (0, 0, 1, 1)


def test_alpha_composite_over():
    bottom = np.zeros((1, 1, 4), np.uint8)
    bottom[..., :] = (200, 0, 0, 255)
    top = np.zeros((1, 1, 4), np.uint8)
    top[..., :] = (0, 0, 100, 128)
    result = alpha_composite([bottom, top])
    a = 128 / 255
    assert tuple(result[0, 0]) == (round(200 * (1 - a)), 0, round(100 * a), 255)
    empty = alpha_composite([np.zeros((1, 1, 4), np.uint8), top])
    assert tuple(empty[0, 0]) == (0, 0, 100, 128)


@needs_lpc
def test_lpc_sheets_are_cut_into_the_right_cells():
    sheet = read_lpc_sheet(os.path.join(LPC_DIR, "body", "0.png"))
    cells = cut_animation_cells(sheet)
    assert cells.shape == (9, 8, 64, 64, 4)
    # walk-front frame 0 is column 8 of row 10; spellcast-right frame 7 is column 6 of row 3;
    # slash-left frame 6 is column 4 of row 13 (SPEC §1.2).
    assert np.array_equal(cells[0, 0], sheet[640:704, 512:576])
    assert np.array_equal(cells[5, 7], sheet[192:256, 384:448])
    assert np.array_equal(cells[7, 6], sheet[832:896, 256:320])
    assert ANIMATION_CELLS[2] == (11, (8, 1, 2, 3, 4, 5, 6, 7))
    # Every frame of every animation holds a character; left and right views differ.
    assert np.all(cells[..., 3].reshape(72, -1).max(axis=1) == 255)
    assert not np.array_equal(cells[1], cells[2])
    # The right-facing walk is (close to) the mirror image of the left-facing one in LPC art.
    assert (cells[1, 0, ..., 3] > 0).sum() == pytest.approx((cells[2, 0, ..., 3] > 0).sum(), rel=0.15)


@needs_lpc
def test_lpc_characters_compose_layers_in_order():
    source = LPCDirectorySource(LPC_DIR)
    assert source.layers == ("body", "bottomwear", "topwear", "hair")
    character = source.character_cells((1, 2, 0, 3))
    layers = [source.layer_cells(layer, v) for layer, v in zip(source.layers, (1, 2, 0, 3))]
    union = np.any([layer[..., 3] > 0 for layer in layers], axis=0)
    assert np.array_equal(character[..., 3] > 0, union)
    hair = layers[3][..., 3] == 255
    assert np.array_equal(character[..., :3][hair], layers[3][..., :3][hair]), "hair is on top"


@needs_lpc
def test_generate_from_lpc_sheets(tmp_path):
    out = str(tmp_path / "lpc")
    assert generate.main(["--out", out, "--sprites-dir", LPC_DIR, "--num-characters", "3",
                          "--videos-per-character", "1", "--frames", "4", "--workers", "1"]) == 0
    with open(os.path.join(out, "metadata.json")) as handle:
        metadata = json.load(handle)
    assert metadata["sprite_source"]["kind"] == "lpc-directory"
    assert len(metadata["sprite_source"]["sha256"]["body"]) == 6


def test_bad_sprite_sheet_is_named(tmp_path):
    for layer in ("body", "bottomwear", "topwear", "hair"):
        (tmp_path / layer).mkdir()
        Image.new("RGBA", (832, 1344)).save(tmp_path / layer / "0.png")
    (tmp_path / "hair" / "0.png").write_bytes(b"not a png")
    with pytest.raises(GlassError, match=r"hair.0\.png"):
        generate.main(["--out", str(tmp_path / "out"), "--sprites-dir", str(tmp_path), "--num-characters", "1"])
    Image.new("RGBA", (64, 64)).save(tmp_path / "hair" / "0.png")
    with pytest.raises(GlassError, match="at least 832"):
        LPCDirectorySource(str(tmp_path))
    assert not (tmp_path / "out").exists()
