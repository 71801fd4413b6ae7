"""Tests of `python -m data.convert` on small synthetic videos written with PyAV."""
import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from data.convert import ConvertError, frame_times, main, resample, safe_name
from utils.errors import GlassError

REPO = Path(__file__).resolve().parents[2]
W, H, N, RATE = 64, 48, 20, 10  # the synthetic clip: 64x48, 20 frames at 10 fps
SQUARE = 8  # a white 8x8 square, top-left at x = 4 + 2 i, y = 20


@pytest.fixture(scope="module")
def av():
    return pytest.importorskip("av", reason="PyAV is not installed (pip install -e \".[video]\"); "
                                            "the video conversion tests need it")


def _codec(av, *names):
    for name in names:
        if name in av.codecs_available:
            return name
    pytest.skip(f"this PyAV has none of the encoders {names}")


def _encode(av, path, frames, codec, rate=RATE, rotation=None):
    width, height = frames[0].shape[1], frames[0].shape[0]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = {"ffv1": "yuv444p", "mjpeg": "yuvj420p"}.get(codec, "yuv420p")
        stream.bit_rate = 4_000_000
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _moving_square_frames():
    frames = []
    for i in range(N):
        array = np.zeros((H, W, 3), np.uint8)
        array[20:20 + SQUARE, 4 + 2 * i:4 + 2 * i + SQUARE] = 255
        frames.append(array)
    return frames


def _square_centre_x(i):
    return 4 + 2 * i + SQUARE / 2


@pytest.fixture(scope="module")
def clip(av, tmp_path_factory):
    """A 20-frame, 10 fps mp4 of a white square moving right by 2 px per frame."""
    path = tmp_path_factory.mktemp("clip") / "moving.mp4"
    _encode(av, path, _moving_square_frames(), _codec(av, "mpeg4", "libx264"))
    return path


def _videos(tmp_path, clip, *names):
    folder = tmp_path / "videos"
    folder.mkdir(exist_ok=True)
    for name in names:
        shutil.copyfile(clip, folder / name)
    return folder


def _frames(folder):
    return sorted(folder.glob("*.png"))


def _bright_centroid(path):
    array = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    ys, xs = np.nonzero(array > 128)
    return xs.mean(), ys.mean()


def _report(out):
    return json.loads((out / "convert.json").read_text())


def test_keeps_every_frame_resizes_and_the_square_moves_right(tmp_path, clip):
    videos = _videos(tmp_path, clip, "a.mp4")
    out = tmp_path / "out"
    assert main(["--videos", str(videos), "--out", str(out), "--size", "32", "24"]) == 0
    frames = _frames(out / "a")
    assert [p.name for p in frames] == [f"{i:05d}.png" for i in range(N)]
    for i, path in enumerate(frames):
        image = Image.open(path)
        assert image.size == (32, 24) and image.mode == "RGB"
        # same aspect ratio, so the 64x48 frame is halved with no crop
        x, y = _bright_centroid(path)
        assert abs(x - _square_centre_x(i) / 2) < 1.0 and abs(y - (20 + SQUARE / 2) / 2) < 1.0
    report = _report(out)
    assert report["state"] == "complete"
    assert report["counts"]["converted"] == 1 and report["videos"][0]["frames"] == N
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_fps_resamples_by_timestamps(tmp_path, clip):
    videos = _videos(tmp_path, clip, "a.mp4")
    # Frame times are 0, 0.1, ..., 1.9 s. At 5 fps the targets k/5 <= 1.9 give k = 0..9,
    # each hitting source frame 2k exactly.
    main(["--videos", str(videos), "--out", str(tmp_path / "slow"), "--fps", "5"])
    frames = _frames(tmp_path / "slow" / "a")
    assert len(frames) == 10
    for k, path in enumerate(frames):
        assert Image.open(path).size == (W, H)
        assert abs(_bright_centroid(path)[0] - _square_centre_x(2 * k)) < 1.0
    # At 20 fps the targets k/20 <= 1.9 give k = 0..38; target k lies halfway between
    # source frames for odd k and the tie goes to the earlier one: source frame k // 2.
    main(["--videos", str(videos), "--out", str(tmp_path / "fast"), "--fps", "20"])
    frames = _frames(tmp_path / "fast" / "a")
    assert len(frames) == 39
    for k, path in enumerate(frames):
        assert abs(_bright_centroid(path)[0] - _square_centre_x(k // 2)) < 1.0
    assert frames[1].read_bytes() == frames[0].read_bytes()


def test_resample_picks_the_nearest_time_and_never_extrapolates():
    times = [Fraction(t) for t in ("0", "0.09", "0.21", "0.3", "0.52")]
    picked = list(resample(zip(times, "abcde"), Fraction(10)))
    # targets 0, .1, .2, .3, .4, .5 -> a, b, c, d, d (.4 is .1 from d, .12 from e), e; .6 > .52 ends
    assert picked == ["a", "b", "c", "d", "d", "e"]
    assert list(resample(zip([Fraction(0), Fraction(1, 10)], "ab"), Fraction(20))) == ["a", "a", "b"]


def test_frame_times_fall_back_to_the_average_rate():
    def frame(pts, time_base=Fraction(1, 1000)):
        return SimpleNamespace(pts=pts, time_base=time_base)

    # starts at 500 ms (relative times), one missing and one repeated timestamp
    frames = [frame(500), frame(None), frame(700), frame(700), frame(900)]
    times = [t for t, _ in frame_times(frames, Fraction(10))]
    assert times == [0, Fraction(1, 10), Fraction(2, 10), Fraction(3, 10), Fraction(4, 10)]
    # no timestamps at all: i / rate
    times = [t for t, _ in frame_times([frame(None, None)] * 3, Fraction(25))]
    assert times == [0, Fraction(1, 25), Fraction(2, 25)]


def test_cover_crop_keeps_the_aspect_ratio(av, tmp_path):
    # a still 64x48 clip: red 8-px bands at the left and right, a white 12x12 square
    # in the centre
    array = np.zeros((H, W, 3), np.uint8)
    array[:, :8] = array[:, -8:] = (255, 0, 0)
    array[18:30, 26:38] = 255
    videos = tmp_path / "videos"
    videos.mkdir()
    codec = _codec(av, "ffv1", "mpeg4", "libx264")
    _encode(av, videos / "still.mkv", [array] * 3, codec)

    def measure(out):
        image = np.asarray(Image.open(out / "still" / "00000.png"), dtype=np.int32)
        white = (image.min(axis=2) > 128)
        ys, xs = np.nonzero(white)
        red = (image[..., 0] > 128) & (image[..., 1] < 100)
        return image.shape[:2], (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1), red.sum()

    # cover: scale 2/3 (48 -> 32), the sides are cropped (source x 8..56), the red bands go
    main(["--videos", str(videos), "--out", str(tmp_path / "crop"), "--size", "32", "32"])
    shape, (square_w, square_h), red = measure(tmp_path / "crop")
    assert shape == (32, 32)
    assert square_w == square_h == 8
    assert red == 0
    # stretch: x by 1/2, y by 2/3, the red bands stay
    main(["--videos", str(videos), "--out", str(tmp_path / "stretch"), "--size", "32", "32", "--no-crop"])
    shape, (square_w, square_h), red = measure(tmp_path / "stretch")
    assert shape == (32, 32)
    assert (square_w, square_h) == (6, 8)
    assert red >= 2 * 3 * 32


def test_display_rotation_is_applied(av, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    codec = _codec(av, "mpeg4", "libx264")
    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("this PyAV cannot write a display rotation")
    _encode(av, videos / "turned.mp4", _moving_square_frames(), codec, rotation=90)
    out = tmp_path / "out"
    main(["--videos", str(videos), "--out", str(out)])
    frames = _frames(out / "turned")
    assert Image.open(frames[0]).size == (H, W)  # portrait
    # rotated 90 degrees counter-clockwise: moving right becomes moving up
    ys = [_bright_centroid(path)[1] for path in frames]
    assert all(later < earlier for earlier, later in zip(ys, ys[1:]))


def test_splitted_style_puts_each_video_in_one_split(tmp_path, clip):
    names = ["v1.mp4", "v2.mp4", "v3.mp4", "v4.mp4", "v5.mp4"]
    videos = _videos(tmp_path, clip, *names)
    placement = []
    for run in ("first", "second"):
        out = tmp_path / run
        main(["--videos", str(videos), "--out", str(out), "--fps", "5",
              "--split-fractions", "0.6", "0.2", "0.2", "--seed", "3"])
        splits = {split: sorted(p.name for p in (out / split).iterdir()) for split in ("train", "val", "test")}
        assert [len(v) for v in splits.values()] == [3, 1, 1]
        assert sorted(sum(splits.values(), [])) == [n[:-4] for n in names]
        assert len(_frames(out / "val" / splits["val"][0])) == 10
        assert {p.name for p in out.iterdir()} == {"train", "val", "test", "convert.json"}
        placement.append(splits)
    assert placement[0] == placement[1]  # seeded


def test_resume_skips_overwrite_redoes_and_stale_temporaries_go(tmp_path, clip):
    videos = _videos(tmp_path, clip, "a.mp4")
    out = tmp_path / "out"
    args = ["--videos", str(videos), "--out", str(out), "--size", "32", "24"]
    main(args)
    first = out / "a" / "00000.png"
    os.utime(first, (0, 0))
    stale = out / ".tmp-b-12345"
    stale.mkdir()
    (stale / "00000.png").write_bytes(b"half")
    (out / ".tmp-convert.json-12345").write_text("{")

    main(args)
    assert first.stat().st_mtime == 0  # resumed: not rewritten
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert _report(out)["counts"] == {"found": 1, "converted": 0, "already_present": 1,
                                      "too_short": 0, "bad": 0}
    assert _report(out)["videos"][0]["frames"] == N

    main(args + ["--overwrite"])
    assert first.stat().st_mtime != 0
    assert len(_frames(out / "a")) == N
    assert _report(out)["counts"]["converted"] == 1


def test_resuming_with_other_options_is_refused(tmp_path, clip):
    videos = _videos(tmp_path, clip, "a.mp4")
    out = tmp_path / "out"
    main(["--videos", str(videos), "--out", str(out), "--size", "32", "24"])
    with pytest.raises(GlassError, match="size"):
        main(["--videos", str(videos), "--out", str(out), "--size", "16", "16"])
    main(["--videos", str(videos), "--out", str(out), "--size", "16", "16", "--overwrite"])
    assert Image.open(out / "a" / "00000.png").size == (16, 16)


def test_corrupt_file_stops_with_an_error_and_skip_bad_skips_it(tmp_path, clip, capsys):
    videos = _videos(tmp_path, clip, "a.mp4")
    (videos / "x.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    out = tmp_path / "out"
    with pytest.raises(ConvertError, match=r"x\.mp4") as caught:
        main(["--videos", str(videos), "--out", str(out)])
    assert "\n" not in str(caught.value)
    assert len(_frames(out / "a")) == N  # the finished video stays
    assert not (out / "x").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert _report(out)["state"] == "failed"

    capsys.readouterr()
    assert main(["--videos", str(videos), "--out", str(out), "--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert "x.mp4" in err and "warning" in err
    report = _report(out)
    assert report["counts"]["bad"] == 1 and report["counts"]["already_present"] == 1
    assert [Path(s["file"]).name for s in report["skipped"]] == ["x.mp4"]


def test_module_exits_2_with_one_line(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "x.mp4").write_bytes(np.random.default_rng(1).bytes(4096))
    pytest.importorskip("av", reason="PyAV is not installed; the corrupt-file message needs it")
    done = subprocess.run([sys.executable, "-m", "data.convert", "--videos", str(videos),
                           "--out", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "x.mp4" in lines[0]


def test_short_videos_are_skipped_with_a_warning(tmp_path, clip, capsys):
    videos = _videos(tmp_path, clip, "a.mp4")
    out = tmp_path / "out"
    assert main(["--videos", str(videos), "--out", str(out), "--min-frames", "11", "--fps", "5"]) == 0
    assert not (out / "a").exists()
    assert "a.mp4" in capsys.readouterr().err
    report = _report(out)
    assert report["counts"]["too_short"] == 1
    assert report["skipped"][0]["reason"] == "too_short"


def test_empty_or_missing_input_folder(tmp_path, av):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "notes.txt").write_text("not a video")
    with pytest.raises(ConvertError, match=r"no video files.*\.mp4.*\.webm"):
        main(["--videos", str(videos), "--out", str(tmp_path / "out")])
    with pytest.raises(ConvertError, match="no such folder"):
        main(["--videos", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("bad, match", [
    (["--size", "0", "32"], "--size"),
    (["--size", "32", "x"], "--size"),
    (["--fps", "0"], "--fps"),
    (["--fps", "-2"], "--fps"),
    (["--fps", "ten"], "--fps"),
    (["--min-frames", "0"], "--min-frames"),
    (["--workers", "0"], "--workers"),
    (["--split-fractions", "1", "-1", "0"], "--split-fractions"),
])
def test_bad_values_are_one_line_errors(tmp_path, bad, match):
    with pytest.raises(ConvertError, match=match) as caught:
        main(["--videos", str(tmp_path), "--out", str(tmp_path / "out")] + bad)
    assert "\n" not in str(caught.value)


def test_names_are_made_safe_and_collisions_are_errors(tmp_path, clip):
    assert safe_name("walk 01 (take 2)") == "walk_01__take_2_"
    assert safe_name("sprite_3_video_1") == "sprite_3_video_1"
    assert safe_name("..hidden") == "_.hidden"
    assert safe_name("café") == "caf_"
    videos = _videos(tmp_path, clip, "a b.mp4", "a_b.mkv")
    with pytest.raises(ConvertError, match=r"a b\.mp4.*a_b\.mkv|a_b\.mkv.*a b\.mp4"):
        main(["--videos", str(videos), "--out", str(tmp_path / "out")])


def test_workers_give_the_same_frames(tmp_path, clip):
    videos = _videos(tmp_path, clip, "a.mp4", "b.mp4", "c.mp4")
    main(["--videos", str(videos), "--out", str(tmp_path / "one"), "--fps", "5", "--size", "16", "12"])
    main(["--videos", str(videos), "--out", str(tmp_path / "two"), "--fps", "5", "--size", "16", "12",
          "--workers", "2"])
    for name in "abc":
        one, two = _frames(tmp_path / "one" / name), _frames(tmp_path / "two" / name)
        assert len(one) == 10 and [p.read_bytes() for p in one] == [p.read_bytes() for p in two]
    # a bad file stops the pool with the same one-line error
    (videos / "b.mp4").write_bytes(b"not a video at all")
    with pytest.raises(ConvertError, match=r"b\.mp4"):
        main(["--videos", str(videos), "--out", str(tmp_path / "three"), "--workers", "2"])
    assert not [p for p in (tmp_path / "three").iterdir() if p.name.startswith(".tmp-")]


def test_an_interrupted_video_leaves_no_folder(tmp_path, clip, monkeypatch):
    import data.convert as convert

    videos = _videos(tmp_path, clip, "a.mp4")
    out = tmp_path / "out"
    real, calls = convert.to_image, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(convert, "to_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["--videos", str(videos), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["convert.json"]
    monkeypatch.setattr(convert, "to_image", real)
    main(["--videos", str(videos), "--out", str(out)])
    assert len(_frames(out / "a")) == N


def test_missing_pyav_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` fail
    with pytest.raises(ConvertError, match=r'pip install -e "\.\[video\]"'):
        main(["--videos", str(tmp_path), "--out", str(tmp_path / "out")])
