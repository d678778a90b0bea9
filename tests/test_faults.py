"""Faults: a tracking server that goes away, Ctrl-C, SIGKILL, unusable output folders.

The fast tests drive the outbox with a fake tracking store; the slow ones run the real app
in subprocesses against a real MLflow server or sqlite store and break it on purpose.
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient

from temseg_ablation.app.preflight import OutputPathError, check_output_paths, output_paths
from temseg_ablation.ops import server
from temseg_ablation.tracking.outbox import RECORDS, Outbox, OutboxBusy

from .conftest import compose_cfg
from .procs import (
    app_cmd,
    artifact_paths,
    job_runs,
    kill_group,
    run_app,
    start_app,
    trained_epochs,
    wait_for,
)


# --------------------------------------------------------------------------- a fake store
class FakeStore:
    """Stands in for ``Tracker``: records deliveries, or fails like a server that is down."""

    def __init__(self) -> None:
        self.uri, self.experiment_name, self.retry_timeout_s = "http://fake:5000", "exp", 5.0
        self.shared = {"down": False, "reject": set(), "delivered": [], "attempts": 0}

    def with_timeout(self, seconds: float) -> FakeStore:
        other = copy.copy(self)  # shares ``shared``, like a real Tracker shares its client
        other.retry_timeout_s = seconds
        return other

    def _call(self, op: str, payload) -> None:
        self.shared["attempts"] += 1
        if self.shared["down"]:
            raise MlflowException("API request to http://fake:5000 failed: Connection refused")
        if op in self.shared["reject"]:
            raise MlflowException(f"{op} rejected", error_code=INVALID_PARAMETER_VALUE)
        self.shared["delivered"].append((op, payload))

    def log_metric_items(self, run_id, items):
        self._call("metrics", [(k, v, s) for k, v, _, s in items])

    def log_params(self, run_id, params):
        self._call("params", dict(params))

    def set_tags(self, run_id, tags):
        self._call("tags", dict(tags))

    def set_status(self, run_id, status):
        self._call("status", status)

    def log_artifact(self, run_id, path, artifact_path=None):
        self._call("artifact", (Path(path).name, Path(path).read_text(), artifact_path))


def test_outbox_keeps_writes_in_order_through_an_outage(tmp_path):
    store, folder = FakeStore(), tmp_path / "outbox"
    box = Outbox(folder, store, "run1", retry_timeout_s=5)
    box.log_metrics("run1", {"a": 1.0, "nan": float("nan")}, step=0)
    assert store.shared["delivered"] == [("metrics", [("a", 1.0, 0)])]
    assert not folder.exists()  # nothing had to wait: no folder at all

    store.shared["down"] = True
    box.log_metrics("run1", {"a": 2.0}, step=1)
    art = tmp_path / "best.ckpt"
    art.write_text("epoch 1")
    box.log_artifact("run1", art, "checkpoints")
    art.write_text("epoch 2 (overwritten after the upload was queued)")
    box.set_status("run1", "FINISHED")
    assert box.pending == 3
    lines = (folder / RECORDS).read_text().splitlines()
    assert [json.loads(x)["op"] for x in lines] == ["metrics", "artifact", "status"]
    assert "tracking.upload" in (folder / "README.txt").read_text()

    store.shared["down"] = False
    assert box.close(timeout_s=30) is True
    assert store.shared["delivered"][1:] == [
        ("metrics", [("a", 2.0, 1)]),
        ("artifact", ("best.ckpt", "epoch 1", "checkpoints")),  # the file as it was queued
        ("status", "FINISHED")]
    assert not folder.exists()


def test_outbox_left_on_disk_is_taken_over_by_the_next_process(tmp_path):
    store, folder = FakeStore(), tmp_path / "outbox"
    store.shared["down"] = True
    first = Outbox(folder, store, "run1", retry_timeout_s=5)
    first.log_params("run1", {"lr": 0.001})
    first.set_tags("run1", {"note": "x" * 9000})
    with pytest.raises(OutboxBusy, match="in use by another process"):
        Outbox(folder, store, "run1")
    assert first.close(timeout_s=0) is False
    assert str(folder) in first.message() and "tracking.upload" in first.message()
    with pytest.raises(Exception, match="holds records of run run1, not run2"):
        Outbox(folder, store, "run2")

    store.shared["down"] = False
    second = Outbox(folder, store, "run1")
    assert second.pending == 2
    assert second.close() is True
    assert store.shared["delivered"] == [("params", {"lr": "0.001"}), ("tags", {"note": "x" * 5000})]
    assert not folder.exists()


def test_outbox_drops_a_rejected_write_and_goes_on(tmp_path):
    store = FakeStore()
    store.shared["reject"] = {"params"}
    box = Outbox(tmp_path / "outbox", store, "run1")
    box.log_params("run1", {"bad key!": 1})
    box.log_metrics("run1", {"a": 1.0})
    assert box.dropped == 1 and box.pending == 0
    assert [op for op, _ in store.shared["delivered"]] == ["metrics"]
    with pytest.raises(ValueError, match="run run1 got a write for run other"):
        box.log_metrics("other", {"a": 1.0})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        box.log_artifact("run1", tmp_path / "missing.png")
    assert box.close() is True


# --------------------------------------------------------------------------- output folders
def test_unusable_output_folders_are_named_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputPathError, match=r"paths.checkpoint_dir=.*a_file/sub: cannot create "
                                              r"this folder: .*a_file is a file"):
        check_output_paths({"paths.checkpoint_dir": blocker / "sub"})
    with pytest.raises(OutputPathError, match=r"paths.output_dir=.*only \d+ MB free"):
        check_output_paths({"paths.output_dir": tmp_path / "out"}, min_free_mb=1e12)
    check_output_paths({"paths.output_dir": tmp_path / "ok"}, min_free_mb=1)
    assert (tmp_path / "ok").is_dir() and not list((tmp_path / "ok").iterdir())
    cfg = compose_cfg([], tmp_path)
    assert {"paths.output_dir", "paths.checkpoint_dir", "paths.cache_dir",
            "logger.tracking_uri"} <= set(output_paths(cfg))


@pytest.mark.slow
def test_app_refuses_an_unwritable_checkpoint_folder_up_front(tmp_path, subprocess_env):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    res = run_app(app_cmd(f"paths.checkpoint_dir={blocker}/ckpt", multirun=False),
                  subprocess_env, tmp_path, timeout=300)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        f"error: paths.checkpoint_dir={blocker}/ckpt: cannot create this folder: "
        f"{blocker} is a file, not a folder")
    assert "Traceback" not in res.stderr + res.stdout
    assert not (tmp_path / "mlruns").exists()  # stopped before touching the tracking store


@pytest.mark.slow
@pytest.mark.parametrize("multirun", [False, True])
def test_a_server_unreachable_from_the_start_is_one_line_before_any_job(multirun, tmp_path,
                                                                       subprocess_env):
    import time

    url = f"http://127.0.0.1:{server.free_port()}"  # nothing listens there
    start = time.monotonic()
    res = run_app(app_cmd(f"logger.tracking_uri={url}", "++logger.connect_timeout_s=5",
                          "++logger.retry_timeout_s=120", *(["seed=0,1,2"] if multirun else []),
                          multirun=multirun), subprocess_env, tmp_path, timeout=300)
    elapsed = time.monotonic() - start
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-2000:]
    assert lines[-1].startswith(f"error: tracking store {url} cannot be opened")
    assert "make server" in lines[-1] and "Traceback" not in res.stderr + res.stdout
    # checked once, bounded by connect_timeout_s: not retry_timeout_s per job (3 x 120 s)
    assert elapsed < 100, elapsed
    assert not list(tmp_path.glob("outputs/checkpoints/*/*/*.ckpt"))


def _tmpfs(tmp_path: Path, name: str, options: str):
    """Mount a tmpfs at ``tmp_path / name`` (``mount -o options``) for one test, or skip saying why."""
    disk = tmp_path / name
    disk.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"cannot mount a tmpfs here: {err}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


@pytest.fixture
def small_disk(tmp_path):
    """A 1.5 MB tmpfs: room for one checkpoint of the tiny ``norm`` job (1.1 MB), not two."""
    yield from _tmpfs(tmp_path, "disk", "size=1500k")


@pytest.fixture
def readonly_disk(tmp_path):
    """A read-only filesystem (a tmpfs mounted ``ro``), as a full or write-protected share."""
    yield from _tmpfs(tmp_path, "ro", "size=1m,ro")


@pytest.mark.slow
def test_a_tracking_store_on_a_read_only_disk_is_one_line(tmp_path, readonly_disk,
                                                          subprocess_env):
    res = run_app(app_cmd(f"logger.tracking_uri=sqlite:///{readonly_disk}/mlflow.db",
                          multirun=False), subprocess_env, tmp_path, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1] == (
        f"error: logger.tracking_uri={readonly_disk}: folder is not writable (Read-only file system)")
    assert "Traceback" not in res.stderr + res.stdout


@pytest.mark.slow
def test_a_disk_filling_mid_run_keeps_whole_checkpoints_and_says_one_line(tmp_path, small_disk,
                                                                          subprocess_env):
    from temseg_ablation.models.io import safe_torch_load

    res = run_app(app_cmd(f"paths.checkpoint_dir={small_disk}/ckpt", "paths.min_free_mb=0",
                          "trainer.max_epochs=30", multirun=False),
                  subprocess_env, tmp_path, timeout=600)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1, res.stderr[-3000:]
    assert lines[-1].startswith("error: norm: no space left on device") and "resume" in lines[-1]
    assert "Traceback" not in res.stderr + res.stdout
    # whatever was saved is whole (Lightning's own writer left a truncated last.ckpt here), and
    # no temporary file is left to fill the disk further
    ckpts = sorted(small_disk.glob("ckpt/*/*/*.ckpt"))
    assert ckpts and all(isinstance(safe_torch_load(p), dict) for p in ckpts)
    assert not [p for p in small_disk.rglob("*") if ".tmp" in p.name]
    (run,) = job_runs(MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db"))
    assert run.info.status == "FAILED" and "No space left" in run.data.tags["error"]
    (status,) = [json.loads(p.read_text()) for p in tmp_path.glob("outputs/runs/*/*/job_status.json")]
    assert status["status"] == "failed"


def test_exit_status_tells_spooled_and_failed_jobs_apart():
    import pandas as pd

    from temseg_ablation.app.main import exit_status

    table = pd.DataFrame({"status": ["finished", "skipped"]})
    assert exit_status(table) == 0 and exit_status(None) == 0
    assert exit_status(pd.DataFrame({"status": ["finished", "spooled"]})) == 3
    assert exit_status(pd.DataFrame({"status": ["spooled", "failed"]})) == 1
    assert exit_status(None, "spooled") == 3 and exit_status(None, "finished") == 0


# --------------------------------------------------------------------------- Ctrl-C, SIGKILL
def _last_epoch(ckpt: Path) -> int:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - being replaced right now
        return -1


def _statuses(root: Path) -> dict[str, list[dict]]:
    """job_status.json records of every sweep folder under ``root``, by sweep folder."""
    out: dict[str, list[dict]] = {}
    for p in sorted((root / "outputs" / "multirun").glob("*/*/*/job_status.json")):
        out.setdefault(str(p.parent.parent), []).append(json.loads(p.read_text()))
    return out


@pytest.mark.slow
def test_ctrl_c_then_sigkill_then_the_sweep_resumes(tmp_path, subprocess_env):
    """Ctrl-C ends runs as KILLED; SIGKILL leaves them resumable; a rerun skips finished jobs
    and resumes the interrupted one into the same MLflow run until it finishes."""
    epochs = 20
    # job 0: one epoch; job 1: long. Epochs of 96 steps (not the fast 4), so that the kills
    # below land mid-epoch and the epoch counts they assert are unambiguous
    cmd = [("data.samples_per_epoch=192" if a.startswith("data.samples_per_epoch=") else a)
           for a in app_cmd(f"trainer.max_epochs=1,{epochs}")]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    ckpts = tmp_path / "outputs" / "checkpoints"

    def fresh_epoch(run_id: str, after: int):
        """True on the first poll that sees a newer logged epoch (> ``after``) than the poll
        before: the next epoch has only just started, far from its checkpoint."""
        last: list[int] = []

        def predicate() -> bool:
            newest = max(trained_epochs(client, run_id), default=-1)
            fresh = bool(last) and newest > last[-1] and newest > after
            last.append(newest)
            return fresh
        return predicate

    def long_job_ckpt():
        done = {s.get("run_id") for runs in _statuses(tmp_path).values() for s in runs}
        found = [p for p in ckpts.glob("*/*/last.ckpt") if p.parent.name not in done]
        return found[0] if len(found) == 1 and done - {None} else None

    # 1. Ctrl-C while job 1 trains
    log1 = tmp_path / "sweep1.log"
    proc = start_app(cmd, subprocess_env, tmp_path, log1)
    try:
        ckpt = wait_for(long_job_ckpt, "job 1's first checkpoint", proc=proc, log=log1)
        wait_for(fresh_epoch(ckpt.parent.name, after=-1), "job 1 to start a new epoch",
                 proc=proc, log=log1)
        kill_group(proc, signal.SIGINT)
        rc = proc.wait(timeout=180)
    finally:
        kill_group(proc)
    assert rc != 0
    run_id = ckpt.parent.name
    assert client.get_run(run_id).info.status == "KILLED"
    (parent1,) = job_runs(client, "sweep")
    assert parent1.info.status == "KILLED"
    assert "interrupted: runs in progress are marked KILLED" in log1.read_text()
    epoch_at_ctrl_c = _last_epoch(ckpt)
    assert 0 <= epoch_at_ctrl_c < epochs - 1

    # 2. rerun; SIGKILL the whole group just after a resumed epoch reached the store
    log2 = tmp_path / "sweep2.log"
    proc = start_app(cmd, subprocess_env, tmp_path, log2)
    try:
        wait_for(fresh_epoch(run_id, after=epoch_at_ctrl_c), "a resumed epoch", proc=proc,
                 log=log2)
        kill_group(proc, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        kill_group(proc)
    epoch_at_kill = _last_epoch(ckpt)
    assert client.get_run(run_id).info.status == "RUNNING"  # nothing could close it
    assert "resuming norm into run " + run_id in log2.read_text()

    # 3. rerun to the end: job 0 skipped, job 1 finishes in the same run
    res = run_app(cmd, subprocess_env, tmp_path)
    assert res.returncode == 0, res.stdout[-4000:]
    last = _statuses(tmp_path)[max(_statuses(tmp_path))]
    assert [s["status"] for s in last] == ["skipped", "finished"]
    assert last[1]["run_id"] == run_id
    jobs = job_runs(client)
    assert len(jobs) == 2 and {r.info.status for r in jobs} == {"FINISHED"}
    run = client.get_run(run_id)
    assert run.data.tags["temseg.resumed_from"].endswith("last.ckpt")
    assert _last_epoch(ckpt) == epochs - 1 and epoch_at_kill < epochs - 1
    seen = trained_epochs(client, run_id)
    assert set(seen) == set(range(epochs))  # the epoch count continued across both restarts
    assert len(seen) <= epochs + 2  # at most the two interrupted epochs were trained twice
    assert "checkpoints/best.ckpt" in artifact_paths(client, run_id)
    # all three sweeps are closed: the Ctrl-C'd one by itself, the SIGKILLed one by the next
    parents = job_runs(client, "sweep")
    assert sorted(p.info.status for p in parents) == ["FINISHED", "KILLED", "KILLED"]
    # the finished sweep's parent names the run it reused (a child of the first sweep)
    (done,) = [p for p in parents if p.info.status == "FINISHED"]
    assert done.data.tags["temseg.reused_runs"] == f"{last[0]['job_name']}={last[0]['run_id']}"


# --------------------------------------------------------------------------- server outage
@pytest.fixture
def sqlite_server(tmp_path):
    """An MLflow server (sqlite backend: no PostgreSQL needed) that the test may stop."""
    state = server.start(tmp_path / "server", port=0, backend="sqlite", workers=1)
    yield state
    server.stop(tmp_path / "server")


@pytest.mark.slow
def test_tracking_server_outage_during_training(tmp_path, sqlite_server, subprocess_env):
    """Job A sees the server come back and delivers everything; job B gives up after
    ``logger.retry_timeout_s`` and leaves an outbox that the upload command delivers later."""
    url = sqlite_server.url
    client = MlflowClient(url)
    # both jobs must still be training when the server stops: long enough for any start-up skew
    epochs_b = 40
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    env_a = {**subprocess_env, "TEMSEG_ROOT": str(root_a)}
    env_b = {**subprocess_env, "TEMSEG_ROOT": str(root_b)}
    for root in (root_a, root_b):
        root.mkdir()
    # ++: works whether or not conf/logger declares retry_timeout_s
    proc_a = start_app(app_cmd(f"logger.tracking_uri={url}", "trainer.max_epochs=40",
                               "++logger.retry_timeout_s=300", multirun=False),
                       env_a, root_a, root_a / "app.log")
    proc_b = start_app(app_cmd(f"logger.tracking_uri={url}", f"trainer.max_epochs={epochs_b}",
                               "seed=1", "++logger.retry_timeout_s=3", multirun=False),
                       env_b, root_b, root_b / "app.log")
    try:
        def both_logging():
            runs = job_runs(client)
            return len(runs) == 2 and all("val/f1_otsu" in r.data.metrics for r in runs)

        wait_for(both_logging, "both jobs to log epochs", proc=proc_b, log=root_b / "app.log")
        server.stop_mlflow(sqlite_server)
        outbox_a = wait_for(lambda: next(root_a.glob("outputs/checkpoints/*/*/outbox"), None),
                            "job A to keep writes in its outbox", proc=proc_a, log=root_a / "app.log")
        # trained, but results wait in the outbox: exit 3, not the 0 of a finished job
        assert proc_b.wait(timeout=300) == 3, (root_b / "app.log").read_text()[-3000:]
        assert proc_a.poll() is None  # A trains on (or waits to deliver) while the server is down
        server.start(sqlite_server.dir, port=sqlite_server.port, backend="sqlite", workers=1)
        assert proc_a.wait(timeout=400) == 0, (root_a / "app.log").read_text()[-3000:]
    finally:
        kill_group(proc_a)
        kill_group(proc_b)

    # A: everything arrived once the server was back, the outbox is gone
    log_a = (root_a / "app.log").read_text()
    assert "unreachable" in log_a and "reachable again" in log_a
    assert not outbox_a.exists()
    (run_a,) = [r for r in job_runs(client) if r.data.params["seed"] == "0"]
    assert run_a.info.status == "FINISHED"
    assert trained_epochs(client, run_a.info.run_id) == list(range(40))
    assert "checkpoints/best.ckpt" in artifact_paths(client, run_a.info.run_id)

    # B: trained to the end, results kept locally with a clear message
    log_b = (root_b / "app.log").read_text()
    assert "python -m temseg_ablation.tracking.upload" in log_b
    (status_b,) = [json.loads(p.read_text()) for p in root_b.glob("outputs/runs/*/*/job_status.json")]
    assert status_b["status"] == "spooled" and "tracking.upload" in status_b["message"]
    (outbox_b,) = root_b.glob("outputs/checkpoints/*/*/outbox")
    run_b = client.get_run(status_b["run_id"])
    assert run_b.info.status == "RUNNING" and "final/val/f1_otsu" not in run_b.data.metrics
    assert (outbox_b.parent / "best.ckpt").exists()

    up = subprocess.run([sys.executable, "-m", "temseg_ablation.tracking.upload",
                         str(root_b / "outputs" / "checkpoints")],
                        capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    assert "records delivered" in up.stdout
    run_b = client.get_run(status_b["run_id"])
    assert run_b.info.status == "FINISHED" and "final/heldout/f1_otsu" in run_b.data.metrics
    assert trained_epochs(client, run_b.info.run_id) == list(range(epochs_b))
    assert "checkpoints/best.ckpt" in artifact_paths(client, run_b.info.run_id)
    assert not outbox_b.exists()
    shutil.rmtree(root_a / "outputs", ignore_errors=True)
