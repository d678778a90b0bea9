"""A registered run is a real MLflow pyfunc model: loaded back by alias, it segments frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from temseg_ablation.segment import load_model, segment_frames
from temseg_ablation.segment.loading import ModelSpecError
from temseg_ablation.segment.register import main


@pytest.fixture
def store(tmp_path):
    """A real sqlite store holding one run with a ``checkpoints/best.ckpt`` artifact."""
    from mlflow import MlflowClient

    from temseg_ablation.app.build import build_module

    from .conftest import TINY, compose_cfg

    torch.manual_seed(0)
    module = build_module(compose_cfg([*TINY, "model=norm"]))
    best = tmp_path / "best.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, best)
    (tmp_path / "mlruns").mkdir()
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("seg", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(exp).info.run_id
    client.log_artifact(run_id, str(best), "checkpoints")
    empty = client.create_run(exp).info.run_id
    return uri, client, run_id, empty, best


@pytest.mark.slow
def test_register_then_pyfunc_by_alias_segments_like_the_checkpoint(store, capsys, monkeypatch):
    import mlflow

    uri, client, run_id, _, best = store
    assert main([run_id, "temseg-test", "--alias", "champion", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "registered temseg-test version 1" in out and "models:/temseg-test@champion" in out

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    pyfunc = mlflow.pyfunc.load_model("models:/temseg-test@champion")
    frames = np.random.default_rng(3).normal(100.0, 12.0, (2, 80, 72)).astype(np.float32)
    reference = load_model(str(best))
    prob, masks = segment_frames(reference, frames, rescale=False)
    assert np.array_equal(pyfunc.predict(frames, params={"output": "prob"}), prob)
    assert np.array_equal(pyfunc.predict(frames), masks.astype(np.float32))
    bright_prob, _ = segment_frames(reference, frames, particles="bright", pixel_size_nm=0.36)
    got = pyfunc.predict(frames, params={"output": "prob", "particles": "bright",
                                         "pixel_size_nm": 0.36})
    assert np.array_equal(got, bright_prob)
    with pytest.raises(Exception, match="output must be 'mask' or 'prob'"):
        pyfunc.predict(frames, params={"output": "labels"})

    # the project's own loader takes the alias too, and a second version reuses model/
    assert "models:/temseg-test/1" in load_model("models:/temseg-test@champion", uri).source
    assert main([run_id, "temseg-test", "--tracking-uri", uri]) == 0
    assert str(client.get_model_version_by_alias("temseg-test", "champion").version) == "1"
    assert [a.path for a in client.list_artifacts(run_id, "model")].count("model/MLmodel") == 1
    assert "models:/temseg-test/2" in load_model("models:/temseg-test/latest", uri).source


@pytest.mark.slow
def test_versions_registered_before_pyfunc_models_still_load(store):
    uri, client, run_id, _, _ = store
    client.create_registered_model("old")
    run = client.get_run(run_id)
    client.create_model_version("old", source=f"{run.info.artifact_uri}/checkpoints", run_id=run_id)
    assert "models:/old/1" in load_model("models:/old/1", uri).source


def test_bad_registrations_and_aliases_are_one_line(store, capsys):
    uri, _, _, empty, _ = store
    assert main([empty, "temseg-test", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: run {empty}: has no checkpoints/best.ckpt artifact to register"
    assert main(["0" * 32, "temseg-test", "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err.startswith(f"error: run {'0' * 32}: not found in ")
    with pytest.raises(ModelSpecError, match=r"^models:/nobody@champion: not found in "):
        load_model("models:/nobody@champion", uri)
