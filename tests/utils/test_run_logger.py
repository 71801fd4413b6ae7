"""What a run reports: loss means over a logging interval, the status line."""
import math

import pytest
import torch

from utils.distributed import DistributedContext
from utils.run_logger import LossMeter, format_status_line, peak_memory

SINGLE_PROCESS = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_loss_means_count_each_term_over_the_steps_that_had_it():
    meter = LossMeter()
    meter.add(torch.tensor(1.0), {"reconstruction_loss": torch.tensor(0.5)})
    meter.add(torch.tensor(3.0), {"reconstruction_loss": torch.tensor(1.5), "local_action_vq_loss": torch.tensor(0.25)})
    assert meter.summarize(SINGLE_PROCESS) == {"loss": 2.0, "reconstruction_loss": 1.0, "local_action_vq_loss": 0.25}
    assert meter.summarize(SINGLE_PROCESS) == {}, "a summary starts a new interval"


def test_status_line_shows_the_step_curricula_terms_and_memory():
    row = {"step": 200, "lr": 4e-4, "observations_count": 6, "ground_truth_steps": 5, "loss": 0.5,
           "reconstruction_loss": 0.25, "foreground_loss": "nan", "steps_per_second": 3.5,
           **peak_memory(torch.device("cpu"))}
    line = format_status_line(row, 1000)
    assert line.startswith("step 200/1000 | T 6 | T_f 5 | loss 0.5000 | reconstruction 0.2500 | foreground nan")
    assert "3.50 steps/s" in line and "RSS" in line and "\n" not in line
    assert (row["memory_kind"] == "process_peak_rss" and 0 < row["memory_gib"] < 1024
            and not math.isnan(row["memory_gib"]))


def _lma_output(ids, vectors, generated, targets, ground_truth_steps):
    from types import SimpleNamespace
    return SimpleNamespace(lma=SimpleNamespace(action_ids=ids, action_vectors=vectors,
                                               generated_foregrounds=[generated],
                                               num_ground_truth_steps=ground_truth_steps),
                           gma=SimpleNamespace(foregrounds=targets))


def test_lma_meter_reports_codes_perplexity_spread_and_foreground_psnr_by_part():
    from utils.run_logger import LMAMeter, lma_step_statistics
    meter = LMAMeter()
    assert lma_step_statistics(SimpleNamespaceNoLMA(), 3) is None
    meter.add(None)  # a gma_only warm-up step adds nothing
    assert meter.summarize(SINGLE_PROCESS) == {}
    targets = torch.zeros(1, 4, 3, 2, 2)  # B 1, T 4 → 3 transitions
    generated = torch.zeros(1, 3, 3, 2, 2)
    generated[:, :2] = 0.02  # the two ground-truth steps: MSE 4e-4 → PSNR 40 dB
    generated[:, 2] = 0.2  # the autoregressive step: MSE 0.04 → 20 dB
    vectors = torch.tensor([[[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]]])  # std per dimension (2, 0): spread 1
    meter.add(lma_step_statistics(_lma_output(torch.tensor([[0, 0, 2]]), vectors, generated, targets, 2), 3))
    meter.add(lma_step_statistics(_lma_output(torch.tensor([[2, 0, 0]]), vectors * 2, generated, targets, 2), 3))
    row = meter.summarize(SINGLE_PROCESS)
    assert row["lma_codes_used"] == 2 and row["lma_code_histogram"] == [0.6667, 0.0, 0.3333]  # shares, 4 decimals
    assert row["lma_code_perplexity"] == pytest.approx(math.exp(-(4 / 6 * math.log(4 / 6) + 2 / 6 * math.log(2 / 6))))
    assert row["lma_z_spread"] == pytest.approx((1.0 + 2.0) / 2)
    assert row["lma_foreground_psnr_gt"] == pytest.approx(40.0) and row["lma_foreground_psnr_ar"] == pytest.approx(20.0)
    # A collapsed interval: one code, perplexity 1; with T_f = T − 1 there is no autoregressive PSNR.
    meter.add(lma_step_statistics(_lma_output(torch.tensor([[1, 1, 1]]), vectors, generated[:, :3], targets, 3), 3))
    row = meter.summarize(SINGLE_PROCESS)
    assert row["lma_codes_used"] == 1 and row["lma_code_perplexity"] == pytest.approx(1.0)
    assert "lma_foreground_psnr_ar" not in row


class SimpleNamespaceNoLMA:
    lma = None


def test_metrics_rows_are_json_lines_with_the_utc_time_and_no_nan(tmp_path, capsys):
    import json
    import re

    from utils.run_logger import RunLogger

    logger = RunLogger(str(tmp_path), "run", {}, torch.device("cpu"), first_step=0, total_steps=10, comparable=True,
                       use_wandb=False, show_progress=False)
    row = logger.log_scalars(5, {"lr": 1e-3, "observations_count": 6, "ground_truth_steps": 5, "loss": float("nan")})
    logger.close()
    with open(tmp_path / "metrics.jsonl", encoding="utf-8") as handle:
        (written,) = [json.loads(line) for line in handle]
    assert written == row and row["step"] == 5 and row["loss"] == "nan" and row["comparable"] is True
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["time"])  # utils.files.append_json_line
    assert capsys.readouterr().out.startswith("step 5/10 | T 6 | T_f 5 | loss nan")
