"""Fixtures of the CPU fast-path tests."""
from typing import Callable, List

import pytest


@pytest.fixture
def record_calls(monkeypatch) -> Callable[[type], List[int]]:
    """`record_calls(function)` → a list that gets an entry at each call of the autograd Function `function`'s
    `apply` during the test (the path was taken)."""
    def record(function: type) -> List[int]:
        made: List[int] = []
        original = function.apply
        monkeypatch.setattr(function, "apply", lambda *arguments: made.append(1) or original(*arguments))
        return made
    return record
