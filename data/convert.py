"""Convert a folder of plain video files into the on-disk video format (SPEC §1.1).

Every video file `NAME.ext` in `--videos` (mp4, webm, avi, mov, mkv, ... anything
PyAV decodes) becomes a folder `OUT/NAME/` of RGB frames `00000.png`, `00001.png`, ...
Needs PyAV: `pip install -e ".[video]"`.

Examples:

    # every frame, native size, flat style (all videos directly in data/myvideos)
    python -m data.convert --videos ~/raw_videos --out data/myvideos

    # 128x96 frames at 10 frames per second, resized to cover 128x96 then centre-cropped
    python -m data.convert --videos ~/raw_videos --out data/myvideos --size 128 96 --fps 10

    # splitted style: OUT/train, OUT/val, OUT/test (80/10/10 %, seeded shuffle), 4 processes
    python -m data.convert --videos ~/raw_videos --out data/myvideos --size 128 96 \\
        --fps 10 --split-fractions 0.8 0.1 0.1 --seed 0 --workers 4

Re-running the same command resumes: videos whose folder already exists are skipped
and half-written temporaries of an interrupted run are removed. Each video is written
into a `.tmp-NAME-…` folder beside its destination and renamed into place only when
complete, so no half video ever appears under its final name. `OUT/convert.json`
records the options, the counts and the skipped files.

Resampling (`--fps N`): frame times are the presentation timestamps relative to the
first decoded frame (a frame without a usable timestamp, or one not later than the
previous frame, is placed 1/average-rate after the previous frame). Output frame k is
the decoded frame whose time is nearest to k/N seconds (ties go to the earlier frame),
for every k with k/N not after the last decoded frame. Frames may repeat when N is
above the source rate.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from utils.cli import run_main
from utils.config import SPLITS
from utils.errors import GlassError
from utils.files import TEMPORARY_PREFIX, write_folder_atomically, write_json_atomically

# Container extensions looked for in --videos (matched case-insensitively).
VIDEO_EXTENSIONS = (
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".flv", ".mpg", ".mpeg",
    ".m2v", ".ts", ".mts", ".m2ts", ".ogv", ".ogg", ".3gp", ".3g2", ".mxf", ".gif",
)
REPORT_NAME = "convert.json"
MAX_FRAMES = 100000  # five-digit frame names: 00000 ... 99999
# Options that change what is written; a resumed run must use the same ones.
_CONTENT_OPTIONS = ("size", "crop", "fps", "split_fractions", "seed", "recursive")


class ConvertError(GlassError):
    """A bad option, input folder or video file given to `python -m data.convert`."""


class _BadVideo(Exception):
    """A video file that cannot be decoded (internal; becomes a ConvertError or a skip)."""


@dataclass(frozen=True)
class FrameOptions:
    """What `convert_video` needs to write one video (picklable for the worker pool)."""

    size: Optional[Tuple[int, int]] = None  # (W, H); None keeps the source size
    crop: bool = True  # cover then centre-crop; False stretches
    fps: Optional[Fraction] = None  # None keeps every frame
    min_frames: int = 2
    threaded_decode: bool = True


@dataclass
class Job:
    """One input file and where its frames go."""

    source: Path
    name: str
    dest: Path
    split: Optional[str] = None


@dataclass
class Result:
    """The outcome of one `convert_video` call."""

    job: Job
    status: str  # "converted", "too_short" or "bad"
    frames: int = 0
    message: str = ""


# ----------------------------------------------------------------------------- PyAV


def _import_av():
    try:
        import av  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise ConvertError(
            'PyAV is not installed; install the video extra with: pip install -e ".[video]"'
        ) from None
    return av


# ------------------------------------------------------------------- frames and times


def frame_times(frames: Iterable[Any], rate: Optional[Fraction]) -> Iterator[Tuple[Fraction, Any]]:
    """Pair each decoded frame with its time in seconds from the first frame.

    Uses `frame.pts * frame.time_base`; a frame without one, or whose time is not
    after the previous frame's, is placed `1 / rate` after the previous frame.
    """
    step = Fraction(1) / rate if rate else None
    start: Optional[Fraction] = None
    previous: Optional[Fraction] = None
    for frame in frames:
        time = None
        pts, time_base = getattr(frame, "pts", None), getattr(frame, "time_base", None)
        if pts is not None and time_base:
            time = Fraction(pts) * Fraction(time_base)
            if start is None:
                start = time
            time -= start
        if time is None or (previous is not None and time <= previous):
            if previous is None:
                time = Fraction(0)
            elif step is None:
                raise _BadVideo(
                    "its frames have no usable timestamps and the stream declares no frame rate, "
                    "so --fps cannot resample it"
                )
            else:
                time = previous + step
        yield time, frame
        previous = time


def resample(timed: Iterable[Tuple[Fraction, Any]], fps: Fraction) -> Iterator[Any]:
    """Yield, for k = 0, 1, ..., the item whose time is nearest to k / fps.

    Times must increase. Ties go to the earlier item; targets after the last item's
    time are not produced (the stream is never extrapolated).
    """
    period = Fraction(1) / Fraction(fps)
    k = 0
    previous: Optional[Tuple[Fraction, Any]] = None
    for time, item in timed:
        while k * period <= time:
            target = k * period
            if previous is not None and target - previous[0] <= time - target:
                yield previous[1]
            else:
                yield item
            k += 1
        previous = (time, item)


def cover_box(
    width: int, height: int, size: Tuple[int, int], pixel_aspect: Fraction = Fraction(1)
) -> Tuple[float, float, float, float]:
    """The centred source box (left, upper, right, lower) with the aspect ratio of `size`.

    `pixel_aspect` is the source's sample aspect ratio (display width of one pixel /
    its height); the box covers as much of the frame as possible.
    """
    target = Fraction(size[0], size[1])
    display = Fraction(width) * pixel_aspect / height
    if display > target:  # too wide: crop the sides
        box_width = float(height * target / pixel_aspect)
        left = (width - box_width) / 2
        return (left, 0.0, left + box_width, float(height))
    box_height = float(width * pixel_aspect / target)
    upper = (height - box_height) / 2
    return (0.0, upper, float(width), upper + box_height)


_ROTATIONS = {90: "ROTATE_90", 180: "ROTATE_180", 270: "ROTATE_270"}


def to_image(frame: Any, options: FrameOptions, pixel_aspect: Fraction):
    """The frame as an RGB PIL image, rotated upright and resized as `options` asks."""
    from PIL import Image

    image = frame.to_image()
    if image.mode != "RGB":
        image = image.convert("RGB")
    # The display matrix rotates the frame counter-clockwise by `rotation` degrees
    # (what the ffmpeg command line does with its autorotate default).
    rotation = int(round(getattr(frame, "rotation", 0) or 0)) % 360
    if rotation in _ROTATIONS:
        image = image.transpose(getattr(Image.Transpose, _ROTATIONS[rotation]))
        if rotation != 180:
            pixel_aspect = 1 / pixel_aspect
    bilinear = Image.Resampling.BILINEAR  # antialiased when shrinking (Pillow filters)
    if options.size is None:
        if pixel_aspect != 1:  # anamorphic source: square the pixels
            width = max(1, round(image.width * pixel_aspect))
            image = image.resize((width, image.height), bilinear)
        return image
    if options.crop:
        box = cover_box(image.width, image.height, options.size, pixel_aspect)
        return image.resize(options.size, bilinear, box=box)
    return image.resize(options.size, bilinear)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _decoded(av, container, stream, counter: List[int]) -> Iterator[Any]:
    """The stream's frames; decoding errors become `_BadVideo`."""
    frames = container.decode(stream)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except (av.FFmpegError, OSError, EOFError) as error:
            raise _BadVideo(f"decoding failed after {counter[0]} frames ({_one_line(error)})") from None
        counter[0] += 1
        yield frame


def _positive_rate(*rates: Any) -> Optional[Fraction]:
    for rate in rates:
        if rate:
            rate = Fraction(rate)
            if rate > 0:
                return rate
    return None


def decode_to_folder(source: Path, folder: Path, options: FrameOptions) -> int:
    """Write the frames of `source` into `folder` as 00000.png, ...; return their count."""
    av = _import_av()
    try:
        container = av.open(str(source))
    except (av.FFmpegError, OSError, EOFError, UnicodeDecodeError) as error:
        raise _BadVideo(f"cannot open it ({_one_line(error)})") from None
    with container:
        if not container.streams.video:
            raise _BadVideo("it has no video stream")
        stream = container.streams.video[0]
        if options.threaded_decode:
            stream.thread_type = "AUTO"
        pixel_aspect = Fraction(1)
        for candidate in (getattr(stream, "sample_aspect_ratio", None),
                          getattr(stream.codec_context, "sample_aspect_ratio", None)):
            if candidate and Fraction(candidate) > 0:
                pixel_aspect = Fraction(candidate)
                break
        decoded = [0]
        frames: Iterator[Any] = _decoded(av, container, stream, decoded)
        if options.fps is not None:
            rates = (getattr(stream, key, None) for key in ("average_rate", "guessed_rate", "base_rate"))
            frames = resample(frame_times(frames, _positive_rate(*rates)), options.fps)
        count = 0
        last_frame, last_path = None, None
        for frame in frames:
            if count >= MAX_FRAMES:
                raise _BadVideo(f"it has more than {MAX_FRAMES} frames (five-digit names); use a lower --fps")
            path = folder / f"{count:05d}.png"
            if frame is last_frame:  # a repeated frame (--fps above the source rate)
                shutil.copyfile(last_path, path)
            else:
                try:
                    image = to_image(frame, options, pixel_aspect)
                except (av.FFmpegError, ValueError) as error:
                    raise _BadVideo(f"cannot convert frame {count} to RGB ({_one_line(error)})") from None
                image.save(path)
                last_frame, last_path = frame, path
            count += 1
        if decoded[0] == 0:
            raise _BadVideo("no frame could be decoded")
    return count


class _TooShort(Exception):
    """A video with fewer frames than --min-frames after resampling (internal; becomes a skip)."""

    def __init__(self, count: int):
        super().__init__(count)
        self.count = count


def convert_video(job: Job, options: FrameOptions) -> Result:
    """Convert one video into `job.dest` through a temporary folder beside it (`write_folder_atomically`:
    a bad or too short video leaves nothing)."""
    def write(folder: str) -> int:
        count = decode_to_folder(job.source, Path(folder), options)
        if count < options.min_frames:
            raise _TooShort(count)
        return count

    try:
        count = write_folder_atomically(str(job.dest), write)
    except _BadVideo as error:
        return Result(job, "bad", message=str(error))
    except _TooShort as short:
        return Result(job, "too_short", frames=short.count,
                      message=f"only {short.count} frame(s) after resampling (--min-frames {options.min_frames})")
    return Result(job, "converted", frames=count)


# --------------------------------------------------------------------- finding videos


def safe_name(stem: str) -> str:
    """A folder name made of ASCII letters, digits, '-', '_' and '.' (not starting with '.')."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", stem)
    if name.startswith("."):
        name = "_" + name[1:]
    return name or "_"


def find_videos(
    folder: Path, recursive: bool = False, exclude: Optional[Path] = None
) -> List[Tuple[Path, str]]:
    """(path, output name) of the video files in `folder`, sorted by relative path.

    Hidden files and folders (names starting with '.') are ignored, and so is
    `exclude` (the output folder, when it lies inside `folder`).
    """
    found = []
    excluded = exclude.resolve() if exclude is not None else None
    if recursive:
        for root, dirs, files in os.walk(folder):
            root_path = Path(root)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                             and (root_path / d).resolve() != excluded)
            for file in files:
                found.append(root_path / file)
    else:
        found = [path for path in folder.iterdir() if path.is_file()]
    videos = []
    for path in found:
        if path.name.startswith(".") or path.suffix.lower() not in VIDEO_EXTENSIONS:
            continue
        relative = path.relative_to(folder).with_suffix("")
        videos.append((path, safe_name("__".join(relative.parts))))
    return sorted(videos, key=lambda item: item[0].relative_to(folder).as_posix())


def plan_jobs(
    videos: List[Tuple[Path, str]], out: Path, fractions: Optional[Sequence[float]], seed: int
) -> List[Job]:
    """Give every video its destination; names must not collide (case-insensitively)."""
    reserved = {REPORT_NAME.casefold()}
    if fractions is None:
        reserved |= set(SPLITS)  # would make a flat dataset look splitted
    seen: Dict[str, Path] = {}
    for path, name in videos:
        key = name.casefold()
        if key in reserved:
            raise ConvertError(f"{path} would become the folder '{name}', a name reserved in the output; "
                               "rename the file")
        if key in seen:
            raise ConvertError(f"{seen[key]} and {path} would both become the folder '{name}'; "
                               "rename one of them")
        seen[key] = path
    if fractions is None:
        return [Job(path, name, out / name) for path, name in videos]
    names = sorted(name for _, name in videos)
    random.Random(seed).shuffle(names)
    total = sum(fractions)
    first = round(len(names) * fractions[0] / total)
    second = round(len(names) * (fractions[0] + fractions[1]) / total)
    split_of = {name: SPLITS[0] if i < first else SPLITS[1] if i < second else SPLITS[2]
                for i, name in enumerate(names)}
    return [Job(path, name, out / split_of[name] / name, split_of[name]) for path, name in videos]


def remove_stale(out: Path) -> int:
    """Delete the `.tmp-*` leftovers of interrupted runs in `out` and its split folders."""
    removed = 0
    for folder in [out] + [out / split for split in SPLITS]:
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name.startswith(TEMPORARY_PREFIX):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
                removed += 1
    return removed


# -------------------------------------------------------------------------- reporting


def _check_previous_run(report: Path, options: Dict[str, Any], overwrite: bool) -> None:
    if not report.exists() or overwrite:
        return
    try:
        previous = json.loads(report.read_text(encoding="utf-8"))["options"]
    except (ValueError, KeyError, TypeError) as error:
        raise ConvertError(f"{report} is not a report written by data.convert ({_one_line(error)}); "
                           "delete it or use another --out") from None
    differ = [f"{key} {previous.get(key)!r} -> {options[key]!r}" for key in _CONTENT_OPTIONS
              if previous.get(key) != options[key]]
    if differ:
        raise ConvertError(f"{report.parent} was converted with other options ({'; '.join(differ)}); "
                           "use the same options to resume, --overwrite to redo, or another --out")


def _count_frames(folder: Path) -> int:
    return sum(1 for entry in os.scandir(folder) if entry.name[:5].isdigit() and entry.is_file())


# ------------------------------------------------------------------------------ CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one-line errors through run_main (exit status 2)
        raise ConvertError(f"{_one_line(message)} (see python -m data.convert --help)")


def _fraction(text: str) -> Fraction:
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m data.convert",
        description="Convert a folder of video files (anything PyAV decodes: "
        + ", ".join(ext[1:] for ext in VIDEO_EXTENSIONS)
        + ") into folders of PNG frames in the format of SPEC §1.1.",
        epilog="Examples:" + (__doc__ or "Examples:").split("Examples:", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--videos", required=True, type=Path, metavar="DIR",
                        help="folder holding the video files (non-recursive unless --recursive; "
                             "hidden files are ignored)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="dataset root to write: OUT/NAME/00000.png, ... (created if missing); "
                             "NAME is the file name without extension, with characters other than "
                             "letters, digits, '-', '_' and '.' replaced by '_'")
    parser.add_argument("--size", nargs=2, type=int, metavar=("W", "H"),
                        help="output frame width and height in pixels; the frame is resized "
                             "(bilinear, antialiased when shrinking) so that it covers W x H with "
                             "its aspect ratio kept, then centre-cropped to W x H (see --no-crop). "
                             "Default: keep the source size")
    parser.add_argument("--no-crop", action="store_true",
                        help="with --size, stretch the whole frame to W x H instead of cover + centre-crop")
    parser.add_argument("--fps", type=_fraction, metavar="N",
                        help="resample to N frames per second (e.g. 10, 12.5 or 30000/1001) by "
                             "timestamps: output frame k is the decoded frame nearest in time to k/N s "
                             "after the first frame, up to the last frame. Default: keep every frame")
    parser.add_argument("--min-frames", type=int, default=2, metavar="K",
                        help="skip, with a warning, videos with fewer than K frames after resampling "
                             "(default: %(default)s)")
    parser.add_argument("--split-fractions", nargs=3, type=float, metavar=("TRAIN", "VAL", "TEST"),
                        help="write the splitted style OUT/train|val|test/NAME/ with a seeded shuffle of "
                             "the videos in these proportions (normalised by their sum, e.g. 0.8 0.1 0.1). "
                             "Default: the flat style, every video directly in OUT")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the split shuffle (default: %(default)s)")
    parser.add_argument("--recursive", action="store_true",
                        help="also look in subfolders; NAME joins the relative path's parts with '__'")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="convert N videos at a time in separate processes (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="re-convert videos whose folder already exists (default: skip them, "
                             "which resumes an interrupted run)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip files that cannot be decoded, with a warning, instead of stopping "
                             "with an error (videos already finished stay in place either way)")
    return parser


def _options_record(args: argparse.Namespace) -> Dict[str, Any]:
    return {
        "size": list(args.size) if args.size else None,
        "crop": not args.no_crop,
        "fps": str(args.fps) if args.fps is not None else None,
        "min_frames": args.min_frames,
        "split_fractions": list(args.split_fractions) if args.split_fractions else None,
        "seed": args.seed if args.split_fractions else None,
        "recursive": args.recursive,
        "workers": args.workers,
        "overwrite": args.overwrite,
        "skip_bad": args.skip_bad,
    }


def _validate(args: argparse.Namespace) -> None:
    if args.size is not None and min(args.size) <= 0:
        raise ConvertError(f"--size must be two positive integers W H, got {args.size[0]} {args.size[1]}")
    if args.fps is not None and args.fps <= 0:
        raise ConvertError(f"--fps must be positive, got {args.fps}")
    if args.min_frames < 1:
        raise ConvertError(f"--min-frames must be at least 1, got {args.min_frames}")
    if args.workers < 1:
        raise ConvertError(f"--workers must be at least 1, got {args.workers}")
    if args.split_fractions is not None:
        if min(args.split_fractions) < 0 or sum(args.split_fractions) <= 0:
            raise ConvertError("--split-fractions must be three non-negative numbers with a positive sum, got "
                               + " ".join(f"{x:g}" for x in args.split_fractions))
    if not args.videos.is_dir():
        raise ConvertError(f"--videos {args.videos}: no such folder")
    if args.out.exists() and not args.out.is_dir():
        raise ConvertError(f"--out {args.out} exists and is not a folder")


def _warn(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


def _results(jobs: List[Job], options: FrameOptions, workers: int) -> Iterator[Result]:
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            yield convert_video(job, options)
        return
    import multiprocessing

    # Spawned, not forked: a fork copies this process's threads' locks (PyAV's decoder threads, tqdm's monitor, the
    # OpenMP pool of a caller that imported torch) held, and a worker that needs one waits forever (a test run hung so).
    with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:  # leaving terminates it
        yield from pool.imap_unordered(partial(convert_video, options=options), jobs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _validate(args)
    _import_av()
    from tqdm import tqdm

    videos = find_videos(args.videos, args.recursive, exclude=args.out)
    if not videos:
        raise ConvertError(f"--videos {args.videos}: no video files found"
                           f"{' (searched recursively)' if args.recursive else ''}; extensions tried: "
                           + " ".join(VIDEO_EXTENSIONS))
    jobs = plan_jobs(videos, args.out, args.split_fractions, args.seed)
    options = FrameOptions(size=tuple(args.size) if args.size else None, crop=not args.no_crop,
                           fps=args.fps, min_frames=args.min_frames, threaded_decode=args.workers == 1)
    record = _options_record(args)
    report_path = args.out / REPORT_NAME
    _check_previous_run(report_path, record, args.overwrite)

    pending, present = [], []
    for job in jobs:
        if job.split is not None:  # the same video in another split: the input set changed
            for other in SPLITS:
                elsewhere = args.out / other / job.name
                if other != job.split and elsewhere.exists():
                    if not args.overwrite:
                        raise ConvertError(f"{elsewhere} exists but this run puts {job.source} in "
                                           f"'{job.split}' (the set of videos changed?); use --overwrite "
                                           "or another --out")
                    shutil.rmtree(elsewhere)
        (pending if args.overwrite or not job.dest.exists() else present).append(job)

    args.out.mkdir(parents=True, exist_ok=True)
    removed = remove_stale(args.out)
    if removed:
        print(f"removed {removed} stale temporary item(s) of an interrupted run in {args.out}")
    report: Dict[str, Any] = {
        "format": "SPEC 1.1 video folders of PNG frames",
        "state": "running",
        "videos_dir": str(args.videos),
        "options": record,
        "counts": None,
        "skipped": [],
        "videos": [],
    }
    write_json_atomically(report_path, report)

    done: Dict[str, Tuple[Job, int]] = {job.name: (job, _count_frames(job.dest)) for job in present}
    skipped: List[Result] = []
    failure: Optional[Result] = None
    results = _results(pending, options, args.workers)
    with tqdm(total=len(pending), unit="video", desc="convert", disable=None, file=sys.stderr) as bar:
        for result in results:
            bar.update(1)
            if result.status == "converted":
                done[result.job.name] = (result.job, result.frames)
            elif result.status == "too_short":
                skipped.append(result)
                _warn(f"skipped {result.job.source}: {result.message}")
            elif args.skip_bad:
                skipped.append(result)
                _warn(f"skipped {result.job.source}: cannot decode it: {result.message}")
            else:
                failure = result
                break
    results.close()  # stops the worker pool, if any
    if failure is not None:
        remove_stale(args.out)  # temporaries of the other workers, stopped mid-video

    counts = {
        "found": len(jobs),
        "converted": len(done) - len(present),
        "already_present": len(present),
        "too_short": sum(1 for r in skipped if r.status == "too_short"),
        "bad": sum(1 for r in skipped if r.status == "bad"),
    }
    report.update(
        state="failed" if failure is not None else "complete",
        counts=counts,
        skipped=[{"file": str(r.job.source), "reason": r.status, "message": r.message} for r in skipped],
        videos=[{"name": name, "split": job.split, "source": str(job.source), "frames": frames}
                for name, (job, frames) in sorted(done.items())],
    )
    if failure is not None:
        report["failed"] = {"file": str(failure.job.source), "message": failure.message}
    write_json_atomically(report_path, report)
    if failure is not None:
        raise ConvertError(f"cannot decode {failure.job.source}: {failure.message} "
                           f"({counts['converted']} video(s) finished before it are kept; "
                           "--skip-bad skips such files)")

    frames = sum(frames for _, frames in done.values())
    print(f"{args.out}: {counts['converted']} video(s) converted, {counts['already_present']} already "
          f"present, {counts['too_short']} too short, {counts['bad']} undecodable skipped; "
          f"{len(done)} video(s), {frames} frames in all")
    return 0


if __name__ == "__main__":
    run_main(main)
