"""Shared fixtures: the real Hydra config composed with CPU-only, tiny, fast settings."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from temseg_ablation.app import CONFIG_DIR, quote_numeric_groups

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"


@pytest.fixture(autouse=True, scope="session")
def _sigint_handled():
    """Python's own SIGINT handler, however pytest was started: a background start (`cmd &`)
    ignores SIGINT, and the interrupt tests (and the app processes they start) need it."""
    if not callable(signal.getsignal(signal.SIGINT)):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


# Tiny, fast settings every training test starts from (still the real config and code path).
TINY = [
    "data.n_experiments=3", "data.frames_per_experiment=3", "data.n_val_experiments=1",
    "data.n_test_experiments=1", "data.frame_height=64",
    "data.frame_width=64", "data.crop_size=32", "data.batch_size=2", "data.heldout_frames=1",
    "data.samples_per_epoch=null",
    "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
]


def compose_cfg(overrides: list[str] | None = None, tmp: Path | None = None) -> DictConfig:
    """Compose ``conf/config.yaml`` with overrides, paths redirected into ``tmp``."""
    overrides = quote_numeric_groups(list(overrides or []))
    if tmp is not None:
        overrides.append(f"paths.root_dir={tmp}")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture
def tiny_cfg(tmp_path):
    """A composed config for a seconds-long CPU job writing only under ``tmp_path``."""
    cfg = compose_cfg(TINY, tmp_path)
    with open_dict(cfg):
        cfg.trainer.accelerator = "cpu"
    return cfg


def app_environ(root: Path, **extra: str) -> dict[str, str]:
    """This process's environment without MLflow / project variables, outputs under ``root``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TEMSEG_"))}
    env.update({"TEMSEG_ROOT": str(root), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    return {**env, **extra}


@pytest.fixture
def subprocess_env(tmp_path):
    """Environment for running the app in a subprocess with all outputs under ``tmp_path``."""
    return app_environ(tmp_path)


@pytest.fixture
def in_process_env(tmp_path, monkeypatch):
    """This process set up like ``subprocess_env`` (for app code called in-process), cwd ``tmp_path``."""
    for key in list(os.environ):
        if key.startswith(("MLFLOW_", "TEMSEG_")):
            monkeypatch.delenv(key)
    for key, value in app_environ(tmp_path).items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)


def execute_notebook(path: Path, tmp: Path, monkeypatch) -> tuple[list[dict], str]:
    """Run every cell of the notebook at ``path`` in a kernel of this interpreter (cwd: its
    folder); fail on any error. Returns (all outputs, the text printed to its streams)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    spec = tmp / "kernels" / "temseg-test"  # so no user-level kernel install is needed
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "temseg test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, kernel_name="temseg-test", timeout=300,
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"
              or (o.get("output_type") == "stream" and o.get("name") == "stderr"
                  and "Traceback" in o.get("text", ""))]
    assert not errors, errors
    assert nbformat.validate(nb) is None
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    return outputs, text
