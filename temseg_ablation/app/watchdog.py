"""Parallel-launcher workers die with their launcher instead of training on as orphans."""

from __future__ import annotations

import _thread
import logging
import os
import signal
import sys
import threading
import time
import traceback

log = logging.getLogger("temseg_ablation")

_started_for: int | None = None
_taken = threading.Event()


def interrupt_taken() -> None:
    """Tell the watchdog that the job caught its interrupt and is cleaning up (no more resends)."""
    _taken.set()


def die_with_parent(poll_s: float = 1.0, grace_s: float = 60.0, resend_s: float = 5.0) -> None:
    """Stop this process when its parent (the sweep's launcher) is gone.

    A daemon thread polls the parent pid; once the process has been re-parented (the launcher
    was SIGKILLed or crashed) it raises ``KeyboardInterrupt`` in the main thread, so the running
    job is marked KILLED and its checkpoint kept as after Ctrl-C, and after ``grace_s`` seconds
    exits hard. The interrupt is sent again every ``resend_s`` seconds until the job reports
    it taken (``interrupt_taken``), so one that lands where nobody looks is not the end of it.
    Started once per process (pool workers run many jobs); a rerun resumes the job.
    """
    global _started_for
    parent = os.getppid()
    if _started_for == parent or parent == 1:
        return
    _started_for = parent
    # interrupt_main() does nothing while SIGINT is ignored, and a worker inherits SIG_IGN from
    # a sweep started in the background (`cmd &`, `nohup cmd &`): the job gets Python's own
    # handler back, or the launcher's death would leave its run RUNNING
    if (threading.current_thread() is threading.main_thread()
            and not callable(signal.getsignal(signal.SIGINT))):
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log.error("the sweep's launcher (pid %d) is gone: stopping this job; run the same "
                  "command again to resume it", parent)
        deadline = time.monotonic() + grace_s
        while not _taken.is_set() and time.monotonic() < deadline:
            _thread.interrupt_main()
            _taken.wait(resend_s)
        if not _taken.is_set():
            # the run stays RUNNING until the next run of the sweep marks it KILLED; where the
            # main thread was tells why the interrupts had no effect
            log.error("the job did not stop within %.0f s of the launcher's end; exiting hard "
                      "(SIGINT handler %r). Main thread at:\n%s", grace_s,
                      signal.getsignal(signal.SIGINT), _main_stack())
        time.sleep(max(0.0, deadline - time.monotonic()))
        os._exit(1)

    threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()


def _main_stack() -> str:
    """The main thread's current Python stack, innermost call last."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    return "".join(traceback.format_stack(frame)) if frame is not None else "(unknown)"
