"""The one place that launches the Hydra app (``python -m temseg_ablation``) as subprocesses.

Two ways: single-run jobs (``run_jobs``: a list of override sets, each in its own run folder,
several at a time), and one multirun sweep (``run_sweep``: ``-m`` with the sweep folder; the
app prints its progress line). Both leave skipping to the config hash: a configuration that
already finished in the store is not trained again, so rerunning a command resumes it.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..tracking import queries
from .build import config_hash
from .config import CONFIG_DIR, compose_config
from .progress import DONE, STATUS_FILE


@dataclass(frozen=True)
class AppJob:
    """One single-run job of the app: its name, Hydra overrides and run folder."""

    name: str
    overrides: tuple[str, ...]
    job_dir: Path


@dataclass(frozen=True)
class JobOutcome:
    """What a finished app job reported in its ``job_status.json``."""

    name: str
    run_id: str
    status: str        # finished (trained now) or skipped (identical config had finished)
    seconds: float
    job_dir: Path


def quote(value: str) -> str:
    """``value`` as a single-quoted Hydra override value (kept verbatim: colons, slashes, spaces)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def job_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for an app subprocess, unbuffered, plus ``extra``."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **dict(extra or {})}


def app_command(job: AppJob, tracking_uri: str, threads: int | None = None) -> list[str]:
    """The ``python -m temseg_ablation`` command line of one single-run job."""
    cmd = [sys.executable, "-m", "temseg_ablation", *job.overrides,
           f"logger.tracking_uri={quote(tracking_uri)}", f"hydra.run.dir={quote(str(job.job_dir))}"]
    if threads:
        cmd.append(f"trainer.num_threads={int(threads)}")
    return cmd


def sweep_command(overrides: Sequence[str], sweep_dir: Path) -> list[str]:
    """The ``python -m temseg_ablation -m`` command line of a sweep into ``sweep_dir``."""
    return [sys.executable, "-m", "temseg_ablation", "-m", *overrides,
            f"hydra.sweep.dir={quote(str(sweep_dir))}"]


def finished_run_id(tracking_uri: str, overrides: Sequence[str]) -> str | None:
    """Id of a FINISHED job run with the config hash the app computes for ``overrides``, the
    run the app would skip to; None when there is none (or no store yet, or ``rerun=true``)."""
    if not queries.store_exists(tracking_uri):
        return None  # checked first: MLflow would create an empty database there
    cfg = compose_config(list(overrides))
    if cfg.get("rerun", False):
        return None
    client = queries.open_client(tracking_uri)
    exp_id = queries.experiment_id(client, str(cfg.logger.experiment_name))
    if exp_id is None:
        return None
    run = queries.finished_run(client, exp_id, config_hash(cfg))
    return run.info.run_id if run is not None else None


def run_job(job: AppJob, tracking_uri: str, threads: int | None = None,
            env: Mapping[str, str] | None = None) -> JobOutcome:
    """Run one single-run job to its end; its output goes to ``<job_dir>/app_job.log``.

    Raises ``RuntimeError`` (one line, naming the log) when the job fails.
    """
    job.job_dir.mkdir(parents=True, exist_ok=True)
    status_file = job.job_dir / STATUS_FILE
    status_file.unlink(missing_ok=True)  # never read an earlier call's outcome
    log = job.job_dir / "app_job.log"
    with open(log, "w") as handle:
        proc = subprocess.run(app_command(job, tracking_uri, threads), stdout=handle,
                              stderr=subprocess.STDOUT, env=job_env(env), check=False)
    rec = json.loads(status_file.read_text()) if status_file.is_file() else {}
    if proc.returncode != 0 or rec.get("status") not in DONE:
        # the job's own one-line error when it recorded one (the log ends with Hydra's hint)
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        why = str(rec.get("error") or tail[0])
        raise RuntimeError(f"{log}: app job {job.name!r} failed (exit {proc.returncode}, status "
                           f"{rec.get('status')!r}): {why[:300]}")
    return JobOutcome(job.name, str(rec["run_id"]), str(rec["status"]),
                      float(rec.get("seconds", float("nan"))), job.job_dir)


def run_jobs(jobs: Sequence[AppJob], tracking_uri: str, parallel: int = 1,
             env: Mapping[str, str] | None = None,
             log: Callable[[str], None] = lambda s: print(s, flush=True)) -> list[JobOutcome]:
    """Run single-run jobs through the app, ``parallel`` at a time; outcomes in job order.

    A job whose exact configuration already finished in the store is not started at all (the
    app would only skip it, after seconds of start-up). With ``parallel`` > 1 each job gets
    cpu_count / parallel torch threads. The first job runs alone when the sqlite store does not
    exist yet, so that two processes never create one database at once.
    """
    parallel = max(1, int(parallel))
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None
    out: dict[str, JobOutcome] = {}
    todo = []
    for job in jobs:
        try:
            found = finished_run_id(tracking_uri, job.overrides)
        except Exception:  # noqa: BLE001 - any doubt: let the app decide
            found = None
        if found is None:
            todo.append(job)
        else:
            out[job.name] = JobOutcome(job.name, found, "skipped", 0.0, job.job_dir)
            log(f"  {job.name}: already finished as run {found}")

    def report(res: JobOutcome) -> None:
        out[res.name] = res
        log(f"  {res.name}: {res.status} run {res.run_id} ({res.seconds:.0f} s)")

    if todo and not queries.store_exists(tracking_uri):
        first = todo.pop(0)
        log(f"  training {first.name} ...")
        report(run_job(first, tracking_uri, None, env))
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = []
        for job in todo:
            log(f"  training {job.name} ...")
            futures.append(pool.submit(run_job, job, tracking_uri, threads, env))
        for fut in concurrent.futures.as_completed(futures):
            report(fut.result())
    return [out[j.name] for j in jobs]


# ------------------------------------------------------------------------------ sweeps


def run_sweep(overrides: Sequence[str], sweep_dir: Path, env: Mapping[str, str] | None = None,
              log: Callable[[str], None] = lambda s: print(s, flush=True)) -> int:
    """Run ``python -m temseg_ablation -m <overrides>`` into ``sweep_dir``; returns its exit code.

    The app's output, its sweep-level progress line included (:mod:`.progress`), goes to this
    process's stdout.
    """
    cmd = sweep_command(overrides, Path(sweep_dir))
    log("running: " + " ".join(cmd))
    proc = subprocess.Popen(cmd, env=job_env(env))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached the app too: let it mark its runs KILLED before this process ends
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
        raise


def experiment_profiles() -> list[str]:
    """Names of the experiment profiles (``conf/experiment/<name>.yaml``), sorted."""
    return sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
