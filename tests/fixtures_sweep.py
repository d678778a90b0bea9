"""A tiny real sweep (two variants, seconds on a CPU), shared by the notebook and server tests.

Test modules load this as a plugin (``pytest_plugins = ["tests.fixtures_sweep"]``) so the
session-scoped fixture runs the sweep once per test session, not once per module.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY, app_environ

SWEEP_MODELS = ("norm", "twoconv_norm")
#: Experiments of the tiny data: the experiment split needs one to train, validate and test.
TINY_EXPERIMENTS = 3
EXPERIMENT = "temseg-ablation"


@dataclass(frozen=True)
class TinySweep:
    """Where the tiny sweep left its store and outputs."""

    root: Path            # TEMSEG_ROOT of the sweep
    tracking_uri: str     # sqlite:///<root>/mlruns/mlflow.db
    db: Path
    artifact_root: Path   # <root>/mlruns/artifacts
    sweep_dir: Path
    parent_run_id: str


def sweep_env(root: Path) -> dict[str, str]:
    """Like conftest's ``subprocess_env``, for a folder chosen by a session-scoped fixture."""
    return app_environ(root)


def run_tiny_sweep(root: Path, models: tuple[str, ...] = SWEEP_MODELS) -> TinySweep:
    """Run ``python -m temseg_ablation -m model=...`` with the tiny test settings under ``root``."""
    overrides = [o for o in TINY if not o.startswith(("data.heldout_frames=", "data.n_experiments="))]
    overrides.append("data.heldout_frames=2")  # at least two held-out frames so s.d. is defined
    overrides.append(f"data.n_experiments={TINY_EXPERIMENTS}")
    cmd = [sys.executable, "-m", "temseg_ablation", "-m", "model=" + ",".join(models), *overrides]
    proc = subprocess.run(cmd, cwd=root, env=sweep_env(root), capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise AssertionError(f"tiny sweep failed (exit {proc.returncode}) in {root}:\n{tail}")
    parents = sorted(root.glob("outputs/multirun/*/*/.mlflow_parent_run"))
    assert len(parents) == 1, f"expected one sweep folder under {root}/outputs, got {parents}"
    db = root / "mlruns" / "mlflow.db"
    assert db.is_file(), f"{db}: the sweep left no tracking database"
    return TinySweep(root=root, tracking_uri=f"sqlite:///{db}", db=db,
                     artifact_root=root / "mlruns" / "artifacts", sweep_dir=parents[0].parent,
                     parent_run_id=parents[0].read_text().strip())


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> TinySweep:
    """The two-variant tiny sweep, run once per test session in a temporary folder."""
    assert (ROOT / "conf" / "config.yaml").is_file()
    return run_tiny_sweep(tmp_path_factory.mktemp("tiny_sweep"))
