"""Parallel-launcher workers die with their launcher instead of training on as orphans."""

from __future__ import annotations

import _thread
import logging
import os
import threading
import time

log = logging.getLogger("temseg_ablation")

_started_for: int | None = None


def die_with_parent(poll_s: float = 1.0, grace_s: float = 60.0) -> None:
    """Stop this process when its parent (the sweep's launcher) is gone.

    A daemon thread polls the parent pid; once the process has been re-parented (the launcher
    was SIGKILLed or crashed) it raises ``KeyboardInterrupt`` in the main thread, so the running
    job is marked KILLED and its checkpoint kept as after Ctrl-C, and after ``grace_s`` seconds
    exits hard. Started once per process (pool workers run many jobs); a rerun resumes the job.
    """
    global _started_for
    parent = os.getppid()
    if _started_for == parent or parent == 1:
        return
    _started_for = parent

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log.error("the sweep's launcher (pid %d) is gone: stopping this job; run the same "
                  "command again to resume it", parent)
        _thread.interrupt_main()
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()
