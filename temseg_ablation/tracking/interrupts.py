"""Hold Ctrl-C back while one write to a local tracking database is in progress."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

_HOLDING = "_temseg_holds_sigint"


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Run the block with SIGINT held; a SIGINT that arrived meanwhile is raised at its end.

    A ``KeyboardInterrupt`` (Ctrl-C, or the launcher watchdog's ``_thread.interrupt_main``)
    that lands inside an sqlite transaction leaves that transaction and its write lock behind
    in the process, so the run's own KILLED status then fails with "database is locked".
    Holding the signal for the length of one write (milliseconds) avoids that. Outside the
    main thread, or when SIGINT is ignored or already held by an outer block, it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous) or getattr(previous, _HOLDING, False):
        yield
        return
    caught: list[tuple[int, FrameType | None]] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        caught.append((signum, frame))

    setattr(hold, _HOLDING, True)
    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            handler: Any = previous
            handler(*caught[0])
