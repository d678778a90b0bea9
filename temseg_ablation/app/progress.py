"""One sweep-level progress line (jobs done / running / failed, elapsed, ETA) while a sweep runs.

Jobs of one sweep may train side by side in other processes, whose own progress bars would
interleave into one unreadable line; their bars are off and their epoch lines go to each job's
log file. What the terminal shows instead is counted from the job folders: a job that wrote its
status file is over, a job folder Hydra touched since the sweep started without one is running.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: File each job writes when it ends (shared with :mod:`.sweep`, which owns its content).
STATUS_FILE = "job_status.json"
#: Job outcomes that mean "this configuration has a finished run".
DONE = ("finished", "skipped")
#: Job outcomes that mean "this job ended without one".
FAILED = ("failed", "killed")
#: ``0`` turns the app's own progress line off (a caller that prints one itself sets it).
PROGRESS_ENV = "TEMSEG_SWEEP_PROGRESS"
#: Seconds between two looks at the sweep folder.
POLL_ENV = "TEMSEG_SWEEP_PROGRESS_S"
#: A line with unchanged counts is repeated this often, as a sign of life with the elapsed time.
REMIND_S = 300.0


@dataclass(frozen=True)
class SweepProgress:
    """Counts of a sweep's jobs since it started, and the time it has taken."""

    done: int
    running: int
    failed: int
    total: int | None
    elapsed_s: float

    @property
    def eta_s(self) -> float | None:
        """Remaining time at the pace of the jobs completed so far; None before the first."""
        completed = self.done + self.failed
        if not self.total or not completed:
            return None
        return self.elapsed_s / completed * max(0, self.total - completed)

    def line(self) -> str:
        """``'jobs 12/80 done, 2 running, 0 failed, elapsed 5m, ETA 40m'``."""
        total = str(self.total) if self.total else "?"
        eta = self.eta_s
        return (f"jobs {self.done}/{total} done, {self.running} running, {self.failed} failed, "
                f"elapsed {_minutes(self.elapsed_s)}" + (f", ETA {_minutes(eta)}" if eta is not None
                                                          else ""))


def _minutes(seconds: float) -> str:
    m = int(round(seconds / 60))
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m"


def sweep_progress(sweep_dir: Path, started: float, total: int | None = None,
                   now: float | None = None) -> SweepProgress:
    """Progress of the sweep in ``sweep_dir`` started at ``started`` (epoch seconds).

    Status files older than ``started`` belong to an earlier call on the same folder and are
    ignored; a job folder touched since ``started`` without a fresh status is running.
    """
    now = time.time() if now is None else now
    done = failed = running = 0
    folders = [p for p in Path(sweep_dir).glob("*") if p.is_dir() and not p.name.startswith(".")]
    for folder in folders:
        status = folder / STATUS_FILE
        if status.is_file() and status.stat().st_mtime >= started - 1:
            try:
                state = json.loads(status.read_text()).get("status")
            except (OSError, ValueError):
                state = None  # being written right now
            if state in DONE:
                done += 1
            elif state in FAILED:
                failed += 1
            continue
        # Hydra writes .hydra/config.yaml when a job starts (also into a reused folder)
        marks = [folder, folder / ".hydra" / "config.yaml"]
        if max((m.stat().st_mtime for m in marks if m.exists()), default=0) >= started - 1:
            running += 1
    return SweepProgress(done, running, failed, total, now - started)


def count_sweep_jobs(overrides: Sequence[str], params: dict[str, Any] | None = None,
                     config_loader: Any = None) -> int | None:
    """Number of jobs Hydra's basic sweeper makes of ``params`` (``hydra.sweeper.params``) and
    the command-line ``overrides``; None when they cannot be expanded here (a ``glob`` without a
    config loader, a sweeper-specific syntax)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [f"{k}={v}" for k, v in (params or {}).items()] + list(overrides)
    try:
        parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(arguments)
        return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))
    except Exception:  # noqa: BLE001 - an unknown total only drops the ETA from the line
        return None


class ProgressTicker:
    """Prints the sweep's progress line from a background thread while the jobs run elsewhere.

    A line is printed when the counts change, and every :data:`REMIND_S` seconds regardless;
    :meth:`stop` prints the final line.
    """

    def __init__(self, sweep_dir: Path, total: int | None, poll_s: float = 30.0,
                 write: Callable[[str], None] | None = None) -> None:
        self.sweep_dir, self.total, self.poll_s = Path(sweep_dir), total, float(poll_s)
        self.started = time.time()
        self._write = write or (lambda s: print(s, file=sys.stdout, flush=True))
        self._stop = threading.Event()
        self._last, self._last_at = "", self.started
        self._thread = threading.Thread(target=self._run, name="sweep-progress", daemon=True)

    def start(self) -> ProgressTicker:
        """Start printing; returns self."""
        self._thread.start()
        return self

    def tick(self, force: bool = False) -> str:
        """Print the current line if it changed (or ``force``); returns it."""
        line = sweep_progress(self.sweep_dir, self.started, self.total).line()
        counts = line.split(", elapsed")[0]
        if force or counts != self._last.split(", elapsed")[0] or \
                time.time() - self._last_at >= REMIND_S:
            self._write("progress: " + line)
            self._last, self._last_at = line, time.time()
        return line

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.tick()
            except OSError:
                pass  # a job folder vanished between listing and reading: next poll

    def cancel(self) -> None:
        """Stop the thread without a final line (the sweep was interrupted)."""
        self._stop.set()

    def stop(self) -> None:
        """Stop the thread and print the final line."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.tick(force=True)


def ticker_enabled() -> bool:
    """False when the caller prints the progress line itself (:data:`PROGRESS_ENV` = 0)."""
    return os.environ.get(PROGRESS_ENV, "1") != "0"


def poll_seconds(default: float = 30.0) -> float:
    """Seconds between looks at the sweep folder (:data:`POLL_ENV`, for tests and dashboards)."""
    try:
        return max(0.1, float(os.environ.get(POLL_ENV, default)))
    except ValueError:
        return default
