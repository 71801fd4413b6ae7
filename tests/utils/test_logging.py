"""What a run reports: loss means over a logging interval, the status line."""
import math

import torch

from utils.distributed import DistributedContext
from utils.logging import LossMeter, format_status_line, peak_memory

SINGLE_PROCESS = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_loss_means_count_each_term_over_the_steps_that_had_it():
    meter = LossMeter()
    meter.add(torch.tensor(1.0), {"reconstruction_loss": torch.tensor(0.5)})
    meter.add(torch.tensor(3.0), {"reconstruction_loss": torch.tensor(1.5), "local_action_vq_loss": torch.tensor(0.25)})
    assert meter.summarize(SINGLE_PROCESS) == {"loss": 2.0, "reconstruction_loss": 1.0, "local_action_vq_loss": 0.25}
    assert meter.summarize(SINGLE_PROCESS) == {}, "a summary starts a new interval"


def test_status_line_shows_the_step_curricula_terms_and_memory():
    row = {"step": 200, "lr": 4e-4, "observations_count": 6, "ground_truth_steps": 5, "loss": 0.5,
           "reconstruction_loss": 0.25, "foreground_loss": "nan", "steps_per_second": 3.5, **peak_memory(torch.device("cpu"))}
    line = format_status_line(row, 1000)
    assert line.startswith("step 200/1000 | T 6 | T_f 5 | loss 0.5000 | reconstruction 0.2500 | foreground nan")
    assert "3.50 steps/s" in line and "RSS" in line and "\n" not in line
    assert row["memory_kind"] == "process_peak_rss" and 0 < row["memory_gib"] < 1024 and not math.isnan(row["memory_gib"])
