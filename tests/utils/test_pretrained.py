"""Finding and reading pretrained weight files: cache, user path, and the messages when they fail."""
import os

import pytest
import torch

from utils.errors import GlassError
from utils.pretrained import (
    MissingWeightsError,
    PretrainedFile,
    find_pretrained,
    load_state_dict_file,
    pretrained_cache_dir,
)

EXAMPLE = PretrainedFile(name="example-0123abcd.pth", url="https://example.org/weights/example-0123abcd.pth",
                         description="Example network weights")


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub directory for the test (restored afterwards)."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    torch.hub.set_dir(str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_missing_file_message_names_file_url_cache_and_option(hub_dir):
    with pytest.raises(MissingWeightsError) as raised:
        find_pretrained(EXAMPLE, None, option="loss.example_weights")
    message = str(raised.value)
    assert isinstance(raised.value, GlassError)
    assert "\n" not in message
    assert EXAMPLE.name in message and EXAMPLE.url in message
    assert str(hub_dir / "checkpoints") in message
    assert "loss.example_weights" in message


def test_cache_dir_follows_torch_hub(hub_dir):
    assert pretrained_cache_dir() == str(hub_dir / "checkpoints")


def test_cached_file_is_found(hub_dir):
    (hub_dir / "checkpoints").mkdir(parents=True)
    cached = hub_dir / "checkpoints" / EXAMPLE.name
    torch.save({"weight": torch.ones(2)}, cached)
    assert find_pretrained(EXAMPLE, None) == str(cached)
    assert find_pretrained(EXAMPLE, "") == str(cached)  # an empty path counts as not given


def test_given_path_wins_and_must_exist(hub_dir, tmp_path):
    given = tmp_path / "mine.pth"
    torch.save({"weight": torch.ones(2)}, given)
    assert find_pretrained(EXAMPLE, str(given)) == str(given)
    with pytest.raises(MissingWeightsError) as raised:
        find_pretrained(EXAMPLE, str(tmp_path / "absent.pth"), option="loss.example_weights")
    message = str(raised.value)
    assert str(tmp_path / "absent.pth") in message and EXAMPLE.name in message and EXAMPLE.url in message
    assert "loss.example_weights" in message


def test_load_state_dict_file_round_trip(tmp_path):
    state = {"layer.weight": torch.randn(3, 2), "layer.bias": torch.randn(3)}
    path = tmp_path / "state.pth"
    torch.save(state, path)
    loaded = load_state_dict_file(str(path))
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[key], state[key]) for key in state)


class _NotATensor:
    pass


@pytest.mark.parametrize("content", ["garbage", "truncated", "empty", "object", "list", "directory"])
def test_unreadable_file_is_a_glass_error_naming_it(tmp_path, content):
    path = tmp_path / f"{content}.pth"
    if content == "garbage":
        path.write_bytes(b"this is not a torch file")
    elif content == "truncated":
        torch.save({"weight": torch.randn(100)}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "object":
        torch.save({"weight": _NotATensor()}, path)
    elif content == "list":
        torch.save([torch.ones(2)], path)
    else:
        os.mkdir(path)
    with pytest.raises(GlassError) as raised:
        load_state_dict_file(str(path))
    message = str(raised.value)
    assert str(path) in message
    assert "\n" not in message
