"""utils.evaluation.generated_dataset: finding the newest evaluation dataset of a run (the rest is tested through the
scripts in tests/test_build_evaluation_dataset.py and tests/test_evaluate_dataset.py)."""
import pytest

from utils.errors import GlassError
from utils.evaluation.generated_dataset import default_folder, latest_folder


def test_latest_folder_takes_the_highest_step_of_the_protocol(tmp_path):
    run = tmp_path / "run"
    for name in ("step_2-one_step", "step_10-one_step", "step_30-single_image", "step_x-one_step",
                 "step_99-one_step_extra"):
        (run / "evaluation_dataset" / name).mkdir(parents=True)
    assert latest_folder(str(run), "one_step") == default_folder(str(run), 10, "one_step")
    assert latest_folder(str(run), "single_image").endswith("step_30-single_image")


@pytest.mark.parametrize("make_parent", [False, True])
def test_latest_folder_without_one_names_the_folder_and_the_fix(tmp_path, make_parent):
    if make_parent:
        (tmp_path / "run" / "evaluation_dataset" / "step_5-single_image").mkdir(parents=True)
    with pytest.raises(GlassError, match=r"evaluation_dataset: no step_N-one_step folder \(run "
                                         r"build_evaluation_dataset.py first\)"):
        latest_folder(str(tmp_path / "run"), "one_step")
