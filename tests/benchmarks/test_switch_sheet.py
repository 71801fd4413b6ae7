"""benchmarks/switch_sheet.py on the tiny trained run: one row per switch transition with fₜ, fₜ₊₁, the inferred
code's drawing and every codebook row's, labelled; one-line errors for bad arguments and a split without switches."""
import pytest
import torch
from PIL import Image

from benchmarks import switch_sheet
from utils.errors import GlassError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def arguments(run, out, *extra):
    return ["--run-name", run["run_name"], "--runs-dir", run["runs_dir"], "--out", str(out), "--threads", "1",
            *extra]


def test_draws_one_row_per_switch_with_every_code(trained_run, tmp_path, capsys):
    out = tmp_path / "sheets" / "switches.png"
    assert switch_sheet.main(arguments(trained_run, out, "--rows", "2", "--refit-reader-norm", "1",
                                       "evaluation.split=train")) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "2 switch transition(s)" in printed
    width, height = Image.open(out).size
    codes = 3  # the small test model's codebook (tests/small_model.py)
    cell_height, cell_width = switch_sheet.CELL
    assert height > 2 * cell_height and width > (3 + codes) * cell_width  # 2 rows, 3 + K columns, labels


def test_the_box_is_around_both_masks_with_a_margin_and_inside_the_frame():
    masks = torch.zeros(2, 1, 40, 30)
    masks[0, 0, 10:20, 5:10] = 1.0
    masks[1, 0, 15:25, 8:12] = 1.0
    top, bottom, left, right = switch_sheet.character_box(masks, 40, 30)
    assert top <= 10 - 1 and bottom >= 25 + 1 and left <= 5 and right >= 12 and 0 <= top and bottom <= 40
    assert 0 <= left and right <= 30
    assert switch_sheet.character_box(torch.zeros(2, 1, 40, 30), 40, 30) == (0, 40, 0, 30)


def test_one_line_errors(trained_run, tmp_path):
    with pytest.raises(GlassError, match="--rows"):
        switch_sheet.main(arguments(trained_run, tmp_path / "a.png", "--rows", "0"))
    with pytest.raises(GlassError, match="--refit-reader-norm"):
        switch_sheet.main(arguments(trained_run, tmp_path / "a.png", "--refit-reader-norm", "-1"))
    assert not (tmp_path / "a.png").exists()


def test_a_split_without_labelled_switches_is_a_one_line_error(trained_run, tmp_path, monkeypatch):
    """Windows whose labels never change (as unlabelled data reads): nothing to draw, no file."""
    real_rows = switch_sheet.switch_rows

    def constant_labels(model, batch, limit):
        return real_rows(model, {**batch, "local_actions": torch.zeros_like(batch["local_actions"])}, limit)

    monkeypatch.setattr(switch_sheet, "switch_rows", constant_labels)
    with pytest.raises(GlassError, match="no labelled switch transition"):
        switch_sheet.main(arguments(trained_run, tmp_path / "b.png"))
    assert not (tmp_path / "b.png").exists()
