"""A training run names its frames as MLflow dataset inputs and, when asked, logs system metrics."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from temseg_ablation.app.build import build_datamodule
from temseg_ablation.app.job import run_job
from temseg_ablation.tracking.mlflow_store import Tracker
from temseg_ablation.tracking.outbox import Outbox, OutboxError, _check_record

from .conftest import TINY, compose_cfg


def _inputs(client: MlflowClient, run_id: str) -> dict[str, tuple[str, str]]:
    """context -> (dataset name, digest) of a run's dataset inputs."""
    out = {}
    for di in client.get_run(run_id).inputs.dataset_inputs:
        context = next(t.value for t in di.tags if t.key == "mlflow.data.context")
        assert context not in out, f"{context} logged twice"
        out[context] = (di.dataset.name, di.dataset.digest)
    return out


def test_records_name_the_split_frames_and_change_with_the_data(tmp_path):
    cfg = compose_cfg([*TINY, "data.heldout_frames=2"], tmp_path)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    records = {r["context"]: r for r in dm.dataset_records()}
    assert set(records) == {"training", "validation", "test", "heldout"}
    n_frames = sum(r["profile"]["frames"] for c, r in records.items() if c != "heldout")
    assert n_frames == 3 * 3  # every generated training-store frame in exactly one split
    assert len({r["digest"] for r in records.values()}) == 4
    assert records["heldout"]["profile"]["frames"] == 2

    again = build_datamodule(compose_cfg([*TINY, "data.heldout_frames=2"], tmp_path))
    again.prepare_data()
    again.setup("fit")
    assert [r["digest"] for r in again.dataset_records()] == [r["digest"] for r in records.values()]

    other = build_datamodule(compose_cfg([*TINY, "data.heldout_frames=2", "data.seed=7"], tmp_path))
    other.prepare_data()
    other.setup("fit")
    assert records["training"]["digest"] != other.dataset_records()[0]["digest"]


@pytest.mark.slow
def test_a_run_logs_its_inputs_once_and_system_metrics_when_enabled(tiny_cfg, tmp_path):
    with open_dict(tiny_cfg):
        tiny_cfg.trainer.max_epochs = 2
        tiny_cfg.fail_after_epochs = 1
        tiny_cfg.logger.system_metrics = True
        tiny_cfg.logger.system_metrics_interval_s = 0.2
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_job(tiny_cfg, tmp_path / "job1", job_name="crashing")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("temseg-ablation").experiment_id])
    first = _inputs(client, run.info.run_id)
    assert set(first) == {"training", "validation", "test"} | ({"heldout"} & set(first))

    with open_dict(tiny_cfg):
        tiny_cfg.fail_after_epochs = None
    result = run_job(tiny_cfg, tmp_path / "job2", job_name="resumed")
    assert result["status"] == "finished" and result["run_id"] == run.info.run_id
    assert _inputs(client, run.info.run_id) == first  # the resume logs the same inputs, not new ones

    metrics = client.get_run(run.info.run_id).data.metrics
    system = [k for k in metrics if k.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system, sorted(metrics)
    assert "system/system_memory_usage_megabytes" in system


def test_system_metrics_are_off_by_default(tiny_cfg, tmp_path):
    result = run_job(tiny_cfg, tmp_path / "job", job_name="plain")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    run = client.get_run(result["run_id"])
    assert not [k for k in run.data.metrics if k.startswith("system/")]
    assert {"training", "validation", "test"} <= set(_inputs(client, result["run_id"]))


def test_outbox_inputs_records_are_validated_and_delivered(tmp_path):
    with pytest.raises(OutboxError, match="inputs record needs datasets"):
        _check_record({"seq": 1, "op": "inputs", "datasets": [{"name": "x"}]}, "rec.json")

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "e")
    client = MlflowClient(uri)
    run_id = client.create_run(tracker.experiment_id).info.run_id
    box = Outbox(tmp_path / "outbox", tracker, run_id)
    box.log_inputs(run_id, [{"name": "frames:training", "digest": "abc123", "source_type": "local",
                             "source": str(tmp_path), "context": "training"}])
    assert box.close()
    assert _inputs(client, run_id) == {"training": ("frames:training", "abc123")}
