"""Training, tracking and sweeps through the real app: real Lightning, real MLflow, real DDP ranks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from temseg_ablation.app.job import run_job
from temseg_ablation.models.io import load_checkpoint

from .conftest import TINY

SMALL = [*TINY, "data.heldout_frames=2"]


def _app(args: list[str], env: dict, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "temseg_ablation", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _client(root: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    return client, client.get_experiment_by_name("temseg-ablation").experiment_id


def test_job_failure_is_recorded_and_rerun_resumes_the_same_run(tiny_cfg, tmp_path):
    with open_dict(tiny_cfg):
        tiny_cfg.trainer.max_epochs = 2
        tiny_cfg.fail_after_epochs = 1
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_job(tiny_cfg, tmp_path / "job1", job_name="crashing")
    client, exp = _client(tmp_path)
    (run,) = client.search_runs([exp])
    assert run.info.status == "FAILED" and "simulated crash" in run.data.tags["error"]
    ckpt_dir = Path(run.data.tags["temseg.checkpoint_dir"])
    assert (ckpt_dir / "last.ckpt").exists()  # epoch 0 was saved before the crash

    with open_dict(tiny_cfg):
        tiny_cfg.fail_after_epochs = None
    result = run_job(tiny_cfg, tmp_path / "job2", job_name="resumed")
    assert result["status"] == "finished" and result["run_id"] == run.info.run_id
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["temseg.resumed_from"].endswith("last.ckpt")
    last = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 4  # 2 epochs x 2 steps, not restarted

    again = run_job(tiny_cfg, tmp_path / "job3", job_name="again")
    assert again["status"] == "skipped" and again["run_id"] == run.info.run_id
    assert len(client.search_runs([exp])) == 1  # nothing recomputed, nothing new

    model = load_checkpoint(ckpt_dir / "best.ckpt")
    assert model.net_config["arch"] == "unet" and model.pixel_size_nm == pytest.approx(0.18)


@pytest.mark.slow
def test_sweep_records_failures_goes_on_and_skips_finished_jobs(tmp_path, subprocess_env):
    args = ["-m", "model=norm", "net.kernel_size=3,4", *SMALL]
    first = _app(args, subprocess_env, tmp_path)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "Sweep summary" in first.stdout and "kernel_size must be a positive odd" in first.stdout

    client, exp = _client(tmp_path)
    runs = client.search_runs([exp])
    parents = [r for r in runs if r.data.tags.get("temseg.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("temseg.kind") == "job"]
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].info.status == "FAILED"
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    ok = next(c for c in children if c.info.status == "FINISHED")
    bad = next(c for c in children if c.info.status == "FAILED")
    assert "kernel_size" in bad.data.tags["error"]

    # metrics, curves stepped by threshold, params, tags, artifacts
    for key in ("final/val/f1_otsu", "final/val/edge_uncertainty", "final/val/dead_output_fraction",
                "final/val/particle_det_f1", "final/val/particle_recall_0to2p5nm",
                "final/val/particle_boundary_f1", "final/heldout/f1_otsu", "final/gap/f1_otsu",
                "final/val/act_spread_ratio", "val/f1_otsu"):
        assert key in ok.data.metrics, key
    steps = [m.step for m in client.get_metric_history(ok.info.run_id, "curve/val/f1_mean")]
    assert steps == list(range(0, 101, 5))
    assert ok.data.params["net.norm"] == "batch" and ok.data.params["variant"] == "norm"
    assert len(ok.data.tags["temseg.config_hash"]) == 12 and ok.data.tags["git_commit"]
    files = {a.path for d in ("figures", "curves", "checkpoints")
             for a in client.list_artifacts(ok.info.run_id, d)}
    assert {"figures/val_threshold_curves.png", "figures/val_overlay.png",
            "curves/val_threshold_curves.csv", "checkpoints/best.ckpt"} <= files

    second = _app(args, subprocess_env, tmp_path)
    assert second.returncode == 1
    summary_files = sorted((tmp_path / "outputs" / "multirun").glob("*/*/summary.csv"))
    assert len(summary_files) == 2  # two sweeps, two folders, nothing overwritten
    text = summary_files[-1].read_text()
    assert "skipped" in text and ok.info.run_id in text
    jobs = [r for r in client.search_runs([exp]) if r.data.tags.get("temseg.kind") == "job"]
    assert sum(r.info.status == "FINISHED" for r in jobs) == 1  # the finished job was not redone


@pytest.mark.slow
def test_ddp_two_gloo_ranks_give_single_process_metrics(tmp_path, subprocess_env):
    # max_epochs=0: both jobs evaluate the same seeded weights on the same data.
    # One intra-op thread per process: conv sums then add up in the same order in both runs.
    args = ["-m", *SMALL, "trainer=cpu,ddp", "trainer.max_epochs=0", "trainer.num_threads=1"]
    run = _app(args, subprocess_env, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    sweeps = list((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 1  # ranks did not start sweeps of their own
    results = {}
    for path in sweeps[0].glob("*/result.json"):
        cfg = (path.parent / "job_config.yaml").read_text()
        results["ddp" if "strategy: ddp" in cfg else "cpu"] = json.loads(path.read_text())
    single, ddp = results["cpu"], results["ddp"]
    assert len(single) > 50 and single.keys() == ddp.keys()
    for key, value in single.items():
        assert ddp[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key
    client, exp = _client(tmp_path)
    kinds = [r.data.tags.get("temseg.kind") for r in client.search_runs([exp])]
    assert sorted(kinds) == ["job", "job", "sweep"]  # one run per job, not one per rank


def test_reused_runs_tag_lists_skipped_jobs_and_stays_bounded():
    """The sweep parent's reused-runs tag names only skipped jobs and is cut at the limit."""
    import pandas as pd

    from temseg_ablation.app.sweep import reused_runs

    summary = pd.DataFrame({"job_name": ["a", "b", "c"], "status": ["skipped", "finished", "skipped"],
                            "run_id": ["r" * 32, "s" * 32, "t" * 32]})
    assert reused_runs(summary) == f"a={'r' * 32},c={'t' * 32}"
    many = pd.DataFrame({"job_name": [f"job{i}" for i in range(500)], "status": "skipped",
                         "run_id": [f"{i:032d}" for i in range(500)]})
    text = reused_runs(many, limit=1000)
    assert len(text) <= 1000 + len(",... (all in summary.csv)")
    assert text.endswith("(all in summary.csv)") and text.startswith("job0=" + "0" * 32)
    assert reused_runs(summary.drop(columns="run_id")) == ""
    assert reused_runs(summary, limit=10) == "... (all in summary.csv)"  # no whole entry fits


def _fit_tiny(cfg, tmp_path: Path, name: str, **plateau) -> tuple[dict, object]:
    with open_dict(cfg):
        cfg.trainer.max_epochs = 12
        cfg.trainer.early_stopping = "plateau"
        cfg.eval.figures = False
        cfg.eval.plateau.update(plateau)
    result = run_job(cfg, tmp_path / name, job_name=name)
    client, _ = _client(tmp_path)
    return result, client.get_run(result["run_id"])


def test_plateau_stopping_ends_a_flat_run_and_logs_it_converged(tiny_cfg, tmp_path):
    # tolerances no curve can break: the rule calls the run flat at the first chance (min_evals)
    result, run = _fit_tiny(tiny_cfg, tmp_path, "flat", slope_tol=10.0, spread_tol=10.0,
                            min_points=2, min_evals=3)
    m = run.data.metrics
    assert result["status"] == "finished"
    assert m["final/converged"] == 1.0 and m["final/plateau_points"] >= 2
    assert m["final/validations"] == 3 and m["final/steps"] > 0  # stopped after 3 of 12 epochs
    assert "flat over" in run.data.tags["temseg.convergence"]
    assert {"final/test/f1_otsu", "final/test_last/f1_otsu", "final/val/f1_otsu"} <= set(m)


def test_a_run_the_rule_calls_unconverged_trains_to_its_budget(tiny_cfg, tmp_path):
    # zero tolerance: any change at all keeps the run going, and it is logged as not converged
    _, run = _fit_tiny(tiny_cfg, tmp_path, "moving", slope_tol=0.0, spread_tol=0.0, min_points=2,
                       min_evals=3)
    m = run.data.metrics
    assert m["final/converged"] == 0.0
    assert m["final/validations"] == 12  # every epoch validated: no early stop


def test_runs_carry_mlflow_context_tags_and_their_resolved_config(tiny_cfg, tmp_path):
    import yaml

    result = run_job(tiny_cfg, tmp_path / "job", job_name="tags")
    client, _ = _client(tmp_path)
    run = client.get_run(result["run_id"])
    tags = run.data.tags
    assert tags["mlflow.user"] and tags["mlflow.source.name"] == "temseg_ablation"
    assert len(tags.get("mlflow.source.git.commit", "0" * 40)) == 40
    local = client.download_artifacts(result["run_id"], "job_config.yaml", str(tmp_path / "dl"))
    logged = yaml.safe_load(Path(local).read_text())
    assert logged["seed"] == tiny_cfg.seed and logged["net"]["arch"] == "unet"
    assert logged["data"]["n_experiments"] == tiny_cfg.data.n_experiments


def test_a_resumed_job_ends_bit_identical_to_an_uninterrupted_one(tmp_path):
    """Finished runs are reused by config hash, so a result must not depend on an interruption."""
    from .conftest import compose_cfg

    def cfg_for(root: Path, fail_after: int | None):
        cfg = compose_cfg([*TINY, "data.samples_per_epoch=8", "trainer.max_epochs=3",
                           "eval.figures=false", "logger.log_checkpoint=false"], root)
        with open_dict(cfg):
            cfg.trainer.accelerator = "cpu"
            cfg.fail_after_epochs = fail_after
        return cfg

    whole = run_job(cfg_for(tmp_path / "a", None), tmp_path / "a" / "job", job_name="whole")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_job(cfg_for(tmp_path / "b", 2), tmp_path / "b" / "job1", job_name="cut")
    resumed = run_job(cfg_for(tmp_path / "b", None), tmp_path / "b" / "job2", job_name="cut")
    assert resumed["config_hash"] == whole["config_hash"]
    assert resumed["metrics"]["final/steps"] == whole["metrics"]["final/steps"] == 12
    for key, value in whole["metrics"].items():
        assert resumed["metrics"][key] == pytest.approx(value, rel=0, abs=0, nan_ok=True), key


def test_epoch_order_depends_on_the_epoch_only():
    from temseg_ablation.data.datamodule import EpochShuffleSampler

    a, b = EpochShuffleSampler(10, seed=3), EpochShuffleSampler(10, seed=3)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    b.set_epoch(1)  # a fresh sampler (a resumed job) at epoch 1 gives epoch 1's order
    assert sorted(first) == list(range(10)) and first != second and list(b) == second
