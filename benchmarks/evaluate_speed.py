"""Seconds per evaluated sequence of evaluate.py's model work (SPEC §5.1), for the models of given configs.

    python benchmarks/evaluate_speed.py                                  # wsprites-tiny and wsprites, CPU, 2 threads
    python benchmarks/evaluate_speed.py --configs configs/wsprites.yaml --device cuda --batch-size 16

Per batch of windows of `evaluation.observations_count` frames: the reconstruction (protocol
one_step, T_f = T−1), the analysis of the reconstruction (RE), masks, shifts and ids
(`utils.evaluation.action_metrics.window_records`). The model has random weights (the same compute as a
trained one); data loading and the final reduction (milliseconds) are not timed.
"""
import argparse
import os
import statistics
import sys
import time

import torch

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPOSITORY)
from model.glass import build_model  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.evaluation.action_metrics import window_records  # noqa: E402


def fake_batch(batch_size: int, frames: int, width: int, height: int) -> dict:
    """A batch with the keys of `data.video_dataset.collate_videos` (random frames, masks and labels)."""
    generator = torch.Generator().manual_seed(0)
    return {"observations": torch.rand(batch_size, frames, 3, height, width, generator=generator),
            "masks": torch.rand(batch_size, frames, 1, height, width, generator=generator),
            "local_actions": torch.randint(0, 5, (batch_size, frames), generator=generator),
            "global_shifts": torch.randn(batch_size, frames, 2, generator=generator),
            "background_shifts": torch.randn(batch_size, frames, 2, generator=generator),
            "sprite_id": torch.arange(batch_size), "has_masks": torch.ones(batch_size, dtype=torch.bool),
            "has_actions": torch.ones(batch_size, dtype=torch.bool),
            "video_name": [f"sprite_{index}_video_0" for index in range(batch_size)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=[os.path.join(REPOSITORY, "configs", "wsprites-tiny.yaml"),
                                                         os.path.join(REPOSITORY, "configs", "wsprites.yaml")])
    parser.add_argument("--batch-size", type=int, help="windows per batch (default: evaluation.batch_size)")
    parser.add_argument("--repeats", type=int, default=2, help="timed batches (after one untimed)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-threads", type=int, default=2)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.num_threads)
    device = torch.device(arguments.device)
    for path in arguments.configs:
        config = load_config(path)
        torch.manual_seed(0)
        model = build_model(config).to(device).eval()
        batch_size = arguments.batch_size or config.evaluation.batch_size
        width, height = config.data.input_size
        frames = config.evaluation.observations_count
        batch = fake_batch(batch_size, frames, width, height)
        times = []
        for repeat in range(arguments.repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            window_records(model, batch, "one_step", config.data.input_size, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if repeat:
                times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        print(f"{os.path.basename(path)}: {batch_size} windows of {frames} frames {width}×{height}, {device.type}, "
              f"{arguments.num_threads} threads: {seconds:.2f} s per batch, {seconds / batch_size:.3f} s per sequence "
              f"(median of {arguments.repeats})", flush=True)


if __name__ == "__main__":
    main()
