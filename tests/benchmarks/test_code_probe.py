"""benchmarks/code_probe.py: the kinds of transition from label names, the linear probe on hand-made vectors, the
tables and probes of the tiny trained run, one-line errors."""
import json

import pytest
import torch

from benchmarks import code_probe
from utils.errors import GlassError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_kinds_of_transition_from_the_label_names():
    assert code_probe.transition_kind("walk-left", "walk-left") == "left, same animation"
    assert code_probe.transition_kind("walk-left", "slash-left") == "left -> left, another animation"
    assert code_probe.transition_kind("walk-front", "walk-right") == "front -> right"
    assert code_probe.transition_kind("slash-right", "walk-left") == "right -> left"


def test_the_probe_tells_separable_groups_apart_and_not_identical_ones():
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(150, 8, generator=generator), torch.randn(150, 8, generator=generator)
    second[:, 3] += 4.0  # one direction apart by four spreads
    assert code_probe.linear_probe(first, second) > 0.95
    same = torch.randn(300, 8, generator=generator)
    assert 0.3 < code_probe.linear_probe(same[:150], same[150:]) < 0.7  # chance
    assert code_probe.linear_probe(first, second) == code_probe.linear_probe(first, second)  # seeded


def test_tables_and_probes_of_a_trained_run(trained_run, tmp_path, capsys):
    out = tmp_path / "probe" / "probe.json"
    assert code_probe.main(["--run-name", trained_run["run_name"], "--runs-dir", trained_run["runs_dir"],
                            "--max-videos", "2", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["transitions"] == 2 * 11  # two videos of 12 frames
    for table in ("codes_per_kind", "codes_per_label"):
        counts = result[table].values()
        assert sum(sum(row) for row in counts) == 22 and all(len(row) == 3 for row in counts)  # K 3 (small model)
    assert [(probe["first"], probe["second"]) for probe in result["probes"]] == list(code_probe.PROBES)
    for probe in result["probes"]:  # 22 transitions: too few for a probe unless a group has 10 of them
        assert (probe["accuracy"] is None) == (min(probe["rows"]) < code_probe.MIN_PROBE_ROWS)
    printed = capsys.readouterr().out
    assert "kind of transition" in printed and "probe on z" in printed and "wrote" in printed


def test_one_line_errors(trained_run, tmp_path):
    with pytest.raises(GlassError, match="--max-videos"):
        code_probe.main(["--run-name", trained_run["run_name"], "--runs-dir", trained_run["runs_dir"],
                         "--max-videos", "0"])
    with pytest.raises(GlassError, match="unknown split"):
        code_probe.main(["--run-name", trained_run["run_name"], "--runs-dir", trained_run["runs_dir"],
                         "--split", "nosuchsplit"])
