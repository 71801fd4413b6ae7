"""The action language of play.py and the web page, action files, and how play.py fits images."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from data.video_dataset import load_image, prepare_image
from model.generation import NAMED_SHIFTS
from utils.config import DataConfig
from utils.errors import GlassError
from utils.play.actions import ActionError, PlayStep, image_paths, load_start_image, parse_actions, read_action_file

RIGHT, LEFT, UP, DOWN, STAY = (NAMED_SHIFTS[name] for name in ("right", "left", "up", "down", "stay"))


def test_the_issue_example_means_what_the_help_says():
    steps = parse_actions("right right 3 3 left stay 0", num_actions=6)
    assert steps == [PlayStep(RIGHT, 0), PlayStep(RIGHT, 0), PlayStep(STAY, 3), PlayStep(STAY, 3), PlayStep(LEFT, 3),
                     PlayStep(STAY, 3), PlayStep(STAY, 0)]


def test_every_step_form_repeats_and_the_current_action():
    steps = parse_actions("  Up:2\tdown*2 0.05,-0.02 -0.5,1e-1:1 stay:0*3 4 ", num_actions=5, default_action=1)
    assert steps == [PlayStep(UP, 2), PlayStep(DOWN, 2), PlayStep(DOWN, 2), PlayStep((0.05, -0.02), 2),
                     PlayStep((-0.5, 0.1), 1), *[PlayStep(STAY, 0)] * 3, PlayStep(STAY, 4)]
    assert parse_actions("right", num_actions=3, default_action=2) == [PlayStep(RIGHT, 2)]
    assert RIGHT == (0.07, 0.0) and DOWN == (0.0, 0.1)  # the paper's shifts (SPEC §3.3)


@pytest.mark.parametrize("text, message", [
    ("right jump", r"token 2 'jump': unknown direction 'jump'"),
    ("right 3", r"token 2 '3': local action 3 is out of range: this model has 3 actions \(0\.\.2\)"),
    ("left:7 right", r"token 1 'left:7': local action 7 is out of range"),
    ("stay -1", r"token 2 '-1': local action -1 is out of range"),
    ("right: up", r"token 1 'right:': local action '' is not a non-negative integer"),
    (":1", r"token 1 ':1': nothing before ':'"),
    ("0.1,0.2,0.3", r"token 1 '0.1,0.2,0.3': '0.1,0.2,0.3' is not a shift DX,DY of two numbers"),
    ("up 2.5,0", r"token 2 '2.5,0': dx = 2.5 must be a finite number in \[-2, 2\]"),
    ("nan,0", r"is not a shift DX,DY of two numbers"),
    ("right*0", r"token 1 'right\*0': repeat count 0 must be in 1\.\.1000"),
    ("right*two", r"repeat count 'two' is not a non-negative integer"),
    ("*3", r"token 1 '\*3': empty step"),
    ("r1ght", r"'r1ght' is neither a direction \(right, left, down, up, stay\) nor a shift DX,DY"),
    ("   ", r"--actions: no steps given"),
])
def test_invalid_strings_name_the_token_and_its_position(text, message):
    with pytest.raises(ActionError, match=message) as caught:
        parse_actions(text, num_actions=3)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("--actions: ")


def test_default_action_out_of_range():
    with pytest.raises(ActionError, match=r"--default-action: local action 4 is out of range"):
        parse_actions("right", num_actions=3, default_action=4)


def test_action_files_json_and_yaml(tmp_path):
    json_path = tmp_path / "moves.json"
    json_path.write_text(json.dumps(["right*2", 2, {"shift": "up"}, {"shift": [0.01, -0.02], "action": 1, "repeat": 2},
                                     {"action": 0}]))
    expected = [PlayStep(RIGHT, 0), PlayStep(RIGHT, 0), PlayStep(STAY, 2), PlayStep(UP, 2),
                PlayStep((0.01, -0.02), 1), PlayStep((0.01, -0.02), 1), PlayStep(STAY, 0)]
    assert read_action_file(str(json_path), num_actions=3) == expected
    yaml_path = tmp_path / "moves.yaml"
    yaml_path.write_text("- right*2\n- 2\n- {shift: up}\n- {shift: [0.01, -0.02], action: 1, repeat: 2}\n- action: 0\n")
    assert read_action_file(str(yaml_path), num_actions=3) == expected
    string_path = tmp_path / "moves.yml"
    string_path.write_text("right right 2\n")
    assert read_action_file(str(string_path), num_actions=3) == [PlayStep(RIGHT, 0), PlayStep(RIGHT, 0),
                                                                 PlayStep(STAY, 2)]


@pytest.mark.parametrize("content, message", [
    ('["right", "fly"]', r"item 2 'fly': unknown direction 'fly'"),
    ('["right", {"action": 5}]', r"item 2 .*local action 5 is out of range"),
    ('[{"shift": "up", "speed": 2}]', r"item 1 .*unknown key\(s\) \['speed'\]"),
    ('[{"shift": [1, 2, 3]}]', r"item 1 .*shift must be a direction name or \[dx, dy\]"),
    ('[{"repeat": true}]', r"item 1 .*repeat must be an integer"),
    ('[["right"]]', r"item 1 .*expected a token string or a mapping"),
    ('[]', r"expected a non-empty list of steps"),
    ('{"steps": []}', r"expected a non-empty list of steps"),
    ('[1, 2', r"not valid JSON"),
])
def test_invalid_action_files_name_the_file_and_the_item(tmp_path, content, message):
    path = tmp_path / "moves.json"
    path.write_text(content)
    with pytest.raises(ActionError, match=message) as caught:
        read_action_file(str(path), num_actions=3)
    assert str(caught.value).startswith(str(path))
    with pytest.raises(ActionError, match="no such action file"):
        read_action_file(str(tmp_path / "missing.yaml"), num_actions=3)


# --------------------------------------------------------------------------- images

def _save(array: np.ndarray, path) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def test_a_frame_of_the_dataset_is_prepared_as_the_dataset_does(tmp_path):
    config = DataConfig(crop=[0, 0, 128, 96], input_size=[64, 48])
    frame = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    path = _save(frame, tmp_path / "frame.png")
    expected = load_image(path, config, fit="dataset")  # what VideoDataset.load_frame returns
    assert expected.shape == (3, 48, 64) and expected.min() >= -1 and expected.max() <= 1
    for fit in ("auto", "dataset"):
        assert torch.equal(load_start_image(path, config, fit), expected)
    # A frame slightly larger than the crop box (the crop keeps more than half of it): cropped as in training.
    larger = np.concatenate([frame, np.zeros((20, 128, 3), dtype=np.uint8)], axis=0)
    assert torch.equal(load_start_image(_save(larger, tmp_path / "larger.png"), config), expected)


def test_other_images_are_centre_cropped_to_the_model_aspect_ratio(tmp_path):
    config = DataConfig(crop=[0, 0, 128, 96], input_size=[64, 48])  # 4:3
    # 512×192 photo, 8:3: the crop box would keep a corner only, so the middle 256×192 is used.
    photo = np.zeros((192, 512, 3), dtype=np.uint8)
    photo[:, 128:384] = 255
    image = load_start_image(_save(photo, tmp_path / "photo.png"), config)
    assert torch.equal(image, torch.ones(3, 48, 64))
    # Smaller than the crop box: no crop possible; a 40×60 portrait keeps its middle 40×30.
    portrait = np.zeros((60, 40, 3), dtype=np.uint8)
    portrait[15:45] = 255
    assert torch.equal(load_start_image(_save(portrait, tmp_path / "portrait.png"), config), torch.ones(3, 48, 64))
    with pytest.raises(GlassError, match=r"portrait.png: data.crop \[0, 0, 128, 96\] exceeds the image"):
        load_start_image(str(tmp_path / "portrait.png"), config, fit="dataset")
    # Without data.crop, an image of the model's aspect ratio is only resized (as the dataset does).
    no_crop = DataConfig(crop=None, input_size=[64, 48])
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8))
    assert torch.equal(prepare_image(picture, no_crop, fit="auto"), prepare_image(picture, no_crop, fit="dataset"))


def test_transparency_is_composited_over_white_and_bad_files_are_named(tmp_path):
    config = DataConfig(crop=None, input_size=[8, 6])
    transparent = np.zeros((6, 8, 4), dtype=np.uint8)
    assert torch.equal(load_start_image(_save(transparent, tmp_path / "clear.png"), config), torch.ones(3, 6, 8))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(GlassError, match=r"notes.png: unreadable image"):
        load_start_image(str(text), config)
    with pytest.raises(GlassError, match=r"missing.png: no such image file"):
        load_start_image(str(tmp_path / "missing.png"), config)
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("b.png", "a.jpg", "c.txt"):
        (folder / name).write_bytes(b"")
    assert image_paths([str(folder)]) == [str(folder / "a.jpg"), str(folder / "b.png")]
    with pytest.raises(GlassError, match=r"nowhere: no such image file or folder"):
        image_paths(["nowhere"])
