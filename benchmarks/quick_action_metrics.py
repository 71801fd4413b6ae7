"""Quick learning check of a training run: soft mask IoU and shift direction match (SPEC §5.1 subset).

    python benchmarks/quick_action_metrics.py --run-name wsprites-tiny            # latest checkpoint, val split
    python benchmarks/quick_action_metrics.py --run-name wsprites-tiny --step 350 --split test

A stop-gap until `evaluate.py` (the evaluation issue) exists: it runs the GMA in eval mode
on every non-overlapping window of T frames of the split and prints
- the soft IoU of the predicted masks against the ground-truth masks, next to the IoU of
  an all-foreground mask (what a mask that learned nothing scores);
- the share of moving sprite steps whose predicted foreground shift points within 45° of
  the true one, and the same for the background (chance: about 25%);
- the mean L2 error of the foreground shift in pixels.
"""
import argparse
import os
import sys

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.video_dataset import VideoDataset, collate_videos  # noqa: E402
from model.glass import build_model  # noqa: E402
from utils.checkpoint import load_checkpoint, read_run_config, resume_checkpoint_path  # noqa: E402
from utils.metrics import direction_matches, shift_errors, shifts_to_pixels  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-name", required=True)
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--split", default="val", choices=["train", "val", "test"])
    parser.add_argument("--observations", type=int, default=6, help="frames per evaluated window")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)

    run_folder = os.path.join(arguments.runs_dir, arguments.run_name)
    config = read_run_config(run_folder, [])
    path = resume_checkpoint_path(run_folder, arguments.step)
    checkpoint = load_checkpoint(path)
    model = build_model(config)
    model.load_state_dict(checkpoint["model"])
    model.eval()

    dataset = VideoDataset(config.data, arguments.split, sampling="all", observations_count=arguments.observations)
    loader = DataLoader(dataset, batch_size=8, collate_fn=collate_videos)
    intersection = union = union_all_foreground = intersection_all_foreground = 0.0
    sprite_matches, background_matches, sprite_errors = [], [], []
    with torch.no_grad():
        for batch in loader:
            output = model.gma(batch["observations"])
            predicted, true = output.masks, batch["masks"]
            intersection += (predicted * true).sum().item()
            union += (1 - (1 - predicted) * (1 - true)).sum().item()
            intersection_all_foreground += true.sum().item()
            union_all_foreground += true.numel()
            sprite = shifts_to_pixels(output.foreground_shifts, config.data.input_size)
            background = shifts_to_pixels(output.background_shifts, config.data.input_size)
            sprite_matches.append(direction_matches(sprite, batch["global_shifts"][:, 1:]))
            background_matches.append(direction_matches(background, batch["background_shifts"][:, 1:]))
            sprite_errors.append(shift_errors(sprite, batch["global_shifts"][:, 1:]))
    sprite_matches, background_matches = torch.cat(sprite_matches), torch.cat(background_matches)
    print(f"run {arguments.run_name}, checkpoint step {checkpoint['step']}, split {arguments.split}: "
          f"{len(dataset)} windows of {arguments.observations} frames")
    print(f"mask soft IoU                {intersection / union:.3f}   (all-foreground mask: "
          f"{intersection_all_foreground / union_all_foreground:.3f})")
    print(f"sprite direction match       {sprite_matches.float().mean().item():.3f}   "
          f"({len(sprite_matches)} moving steps; chance about 0.25)")
    print(f"background direction match   {background_matches.float().mean().item():.3f}   "
          f"({len(background_matches)} moving steps)")
    print(f"sprite shift error           {torch.cat(sprite_errors).mean().item():.2f} px (mean L2)")


if __name__ == "__main__":
    main()
