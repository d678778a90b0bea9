"""Helpers for tests that run the app as real processes (shared by several test modules)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from .conftest import TINY

EXPERIMENT = "temseg-ablation"
#: On top of TINY: 4 steps per epoch (the profile's 192 samples would make each epoch 96 steps).
FAST = [*TINY, "data.samples_per_epoch=8"]


# --------------------------------------------------------------------------- helpers
def app_cmd(*overrides: str, multirun: bool = True) -> list[str]:
    """The app's command line with the tiny settings."""
    return [sys.executable, "-m", "temseg_ablation", *(["-m"] if multirun else []), "model=norm",
            *FAST, *overrides]


def run_app(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 600
            ) -> subprocess.CompletedProcess:
    """Run the app to the end and return its result (output in ``stdout``)."""
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def start_app(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start the app as the leader of a new process group (so signals reach all its processes)."""
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the app's whole process group (if it still exists)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 300,
             proc: subprocess.Popen | None = None, log: Path | None = None) -> object:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout or
    when ``proc`` ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            pytest.fail(f"process ended (status {proc.returncode}) before {what}:\n{tail}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def job_runs(client: MlflowClient, kind: str = "job") -> list:
    """All runs of the project's experiment with ``temseg.kind`` = ``kind``."""
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], f"tags.`temseg.kind` = '{kind}'",
                              max_results=100)


def trained_epochs(client: MlflowClient, run_id: str) -> list[int]:
    """Epoch numbers of the run's ``train/loss_epoch`` entries, sorted (repeats kept)."""
    # A live run may log a newer step between the two reads. The loss history is read first
    # (``epoch`` is logged in the same batch, so it is normally there by the second read) and
    # a step whose epoch is not yet visible is left out: callers compare against exact lists,
    # so an entry left out still fails a final check.
    losses = client.get_metric_history(run_id, "train/loss_epoch")
    epoch_at = {m.step: int(m.value) for m in client.get_metric_history(run_id, "epoch")}
    return sorted(epoch_at[m.step] for m in losses if m.step in epoch_at)


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact file of a run (recursively)."""
    out: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return out
