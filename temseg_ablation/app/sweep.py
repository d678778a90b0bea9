"""Sweep-level bookkeeping: one MLflow parent run per multirun, a status file per job, a summary.

Jobs may run in other processes (parallel launcher, SLURM), so everything they share goes
through files in the sweep folder: the parent run id, and one ``job_status.json`` per job.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ..data.writers import atomic_write
from ..tracking.mlflow_store import Tracker, one_line, prepare_store, process_alive, process_token
from ..tracking.tags import TAG_KIND, TAG_OVERRIDES, TAG_PROCESS, TAG_REUSED, TAG_SWEEP
from .build import ConfigError, build_tracker, retry_timeout, tracking_uri
from .preflight import OutputPathError, preflight
from .progress import STATUS_FILE, ProgressTicker, count_sweep_jobs, poll_seconds, ticker_enabled
from .validate import validate_config

log = logging.getLogger(__name__)

PARENT_FILE = ".mlflow_parent_run"


@dataclass
class SweepState:
    """What the sweep in progress in this process shares between Hydra's callback and ``main``.

    ``active``: (tracking uri, experiment, parent run id, sweep dir) of the open parent run;
    ``summary``: the last finished sweep's job table (read by ``main`` for the exit status);
    ``single``: the status of a single (non-multirun) job run in this process;
    ``ticker``: the sweep's progress line (:mod:`.progress`).
    """

    active: tuple[str, str, str, str] | None = None
    summary: pd.DataFrame | None = None
    single: str | None = None
    ticker: ProgressTicker | None = None

    def end_parent(self, status: str) -> None:
        """Close the active sweep's parent run and any of its job runs still RUNNING (used on
        Ctrl-C and crashes, when worker processes may have died before closing their runs)."""
        if self.ticker is not None:
            self.ticker.cancel()
        if self.active is None:
            return
        uri, experiment, run_id, sweep_dir = self.active
        self.active = None
        try:
            tracker = Tracker(uri, experiment, retry_timeout_s=10)
            for child in tracker.running_jobs(run_id, sweep_dir):
                tracker.set_status(child.info.run_id, "KILLED" if status == "KILLED" else "FAILED")
            tracker.set_status(run_id, status)
        except BaseException as err:  # noqa: BLE001 - e.g. a second Ctrl-C; the sweep is over anyway
            log.warning("could not close sweep run %s: %s", run_id, err)


#: The one sweep state of this process (Hydra instantiates the callback, ``main`` reads it).
STATE = SweepState()


def parent_run_id(sweep_dir: str | Path) -> str | None:
    """The sweep's parent run id, or None outside a sweep."""
    path = Path(sweep_dir) / PARENT_FILE
    return path.read_text().strip() if path.exists() else None


def write_status(job_dir: Path, record: dict[str, Any]) -> None:
    """Record a job's outcome where the sweep summary will find it (atomically; on a full disk
    a warning, since the job's MLflow run already holds its outcome)."""
    text = json.dumps(record, indent=1, default=str)
    try:
        job_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(job_dir / STATUS_FILE, lambda tmp: Path(tmp).write_text(text))
    except OSError as err:
        log.warning("could not write %s (%s): the sweep summary will miss job %s",
                    job_dir / STATUS_FILE, err, record.get("job_name"))


def collect_statuses(sweep_dir: str | Path) -> pd.DataFrame:
    """All job status records of a sweep folder, ordered by job number."""
    rows = [json.loads(p.read_text()) for p in Path(sweep_dir).glob(f"*/{STATUS_FILE}")]
    df = pd.DataFrame(rows)
    return df.sort_values("job_num").reset_index(drop=True) if len(df) else df


def reused_runs(summary: pd.DataFrame, limit: int = 5000) -> str:
    """Comma-separated ``job_name=run_id`` of the skipped (already finished) jobs of a summary.

    Cut at ``limit`` characters (MLflow tag values are bounded) with a pointer to summary.csv.
    """
    if not {"status", "run_id", "job_name"} <= set(summary.columns):
        return ""
    rows = summary.loc[summary["status"] == "skipped"]
    text = ",".join(f"{name}={rid}" for name, rid in
                    zip(rows["job_name"], rows["run_id"], strict=True) if isinstance(rid, str))
    if len(text) > limit:
        cut = text.rfind(",", 0, limit)  # after the last whole entry; -1: none fits
        text = (text[:cut] + "," if cut > 0 else "") + "... (all in summary.csv)"
    return text


def _tracker(config: DictConfig) -> Tracker:
    prepare_store(tracking_uri(config), retry_timeout(config))
    return build_tracker(config)


def end_parent(status: str) -> None:
    """Close the active sweep's parent run (see ``SweepState.end_parent``)."""
    STATE.end_parent(status)


def close_stale_sweeps(tracker) -> list[str]:
    """Mark RUNNING sweep runs whose process died (SIGKILL, power loss) as KILLED, with their
    RUNNING job runs; returns their ids. Sweeps of other hosts are left alone."""
    query = f"tags.`{TAG_KIND}` = 'sweep' and attributes.status = 'RUNNING'"
    closed = []
    try:
        for run in tracker.client.search_runs([tracker.experiment_id], query, max_results=200):
            token = run.data.tags.get(TAG_PROCESS, "")
            if token and process_alive(token) is False:
                for child in tracker.running_jobs(run.info.run_id,
                                                  run.data.tags.get(TAG_SWEEP) or None):
                    # a job resumed by a live sweep keeps its first parent: leave it alone
                    if process_alive(child.data.tags.get(TAG_PROCESS, "")) is not True:
                        tracker.set_status(child.info.run_id, "KILLED")
                tracker.set_status(run.info.run_id, "KILLED")
                closed.append(run.info.run_id)
    except Exception as err:  # noqa: BLE001 - housekeeping must not stop a sweep
        log.warning("could not close stale sweep runs: %s", str(err).splitlines()[0][:200])
    if closed:
        log.info("marked %d sweep runs of dead processes as KILLED: %s", len(closed), ", ".join(closed))
    return closed


def _fail(message: str) -> None:
    """Stop the command with one line on stderr and exit status 2.

    Hydra turns exceptions raised by callbacks into warnings and goes on; SystemExit is the
    one way to stop it before folders are created and jobs start.
    """
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _check_or_exit(config: DictConfig) -> None:
    """Config values, output folders and the tracking store, checked before any run exists."""
    try:
        validate_config(config)
        preflight(config)
    except (OutputPathError, ConfigError) as err:
        _fail(str(err))
    uri = tracking_uri(config)
    timeout = min(retry_timeout(config), float(config.logger.get("connect_timeout_s", 15)))
    try:
        prepare_store(uri, timeout)
    except Exception as err:  # noqa: BLE001 - whatever the store says, it is one line here
        _fail(f"tracking store {uri} cannot be opened ({one_line(err, 200)}); start it "
              "(make server) or point logger.tracking_uri at one that answers")


def _in_process(config: DictConfig) -> bool:
    """Whether the launcher runs the jobs one after another in this process."""
    return "BasicLauncher" in str(OmegaConf.select(config, "hydra.launcher._target_", default=""))


def _job_count(config: DictConfig) -> int | None:
    """How many jobs this multirun launches (None when it cannot be told in advance)."""
    from hydra.core.global_hydra import GlobalHydra

    sweeper = OmegaConf.select(config, "hydra.sweeper", default=None)
    if sweeper is None or "BasicSweeper" not in str(sweeper.get("_target_", "")):
        return None
    params = sweeper.get("params")
    params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
    hydra_ = GlobalHydra.instance()
    loader = hydra_.config_loader() if hydra_.is_initialized() else None
    return count_sweep_jobs(list(config.hydra.overrides.task), params, loader)


class SweepCallback(Callback):
    """Checks config, output folders and the store before anything starts, creates the parent
    run before the jobs and writes the summary after them."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:  # noqa: D102
        _check_or_exit(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:  # noqa: D102
        _check_or_exit(config)
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            tracker = _tracker(config)
            close_stale_sweeps(tracker)
            overrides = " ".join(config.hydra.overrides.task)
            run_id = tracker.create_run(
                f"sweep {sweep_dir.name}", {TAG_KIND: "sweep", TAG_SWEEP: str(sweep_dir.resolve()),
                                            TAG_OVERRIDES: overrides[:5000],
                                            TAG_PROCESS: process_token()})
            (sweep_dir / PARENT_FILE).write_text(run_id)
        except Exception as err:  # noqa: BLE001 - without a parent run the sweep must not start
            _fail(f"could not start the sweep's parent run in {tracking_uri(config)} "
                  f"({one_line(err, 200)}); nothing was trained")
        STATE.active = (tracker.uri, str(config.logger.experiment_name), run_id,
                        str(sweep_dir.resolve()))
        self._start = time.time()
        log.info("sweep %s: MLflow parent run %s", sweep_dir, run_id)
        # the ticker (a thread) lives in STATE, not on this callback: the parallel launcher
        # pickles the callbacks to its workers
        STATE.ticker = None
        if ticker_enabled():
            try:
                STATE.ticker = ProgressTicker(sweep_dir, _job_count(config), poll_seconds())
            except Exception as err:  # noqa: BLE001 - the sweep runs fine without its line
                log.warning("no sweep progress line (%s)", one_line(err, 200))
            if STATE.ticker is not None and not _in_process(config):
                STATE.ticker.start()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:  # noqa: D102
        # jobs that run in this process (basic launcher) keep their own bar: one line between jobs
        if STATE.ticker is not None and _in_process(config):
            STATE.ticker.tick(force=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:  # noqa: D102
        if STATE.ticker is not None and not _in_process(config):
            STATE.ticker.stop()
        STATE.ticker = None
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = collect_statuses(sweep_dir)
        STATE.summary = summary
        run_id = parent_run_id(sweep_dir)
        if len(summary):
            summary.to_csv(sweep_dir / "summary.csv", index=False)
            cols = [c for c in ("job_num", "job_name", "status", "run_id", "f1_otsu", "seconds",
                                "error") if c in summary.columns]
            print("\nSweep summary (" + str(sweep_dir) + "):\n" + summary[cols].to_string(index=False))
        failed = int((summary["status"] == "failed").sum()) if len(summary) else 0
        if run_id:
            try:
                tracker = _tracker(config)
                counts = summary["status"].value_counts().to_dict() if len(summary) else {}
                tracker.log_metrics(run_id, {f"jobs_{k}": float(v) for k, v in counts.items()}
                                    | {"sweep_seconds": time.time() - getattr(self, "_start", time.time())})
                if len(summary):
                    tracker.log_artifact(run_id, sweep_dir / "summary.csv")
                    reused = reused_runs(summary)
                    if reused:
                        tracker.set_tags(run_id, {TAG_REUSED: reused})
                tracker.set_status(run_id, "FAILED" if failed else "FINISHED")
            except Exception as err:  # noqa: BLE001 - the jobs' own results are safe already
                log.warning("could not close sweep run %s in the tracking store (%s); "
                            "summary in %s", run_id, str(err).splitlines()[0][:200], sweep_dir)
        STATE.active = None
        if failed:
            names = ", ".join(summary.loc[summary["status"] == "failed", "job_name"].astype(str))
            log.error("%d of %d sweep jobs failed: %s", failed, len(summary), names)
        spooled = summary.loc[summary["status"] == "spooled"] if len(summary) else summary
        if len(spooled):
            log.error("%d sweep jobs trained but could not reach the tracking store; their results "
                      "wait on disk: deliver them with `python -m temseg_ablation.tracking.upload "
                      "%s` (or rerun this sweep)", len(spooled), config.paths.checkpoint_dir)
