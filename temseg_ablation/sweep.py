"""Sweep-level bookkeeping: one MLflow parent run per multirun, a status file per job, a summary.

Jobs may run in other processes (parallel launcher, SLURM), so everything they share goes
through files in the sweep folder: the parent run id, and one ``job_status.json`` per job.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

PARENT_FILE = ".mlflow_parent_run"
STATUS_FILE = "job_status.json"

#: Summary of the last sweep run in this process (read by ``__main__`` for the exit status).
LAST_SUMMARY: pd.DataFrame | None = None
#: (tracking uri, experiment, parent run id) of the sweep in progress in this process.
ACTIVE_PARENT: tuple[str, str, str] | None = None


def parent_run_id(sweep_dir: str | Path) -> str | None:
    """The sweep's parent run id, or None outside a sweep."""
    path = Path(sweep_dir) / PARENT_FILE
    return path.read_text().strip() if path.exists() else None


def write_status(job_dir: Path, record: dict[str, Any]) -> None:
    """Record a job's outcome where the sweep summary will find it."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / STATUS_FILE).write_text(json.dumps(record, indent=1, default=str))


def collect_statuses(sweep_dir: str | Path) -> pd.DataFrame:
    """All job status records of a sweep folder, ordered by job number."""
    rows = [json.loads(p.read_text()) for p in Path(sweep_dir).glob(f"*/{STATUS_FILE}")]
    df = pd.DataFrame(rows)
    return df.sort_values("job_num").reset_index(drop=True) if len(df) else df


def _tracker(config: DictConfig):
    from .build import absolute, absolute_uri
    from .tracking.mlflow_store import Tracker, prepare_store

    uri = absolute_uri(str(config.logger.tracking_uri))
    prepare_store(uri)
    art = config.logger.get("artifact_location")
    art = str(absolute(art)) if art and "://" not in str(art) else art
    return Tracker(uri, str(config.logger.experiment_name), artifact_location=art)


def end_parent(status: str) -> None:
    """Close the active sweep's parent run (used on Ctrl-C and crashes)."""
    global ACTIVE_PARENT
    if ACTIVE_PARENT is None:
        return
    from .tracking.mlflow_store import Tracker

    uri, experiment, run_id = ACTIVE_PARENT
    try:
        Tracker(uri, experiment, retry_timeout_s=10).set_status(run_id, status)
    except Exception as err:  # noqa: BLE001
        log.warning("could not close sweep run %s: %s", run_id, err)
    ACTIVE_PARENT = None


class SweepCallback(Callback):
    """Creates the parent run before the jobs and writes the summary after them."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:  # noqa: D102
        global ACTIVE_PARENT
        from .tracking.mlflow_store import TAG_KIND, TAG_SWEEP

        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        tracker = _tracker(config)
        overrides = " ".join(config.hydra.overrides.task)
        run_id = tracker.create_run(
            f"sweep {sweep_dir.name}", {TAG_KIND: "sweep", TAG_SWEEP: str(sweep_dir.resolve()),
                                        "temseg.overrides": overrides[:5000]})
        (sweep_dir / PARENT_FILE).write_text(run_id)
        ACTIVE_PARENT = (tracker.uri, str(config.logger.experiment_name), run_id)
        self._start = time.time()
        log.info("sweep %s: MLflow parent run %s", sweep_dir, run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:  # noqa: D102
        global LAST_SUMMARY
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = collect_statuses(sweep_dir)
        LAST_SUMMARY = summary
        run_id = parent_run_id(sweep_dir)
        if len(summary):
            summary.to_csv(sweep_dir / "summary.csv", index=False)
            cols = [c for c in ("job_num", "job_name", "status", "run_id", "f1_otsu", "seconds",
                                "error") if c in summary.columns]
            print("\nSweep summary (" + str(sweep_dir) + "):\n" + summary[cols].to_string(index=False))
        failed = int((summary["status"] == "failed").sum()) if len(summary) else 0
        if run_id:
            tracker = _tracker(config)
            counts = summary["status"].value_counts().to_dict() if len(summary) else {}
            tracker.log_metrics(run_id, {f"jobs_{k}": float(v) for k, v in counts.items()}
                                | {"sweep_seconds": time.time() - getattr(self, "_start", time.time())})
            if len(summary):
                tracker.log_artifact(run_id, sweep_dir / "summary.csv")
            tracker.set_status(run_id, "FAILED" if failed else "FINISHED")
        global ACTIVE_PARENT
        ACTIVE_PARENT = None
        if failed:
            names = ", ".join(summary.loc[summary["status"] == "failed", "job_name"].astype(str))
            log.error("%d of %d sweep jobs failed: %s", failed, len(summary), names)
