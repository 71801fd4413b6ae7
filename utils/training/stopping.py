"""SIGINT and SIGTERM end a run after the current step, with a checkpoint (`StopRequest`)."""
from __future__ import annotations

import signal
from typing import Any, Optional


class StopRequest:
    """Turns SIGINT and SIGTERM into a request to stop after the current step, with a checkpoint.

    Further signals are ignored while the run stops (Ctrl-C reaches every process of a
    terminal, and launchers pass signals on again, so one key press can arrive twice).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal_number: Optional[int] = None
        self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}

    def _handle(self, number: int, _frame: Any) -> None:
        if self.signal_number is None:
            self.signal_number = number

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def signal_name(self) -> str:
        return signal.Signals(self.signal_number).name if self.signal_number is not None else "no signal"

    def close(self) -> None:
        """Put the previous handlers back."""
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader `worker_init_fn`: workers leave SIGINT and SIGTERM to the training process, which
    stops after its step; a worker ended by Ctrl-C would fail the batch being loaded instead."""
    for number in StopRequest.SIGNALS:
        signal.signal(number, signal.SIG_IGN)
