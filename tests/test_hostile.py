"""Hostile input: checkpoints carrying pickled code, damaged checkpoints, forged outboxes,
and values the tracking store rejects. Nothing hostile may run code or write outside its place.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from temseg_ablation.app.build import build_net
from temseg_ablation.app.config import to_plain
from temseg_ablation.app.job import ResumeCheckpointError, checked_resume
from temseg_ablation.models.io import CheckpointError, load_checkpoint
from temseg_ablation.tracking import upload
from temseg_ablation.tracking.outbox import Outbox, OutboxError, read_records

from .conftest import compose_cfg
from .procs import FAST, app_cmd, job_runs, start_app, trained_epochs, wait_for


class _WritesMarker:
    """Unpickling this object runs code: it writes ``path`` (the proof that code ran)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('code ran')",))


def _good_checkpoint() -> dict:
    """A small, valid temseg checkpoint (plain data and tensors only)."""
    cfg = compose_cfg(["arch=one_filter", "kernel=3"])
    net = build_net(cfg)
    net_config = to_plain(cfg.net)
    net_config.pop("depth", None)
    return {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "hyper_parameters": {"net_config": net_config, "preprocess": {"pixel_size_nm": 0.18}},
            "loops": {}, "epoch": 0, "global_step": 0}


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint that looks right but runs code (writing ``marker``) when unpickled."""
    ckpt = _good_checkpoint()
    ckpt["hyper_parameters"]["payload"] = _WritesMarker(marker)
    torch.save(ckpt, path)
    return path


def test_the_payload_is_real(tmp_path):
    # guards the tests below: an unsafe load of the crafted file does run its code
    marker = tmp_path / "marker"
    path = _evil_checkpoint(tmp_path / "evil.ckpt", marker)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


def test_load_checkpoint_refuses_pickled_code(tmp_path):
    marker = tmp_path / "marker"
    path = _evil_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError, match="refused") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_resume_refuses_pickled_code(tmp_path):
    marker = tmp_path / "marker"
    path = _evil_checkpoint(tmp_path / "last.ckpt", marker)
    with pytest.raises(ResumeCheckpointError, match="refused to resume.*could run code") as err:
        checked_resume(path)
    assert str(path) in str(err.value) and "rerun=true" in str(err.value)
    assert not marker.exists()


def test_damaged_checkpoints_are_named_and_refused(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save(_good_checkpoint(), good)
    assert load_checkpoint(good).net_config["arch"] == "one_filter"
    data = good.read_bytes()
    cases = {"truncated.ckpt": data[: len(data) // 2], "garbage.ckpt": b"\x00not a zip" * 50,
             "empty.ckpt": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    for name in [*cases, "list.ckpt"]:
        path = tmp_path / name
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        assert str(path) in str(err.value)
        with pytest.raises(ResumeCheckpointError, match="unreadable|not a Lightning") as err:
            checked_resume(path)
        assert str(path) in str(err.value)
    assert checked_resume(tmp_path / "absent.ckpt") is None


@pytest.mark.slow
def test_a_job_never_resumes_from_a_planted_checkpoint(tmp_path):
    from mlflow.tracking import MlflowClient

    from temseg_ablation.app.job import run_job

    cfg = compose_cfg([*FAST, "trainer.max_epochs=3"], tmp_path)
    with open_dict(cfg):
        cfg.fail_after_epochs = 1
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_job(cfg, tmp_path / "job1", job_name="crash")
    (last,) = (tmp_path / "outputs" / "checkpoints").glob("*/*/last.ckpt")
    run_id = last.parent.name
    marker = tmp_path / "marker"
    _evil_checkpoint(last, marker)
    with open_dict(cfg):
        cfg.fail_after_epochs = None
    with pytest.raises(ResumeCheckpointError, match="refused to resume"):
        run_job(cfg, tmp_path / "job2", job_name="planted")
    assert not marker.exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and "refused to resume" in run.data.tags["error"]
    last.unlink()  # what the message tells the user to do
    result = run_job(cfg, tmp_path / "job3", job_name="clean")
    assert result["status"] == "finished" and result["run_id"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert not marker.exists()


# --------------------------------------------------------------------------- forged outboxes
def _outbox(folder: Path, *records: object, raw: str = "") -> Path:
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps(
        {"tracking_uri": f"sqlite:///{folder / 'never.db'}", "experiment_name": "x", "run_id": "r"}))
    lines = [json.dumps(r) for r in records]
    (folder / "records.jsonl").write_text("".join(line + "\n" for line in lines) + raw)
    return folder


@pytest.mark.parametrize("record, problem", [
    ({"seq": 1, "op": "artifact", "file": "../../../etc/passwd"}, "not a plain relative path"),
    ({"seq": 1, "op": "artifact", "file": "/etc/passwd"}, "not a plain relative path"),
    ({"seq": 1, "op": "artifact", "file": "files/1/a.png", "artifact_path": "../../x"},
     "not a plain relative path"),
    ({"seq": 1, "op": "exec", "code": "import os"}, "not an outbox record"),
    ({"seq": "1", "op": "status", "status": "FINISHED"}, "not an outbox record"),
    ({"seq": 1, "op": "status", "status": "DELETED"}, "status must be one of"),
    ({"seq": 1, "op": "metrics", "items": [["a", "1; drop table", 0, 0]]}, "metrics record needs"),
    ({"seq": 1, "op": "params", "params": ["a", 1]}, "params record needs"),
    (["not", "an", "object"], "not an outbox record"),
])
def test_forged_outbox_records_are_refused(tmp_path, record, problem, capsys):
    folder = _outbox(tmp_path / "outbox", {"seq": 0, "op": "status", "status": "RUNNING"}, record)
    with pytest.raises(OutboxError, match=problem) as err:
        read_records(folder)
    assert f"{folder / 'records.jsonl'}:2" in str(err.value)
    assert upload.main([str(folder)]) == 1
    out = capsys.readouterr()
    assert problem in out.err and "Traceback" not in out.err
    assert not (folder / "never.db").exists()  # refused before any store was opened


def test_outbox_json_damage(tmp_path):
    ok = {"seq": 1, "op": "status", "status": "FINISHED"}
    cut = _outbox(tmp_path / "cut", ok, raw='{"seq": 2, "op": "metr')
    _, records, _ = read_records(cut)  # a last line cut short by a kill never counted
    assert [r["seq"] for r in records] == [1]
    middle = _outbox(tmp_path / "middle", raw='{"seq": 1, "op"\n' + json.dumps(ok) + "\n")
    with pytest.raises(OutboxError, match=r"records.jsonl:1: not valid JSON"):
        read_records(middle)
    bad_ack = _outbox(tmp_path / "ack", ok)
    (bad_ack / "acked").write_text("1; rm -rf /")
    with pytest.raises(OutboxError, match="expected the last delivered record number"):
        read_records(bad_ack)
    assert upload.main([str(tmp_path / "does-not-exist")]) == 1


@pytest.mark.slow
def test_values_the_store_rejects_do_not_stop_a_run(tmp_path):
    from temseg_ablation.tracking.mlflow_store import TAG_SWEEP, Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "hostile", retry_timeout_s=5)
    odd_dir = "/tmp/it's a \"sweep\""
    run_id = tracker.create_run("r", {TAG_SWEEP: "/tmp/it's here", "temseg.kind": "job"})
    box = Outbox(tmp_path / "outbox", tracker, run_id)
    box.log_params(run_id, {"bad key!?*": 1})  # MLflow refuses such keys: dropped, not fatal
    box.log_params(run_id, {"long": "v" * 10_000, "unicode": "Å µm ∅ \u0000x"})
    box.log_metrics(run_id, {"ok": 1.0, "nan": float("nan"), "inf": float("inf")}, step=3)
    box.set_tags(run_id, {"note": "'; DROP TABLE runs; --"})
    assert box.close() is True and box.dropped == 1
    run = tracker.client.get_run(run_id)
    assert "bad key!?*" not in run.data.params and len(run.data.params["long"]) == 6000
    assert set(run.data.metrics) == {"ok"}
    assert run.data.tags["note"] == "'; DROP TABLE runs; --"
    # quotes in a sweep folder name neither break nor widen the search for its runs
    assert [r.info.run_id for r in tracker.running_jobs("none", "/tmp/it's here")] == [run_id]
    assert tracker.running_jobs("none", odd_dir) == []


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        out |= {int(c) for c in (task / "children").read_text().split()}
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has stopped; pid 1 here may never reap it


@pytest.mark.slow
def test_sigkill_of_the_parallel_launcher_stops_its_workers(tmp_path, subprocess_env):
    log = tmp_path / "sweep.log"
    proc = start_app(app_cmd("seed=0,1", "hydra/launcher=parallel", "trainer.max_epochs=500"),
                     subprocess_env, tmp_path, log)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")

    def both_training() -> bool:
        runs = [r for r in job_runs(client) if r.info.status == "RUNNING"]
        return len(runs) == 2 and all(trained_epochs(client, r.info.run_id) for r in runs)

    wait_for(both_training, "both jobs to train", timeout=300, proc=proc, log=log)
    workers = {p for p in _children(proc.pid)
               if "popen_loky" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")}
    assert len(workers) == 2
    os.kill(proc.pid, signal.SIGKILL)  # the launcher only, as an OOM killer would
    proc.wait()
    wait_for(lambda: not any(_alive(p) for p in workers), "the orphaned workers to stop",
             timeout=150)
    statuses = {r.info.status for r in job_runs(client)}
    # marked as interrupted, resumable by a rerun
    job_logs = "\n".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("outputs/**/main.log")))
    assert statuses == {"KILLED"}, f"{statuses}\n{log.read_text()[-4000:]}\njob logs:\n{job_logs}"
    assert "launcher (pid" in log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ("optim.lr=abc", "optim.lr='abc': must be a number"),
    ("optim.lr=-1", "optim.lr=-1: must be > 0"),
    ("data.batch_size=0", "data.batch_size=0: must be >= 1"),
    ("trainer.max_epochs=-5", "trainer.max_epochs=-5: must be >= 0"),
    ("data=folder", "data.images: required but not set"),
])
def test_a_bad_config_value_is_one_line_and_leaves_no_run(override, message, tmp_path,
                                                           subprocess_env):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "temseg_ablation", "model=norm", override],
                         env=subprocess_env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]
    db = tmp_path / "mlruns" / "mlflow.db"
    assert not db.exists() or not job_runs(MlflowClient(f"sqlite:///{db}"))


@pytest.mark.slow
def test_two_sweeps_started_at_once_on_a_fresh_store_both_keep_their_parent(tmp_path,
                                                                             subprocess_env):
    # MLflow migrates a new sqlite store on first open; unlocked, two sweeps doing it at once
    # raced and one lost its parent run silently (exit 0, jobs as top-level runs)
    procs = [start_app(app_cmd(f"seed={s}", "trainer.max_epochs=1"), subprocess_env, tmp_path,
                       tmp_path / f"sweep{i}.log") for i, s in enumerate(("0,1", "2,3"))]
    codes = [p.wait(timeout=600) for p in procs]
    logs = [(tmp_path / f"sweep{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], [log[-2000:] for log in logs]
    assert not any("Online migration" in log or "raised" in log for log in logs)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    sweeps = job_runs(client, kind="sweep")
    jobs = job_runs(client)
    assert len(sweeps) == 2 and len(jobs) == 4
    parents = {r.data.tags.get("mlflow.parentRunId") for r in jobs}
    assert parents == {r.info.run_id for r in sweeps}
    assert all(r.info.status == "FINISHED" for r in jobs + sweeps)
