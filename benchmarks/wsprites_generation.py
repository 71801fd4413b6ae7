"""Benchmark: W-Sprites generation speed on this machine (frames per second, projected full-set time).

    python benchmarks/wsprites_generation.py --num-characters 64 --workers 2
    python benchmarks/wsprites_generation.py --full --workers 2     # the whole default set (1,166,400 frames)

Runs the real command (`python -m data.wsprites.generate`) in a subprocess into a
temporary folder, so start-up, drawing the sprites, PNG encoding and file writes are all
counted; prints frames/s, the projection to the full default dataset, and bytes per frame.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

FULL_FRAMES = 1296 * 10 * 90


def folder_bytes(root: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(root) for name in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-characters", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="generate the whole default dataset")
    parser.add_argument("--sprites-dir", default=None, help="LPC sheets instead of the built-in sprites")
    parser.add_argument("--keep", default=None, help="write here and keep the output (default: a temporary folder)")
    arguments = parser.parse_args()

    out_parent = arguments.keep or tempfile.mkdtemp(prefix="wsprites-bench-")
    out = os.path.join(out_parent, "set")
    command = [sys.executable, "-m", "data.wsprites.generate", "--out", out, "--workers", str(arguments.workers)]
    if not arguments.full:
        command += ["--num-characters", str(arguments.num_characters)]
    if arguments.sprites_dir:
        command += ["--sprites-dir", arguments.sprites_dir]
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    start = time.perf_counter()
    subprocess.run(command, cwd=repository, check=True)
    seconds = time.perf_counter() - start
    frames = FULL_FRAMES if arguments.full else arguments.num_characters * 10 * 90
    size = folder_bytes(out)
    print(f"cpus {os.cpu_count()}, workers {arguments.workers}, sprites {arguments.sprites_dir or 'built-in'}")
    print(f"{frames} frames in {seconds:.1f} s: {frames / seconds:.0f} frames/s")
    print(f"projected full default set ({FULL_FRAMES} frames): {FULL_FRAMES / (frames / seconds) / 60:.1f} min, "
          f"{size / frames * FULL_FRAMES / 2 ** 30:.1f} GiB ({size / frames / 1024:.1f} KiB per frame with its mask)")
    if not arguments.keep:
        shutil.rmtree(out_parent)


if __name__ == "__main__":
    main()
