"""benchmarks/gpu_learning.sh, proved on the CPU at minimal size: what a lent GPU's one command does must work before
the GPU sees it (data, side-by-side runs stopped by SIGTERM, evaluation, the float16 weights and the archive)."""
import json
import os
import subprocess
import sys
import tarfile

import torch
import yaml

from tests.small_model import SMALL_MODEL

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_gpu_learning_script_trains_stops_evaluates_and_packs_on_the_cpu(tmp_path):
    """Two runs side by side: "small" on DATA_ROOT, "other" on a set of its own (its data.root=... wins over
    DATA_ROOT); WEIGHTS names "small" alone, so "other" comes back in the archive without weights."""
    out, runs, other_data = tmp_path / "out", tmp_path / "runs", tmp_path / "other-data"
    generate = [sys.executable, "-m", "data.wsprites.generate", "--num-characters", "10", "--videos-per-character", "2"]
    subprocess.run(generate + ["--frames", "12", "--seed", "5", "--out", str(other_data)], cwd=REPOSITORY, check=True,
                   capture_output=True, timeout=300)
    small_model = " ".join(override.replace(", ", ",") for override in SMALL_MODEL)  # the script splits on spaces
    environment = {**os.environ, "OUT": str(out), "TRAIN_SECONDS": "25", "EVAL_SECONDS": "240", "DEVICE": "cpu",
                   "PYTHON": sys.executable, "RUNS_DIR": str(runs), "DATA_ROOT": str(tmp_path / "data"),
                   "GENERATE_ARGS": "--num-characters 10 --videos-per-character 2 --frames 12",
                   "RUN_LIST": f"small|--random-seed 0 model.lma.action_from_masks=true;"
                               f"other|--random-seed 1 data.root={other_data}", "WEIGHTS": "small",
                   "EXTRA": f"{small_model} training.gma_warmup_steps=2 training.log_every=2 training.batch_size=2"}
    finished = subprocess.run(["bash", os.path.join(REPOSITORY, "benchmarks", "gpu_learning.sh")], cwd=REPOSITORY,
                              env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    log = (out / "driver.log").read_text()
    assert "small: exit 143" in log and "other: exit 143" in log and "done" in log  # SIGTERM, then the rest ran
    assert sorted(os.listdir(out)) == ["driver.log", "runs-1.tgz", "small.pt"]
    state = torch.load(out / "small.pt", weights_only=True)
    assert state["step"] > 2 and state["optimizer"] == {}
    assert all(value.dtype == torch.float16 for value in state["model"].values() if value.is_floating_point())
    with tarfile.open(out / "runs-1.tgz") as archive:
        names = archive.getnames()
        for name in ("small", "other"):
            for expected in (".log", "/config.yaml", "/metrics.jsonl", "/metrics/evaluate-val-one_step.jsonl",
                             "/metrics/evaluate-val-single_image.jsonl"):
                assert any(member.endswith(name + expected) for member in names), name + expected
        configs = {name: yaml.safe_load(archive.extractfile(member)) for member in names
                   for name in ("small", "other") if member.endswith(f"{name}/config.yaml")}
        evaluations = [json.loads(line) for member in names if member.endswith("evaluate-val-one_step.jsonl")
                       for line in archive.extractfile(member).read().decode().splitlines()]
    # EVAL_ARGS' default: the action readers' statistics refitted before every evaluation
    assert evaluations and all(record["reader_norm_refit_batches"] > 0 for record in evaluations)
    assert all(config["name"] == "wsprites-c2" for config in configs.values())  # CONFIG's default
    roots = {name: config["data"]["root"] for name, config in configs.items()}
    assert roots == {"small": str(tmp_path / "data"), "other": str(other_data)}
