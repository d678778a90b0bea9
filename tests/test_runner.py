"""``app.runner`` (launching app jobs), ``tracking.queries`` on a real sqlite store, and
``report.reproduce_table1`` measuring a recorded sweep (preview profile: no verdicts)."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from temseg_ablation.app import runner
from temseg_ablation.app.sweep import PARENT_FILE, STATUS_FILE
from temseg_ablation.report import reproduce_table1 as rt
from temseg_ablation.report import table1
from temseg_ablation.tracking import queries
from temseg_ablation.tracking.mlflow_store import Tracker
from temseg_ablation.tracking.tags import TAG_HASH, TAG_KIND
from tests.conftest import TINY

EXPERIMENT = "temseg-ablation"


@pytest.fixture
def store(tmp_path):
    """A fresh sqlite store under ``tmp_path`` and a Tracker on it."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    return uri, Tracker(uri, EXPERIMENT, artifact_location=str(tmp_path / "mlruns" / "art"))


def test_app_command_quotes_paths(tmp_path):
    job = runner.AppJob("j", ("arch=one_filter", "kernel=7"), tmp_path / "a b")
    cmd = runner.app_command(job, "sqlite:////x y/mlflow.db", threads=1)
    assert cmd[1:5] == ["-m", "temseg_ablation", "arch=one_filter", "kernel=7"]
    assert "logger.tracking_uri='sqlite:////x y/mlflow.db'" in cmd
    assert f"hydra.run.dir='{tmp_path / 'a b'}'" in cmd and cmd[-1] == "trainer.num_threads=1"
    sweep = runner.sweep_command(["model=norm"], tmp_path / "s")
    assert sweep[1:5] == ["-m", "temseg_ablation", "-m", "model=norm"]
    assert sweep[-1] == f"hydra.sweep.dir='{tmp_path / 's'}'"


def test_finished_run_on_a_sqlite_store(store):
    uri, tracker = store
    old = tracker.create_run("old", {TAG_KIND: "job", TAG_HASH: "abc"})
    tracker.set_status(old, "FINISHED")
    time.sleep(0.01)  # distinct start times: the newest finished run must win
    new = tracker.create_run("new", {TAG_KIND: "job", TAG_HASH: "abc"})
    tracker.set_status(new, "FINISHED")
    failed = tracker.create_run("failed", {TAG_KIND: "job", TAG_HASH: "def"})
    tracker.set_status(failed, "FAILED")
    sweep = tracker.create_run("sweep", {TAG_KIND: "sweep", TAG_HASH: "abc"})
    tracker.set_status(sweep, "FINISHED")  # a sweep run with the hash is not a job

    client = queries.open_client(uri)
    exp = queries.experiment_id(client, EXPERIMENT)
    assert queries.finished_run(client, exp, "abc").info.run_id == new
    assert queries.finished_run(client, exp, "def") is None  # only a FAILED run
    assert queries.finished_run(client, exp, "nope") is None
    assert tracker.finished_run("abc").info.run_id == new  # the Tracker asks the same query
    assert queries.latest_sweep_run_id(client, exp) == sweep
    assert queries.experiment_id(client, "no such experiment") is None


def test_queries_histories_and_sweep_runs(store):
    uri, tracker = store
    parent = tracker.create_run("sweep", {TAG_KIND: "sweep"})
    child = tracker.create_run("job", {TAG_KIND: "job"}, parent_id=parent)
    tracker.log_series(child, "val/f1_otsu", [0.2, 0.5, 0.7], [10, 20, 30])
    tracker.log_metrics(child, {"final/test/f1_otsu": 0.7, "other": 1.0})
    client = queries.open_client(uri)
    exp = queries.experiment_id(client, EXPERIMENT)
    assert [r.info.run_id for r in queries.sweep_runs(client, exp, parent)] == [child]
    hist = queries.histories(client, [child, parent], "val/f1_otsu")
    assert list(hist["step"]) == [10, 20, 30] and set(hist["run_id"]) == {child}
    assert np.allclose(hist["value"], [0.2, 0.5, 0.7])
    assert queries.metrics_of_runs(client, [child]) == {child: {"final/test/f1_otsu": 0.7}}


def test_open_client_refuses_a_missing_sqlite_file(tmp_path):
    uri = f"sqlite:///{tmp_path}/none.db"
    assert not queries.store_exists(uri)
    with pytest.raises(FileNotFoundError, match="none.db"):
        queries.open_client(uri)
    assert not (tmp_path / "none.db").exists()
    assert runner.finished_run_id(uri, ["model=norm"]) is None


@pytest.mark.slow
def test_run_jobs_trains_one_tiny_job_then_skips_it(tmp_path, in_process_env):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    overrides = ("model=norm", *TINY, "eval.figures=false",
                 "eval.particle_metrics=false", "data.samples_per_epoch=4")
    job = runner.AppJob("tiny", overrides, tmp_path / "job")
    lines: list[str] = []
    [first] = runner.run_jobs([job], uri, log=lines.append)
    assert first.status == "finished" and len(first.run_id) == 32
    assert (tmp_path / "job" / STATUS_FILE).is_file() and (tmp_path / "job" / "app_job.log").is_file()
    assert runner.finished_run_id(uri, overrides) == first.run_id  # same hash as the app
    [again] = runner.run_jobs([job], uri, log=lines.append)
    assert again.status == "skipped" and again.run_id == first.run_id
    assert lines[-1] == f"  tiny: already finished as run {first.run_id}"
    client = queries.open_client(uri)
    assert queries.checkpoints(client, first.run_id) == ["checkpoints/best.ckpt"]
    assert queries.checkpoint(client, first.run_id, tmp_path / "dl").is_file()
    assert queries.job_config_file(client.get_run(first.run_id)) == tmp_path / "job" / "job_config.yaml"


# ------------------------------------------------------------------------- reproduce_table1


def _recorded_sweep(tmp_path, store, arms=("norm", "norm_k7"), seeds=3):
    """A sweep folder and store as the app leaves them, with made-up metrics (no training)."""
    uri, tracker = store
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    parent = tracker.create_run("sweep", {TAG_KIND: "sweep"})
    (sweep / PARENT_FILE).write_text(parent)
    (sweep / "multirun.yaml").write_text(f"logger:\n  tracking_uri: {uri}\n")
    rng = np.random.default_rng(0)
    num = 0
    for arm in arms:
        for seed in range(seeds):
            rid = tracker.create_run(arm, {TAG_KIND: "job", TAG_HASH: f"h{num}"}, parent_id=parent)
            tracker.log_params(rid, {"variant": arm, "seed": seed})
            tracker.log_metrics(rid, {f"final/test/{k}": float(rng.uniform(0.3, 0.9))
                                      for k in table1.METRIC_KEYS} | {"final/converged": 1.0})
            tracker.log_series(rid, rt.CURVE_KEY, [0.3, 0.6, 0.65], [5, 10, 15])
            tracker.set_status(rid, "FINISHED")
            job = sweep / f"{num}_{arm}"
            job.mkdir()
            (job / STATUS_FILE).write_text(json.dumps({"job_num": num, "status": "finished",
                                                       "run_id": rid}))
            num += 1
    return sweep, uri, parent


def test_collect_runs_has_converged_and_test_metrics(tmp_path, store):
    sweep, _, _ = _recorded_sweep(tmp_path, store)
    runs, _, _ = rt.collect_runs(sweep)
    assert len(runs) == 6 and runs["converged"].dtype == bool and runs["converged"].all()
    assert {f"final/test/{k}" for k in table1.METRIC_KEYS} <= set(runs.columns)
    assert sorted(runs["arm"].unique()) == ["norm", "norm_k7"]


def test_reproduce_table1_preview_profile_gives_no_verdict(tmp_path, store, monkeypatch, capsys):
    if "preview" not in runner.experiment_profiles():  # conf/experiment/preview.yaml not written yet
        monkeypatch.setattr(rt, "experiment_profiles",
                            lambda: [*runner.experiment_profiles(), "preview"])
    sweep, uri, parent = _recorded_sweep(tmp_path, store)
    out = tmp_path / "table"
    assert rt.main(["--no-run", "--sweep-dir", str(sweep), "--profile", "preview",
                    "--seeds", "3", "--out", str(out)]) == 0
    table = pd.read_csv(out / "table1.csv")
    assert tuple(table.columns) == table1.COLUMNS
    assert set(table["verdict"]) == {table1.PREVIEW_VERDICT}
    row = next(r.id for r in table1.ROWS if (r.base, r.treated) == ("norm", "norm_k7"))
    k7 = table[(table["row"].astype(str) == row) & table["primary"]]
    assert len(k7) == 1
    assert (k7["n_seeds"] == 3).all()  # measured from the recorded seeds, only not judged
    assert (out / "learning_curves.png").stat().st_size > 5_000
    curves = pd.read_csv(out / "learning_curves.csv")
    assert len(curves) == 6 * 3 and set(curves["arm"]) == {"norm", "norm_k7"}
    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent, "table1")}
    assert logged == {"table1/table1.md", "table1/table1.csv", "table1/table1_effects.png",
                      "table1/learning_curves.png"}
    assert "preview: no verdict" in capsys.readouterr().out


def test_reproduce_table1_refuses_an_unknown_profile(tmp_path):
    with pytest.raises(SystemExit) as exc:
        rt.main(["--profile", "no_such_profile", "--no-run", "--sweep-dir", str(tmp_path)])
    assert exc.value.code == 2


def test_sweep_overrides_count_the_jobs():
    over = rt.sweep_overrides("quick", 8, ["norm", "norm_k7"], ["trainer.max_epochs=1"])
    assert over[:3] == ["seed=0,1,2,3,4,5,6,7", "+table1=norm,norm_k7", "experiment=quick"]
    assert "hydra/launcher=parallel" in over and over[-1] == "trainer.max_epochs=1"
    assert "hydra/launcher=parallel" not in rt.sweep_overrides("paper", 2, None)

