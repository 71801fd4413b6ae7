"""Weight files of the pretrained feature networks: where to find them and how to read them.

Every pretrained network of the project (VGG19 for the perceptual losses; the evaluation's
feature networks) finds its file through `find_pretrained` and reads it with
`load_state_dict_file`. Nothing is ever downloaded and nothing falls back to random
weights: the file is at the path the user gave, or in torch hub's checkpoint cache
(`torch.hub.get_dir()/checkpoints/`, where `torch.hub.load_state_dict_from_url` puts it and
which `TORCH_HOME` moves). When it is missing, `MissingWeightsError` says which file, where
it is published, and where to put it.

    VGG19_IMAGENET = PretrainedFile("vgg19-dcbb9e9d.pth", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
                                    "VGG19 ImageNet weights (torchvision)")
    state_dict = load_state_dict_file(find_pretrained(VGG19_IMAGENET, config.loss.vgg_weights, "loss.vgg_weights"))
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from utils.errors import GlassError


@dataclass(frozen=True)
class PretrainedFile:
    """A published weight file."""

    name: str  # file name in the torch hub checkpoint cache, e.g. "vgg19-dcbb9e9d.pth"
    url: str  # where the file is published (the user downloads it from there)
    description: str  # what it is, for messages, e.g. "VGG19 ImageNet weights (torchvision)"


class MissingWeightsError(GlassError):
    """A pretrained weight file is neither at the given path nor in the torch hub cache."""


def pretrained_cache_dir() -> str:
    """torch hub's checkpoint cache: `torch.hub.get_dir()/checkpoints` (follows `TORCH_HOME`)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def find_pretrained(file: PretrainedFile, path: Optional[str], option: Optional[str] = None) -> str:
    """The path of `file`: `path` when given (it must exist), else the cached `<cache>/<file.name>`.

    `option` names the config key or command-line option through which the user gives the
    path (e.g. "loss.vgg_weights"); the error message suggests it. An empty `path` counts as
    not given. Raises `MissingWeightsError` with a one-line message naming the file, its URL
    and the exact cache folder.
    """
    if path:
        expanded = os.path.expanduser(path)
        if os.path.isfile(expanded):
            return expanded
        given_by = f" (given by {option})" if option else ""
        raise MissingWeightsError(f"{file.description}: {path}{given_by} is not a file; expected {file.name}, "
                                  f"published at {file.url}")
    cache_dir = pretrained_cache_dir()
    cached = os.path.join(cache_dir, file.name)
    if os.path.isfile(cached):
        return cached
    alternative = f", or set {option}=PATH to where it is" if option else ""
    raise MissingWeightsError(f"{file.description} not found: download {file.url} and put {file.name} in "
                              f"{cache_dir}{os.sep}{alternative} (nothing is downloaded automatically)")


def load_state_dict_file(path: str) -> dict:
    """Read a state dict (a mapping of names to tensors) on the CPU with `weights_only=True`.

    A file that cannot be read as such (missing, empty, truncated, not a torch file, holding
    objects other than tensors, or not a mapping) raises `GlassError` naming it.
    """
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        reason = "not a torch weights file, or it holds objects other than tensors (read with weights_only=True)"
    except EOFError:
        reason = "the file is empty or truncated"
    except RuntimeError as error:
        reason = "corrupt or truncated: " + (str(error).splitlines() or [type(error).__name__])[0]
    except OSError as error:
        reason = error.strerror or str(error)
    except Exception as error:  # the unpickler raises whatever the bytes lead it to (IndexError, KeyError, …)
        reason = f"not a torch weights file ({type(error).__name__})"
    else:
        if isinstance(loaded, Mapping):
            return dict(loaded)
        reason = f"expected a state dict (a mapping of names to tensors), found a {type(loaded).__name__}"
    raise GlassError(f"{path}: cannot read the weights file: {reason}")
