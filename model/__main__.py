"""Print the trainable parameter count of every GLASS module for a configuration.

    python -m model --config configs/wsprites.yaml
    python -m model --config configs/wsprites.yaml model.lma.num_actions=9
"""
import argparse
from typing import Optional, Sequence

from model.glass import build_model
from utils.cli import run_main
from utils.config import load_config


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a YAML file in configs/")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. model.lma.num_actions=9")
    arguments = parser.parse_args(argv)
    config = load_config(arguments.config, arguments.overrides)
    model = build_model(config)
    height, width = model.frame_size
    state_height, state_width = model.lma.state_resolution
    print(f"{config.name}: frames {width}×{height}, state {state_width}×{state_height}, "
          f"{config.model.lma.num_actions} local actions")
    for name, count in model.parameter_counts().items():
        print(f"{name:<18} {count:>12,}")
    return 0


if __name__ == "__main__":
    run_main(main)
