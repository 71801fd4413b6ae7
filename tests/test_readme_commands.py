"""The README's `train.py` commands stay valid: every one in a bash block that names a --config loads that config
with its overrides (optional ones, written `[key=value]`, included), so a renamed key or a wrong value fails here
before a user copies it."""
import os
import re
import shlex

import pytest

from utils.config import load_config

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_train_commands():
    with open(os.path.join(REPOSITORY, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;", line.split(" #")[0]):
                words = shlex.split(part.replace("[", " ").replace("]", " "))
                if "train.py" in words and "--config" in words:
                    commands.append(words)
    return commands


def test_the_readme_has_train_commands_with_overrides():
    commands = readme_train_commands()
    assert len(commands) >= 5
    assert any("configs/wsprites-c2.yaml" in words for words in commands)  # the first run and Local actions


@pytest.mark.parametrize("words", readme_train_commands(), ids=lambda words: " ".join(words)[:60])
def test_a_readme_train_command_loads_its_config_with_its_overrides(words):
    config_path = words[words.index("--config") + 1]
    overrides = [word for word in words[words.index("train.py") + 1:] if "=" in word and not word.startswith("-")]
    config = load_config(os.path.join(REPOSITORY, config_path), overrides)
    for override in overrides:
        key, value = override.split("=", 1)
        section = config
        for name in key.split("."):
            section = getattr(section, name)
        if value in ("true", "false"):
            assert section is (value == "true"), override
