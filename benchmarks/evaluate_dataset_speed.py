"""Seconds per evaluated sequence of each metric of evaluate_dataset.py, on fake W-Sprites-sized data.

    python benchmarks/evaluate_dataset_speed.py                       # 16 sequences, 128×96, 12 frames, CPU, 2 threads
    python benchmarks/evaluate_dataset_speed.py --device cuda --sequences 32

Feature networks have random weights (the same compute as the pretrained ones). The time of
each metric covers its feature extraction per batch, not the final statistics (the FID matrix
root is printed separately as "results").
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluate_dataset  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "wsprites.yaml")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-threads", type=int, default=2)
    arguments = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        root, generated = os.path.join(folder, "data"), os.path.join(folder, "generated")
        videos = []
        for index in range(arguments.sequences):
            frames = rng.integers(0, 256, (arguments.frames, arguments.height, arguments.width, 3), dtype=np.uint8)
            for where in (os.path.join(root, "test", f"video_{index:03d}"), os.path.join(generated, f"{index:05d}")):
                os.makedirs(where)
                for number, frame in enumerate(frames):
                    Image.fromarray(frame).save(os.path.join(where, f"{number:05d}.png"))
                frames = np.roll(frames, 3, axis=2)  # the generated copy is shifted by 3 pixels
            videos.append({"name": f"{index:05d}", "source_video": f"video_{index:03d}", "start_frame": 0})
        with open(os.path.join(generated, "manifest.json"), "w") as handle:
            json.dump({"format": 1, "run_folder": "bench", "step": 0, "checkpoint": "", "protocol": "one_step",
                       "split": "test", "observations_count": arguments.frames, "skip_frames": 1, "data_root": root,
                       "comparable": False, "videos": videos}, handle)
        start = time.perf_counter()
        evaluate_dataset.main(["--config", CONFIG, "--generated", generated, "--random-feature-weights", "--device",
                               arguments.device, "--num-threads", str(arguments.num_threads), "--no-progress",
                               f"data.root={root}", "data.crop=null",
                               f"data.input_size=[{arguments.width}, {arguments.height}]",
                               f"evaluation.observations_count={arguments.frames}"])
        total = time.perf_counter() - start
        with open(os.path.join(generated, "metrics.json")) as handle:
            seconds = json.load(handle)["seconds_per_sequence"]
    print(f"\n{arguments.sequences} sequences of {arguments.frames} frames {arguments.width}×{arguments.height}, "
          f"{arguments.device}, {arguments.num_threads} threads; seconds per sequence:")
    for name, value in seconds.items():
        print(f"  {name:<22} {value:.3f}")
    print(f"  {'all metrics':<22} {sum(seconds.values()):.3f}")
    print(f"  wall time of the whole run (building networks, loading, final statistics): {total:.1f} s")


if __name__ == "__main__":
    main()
