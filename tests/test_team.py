"""Team scale: a real MLflow server on PostgreSQL, and parallel sweeps that lose nothing.

The PostgreSQL tests skip (with the reason) where the server programs or psycopg2 are missing;
CI installs both. Every sweep here runs real processes with the parallel (joblib) launcher.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from temseg_ablation.models.io import load_checkpoint
from temseg_ablation.ops import server
from temseg_ablation.tracking.mlflow_store import process_alive, process_token

from .conftest import ROOT
from .procs import (
    app_cmd,
    artifact_paths,
    job_runs,
    trained_epochs,
)

PG_MISSING = server.postgres_unavailable()


def check_complete_run(client: MlflowClient, run, epochs: int, tmp: Path) -> None:
    """A finished job run has params, per-epoch and final metrics, curves and all artifacts."""
    rid = run.info.run_id
    assert run.info.status == "FINISHED", rid
    data = client.get_run(rid).data
    assert len(data.params) > 50 and data.params["trainer.max_epochs"] == str(epochs)
    for key in ("final/val/f1_otsu", "final/heldout/f1_otsu", "final/gap/f1_otsu",
                "final/val/particle_det_f1", "train/loss_epoch", "val/f1_otsu"):
        assert key in data.metrics, (rid, key)
    assert trained_epochs(client, rid) == list(range(epochs))
    assert len(client.get_metric_history(rid, "curve/val/f1")) > 10
    arts = artifact_paths(client, rid)
    for name in ("metrics.json", "checkpoints/best.ckpt", "curves/val_threshold_curves.csv",
                 "curves/heldout_threshold_curves.csv", "figures/val_threshold_curves.png",
                 "figures/val_overlay.png"):
        assert name in arts, (rid, name, sorted(arts))
    dest = tmp / "downloads" / rid
    dest.mkdir(parents=True)
    saved = json.loads(Path(client.download_artifacts(rid, "metrics.json", str(dest))).read_text())
    assert saved["val"]["scalars"]["f1_otsu"] == pytest.approx(data.metrics["final/val/f1_otsu"])
    model = load_checkpoint(client.download_artifacts(rid, "checkpoints/best.ckpt", str(dest)))
    assert model.net_config["arch"] == "unet"


def check_parallel_sweep(client: MlflowClient, n_jobs: int, epochs: int, tmp: Path,
                         sweep_pid: int) -> None:
    """All jobs of one parallel sweep arrived complete, under one FINISHED parent run."""
    jobs = job_runs(client)
    assert len(jobs) == n_jobs
    (parent,) = job_runs(client, "sweep")
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["jobs_finished"] == n_jobs
    assert "summary.csv" in artifact_paths(client, parent.info.run_id)
    pids = set()
    for run in jobs:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        pids.add(run.data.tags["temseg.process"].split(":")[1])
        check_complete_run(client, run, epochs, tmp)
    # the launcher's worker processes trained the jobs, not the sweep process itself
    assert str(sweep_pid) not in pids and len(pids) >= 2
    assert len({r.data.params["seed"] for r in jobs}) == n_jobs


# --------------------------------------------------------------------------- server CLI
def server_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m temseg_ablation.ops.server ...``."""
    return subprocess.run([sys.executable, "-m", "temseg_ablation.ops.server", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


PG_PREFIX = "temseg-pg-"


def _stop_orphaned_test_servers() -> None:
    """Stop servers of earlier test sessions that were killed before their teardown ran
    (only those whose owning test process is gone; a live session's server is left alone)."""
    for base in Path(tempfile.gettempdir()).glob(PG_PREFIX + "*"):
        owner = base / "owner"
        if owner.exists() and process_alive(owner.read_text().strip()) is False:
            server.stop(base / "server")
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_server():
    """A PostgreSQL-backed MLflow server started and stopped through the project's CLI."""
    if PG_MISSING:
        pytest.skip(PG_MISSING)
    _stop_orphaned_test_servers()
    # PostgreSQL runs as the unprivileged 'postgres' user when we are root, and pytest's temp
    # folders are private to us: the cluster lives in a temp folder that user can enter.
    base = Path(tempfile.mkdtemp(prefix=PG_PREFIX))
    base.chmod(0o755)
    (base / "owner").write_text(process_token())
    state_dir = base / "server"
    try:
        started = server_cli("start", "--dir", str(state_dir), "--port", "0", "--pg-port", "0")
        assert started.returncode == 0, started.stderr[-3000:]
        state = json.loads((state_dir / "server.json").read_text())
        assert state["host"] == "127.0.0.1" and state["backend"] == "postgres"
        assert state["backend_uri"].startswith("postgresql+psycopg2://")
        assert "logger.tracking_uri=http://127.0.0.1:" in started.stdout
        yield state
    finally:
        stopped = server_cli("stop", "--dir", str(state_dir))
        status = server_cli("status", "--dir", str(state_dir))
        shutil.rmtree(base, ignore_errors=True)
    assert stopped.returncode == 0 and "mlflow server" in stopped.stdout
    assert "PostgreSQL" in stopped.stdout
    assert status.returncode == 3 and '"running": false' in status.stdout


@pytest.mark.slow
def test_parallel_sweep_against_postgres_server(pg_server, tmp_path, subprocess_env):
    url = f"http://{pg_server['host']}:{pg_server['port']}"
    status = server_cli("status", "--dir", pg_server["dir"])
    assert status.returncode == 0 and json.loads(status.stdout)["postgres_running"] is True
    proc = subprocess.Popen(app_cmd("hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
                                    "seed=0,1", "trainer.max_epochs=2",
                                    f"logger.tracking_uri={url}"),
                            env=subprocess_env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    check_parallel_sweep(MlflowClient(url), 2, 2, tmp_path, proc.pid)
    # artifacts went through the server into its own store, nothing into a local folder
    assert len(list(Path(pg_server["artifacts"]).rglob("best.ckpt"))) == 2
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_parallel_sweep_on_shared_sqlite_loses_nothing(tmp_path, subprocess_env):
    proc = subprocess.Popen(app_cmd("hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
                                    "seed=0,1,2,3", "trainer.max_epochs=2"),
                            env=subprocess_env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    assert "Traceback" not in out and "database is locked" not in out.split("Sweep summary")[-1]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    check_parallel_sweep(client, 4, 2, tmp_path, proc.pid)


def test_server_cli_refuses_a_taken_port_and_stops_only_its_own(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(server.ServerError, match=f"port {port} .* taken"):
            server.start(tmp_path / "s", port=port, backend="sqlite")
    # a pid file naming a live process that is not our server is never acted on
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state = json.loads((tmp_path / "s" / "server.json").read_text())
        state["mlflow_pid"] = sleeper.pid
        (tmp_path / "s" / "server.json").write_text(json.dumps(state))
        assert server.stop(tmp_path / "s") == []
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
    assert server.status(tmp_path / "nothing") == {
        "running": False, "reason": f"no server started from {tmp_path / 'nothing'}"}
