"""What a trained run's codes say per kind of transition, and whether its action vectors tell a left from a right view.

    python benchmarks/code_probe.py --run-name c2w-shift300-s1 --runs-dir runs-experiments --step 1000 \\
        --threads 1 --out probe.json

Every video of the split (default: train) is read whole, in eval mode, as `evaluate.py` and the frozen readers read
it (`utils.evaluation.action_metrics.analyse_motion`): for each transition t → t+1 the code id and the action
network's vector z before quantisation. Two tables: the codes per kind of transition (the view the character
faces in fₜ and fₜ₊₁, and whether the animation goes on or another starts: W-Sprites' label names end in the view),
and, where the data has walk labels, the codes per label of fₜ₊₁ and the walk action that moved the sprite. Then
linear probes on z (logistic regression on standardised z, fitted on two thirds of the two groups' transitions,
the held-out third's accuracy; chance 0.5): a turn from the front to the left against one to the right, a left
against a right view that goes on, a turn from one side to the other against walking on. A probe near 1 with both
groups on one code says the quantiser, not the network, merges them. Needs W-Sprites labels and a model without
`model.lma.glimpse` (docs/local-actions.md, seventeenth and eighteenth rounds).
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from data.video_dataset import VideoDataset  # noqa: E402
from data.wsprites.walk import GLOBAL_ACTION_NAMES, LOCAL_ACTION_NAMES  # noqa: E402
from utils.cli import run_main  # noqa: E402
from utils.errors import GlassError  # noqa: E402
from utils.files import write_json_atomically  # noqa: E402

# (first group, second group) of every probe; a group is a `transition_kind` name.
PROBES: Tuple[Tuple[str, str], ...] = (("front -> left", "front -> right"),
                                       ("left, same animation", "right, same animation"),
                                       ("left -> right", "left, same animation"))
MIN_PROBE_ROWS = 10  # transitions each group needs for its probe


def transition_kind(before: str, after: str) -> str:
    """The kind of a transition from its frames' label names ('<animation>-<view>'): '<view>, same animation',
    '<view> -> <view>, another animation' or '<view> -> <other view>' (a turn)."""
    view_before, view_after = before.rsplit("-", 1)[-1], after.rsplit("-", 1)[-1]
    if before == after:
        return f"{view_after}, same animation"
    if view_before == view_after:
        return f"{view_after} -> {view_after}, another animation"
    return f"{view_before} -> {view_after}"


def linear_probe(first: torch.Tensor, second: torch.Tensor, seed: int = 0) -> float:
    """Held-out accuracy of a logistic regression telling rows of `first` (N₁, D) from rows of `second` (N₂, D):
    standardised with the fitted part's statistics, fitted (L-BFGS, a small L2 penalty) on two thirds of the rows
    in a seeded order, scored on the last third."""
    inputs = torch.cat([first, second]).double()
    targets = torch.cat([torch.zeros(len(first)), torch.ones(len(second))]).double()
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    inputs, targets = inputs[order], targets[order]
    fitted = len(inputs) * 2 // 3
    mean, spread = inputs[:fitted].mean(dim=0), inputs[:fitted].std(dim=0) + 1e-6
    inputs = (inputs - mean) / spread
    weight = torch.zeros(inputs.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=200)

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(inputs[:fitted] @ weight + bias, targets[:fitted])
                + 1e-3 * weight.pow(2).sum())
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    with torch.no_grad():
        predicted = (inputs[fitted:] @ weight + bias > 0).double()
    return float((predicted == targets[fitted:]).double().mean())


def read_transitions(model: torch.nn.Module, dataset: VideoDataset, max_videos: Optional[int]) -> Dict[str, Any]:
    """Every transition of the dataset's videos (each read whole): code ids (N,), vectors (N, D), kinds and
    '<label of fₜ₊₁> / <walk action>' names (N lists)."""
    from utils.evaluation.action_metrics import analyse_motion

    ids, vectors, kinds, labels = [], [], [], []
    for index, video in enumerate(dataset.videos[:max_videos]):
        motion = analyse_motion(model, dataset[(index, len(video))]["observations"][None])
        if motion.action_vectors is None:
            raise GlassError("benchmarks/code_probe.py: a model with model.lma.glimpse is not supported")
        names = [LOCAL_ACTION_NAMES[int(label)] for label in video.local_actions]
        ids.append(motion.action_ids[0])
        vectors.append(motion.action_vectors[0].double())
        for t in range(len(names) - 1):
            kinds.append(transition_kind(names[t], names[t + 1]))
            walk = int(video.global_actions[t + 1])
            walk_name = GLOBAL_ACTION_NAMES[walk] if 0 <= walk < len(GLOBAL_ACTION_NAMES) else "?"
            labels.append(f"{names[t + 1]} / {walk_name}")
    return {"ids": torch.cat(ids), "vectors": torch.cat(vectors), "kinds": kinds, "labels": labels}


def code_counts(ids: torch.Tensor, groups: List[str], num_codes: int) -> Dict[str, List[int]]:
    """{group: how many of its transitions got each code}, groups sorted by name."""
    counts: Dict[str, torch.Tensor] = collections.defaultdict(lambda: torch.zeros(num_codes, dtype=torch.int64))
    for code, group in zip(ids.tolist(), groups):
        counts[group][code] += 1
    return {group: counts[group].tolist() for group in sorted(counts)}


def probes(vectors: torch.Tensor, kinds: List[str]) -> List[Dict[str, Any]]:
    """The `PROBES` on these transitions: accuracy None where a group has fewer than MIN_PROBE_ROWS."""
    results = []
    for first, second in PROBES:
        rows = [vectors[[kind == group for kind in kinds]] for group in (first, second)]
        enough = min(len(rows[0]), len(rows[1])) >= MIN_PROBE_ROWS
        results.append({"first": first, "second": second, "rows": [len(rows[0]), len(rows[1])],
                        "accuracy": linear_probe(*rows) if enough else None})
    return results


def parse_arguments(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/code_probe.py", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-name", required=True, help="the run folder's name: RUNS_DIR/RUN_NAME")
    parser.add_argument("--runs-dir", default="runs", help="folder holding the run folders (default: runs)")
    parser.add_argument("--step", type=int, metavar="N", help="use checkpoints/step_N.pth (default: latest.pth)")
    parser.add_argument("--split", default="train", help="the videos to read (default: train)")
    parser.add_argument("--max-videos", type=int, default=None, metavar="N", help="read only the first N videos")
    parser.add_argument("--out", default=None, help="also write the tables and probes to this JSON file")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of PyTorch (default: its choice)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from model.trained import load_trained_model

    arguments = parse_arguments(argv)
    if arguments.max_videos is not None and arguments.max_videos < 1:
        raise GlassError(f"--max-videos: must be >= 1, got {arguments.max_videos}")
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    trained = load_trained_model(os.path.join(arguments.runs_dir, arguments.run_name), arguments.step, "cpu")
    if trained.config.data.frame_spacing() != 1:
        raise GlassError("benchmarks/code_probe.py: needs consecutive frames (the run's data has a frame spacing)")
    dataset = VideoDataset(trained.config.data, arguments.split)
    if not dataset.videos:
        raise GlassError(f"{trained.config.data.root}: no video in the '{arguments.split}' split")
    if any(int(label) >= len(LOCAL_ACTION_NAMES) for video in dataset.videos for label in video.local_actions):
        raise GlassError(f"{trained.config.data.root}: not W-Sprites' local-action labels (ids 0-8)")
    read = read_transitions(trained.model, dataset, arguments.max_videos)
    num_codes = trained.config.model.lma.num_actions
    result = {"run": trained.path, "step": trained.step, "split": arguments.split, "transitions": len(read["ids"]),
              "codes_per_kind": code_counts(read["ids"], read["kinds"], num_codes),
              "codes_per_label": code_counts(read["ids"], read["labels"], num_codes),
              "probes": probes(read["vectors"], read["kinds"])}
    header = "codes " + " ".join(f"{code:>5d}" for code in range(num_codes))
    for title, table in (("kind of transition", result["codes_per_kind"]),
                         ("label of f_t+1 / walk action", result["codes_per_label"])):
        print(f"{title:42s} {header}")
        for group, counts in table.items():
            print(f"  {group:40s}       " + " ".join(f"{count:5d}" for count in counts))
    for probe in result["probes"]:
        accuracy = "too few transitions" if probe["accuracy"] is None else f"{probe['accuracy']:.3f}"
        print(f"probe on z: {probe['first']} vs {probe['second']} ({probe['rows'][0]} / {probe['rows'][1]}): "
              f"held-out accuracy {accuracy}")
    if arguments.out:
        write_json_atomically(arguments.out, result)
        print(f"wrote {arguments.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
