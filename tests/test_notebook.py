"""The browsing notebook and its data layer: ``report.runs`` loaders and ``report.compare_plots``.

Fast tests use a hand-written MLflow store; the slow ones run the real app (a tiny sweep) and
execute ``notebooks/browse_results.ipynb`` against it so the notebook never rots.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from temseg_ablation.report import compare_plots as cp
from temseg_ablation.report.runs import (
    CURVE_NAMES,
    KEY_PARAMS,
    load_curves,
    load_sweep_runs,
    summarise,
)
from tests.conftest import ROOT, execute_notebook
from tests.fixtures_sweep import EXPERIMENT, SWEEP_MODELS, TinySweep

pytest_plugins = ["tests.fixtures_sweep"]

NOTEBOOK = ROOT / "notebooks" / "browse_results.ipynb"
THRESHOLDS = np.round(np.arange(0, 1.0001, 0.05), 2)


# --------------------------------------------------------------------------- a hand-made store
def _job(client: MlflowClient, exp: str, variant: str, seed: int, parent: str | None,
         f1_val: float, f1_held: float) -> str:
    tags = {"temseg.kind": "job", "temseg.variant": variant, "temseg.config_hash": f"{variant}{seed}"}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run_id = client.create_run(exp, tags=tags, run_name=variant).info.run_id
    params = {"variant": variant, "seed": seed, "net.arch": "unet", "net.norm": "batch",
              "net.extra_conv": variant.startswith("twoconv"), "data.blur_sigma": 0.0,
              "net.activation": "leaky_relu", "net.kernel_size": 3, "net.depth": 4,
              "optim.lr": 1e-4}
    # curve: a bump peaking at 0.5 whose height is the run's F1; logged like final_logging does
    steps = np.round(THRESHOLDS * 100).astype(int)
    f1 = f1_val * (1 - (THRESHOLDS - 0.5) ** 2)
    metrics = [Metric("final/val/f1_otsu", f1_val, 0, 0), Metric("final/heldout/f1_otsu", f1_held, 0, 0),
               Metric("final/gap/f1_otsu", f1_val - f1_held, 0, 0), Metric("val/f1_otsu", 0.1, 0, 0)]
    for name in CURVE_NAMES:
        values = {"f1_std": np.full_like(f1, 0.05)}.get(name, f1)
        metrics += [Metric(f"curve/val/{name}", float(v), 1, int(s)) for v, s in zip(values, steps, strict=True)]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()],
                     tags=[RunTag("x", "y")])
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture(scope="module")
def fake_store(tmp_path_factory) -> dict:
    """An older sweep (one job) and a newer sweep of 2 variants x 2 seeds, plus a re-logged step."""
    root = tmp_path_factory.mktemp("fake_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=str(root / "artifacts"))
    old_parent = client.create_run(exp, tags={"temseg.kind": "sweep"}).info.run_id
    old_job = _job(client, exp, "norm", 7, old_parent, 0.5, 0.4)
    client.set_terminated(old_parent, "FINISHED")
    parent = client.create_run(exp, tags={"temseg.kind": "sweep"}).info.run_id
    jobs = {}
    for variant, base in (("norm", 0.8), ("twoconv", 0.6)):
        for seed in (0, 1):
            jobs[(variant, seed)] = _job(client, exp, variant, seed, parent, base + 0.02 * seed,
                                         base - 0.1)
    # a resumed job logs its final curve again: the later value must win
    client.log_metric(jobs[("norm", 0)], "curve/val/f1", 0.99, timestamp=5, step=50)
    # the newer sweep skipped an identical config: its summary lists the older run
    summary = root / "summary.csv"
    pd.DataFrame({"job_num": [0, 1], "status": ["finished", "skipped"],
                  "run_id": [jobs[("norm", 0)], old_job]}).to_csv(summary, index=False)
    client.log_artifact(parent, str(summary))
    client.set_terminated(parent, "FINISHED")
    return {"uri": uri, "root": root, "parent": parent, "old_parent": old_parent,
            "old_job": old_job, "jobs": jobs}


# --------------------------------------------------------------------------- runs.py
def test_load_latest_sweep_rows_columns_and_types(fake_store):
    runs = load_sweep_runs(fake_store["uri"], EXPERIMENT, sweep_run_id="latest")
    assert set(runs["run_id"]) == set(fake_store["jobs"].values()) | {fake_store["old_job"]}
    assert list(runs.columns[:7]) == ["run_id", "run_name", "status", "variant", "parent_run_id",
                                      "config_hash", "start_time"]
    assert all(p in runs.columns for p in KEY_PARAMS)
    assert {"final/val/f1_otsu", "final/heldout/f1_otsu", "final/gap/f1_otsu"} <= set(runs.columns)
    assert "val/f1_otsu" not in runs.columns  # per-epoch metrics are not final results
    assert runs["seed"].dtype.kind == "i" and runs["optim.lr"].dtype.kind == "f"
    assert runs["net.extra_conv"].dtype == bool
    assert set(runs.loc[runs["variant"] == "twoconv", "net.extra_conv"]) == {True}
    assert (runs["status"] == "FINISHED").all()
    assert runs["start_time"].is_monotonic_increasing


def test_sweep_selection_modes(fake_store):
    uri = fake_store["uri"]
    everything = load_sweep_runs(uri, EXPERIMENT)
    assert len(everything) == 5
    old = load_sweep_runs(uri, EXPERIMENT, sweep_run_id=fake_store["old_parent"])
    assert old["run_id"].tolist() == [fake_store["old_job"]]
    latest = load_sweep_runs(uri, EXPERIMENT, sweep_run_id="latest")
    explicit = load_sweep_runs(uri, EXPERIMENT, sweep_run_id=fake_store["parent"])
    assert latest["run_id"].tolist() == explicit["run_id"].tolist()


def test_bad_inputs_give_one_line_errors(fake_store, tmp_path):
    missing = tmp_path / "nothing" / "mlflow.db"
    with pytest.raises(FileNotFoundError, match="no MLflow tracking database") as err:
        load_sweep_runs(f"sqlite:///{missing}")
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    assert not missing.exists()  # the loader never creates an empty store
    with pytest.raises(ValueError, match="no experiment named 'nope'.*temseg-ablation"):
        load_sweep_runs(fake_store["uri"], "nope")
    with pytest.raises(ValueError, match="no run with id 'deadbeef'"):
        load_sweep_runs(fake_store["uri"], EXPERIMENT, sweep_run_id="deadbeef")


def test_load_curves_long_frame(fake_store):
    ids = list(fake_store["jobs"].values())
    curves = load_curves(fake_store["uri"], ids)
    assert list(curves.columns) == ["run_id", "threshold", *CURVE_NAMES]
    assert curves.groupby("run_id").size().to_dict() == {i: 21 for i in ids}
    assert np.allclose(sorted(curves["threshold"].unique()), THRESHOLDS)
    first = curves[curves["run_id"] == fake_store["jobs"][("norm", 0)]].set_index("threshold")
    assert first.loc[0.5, "f1"] == pytest.approx(0.99)        # re-logged step: latest wins
    assert first.loc[0.5, "f1_mean"] == pytest.approx(0.8)
    assert np.allclose(curves["f1_std"], 0.05)
    empty = load_curves(fake_store["uri"], ids, split="heldout")
    assert len(empty) == 0 and list(empty.columns) == ["run_id", "threshold", *CURVE_NAMES]


def test_summarise_mean_std_over_seeds(fake_store):
    runs = load_sweep_runs(fake_store["uri"], EXPERIMENT, sweep_run_id=fake_store["parent"])
    runs = runs[runs["run_id"] != fake_store["old_job"]]
    table = summarise(runs)
    assert table.index.tolist() == ["norm", "twoconv"]  # best first
    assert table.loc["norm", "final/val/f1_otsu mean"] == pytest.approx(0.81)
    assert table.loc["twoconv", "final/val/f1_otsu std"] == pytest.approx(np.std([0.6, 0.62], ddof=1))
    assert table["n"].tolist() == [2, 2]
    with pytest.raises(ValueError, match="no column 'arch'"):
        summarise(runs, by="arch")


# --------------------------------------------------------------------------- compare_plots.py
def test_comparison_plots_draw_and_save(fake_store, tmp_path):
    runs = load_sweep_runs(fake_store["uri"], EXPERIMENT, sweep_run_id="latest")
    curves = load_curves(fake_store["uri"], runs["run_id"])
    assert cp.variant_order(runs) == ["norm", "twoconv"]
    figs = {
        "f1.png": cp.f1_by_variant(runs, path=tmp_path / "f1.png"),
        "curves.png": cp.curves_by_variant(curves, runs, path=tmp_path / "curves.png"),
        "gap.png": cp.generalisation_gap(runs, path=tmp_path / "gap.png"),
    }
    for name, fig in figs.items():
        assert isinstance(fig, Figure)
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    bars = figs["f1.png"].axes[0].patches
    assert len(bars) == 2 and bars[0].get_width() > bars[1].get_width()
    lines = [ln for ln in figs["curves.png"].axes[0].get_lines() if ln.get_label().startswith(("norm", "twoconv"))]
    assert len(lines) == 2
    assert len(figs["gap.png"].axes) == 2


def test_comparison_plots_reject_bad_frames(fake_store):
    runs = load_sweep_runs(fake_store["uri"], EXPERIMENT, sweep_run_id="latest")
    with pytest.raises(ValueError, match="missing column.*final/val/nothing"):
        cp.f1_by_variant(runs, metric="final/val/nothing")
    with pytest.raises(ValueError, match="empty"):
        cp.generalisation_gap(runs.iloc[:0])
    with pytest.raises(ValueError, match="no curve belongs"):
        cp.curves_by_variant(pd.DataFrame({"run_id": ["x"], "threshold": [0.5], "f1_mean": [1.0]}),
                             runs)


# --------------------------------------------------------------------------- the real thing
@pytest.mark.slow
def test_loaders_on_a_real_tiny_sweep(tiny_sweep: TinySweep):
    runs = load_sweep_runs(tiny_sweep.tracking_uri, EXPERIMENT, sweep_run_id="latest")
    assert sorted(runs["variant"]) == sorted(SWEEP_MODELS)
    assert set(runs["parent_run_id"]) == {tiny_sweep.parent_run_id}
    assert runs["net.extra_conv"].tolist() == [v.startswith("twoconv") for v in runs["variant"]]
    assert runs["final/val/f1_otsu"].between(0, 1).all()
    curves = load_curves(tiny_sweep.tracking_uri, runs["run_id"])
    assert curves.groupby("run_id").size().tolist() == [21, 21]
    assert curves[["precision", "recall", "f1"]].stack().between(0, 1).all()




@pytest.mark.slow
def test_notebook_executes_against_tiny_sweep(tiny_sweep: TinySweep, tmp_path, monkeypatch):
    monkeypatch.setenv("TEMSEG_TRACKING_URI", tiny_sweep.tracking_uri)
    monkeypatch.setenv("TEMSEG_SWEEP", "latest")
    outputs, text = execute_notebook(NOTEBOOK, tmp_path, monkeypatch)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3
    assert f"{len(SWEEP_MODELS)} runs" in text and tiny_sweep.parent_run_id in text
