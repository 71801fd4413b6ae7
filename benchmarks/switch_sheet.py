"""Picture of what a trained run's codes draw where the true local action changes (its switch transitions).

    python benchmarks/switch_sheet.py --run-name c2-local --refit-reader-norm 50 --out switches.png
    python benchmarks/switch_sheet.py --run-name c2w-cmd-s1 --runs-dir runs-experiments --step 2000 \\
        --refit-reader-norm 50 --rows 5 --out docs/images/c2w-cmd-s1-switches-step-2000.png

One row per switch transition t → t+1 of the evaluation split (the first --rows of them, in the order of
`evaluate.py`'s windows), cropped around the character: the GMA's fₜ, the real fₜ₊₁, the next frame drawn from
the real fₜ with the code the action network inferred, then with every codebook row — one step, as
`evaluate.py`'s code effect draws them, so the columns are what its "best code per transition" chooses among.
The row label says what the switch is (W-Sprites' animation names) and which code was inferred. Needs labelled
data (W-Sprites) and a model without `model.lma.glimpse`.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from data.video_dataset import collate_videos  # noqa: E402
from model.generation import video_code_drawings  # noqa: E402
from model.glass import refit_action_reader_statistics  # noqa: E402
from utils.cli import run_main  # noqa: E402
from utils.errors import GlassError  # noqa: E402
from utils.evaluation.action_metrics import (  # noqa: E402
    confusion_row_labels,
    evaluation_dataset,
    load_run_for_evaluation,
    reader_refit_batches,
)
from utils.media import image_grid, save_png, to_uint8_images  # noqa: E402
from utils.metrics import switch_transitions  # noqa: E402

CELL = (112, 80)  # (H, W) of a cell: every crop is resized to it (about twice W-Sprites' 50 × 25 px character)
MARGIN = 4  # pixels around the union of the two masks


def character_box(masks: torch.Tensor, height: int, width: int) -> tuple:
    """(top, bottom, left, right) of the pixels where either mask (2, 1, H, W) is above 0.3, with MARGIN around
    and the cell's aspect ratio, inside the frame; the whole frame when no pixel is."""
    where = (masks.amax(dim=(0, 1)) > 0.3).nonzero()
    if where.numel() == 0:
        return 0, height, 0, width
    top, left = (int(value) for value in where.min(dim=0).values)
    bottom, right = (int(value) + 1 for value in where.max(dim=0).values)
    box_height = min(height, max(bottom - top, (right - left) * CELL[0] // CELL[1]) + 2 * MARGIN)
    box_width = min(width, max(right - left + 2 * MARGIN, box_height * CELL[1] // CELL[0]))
    centre_y, centre_x = (top + bottom) // 2, (left + right) // 2
    top = min(max(centre_y - box_height // 2, 0), height - box_height)
    left = min(max(centre_x - box_width // 2, 0), width - box_width)
    return top, top + box_height, left, left + box_width


def switch_rows(model: torch.nn.Module, batch: dict, limit: int) -> List[tuple]:
    """Up to `limit` (label text, images (2 + 1 + K, 3, H, W)) for the switch transitions of one labelled batch."""
    if model.glimpse is not None:
        raise GlassError("benchmarks/switch_sheet.py: a model with model.lma.glimpse is not supported")
    gma, motion, drawings = video_code_drawings(model, batch["observations"])
    foregrounds, masks = gma.foregrounds, gma.masks
    labels = batch["local_actions"]
    names = confusion_row_labels(int(labels.max()) + 1)
    switches = switch_transitions(labels) & batch["has_actions"][:, None]
    rows = []
    for window, step in switches.nonzero().tolist()[:limit]:
        images = torch.stack([foregrounds[window, step], foregrounds[window, step + 1]]
                             + [drawing[window, step] for drawing in drawings])
        top, bottom, left, right = character_box(masks[window, step:step + 2], *images.shape[-2:])
        crops = F.interpolate(images[:, :, top:bottom, left:right].float(), size=CELL, mode="nearest")
        label = (f"{names[int(labels[window, step])]} -> {names[int(labels[window, step + 1])]}: "
                 f"code {int(motion.actions.ids[window, step])}")
        rows.append((label, crops))
    return rows


def parse_arguments(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/switch_sheet.py", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-name", required=True, help="the run folder's name: RUNS_DIR/RUN_NAME")
    parser.add_argument("--runs-dir", default="runs", help="folder holding the run folders (default: runs)")
    parser.add_argument("--step", type=int, metavar="N", help="use checkpoints/step_N.pth (default: latest.pth)")
    parser.add_argument("--refit-reader-norm", type=int, default=0, metavar="N",
                        help="first refit the action readers' BatchNorm statistics from N training batches, as "
                             "evaluate.py --refit-reader-norm (default 0: the checkpoint's)")
    parser.add_argument("--rows", type=int, default=8, help="switch transitions to draw (default 8)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of PyTorch (default: its choice)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides (data, evaluation)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.rows < 1:
        raise GlassError(f"--rows: must be >= 1, got {arguments.rows}")
    if arguments.refit_reader_norm < 0:
        raise GlassError(f"--refit-reader-norm: must be >= 0 batches, got {arguments.refit_reader_norm}")
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    device = torch.device("cpu")
    run_folder = os.path.join(arguments.runs_dir, arguments.run_name)
    trained, _ = load_run_for_evaluation(run_folder, arguments.step, device, arguments.overrides)
    if arguments.refit_reader_norm:
        refit_action_reader_statistics(trained.model, reader_refit_batches(trained.config, arguments.refit_reader_norm,
                                                                           device))
    dataset = evaluation_dataset(trained.config)
    rows: List[tuple] = []
    for batch in DataLoader(dataset, batch_size=trained.config.evaluation.batch_size, collate_fn=collate_videos):
        rows += switch_rows(trained.model, batch, arguments.rows - len(rows))
        if len(rows) >= arguments.rows:
            break
    if not rows:
        raise GlassError(f"{trained.config.data.root}: no labelled switch transition in the "
                         f"'{trained.config.evaluation.split}' split (the local action never changes)")
    codes = rows[0][1].shape[0] - 3
    cells = np.stack([to_uint8_images(crops) for _, crops in rows])
    picture = image_grid(cells, row_labels=[label for label, _ in rows],
                         column_labels=["f_t", "real f_t+1", "inferred"] + [f"code {code}" for code in range(codes)])
    save_png(picture, arguments.out)  # atomic, its folder created
    print(f"wrote {arguments.out}: {len(rows)} switch transition(s) of {trained.path} (step {trained.step})")
    return 0


if __name__ == "__main__":
    run_main(main)
