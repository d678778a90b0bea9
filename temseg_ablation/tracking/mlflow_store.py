"""MLflow bookkeeping: the store, sweep parent runs, one child run per job, skip and resume."""

from __future__ import annotations

import logging
import math
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

T = TypeVar("T")

TAG_HASH = "temseg.config_hash"
TAG_KIND = "temseg.kind"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_SWEEP = "temseg.sweep_dir"
TAG_CHECKPOINT = "temseg.checkpoint_dir"


def with_retry(fn: Callable[[], T], *, what: str, timeout_s: float = 60.0, first_wait_s: float = 0.5) -> T:
    """Call ``fn`` until it succeeds or ``timeout_s`` passes, waiting longer after each failure.

    Transient tracking-server outages and "database is locked" errors from parallel sqlite
    writers both end up here; the last error is raised when time runs out.
    """
    deadline = time.monotonic() + timeout_s
    wait = first_wait_s
    while True:
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - any backend error may be transient
            if time.monotonic() + wait > deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, str(err).splitlines()[0][:200], wait)
            time.sleep(wait)
            wait = min(wait * 2, 10.0)


class Tracker:
    """Thin, retrying wrapper over ``MlflowClient`` for one experiment."""

    def __init__(self, tracking_uri: str, experiment_name: str,
                 artifact_location: str | None = None, retry_timeout_s: float = 60.0) -> None:
        self.uri = tracking_uri
        self.retry_timeout_s = retry_timeout_s
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._retry(
            lambda: self._experiment(experiment_name, artifact_location), "open experiment"
        )

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        return with_retry(fn, what=what, timeout_s=self.retry_timeout_s)

    def _experiment(self, name: str, artifact_location: str | None) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location)
        except Exception:  # created by a parallel job in the meantime
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    # ----------------------------------------------------------------- runs
    def create_run(self, name: str, tags: dict[str, str], parent_id: str | None = None) -> str:
        """Create a RUNNING run (nested under ``parent_id`` when given) and return its id."""
        tags = {TAG_RUN_NAME: name, **tags}
        if parent_id:
            tags[TAG_PARENT] = parent_id
        run = self._retry(
            lambda: self.client.create_run(self.experiment_id, tags=tags, run_name=name), "create run"
        )
        return run.info.run_id

    def set_status(self, run_id: str, status: str) -> None:
        """Set RUNNING / FINISHED / FAILED / KILLED (end time set for terminal states)."""
        if status == "RUNNING":
            self._retry(lambda: self.client.update_run(run_id, status="RUNNING"), "update run")
        else:
            self._retry(lambda: self.client.set_terminated(run_id, status=status), "end run")

    def runs_with_hash(self, config_hash: str) -> list[Any]:
        """Job runs of this experiment tagged with ``config_hash``, newest first."""
        query = f"tags.`{TAG_HASH}` = '{config_hash}' and tags.`{TAG_KIND}` = 'job'"
        return self._retry(
            lambda: self.client.search_runs([self.experiment_id], query,
                                            order_by=["attributes.start_time DESC"], max_results=50),
            "search runs",
        )

    def finished_run(self, config_hash: str) -> Any | None:
        """The newest FINISHED run of this exact config, if any."""
        for run in self.runs_with_hash(config_hash):
            if run.info.status == RunStatus.to_string(RunStatus.FINISHED):
                return run
        return None

    def resumable_run(self, config_hash: str) -> Any | None:
        """The newest unfinished (RUNNING, FAILED or KILLED) run of this config, if any."""
        for run in self.runs_with_hash(config_hash):
            if run.info.status != RunStatus.to_string(RunStatus.FINISHED):
                return run
        return None

    # ----------------------------------------------------------------- logging
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Log flattened params (values cut to MLflow's length limit), 100 per request."""
        existing = self._retry(lambda: self.client.get_run(run_id), "get run").data.params
        items = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):
            chunk = items[i:i + 100]
            self._retry(lambda c=chunk: self.client.log_batch(run_id, params=c), "log params")

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        """Set several tags in one request."""
        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        self._retry(lambda: self.client.log_batch(run_id, tags=items), "set tags")

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Log finite scalar metrics at ``step``, 1000 per request."""
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        for i in range(0, len(items), 1000):
            chunk = items[i:i + 1000]
            self._retry(lambda c=chunk: self.client.log_batch(run_id, metrics=c), "log metrics")

    def log_series(self, run_id: str, key: str, values: Iterable[float], steps: Iterable[int]) -> None:
        """Log one metric as a series over ``steps`` (e.g. F1 stepped by threshold x 100)."""
        now = int(time.time() * 1000)
        items = [Metric(key, float(v), now, int(s)) for v, s in zip(values, steps, strict=True)
                 if math.isfinite(float(v))]
        if items:
            self._retry(lambda: self.client.log_batch(run_id, metrics=items), "log series")

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload one file."""
        self._retry(lambda: self.client.log_artifact(run_id, str(path), artifact_path), "log artifact")


def prepare_store(tracking_uri: str) -> None:
    """Create the sqlite schema once, before any parallel writer or DDP rank touches it."""
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    with_retry(lambda: MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1),
               what="open tracking store", timeout_s=120.0)


def git_commit(cwd: str | Path | None = None) -> str:
    """Current git commit (with ``-dirty`` when the tree has changes), or ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
