"""A launch stopped by a signal: Ctrl-C (SIGINT), `kill` (SIGTERM) or a closed terminal (SIGHUP).

Python turns only SIGINT into KeyboardInterrupt; left at their defaults, SIGTERM and SIGHUP would end the
launcher at once and leave its local jobs running, orphaned, with state.json saying "running". Inside
`stop_on_signals()` all three raise `Interrupted`, a KeyboardInterrupt, so that one path stops the jobs in flight
and records why.
"""
from __future__ import annotations

import contextlib
import signal
from types import FrameType
from typing import Iterator

HANDLED = (signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def cause(exc: KeyboardInterrupt) -> str:
    """What stopped the launch, in words for state.json: 'Ctrl-C' (Python's own KeyboardInterrupt), else the name of
    the signal that raised Interrupted."""
    return signal.Signals(exc.signum).name if isinstance(exc, Interrupted) else "Ctrl-C"


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Interrupted while the block runs (main thread only; elsewhere a no-op)."""
    previous = {}
    with contextlib.suppress(ValueError):  # signal.signal outside the main thread
        for signum in HANDLED:
            previous[signum] = signal.signal(signum, _raise)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
