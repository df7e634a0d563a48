"""Pre-emption: SIGTERM / SIGINT ask the training loop to checkpoint and exit cleanly.

The first signal sets a flag that the loop checks after each optimiser step (all ranks agree on it
through one small collective); a second SIGINT aborts at once, as a user pressing Ctrl-C twice expects.
"""

from __future__ import annotations

import signal
from typing import Any


class StopRequest:
    """Context manager installing the handlers; ``signal`` is the first signal received, or None."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the final checkpoint
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else "a signal"
