"""MLflow bookkeeping: the store, sweep parent runs, one child run per job, skip and resume."""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from . import queries
from .interrupts import sigint_deferred
from .tags import (  # noqa: F401 - re-exported: callers import the tags from here too
    TAG_CHECKPOINT,
    TAG_HASH,
    TAG_KIND,
    TAG_PARENT,
    TAG_PROCESS,
    TAG_RUN_NAME,
    TAG_SWEEP,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Defaults for MLflow's own HTTP client. Its stock policy (7 retries, up to minutes per call)
#: would freeze training while a server is down; ``with_retry`` and the outbox retry instead.
HTTP_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}

DEFAULT_RETRY_TIMEOUT_S = 120.0


def _http_status(err: BaseException) -> int | None:
    if isinstance(err, MlflowException):
        return int(err.get_http_status_code())
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    return int(status) if isinstance(status, int) else None


def is_transient(err: BaseException) -> bool:
    """True for errors that may go away by themselves: server down or busy, sqlite locked, I/O."""
    status = _http_status(err)
    if status is not None:
        return status >= 500 or status in (408, 429)
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False  # a local file problem: waiting does not fix it
    if isinstance(err, (OSError, ConnectionError, TimeoutError)):
        return True
    return type(err).__module__.split(".")[0] in ("requests", "urllib3", "sqlalchemy", "sqlite3")


def is_auth_error(err: BaseException) -> bool:
    """True when the tracking server refused the credentials (HTTP 401 / 403)."""
    return _http_status(err) in (401, 403)


def one_line(err: BaseException, limit: int = 300) -> str:
    """First line of an exception's message, cut to ``limit`` characters."""
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:limit]


def with_retry(fn: Callable[[], T], *, what: str, timeout_s: float = 60.0, first_wait_s: float = 0.5,
               hold_sigint: bool = False) -> T:
    """Call ``fn`` until it succeeds or ``timeout_s`` passes, waiting longer after each failure.

    Transient tracking-server outages and "database is locked" errors from parallel sqlite
    writers end up here; errors that cannot go away by waiting (a rejected request, bad
    credentials) are raised at once, and the last transient one when time runs out. With
    ``hold_sigint`` a Ctrl-C waits for the end of the attempt in progress (never the waits
    between attempts), so it cannot cut a local database transaction in half.
    """
    deadline = time.monotonic() + timeout_s
    wait = first_wait_s
    while True:
        try:
            if not hold_sigint:
                return fn()
            with sigint_deferred():
                return fn()
        except Exception as err:
            if not is_transient(err) or time.monotonic() + wait > deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, one_line(err, 200), wait)
            time.sleep(wait)
            wait = min(wait * 2, 10.0)


class _LockedRetryFilter(logging.Filter):
    """Drop MLflow's traceback for a "database is locked" error: ``with_retry`` retries those."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and "database is locked" in str(exc))


_DB_LOGGER = "mlflow.store.db.utils"
if not any(isinstance(f, _LockedRetryFilter) for f in logging.getLogger(_DB_LOGGER).filters):
    logging.getLogger(_DB_LOGGER).addFilter(_LockedRetryFilter())


def configure_client(tracking_uri: str) -> None:
    """Give MLflow's HTTP client short, non-retrying calls (unless the user set them)."""
    if tracking_uri.startswith(("http://", "https://")):
        for key, value in HTTP_CLIENT_DEFAULTS.items():
            os.environ.setdefault(key, value)


def artifact_location_for(tracking_uri: str, artifact_location: str | None) -> str | None:
    """Where new experiments keep artifacts: the configured folder for a local store, or
    ``None`` for a tracking server, which then stores them itself (proxied artifacts)."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    return artifact_location or None


def search_literal(value: str) -> str | None:
    """``value`` as an MLflow search string literal, or None when it cannot be written as one
    (MLflow's filter syntax has no escapes: a value holding both quote kinds is unsearchable)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


class Tracker:
    """Thin, retrying wrapper over ``MlflowClient`` for one experiment."""

    def __init__(self, tracking_uri: str, experiment_name: str,
                 artifact_location: str | None = None,
                 retry_timeout_s: float = DEFAULT_RETRY_TIMEOUT_S) -> None:
        configure_client(tracking_uri)
        self.uri = tracking_uri
        # an interrupted sqlite transaction keeps its lock in this process (see interrupts.py)
        self._local_db = tracking_uri.startswith("sqlite:")
        self.experiment_name = experiment_name
        self.retry_timeout_s = retry_timeout_s
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._retry(
            lambda: self._experiment(experiment_name, artifact_location_for(tracking_uri,
                                                                            artifact_location)),
            "open experiment",
        )

    def with_timeout(self, retry_timeout_s: float) -> Tracker:
        """The same tracker (same client and experiment) with another retry budget."""
        other = copy.copy(self)
        other.retry_timeout_s = retry_timeout_s
        return other

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        return with_retry(fn, what=what, timeout_s=self.retry_timeout_s, hold_sigint=self._local_db)

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

    def get_run(self, run_id: str) -> Any:
        """The run (info, params, metrics, tags)."""
        return self._retry(lambda: self.client.get_run(run_id), "get run")

    def running_jobs(self, parent_id: str, sweep_dir: str | None = None) -> list[Any]:
        """RUNNING job runs nested under ``parent_id`` or (resumed runs keep their first
        parent) last started by the sweep in ``sweep_dir``."""
        queries = [f"tags.`{TAG_PARENT}` = '{parent_id}'"]
        literal = search_literal(sweep_dir) if sweep_dir else None
        if literal:
            queries.append(f"tags.`{TAG_SWEEP}` = {literal}")
        runs: dict[str, Any] = {}
        for q in queries:
            found = self._retry(lambda q=q: self.client.search_runs(
                [self.experiment_id], f"{q} and attributes.status = 'RUNNING'", max_results=1000),
                "search runs")
            runs.update({r.info.run_id: r for r in found})
        return list(runs.values())

    def runs_with_hash(self, config_hash: str) -> list[Any]:
        """Job runs of this experiment tagged with ``config_hash``, newest first."""
        query = f"tags.`{TAG_HASH}` = '{config_hash}' and tags.`{TAG_KIND}` = 'job'"
        return self._retry(
            lambda: self.client.search_runs([self.experiment_id], query,
                                            order_by=["attributes.start_time DESC"], max_results=50),
            "search runs",
        )

    def finished_run(self, config_hash: str) -> Any | None:
        """The newest FINISHED run of this exact config, if any (``queries.finished_run``)."""
        return self._retry(lambda: queries.finished_run(self.client, self.experiment_id,
                                                        config_hash), "search runs")

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

    def log_inputs(self, run_id: str, datasets: Sequence[dict[str, Any]]) -> None:
        """Log data sets as the run's inputs (MLflow's Datasets panel): dicts with ``name``,
        ``digest``, ``source_type``, ``source``, optional ``schema`` / ``profile`` (JSON-able)
        and ``context`` (the ``mlflow.data.context`` input tag)."""
        inputs = [DatasetInput(
            Dataset(str(d["name"]), str(d["digest"]), str(d["source_type"]), str(d["source"]),
                    schema=json.dumps(d["schema"]) if d.get("schema") is not None else None,
                    profile=json.dumps(d["profile"]) if d.get("profile") is not None else None),
            tags=[InputTag("mlflow.data.context", str(d["context"]))] if d.get("context") else [])
            for d in datasets]
        if inputs:
            self._retry(lambda: self.client.log_inputs(run_id, datasets=inputs), "log inputs")

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Log finite scalar metrics at ``step``, 1000 per request."""
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        for i in range(0, len(items), 1000):
            chunk = items[i:i + 1000]
            self._retry(lambda c=chunk: self.client.log_batch(run_id, metrics=c), "log metrics")

    def log_metric_items(self, run_id: str, items: Sequence[tuple[str, float, int, int]]) -> None:
        """Log ``(key, value, timestamp_ms, step)`` tuples as they are, 1000 per request."""
        metrics = [Metric(str(k), float(v), int(t), int(s)) for k, v, t, s in items
                   if v is not None and math.isfinite(float(v))]
        for i in range(0, len(metrics), 1000):
            chunk = metrics[i:i + 1000]
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


def prepare_store(tracking_uri: str, timeout_s: float = DEFAULT_RETRY_TIMEOUT_S) -> None:
    """Create or migrate the sqlite schema under a file lock, before any parallel writer or DDP
    rank touches it (for a server: wait up to ``timeout_s`` until it answers).

    MLflow migrates a new sqlite store when a process first opens it; two commands doing that at
    once race ("Online migration expected to match one row"), so the first opening of each
    process is serialised by ``<db>.lock``.
    """
    configure_client(tracking_uri)

    def probe() -> None:
        MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)

    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(db.with_name(db.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with_retry(probe, what=f"open tracking store {tracking_uri}", timeout_s=timeout_s)
        finally:
            os.close(fd)
        return
    with_retry(probe, what=f"open tracking store {tracking_uri}", timeout_s=timeout_s)


def _start_ticks(pid: int) -> str | None:
    try:  # field 22 of /proc/<pid>/stat: start time, telling a reused pid from the original
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_token(pid: int | None = None) -> str:
    """``host:pid:start`` naming this process (or ``pid``) uniquely on this machine."""
    pid = os.getpid() if pid is None else pid
    return f"{platform.node()}:{pid}:{_start_ticks(pid) or '?'}"


def process_alive(token: str) -> bool | None:
    """Whether the process named by ``process_token`` still runs; None when it cannot be told
    (another host, or no /proc)."""
    host, _, rest = token.partition(":")
    pid, _, start = rest.partition(":")
    if host != platform.node() or not pid.isdigit() or start in ("", "?"):
        return None
    if not Path("/proc/self/stat").exists():
        return None
    return _start_ticks(int(pid)) == start


def context_tags(commit: str = "") -> dict[str, str]:
    """MLflow's own context tags (user, source, git commit) for a run created by this process."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    tags = {"mlflow.user": user, "mlflow.source.type": "LOCAL",
            "mlflow.source.name": "temseg_ablation"}
    sha = commit.removesuffix("-dirty")
    if sha and sha != "unknown":
        tags["mlflow.source.git.commit"] = sha
    return tags


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
