"""A real ``mlflow server`` over a tiny sweep's store: runs, metrics and artifacts via the REST API."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from temseg_ablation.report.runs import load_curves, load_sweep_runs
from tests.conftest import ROOT
from tests.fixtures_sweep import EXPERIMENT, SWEEP_MODELS, TinySweep, sweep_env

pytest_plugins = ["tests.fixtures_sweep"]

pytestmark = pytest.mark.slow

# The server helpers of `make ui-check` (free port, health wait, process-group stop) serve here too.
_spec = importlib.util.spec_from_file_location("ui_check", ROOT / "scripts" / "ui_check.py")
ui_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ui_check)


def _get(base: str, endpoint: str, /, **params: str) -> dict:
    url = f"{base}{endpoint}?{urllib.parse.urlencode(params)}" if params else base + endpoint
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _post(base: str, endpoint: str, body: dict) -> dict:
    req = urllib.request.Request(base + endpoint, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def server(tiny_sweep: TinySweep, tmp_path_factory) -> Iterator[str]:
    """Base URL of an ``mlflow server`` on a free local port over the tiny sweep's store."""
    port = ui_check.free_port()
    log = tmp_path_factory.mktemp("mlflow_server") / "server.log"
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", tiny_sweep.tracking_uri,
           "--default-artifact-root", str(tiny_sweep.artifact_root),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=tiny_sweep.root, env=sweep_env(tiny_sweep.root),
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        ui_check.wait_healthy(base, proc, log, timeout_s=180.0)
        yield base
    finally:
        ui_check.stop(proc)


@pytest.fixture(scope="module")
def runs(server: str, tiny_sweep: TinySweep) -> dict[str, dict]:
    """All runs of the experiment from ``runs/search``, keyed by run id."""
    exp = _get(server, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=EXPERIMENT)
    found = _post(server, "/api/2.0/mlflow/runs/search",
                  {"experiment_ids": [exp["experiment"]["experiment_id"]], "max_results": 100})
    return {r["info"]["run_id"]: r for r in found["runs"]}


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _children(runs: dict[str, dict], parent: str) -> dict[str, dict]:
    return {k: r for k, r in runs.items() if _tags(r).get("mlflow.parentRunId") == parent}


def test_experiment_is_served(server: str, tiny_sweep: TinySweep):
    exp = _get(server, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=EXPERIMENT)
    assert exp["experiment"]["name"] == EXPERIMENT
    assert Path(exp["experiment"]["artifact_location"]) == tiny_sweep.artifact_root
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(server, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="no-such-experiment")
    assert err.value.code == 404


def test_parent_and_child_runs(runs: dict[str, dict], tiny_sweep: TinySweep):
    assert tiny_sweep.parent_run_id in runs
    parent = runs[tiny_sweep.parent_run_id]
    assert _tags(parent)["temseg.kind"] == "sweep"
    assert parent["info"]["status"] == "FINISHED"
    children = _children(runs, tiny_sweep.parent_run_id)
    assert len(children) == len(SWEEP_MODELS) == len(runs) - 1
    variants = set()
    for run in children.values():
        assert run["info"]["status"] == "FINISHED"
        assert _tags(run)["temseg.kind"] == "job"
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        variants.add(params["variant"])
        assert params["net.norm"] == "batch"
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        for key in ("final/val/f1_otsu", "final/heldout/f1_otsu", "final/gap/f1_otsu"):
            assert key in metrics, key
        assert 0.0 <= metrics["final/val/f1_otsu"] <= 1.0
        assert metrics["final/gap/f1_otsu"] == pytest.approx(
            metrics["final/val/f1_otsu"] - metrics["final/heldout/f1_otsu"], abs=1e-9)
    assert variants == set(SWEEP_MODELS)


def test_threshold_curve_history(server: str, runs: dict[str, dict], tiny_sweep: TinySweep):
    for run_id in _children(runs, tiny_sweep.parent_run_id):
        hist = _get(server, "/api/2.0/mlflow/metrics/get-history", run_id=run_id,
                    metric_key="curve/val/f1")["metrics"]
        assert sorted(m["step"] for m in hist) == list(range(0, 101, 5))  # 21 thresholds
        assert all(0.0 <= m["value"] <= 1.0 for m in hist)


def test_artifacts_listed_and_downloadable(server: str, runs: dict[str, dict], tiny_sweep: TinySweep):
    for run_id in _children(runs, tiny_sweep.parent_run_id):
        figures = _get(server, "/api/2.0/mlflow/artifacts/list", run_id=run_id, path="figures")
        names = {f["path"] for f in figures["files"]}
        assert {"figures/val_threshold_curves.png", "figures/heldout_threshold_curves.png"} <= names
        ckpts = {f["path"]: f for f in
                 _get(server, "/api/2.0/mlflow/artifacts/list", run_id=run_id,
                      path="checkpoints")["files"]}
        assert int(ckpts["checkpoints/best.ckpt"]["file_size"]) > 1000
        url = (f"{server}/get-artifact?" + urllib.parse.urlencode(
            {"path": "figures/val_threshold_curves.png", "run_uuid": run_id}))
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert resp.read(8) == b"\x89PNG\r\n\x1a\n"
    summary = _get(server, "/api/2.0/mlflow/artifacts/list", run_id=tiny_sweep.parent_run_id)
    assert "summary.csv" in {f["path"] for f in summary["files"]}


def test_ui_page_is_served(server: str):
    with urllib.request.urlopen(server + "/", timeout=30) as resp:
        html = resp.read().decode(errors="replace")
    assert "<html" in html.lower() and "mlflow" in html.lower()


def test_report_loaders_work_over_rest(server: str, tiny_sweep: TinySweep):
    """The notebook's loaders read the same runs through the server as from the sqlite file."""
    over_http = load_sweep_runs(server, EXPERIMENT, sweep_run_id="latest")
    direct = load_sweep_runs(tiny_sweep.tracking_uri, EXPERIMENT, sweep_run_id="latest")
    assert sorted(over_http["run_id"]) == sorted(direct["run_id"])
    assert set(over_http["variant"]) == set(SWEEP_MODELS)
    merged = over_http.merge(direct, on="run_id", suffixes=("_http", "_db"))
    assert (merged["final/val/f1_otsu_http"] == merged["final/val/f1_otsu_db"]).all()
    curves = load_curves(server, over_http["run_id"], split="heldout")
    assert curves.groupby("run_id").size().tolist() == [21] * len(SWEEP_MODELS)
