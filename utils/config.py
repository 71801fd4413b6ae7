"""The typed configuration schema and its loading from YAML and `key=value` overrides.

One dataclass per section; every field has a default (the paper's W-Sprites value
unless said) and a one-line comment. A YAML file overrides the defaults, then dotted
command-line overrides (`data.skip_frames=2`) override the file. Unknown keys, wrong
types and out-of-range values raise `ConfigError` naming the key, before any work.

    config = load_config("configs/wsprites.yaml", ["data.observations_count=8"])
    print(dump_config(config))
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from utils.errors import ConfigError

DATA_STYLES = ("splitted", "flat")
SPLITS = ("train", "val", "test")


@dataclass
class DataConfig:
    """Where the videos are and how a training sample is cut from them (SPEC §1.1)."""

    root: str = "datasets/wsprites"  # dataset root: train/ val/ test/ (splitted) or one folder of videos (flat)
    style: str = "splitted"  # 'splitted' (train/val/test folders) or 'flat' (split by split_fractions)
    split_fractions: List[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # flat style: train/val/test shares
    split_seed: int = 0  # flat style: seed of the shuffle that assigns videos to splits
    crop: Optional[List[int]] = None  # [left, upper, right, lower] in source pixels, applied before resizing; null = whole frame
    input_size: List[int] = field(default_factory=lambda: [128, 96])  # [W, H] the frames are resized to (bilinear)
    observations_count: int = 6  # T, frames per sample (the training curriculum changes it on the fly)
    skip_frames: int = 1  # spacing between consecutive observations, in source frames
    observation_stacking: int = 1  # frames stacked per observation (3·stack channels, newest first)
    num_workers: int = 4  # DataLoader worker processes
    load_masks: bool = True  # read masks/ when a video has them (zeros and has_masks=False otherwise)

    def check(self, prefix: str) -> None:
        _require(self.style in DATA_STYLES, prefix + "style", f"must be one of {DATA_STYLES}, got {self.style!r}")
        _require(len(self.split_fractions) == 3 and all(f >= 0 for f in self.split_fractions)
                 and abs(sum(self.split_fractions) - 1.0) < 1e-6,
                 prefix + "split_fractions", f"must be 3 non-negative numbers summing to 1, got {self.split_fractions}")
        if self.crop is not None:
            _require(len(self.crop) == 4 and self.crop[0] < self.crop[2] and self.crop[1] < self.crop[3]
                     and min(self.crop) >= 0,
                     prefix + "crop", f"must be [left, upper, right, lower] with left < right, upper < lower, got {self.crop}")
        _require(len(self.input_size) == 2 and min(self.input_size) > 0,
                 prefix + "input_size", f"must be [W, H] with positive sizes, got {self.input_size}")
        for name in ("observations_count", "skip_frames", "observation_stacking"):
            _require(getattr(self, name) >= 1, prefix + name, f"must be >= 1, got {getattr(self, name)}")
        _require(self.num_workers >= 0, prefix + "num_workers", f"must be >= 0, got {self.num_workers}")


@dataclass
class Config:
    """A whole run: one YAML file in configs/ maps onto this."""

    name: str = "wsprites"  # a label for the configuration (the run name is given on the command line)
    data: DataConfig = field(default_factory=DataConfig)

    def check(self, prefix: str) -> None:
        pass


# --------------------------------------------------------------------------- loading

def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against the type `annotation` and return it (ints widen to float)."""
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        non_none = [a for a in arguments if a is not type(None)]
        return _convert(value, non_none[0], key)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (section), got {type(value).__name__}")
        return _from_dict(annotation, value, key + ".")
    if origin in (list, List, tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_type = arguments[0] if arguments else Any
        return [_convert(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {k: _convert(v, arguments[1], f"{key}.{k}") for k, v in value.items()}
    if annotation is Any:
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {_type_name(annotation)} for {key}")  # a schema bug, not user input


def _from_dict(cls: type, values: Dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for name in values:
        if name not in known:
            raise ConfigError(f"unknown key '{prefix}{name}' (known: {', '.join(sorted(known))})")
    instance = cls()
    for name, value in values.items():
        setattr(instance, name, _convert(value, hints[name], prefix + name))
    instance.check(prefix)
    return instance


def config_from_dict(values: Dict[str, Any]) -> Config:
    """Build and check a `Config` from nested plain values (as stored in a run folder)."""
    if not isinstance(values, dict):
        raise ConfigError(f"a configuration must be a mapping, got {type(values).__name__}")
    return _from_dict(Config, values, "")


def config_to_dict(config: Config) -> Dict[str, Any]:
    return dataclasses.asdict(config)


def _parse_override(text: str) -> Tuple[List[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.subkey=value")
    key, raw_value = text.split("=", 1)
    try:
        value = yaml.safe_load(raw_value) if raw_value != "" else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({error.__class__.__name__})") from None
    return key.strip().split("."), value


def apply_overrides(values: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Set dotted `key=value` overrides into nested plain values; the value is parsed as YAML."""
    for text in overrides:
        path, value = _parse_override(text)
        node = values
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return values


def load_config(path: str, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config file, apply dotted overrides, check everything, return the `Config`."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: configuration file not found")
    try:
        with open(path, "r", encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    values = apply_overrides(values, overrides)
    try:
        return config_from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def dump_config(config: Config) -> str:
    """The resolved configuration as YAML text (keys in schema order)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
