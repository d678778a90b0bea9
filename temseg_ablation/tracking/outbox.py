"""A run's outbox: tracking writes go out in order, and what cannot be delivered waits on disk.

Training must never stop because the tracking server is down. Every write of a job (per-epoch
metrics, params, tags, artifacts, the final status) goes through one ``Outbox``: it is sent at
once while the store answers; after a failure it is appended to ``records.jsonl`` (artifact
files copied under ``files/``) and retried with backoff, behind everything still waiting, so
the store always sees the writes in the order the job made them. ``close`` waits a bounded
time for a missing server; whatever is left stays on disk and is delivered later by rerunning
the job (a resumed run replays its outbox first) or by
``python -m temseg_ablation.tracking.upload <folder>``.

On-disk layout of one outbox folder (plain JSON and copied files, nothing is ever unpickled)::

    meta.json       tracking URI, experiment name and run id the records belong to
    records.jsonl   one JSON object per write: {"seq": n, "op": "metrics"|"params"|..., ...}
    acked           the highest ``seq`` the store has confirmed
    files/<seq>/    copies of artifact files (the original name kept)
    .lock           held (flock) by the one process that owns the outbox
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from .mlflow_store import Tracker, is_auth_error, is_transient, one_line

log = logging.getLogger(__name__)

OUTBOX_DIR = "outbox"
RECORDS = "records.jsonl"
ACKED = "acked"
META = "meta.json"
FILES = "files"
LOCK = ".lock"
OPS = ("metrics", "params", "tags", "artifact", "status", "inputs")
STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")
#: Retry budget for a write sent straight away (rides out "database is locked" and blips).
QUICK_RETRY_S = 5.0
MAX_BACKOFF_S = 30.0


class OutboxError(RuntimeError):
    """An outbox that cannot be used; ``str`` is one line naming the folder or file."""


class OutboxBusy(OutboxError):
    """Another live process owns this outbox (its job is still running)."""


def upload_hint(folder: str | Path) -> str:
    """The command that delivers an outbox's waiting records."""
    return f"python -m temseg_ablation.tracking.upload {folder}"


def _check_record(rec: Any, where: str) -> dict[str, Any]:
    """Validate one parsed record; raise ``OutboxError`` naming ``where`` when malformed."""
    if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int) or rec.get("op") not in OPS:
        raise OutboxError(f"{where}: not an outbox record (needs an integer seq and op in {OPS})")
    op = rec["op"]
    if op == "metrics":
        items = rec.get("items")
        ok = isinstance(items, list) and all(
            isinstance(it, list) and len(it) == 4 and isinstance(it[0], str)
            and all(isinstance(x, (int, float)) for x in it[1:]) for it in items)
        if not ok:
            raise OutboxError(f"{where}: metrics record needs items [[key, value, time_ms, step], ...]")
    elif op in ("params", "tags"):
        if not isinstance(rec.get(op), dict):
            raise OutboxError(f"{where}: {op} record needs an object of {op}")
    elif op == "status":
        if rec.get("status") not in STATUSES:
            raise OutboxError(f"{where}: status must be one of {STATUSES}")
    elif op == "inputs":
        sets = rec.get("datasets")
        keys = ("name", "digest", "source_type", "source")
        if not isinstance(sets, list) or not all(
                isinstance(d, dict) and all(isinstance(d.get(k), str) for k in keys) for d in sets):
            raise OutboxError(f"{where}: inputs record needs datasets [{{name, digest, source_type, "
                              "source, ...}}, ...]")
    else:  # artifact: a relative path inside the outbox, uploaded under a relative artifact path
        name, sub = rec.get("file"), rec.get("artifact_path")
        for label, value in (("file", name), ("artifact_path", sub)):
            if value is None and label == "artifact_path":
                continue
            parts = PurePosixPath(value).parts if isinstance(value, str) else ()
            if not parts or value.startswith("/") or ".." in parts or "\\" in value:
                raise OutboxError(f"{where}: artifact {label} {value!r} is not a plain relative "
                                  "path inside the outbox")
    return rec


def read_records(folder: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """``(meta, records, acked_seq)`` of an outbox folder, validated (no delivery, no lock)."""
    folder = Path(folder)
    meta_path, rec_path, ack_path = folder / META, folder / RECORDS, folder / ACKED
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except (OSError, ValueError) as err:
        raise OutboxError(f"{meta_path}: unreadable outbox metadata ({one_line(err, 150)})") from None
    if not isinstance(meta, dict):
        raise OutboxError(f"{meta_path}: outbox metadata must be a JSON object")
    records: list[dict[str, Any]] = []
    if rec_path.exists():
        lines = rec_path.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                if i == len(lines):  # a write cut short by a kill: that record never counted
                    log.warning("%s:%d: ignoring a truncated last record", rec_path, i)
                    continue
                raise OutboxError(f"{rec_path}:{i}: not valid JSON") from None
            records.append(_check_record(rec, f"{rec_path}:{i}"))
    acked = 0
    if ack_path.exists():
        text = ack_path.read_text().strip()
        if not text.isdigit():
            raise OutboxError(f"{ack_path}: expected the last delivered record number, got {text[:40]!r}")
        acked = int(text)
    return meta, records, acked


class Outbox:
    """Ordered, failure-tolerant writer for one MLflow run; same write methods as ``Tracker``.

    ``folder`` is created (and locked) only when a write has to wait, or taken over when an
    earlier attempt left it; ``close`` removes it once nothing waits.
    """

    def __init__(self, folder: str | Path, tracker: Tracker, run_id: str,
                 retry_timeout_s: float | None = None) -> None:
        self.folder = Path(folder)
        self.run_id = run_id
        self.retry_timeout_s = float(tracker.retry_timeout_s if retry_timeout_s is None
                                     else retry_timeout_s)
        self._quick = tracker.with_timeout(min(QUICK_RETRY_S, self.retry_timeout_s))
        self._once = tracker.with_timeout(0.0)
        self._lock = -1
        meta: dict[str, Any] = {}
        records: list[dict[str, Any]] = []
        acked = 0
        if self.folder.exists():  # left by an earlier attempt: take it over
            self._ensure_folder()
            try:
                meta, records, acked = read_records(self.folder)
                if meta.get("run_id") not in (None, run_id):
                    raise OutboxError(f"{self.folder}: holds records of run {meta['run_id']}, "
                                      f"not {run_id}")
            except OutboxError:
                self._release()
                raise
        self._pending = [r for r in records if r["seq"] > acked]
        self._next_seq = max([acked] + [r["seq"] for r in records]) + 1
        self._acked = acked
        self._meta = {"tracking_uri": tracker.uri, "experiment_name": tracker.experiment_name,
                      "run_id": run_id}
        self._backoff = 1.0
        self._next_try = 0.0
        self._outage_since: float | None = None
        self.delivered = 0
        self.dropped = 0
        self.closed = False

    # ------------------------------------------------------------------ state
    @property
    def pending(self) -> int:
        """Number of records waiting on disk."""
        return len(self._pending)

    def _ensure_folder(self) -> None:
        if self._lock < 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock = self._acquire_lock()

    def _acquire_lock(self) -> int:
        fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutboxBusy(f"{self.folder}: in use by another process (pid {holder}); "
                             "is its job still running?") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return fd

    def _release(self) -> None:
        if self._lock >= 0:
            os.close(self._lock)  # closing the descriptor drops the flock
            self._lock = -1

    # ------------------------------------------------------------------ Tracker-like writes
    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Queue finite scalar metrics at ``step``."""
        now = int(time.time() * 1000)
        self.log_metric_items(run_id, [(k, v, now, step) for k, v in metrics.items()])

    def log_metric_items(self, run_id: str, items: Iterable[Sequence[Any]]) -> None:
        """Queue ``(key, value, timestamp_ms, step)`` tuples (non-finite values left out)."""
        clean = [[str(k), float(v), int(t), int(s)] for k, v, t, s in items
                 if v is not None and math.isfinite(float(v))]
        for i in range(0, len(clean), 1000):
            self._submit(run_id, {"op": "metrics", "items": clean[i:i + 1000]})

    def log_series(self, run_id: str, key: str, values: Iterable[float], steps: Iterable[int]) -> None:
        """Queue one metric as a series over ``steps``."""
        now = int(time.time() * 1000)
        self.log_metric_items(run_id, [(key, v, now, s) for v, s in zip(values, steps, strict=True)])

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Queue params (values as strings, cut to MLflow's length limit)."""
        self._submit(run_id, {"op": "params", "params": {k: str(v)[:6000] for k, v in params.items()}})

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        """Queue tags."""
        self._submit(run_id, {"op": "tags", "tags": {k: str(v)[:5000] for k, v in tags.items()}})

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """Queue one file upload (the file is copied into the outbox only if it has to wait)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: artifact file does not exist")
        self._submit(run_id, {"op": "artifact", "source": str(path), "artifact_path": artifact_path})

    def log_inputs(self, run_id: str, datasets: Sequence[dict[str, Any]]) -> None:
        """Queue the run's input data sets (see :meth:`.Tracker.log_inputs`)."""
        self._submit(run_id, {"op": "inputs", "datasets": [dict(d) for d in datasets]})

    def set_status(self, run_id: str, status: str) -> None:
        """Queue a run status change (``RUNNING`` / ``FINISHED`` / ``FAILED`` / ``KILLED``)."""
        self._submit(run_id, {"op": "status", "status": status})

    # ------------------------------------------------------------------ delivery
    def _submit(self, run_id: str, record: dict[str, Any]) -> None:
        if run_id != self.run_id:
            raise ValueError(f"outbox of run {self.run_id} got a write for run {run_id}")
        if self.closed:
            raise OutboxError(f"{self.folder}: outbox already closed")
        if not self._pending:
            try:
                self._deliver(record, self._quick)
                return
            except Exception as err:
                if not self._keep(err, record):
                    return
        self._persist(record)
        self._pump()

    def _keep(self, err: Exception, record: dict[str, Any]) -> bool:
        """Whether a failed record should wait for a retry (else it is dropped, or re-raised)."""
        if is_transient(err) or is_auth_error(err):  # credentials fixed later still deliver
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                log.warning("tracking store %s unreachable (%s): training goes on, tracking writes "
                            "wait in %s and are retried with backoff", self._meta["tracking_uri"],
                            one_line(err, 200), self.folder)
            return True
        if type(err).__module__.startswith("mlflow") or isinstance(err, FileNotFoundError):
            self.dropped += 1
            log.warning("tracking store rejected a %s write for run %s, dropped: %s",
                        record["op"], self.run_id, one_line(err, 300))
            return False
        raise err

    def _persist(self, record: dict[str, Any]) -> None:
        self._ensure_folder()
        rec = {"seq": self._next_seq, **record}
        self._next_seq += 1
        if rec["op"] == "artifact":
            source = Path(rec.pop("source"))
            dest = self.folder / FILES / str(rec["seq"]) / source.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
            rec["file"] = dest.relative_to(self.folder).as_posix()
        meta_path = self.folder / META
        if not meta_path.exists():
            meta_path.write_text(json.dumps(self._meta, indent=1))
            (self.folder / "README.txt").write_text(
                f"Tracking writes of MLflow run {self.run_id} that could not reach "
                f"{self._meta['tracking_uri']} yet.\nDeliver them with:\n  "
                f"{upload_hint(self.folder)}\n(or simply rerun the same command: a resumed job "
                "delivers its outbox first).\n")
        with open(self.folder / RECORDS, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._pending.append(rec)

    def _deliver(self, rec: dict[str, Any], tracker: Tracker) -> None:
        op, run_id = rec["op"], self.run_id
        if op == "metrics":
            tracker.log_metric_items(run_id, [tuple(it) for it in rec["items"]])
        elif op == "params":
            tracker.log_params(run_id, rec["params"])
        elif op == "tags":
            tracker.set_tags(run_id, rec["tags"])
        elif op == "status":
            tracker.set_status(run_id, rec["status"])
        elif op == "inputs":
            tracker.log_inputs(run_id, rec["datasets"])
        elif "source" in rec:
            tracker.log_artifact(run_id, rec["source"], rec.get("artifact_path"))
        else:
            path = (self.folder / rec["file"]).resolve()
            if not path.is_relative_to(self.folder.resolve()) or not path.is_file():
                raise FileNotFoundError(f"{self.folder / rec['file']}: outbox file missing")
            tracker.log_artifact(run_id, path, rec.get("artifact_path"))

    def _ack(self, seq: int) -> None:
        self._acked = seq
        tmp = self.folder / (ACKED + ".tmp")
        tmp.write_text(str(seq))
        os.replace(tmp, self.folder / ACKED)

    def _pump(self, force: bool = False) -> bool:
        """Try to send waiting records in order (once the backoff allows); True when none wait."""
        if not self._pending:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        while self._pending:
            rec = self._pending[0]
            try:
                self._deliver(rec, self._once)
            except Exception as err:
                if self._keep(err, rec):
                    self._next_try = time.monotonic() + self._backoff
                    self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
                    return False
            else:
                self.delivered += 1
            self._pending.pop(0)
            self._ack(rec["seq"])
        if self._outage_since is not None:
            log.info("tracking store %s reachable again: waiting writes of run %s delivered",
                     self._meta["tracking_uri"], self.run_id)
        self._outage_since = None
        self._backoff = 1.0
        return True

    def flush(self, timeout_s: float | None = None) -> bool:
        """Send waiting records, retrying with backoff for up to ``timeout_s`` (default: the
        retry timeout); True when nothing waits any more."""
        deadline = time.monotonic() + (self.retry_timeout_s if timeout_s is None else timeout_s)
        while not self._pump(force=True):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self._backoff, left, MAX_BACKOFF_S))
        return True

    def close(self, timeout_s: float | None = None) -> bool:
        """Flush (waiting up to ``timeout_s``), release the folder, and remove it when empty.

        Returns True when everything was delivered; otherwise the records stay on disk.
        """
        if self.closed:
            return not self._pending
        try:
            done = self.flush(timeout_s)
        finally:
            self.closed = True
            if not self._pending and self._lock >= 0:
                shutil.rmtree(self.folder, ignore_errors=True)
            self._release()
        return done

    def message(self) -> str:
        """One paragraph telling the user what waits where and how to deliver it."""
        return (f"{len(self._pending)} tracking writes of MLflow run {self.run_id} could not reach "
                f"{self._meta['tracking_uri']} and are saved in {self.folder}; deliver them with "
                f"`{upload_hint(self.folder)}` once the server is back (rerunning the same "
                "command also delivers them).")

    def __del__(self) -> None:  # a crashed caller must not keep the lock for the process' life
        try:
            if getattr(self, "_lock", -1) >= 0:
                self._release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
