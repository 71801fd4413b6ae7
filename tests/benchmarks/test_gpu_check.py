"""benchmarks/gpu_check.py --dry-run: every step of the GPU check runs on the CPU at minimal size and
is reported; a failing step is recorded with its status and output and the check goes on."""
import json
import os
import subprocess
import sys

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPOSITORY, "benchmarks", "gpu_check.py")
CUDA_ONLY = {"training-step-bf16", "training-step-compile"}


def _check(out: str, *arguments: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, "--dry-run", "--out", out, *arguments], cwd=REPOSITORY,
                          capture_output=True, text=True, timeout=timeout)


def _report(out: str) -> dict:
    with open(os.path.join(out, "report.json"), encoding="utf-8") as handle:
        return json.load(handle)


def test_the_dry_run_passes_every_step_and_writes_the_report_and_summary(tmp_path):
    out = str(tmp_path / "check")
    result = _check(out, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = _report(out)
    from benchmarks.gpu_check import STEP_NAMES

    steps = {step["name"]: step for step in report["steps"]}
    assert list(steps) == STEP_NAMES and report["passed"] and report["dry_run"] and report["device"] == "cpu"
    for name, step in steps.items():
        if name in CUDA_ONLY:  # recorded with the command the GPU run uses
            assert step["status"] == "skipped" and step["reason"] == "skipped: CUDA only", step
            assert "--device cuda" in step["command"] and step["returncode"] is None
            continue
        assert step["status"] == "passed" and step["returncode"] == 0, step
        assert step["seconds"] > 0 and step["command"] and os.path.isfile(os.path.join(out, step["log"]))
    assert steps["pytest"]["figures"]["passed"] > 0 and "failed" not in steps["pytest"]["figures"]
    assert steps["train-paper"]["figures"]["steps"] == 4 and steps["torchrun-paper"]["figures"]["processes"] == 2
    resume = steps["resume"]["figures"]  # 4 steps, SIGTERM after the first: stopped at 1, 2 or 3, resumed to 4
    assert resume["bit_identical"] and resume["max_abs_difference"] == 0.0 and 1 <= resume["stopped_at_step"] < 4
    assert resume["max_weight_change_after_stop"] > 0
    assert resume["control_bit_identical"] and resume["control_max_abs_difference"] == 0.0
    rows = steps["training-step-fp32"]["figures"]["rows"]
    assert {(row["case"], row["channels_last"]) for row in rows} == {("warmup", True), ("warmup", False)}
    assert all(row["seconds_per_step"] > 0 and row["peak_memory_gib"] > 0 for row in rows)
    authors = steps["training-step-authors-warmup"]["figures"]
    assert authors["rows"][0]["warmup_mode"] == "authors" and authors["authors_over_gma_only_gflop"] > 1
    assert steps["evaluate"]["figures"]["windows"] > 0 and steps["play"]["figures"]["frames"] == 11
    with open(os.path.join(out, "summary.txt"), encoding="utf-8") as handle:
        summary = handle.read()
    assert "PASSED" in summary and all(name in summary for name in STEP_NAMES)


def test_a_failing_step_is_recorded_and_the_next_steps_still_run(tmp_path):
    out = str(tmp_path / "check")
    result = _check(out, "--only", "data,train-tiny,training-step-authors-warmup", "--inject-failure", "data",
                    timeout=200)
    assert result.returncode == 1
    steps = {step["name"]: step for step in _report(out)["steps"]}
    assert list(steps) == ["data", "train-tiny", "training-step-authors-warmup"]
    assert steps["data"]["status"] == "failed" and steps["data"]["returncode"] == 2
    assert "unrecognized arguments: --no-such-option" in steps["data"]["output_tail"]
    assert steps["train-tiny"]["reason"] == "skipped: needs data, which did not pass"
    assert steps["training-step-authors-warmup"]["status"] == "passed"  # after the failure, the check went on
    assert steps["training-step-authors-warmup"]["returncode"] == 0
    with open(os.path.join(out, "summary.txt"), encoding="utf-8") as handle:
        assert "FAILED" in handle.read()


def test_a_second_check_empties_only_a_folder_a_check_wrote(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = _check(str(foreign), "--only", "data", timeout=60)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: --out {foreign}: a non-empty folder that no gpu_check wrote; choose another folder"]
    assert (foreign / "notes.txt").read_text() == "mine"


def test_the_resume_verdict_on_cuda_is_measured_against_a_second_uninterrupted_run():
    """On the H200 two uninterrupted runs already differed before the stop; the resumed run is judged against that
    spread: 22 % passes when the control differs by 15 % (allowed 30 %), fails when it differs by 2 % (allowed 10 %);
    on the CPU both must be bit-identical."""
    from benchmarks.gpu_check import resume_failure

    base = {"bit_identical": False, "max_abs_difference": 25.0, "max_abs_difference_tensor": "w",
            "difference_over_change": 0.22, "control_bit_identical": False, "control_max_abs_difference": 17.0}
    assert resume_failure({**base, "control_difference_over_change": 0.15}, "cuda") is None
    failure = resume_failure({**base, "control_difference_over_change": 0.02}, "cuda")
    assert "22 %" in failure and "> 10 %" in failure and "differs by 2 %" in failure
    small = {**base, "difference_over_change": 0.05, "control_difference_over_change": None}
    assert resume_failure(small, "cuda") is None
    assert "not bit-identical" in resume_failure(base, "cpu")
    identical = {**base, "bit_identical": True}
    assert "two uninterrupted runs" in resume_failure(identical, "cpu")
    assert resume_failure({**identical, "control_bit_identical": True}, "cpu") is None
