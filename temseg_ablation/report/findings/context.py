"""Where the findings read from: the tracking store, a sweep's runs, a job's checkpoint and config."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ...app.config import compose_config, load_config, to_plain
from ...app.sweep import PARENT_FILE, parent_run_id
from ...tracking import queries
from .markdown import finished_runs


def default_tracking_uri() -> str:
    """``sqlite:///<root>/mlruns/mlflow.db`` with root ``$TEMSEG_ROOT`` or the current folder,
    the store the app writes to when started here."""
    root = Path(os.environ.get("TEMSEG_ROOT") or ".").resolve()
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


@dataclass
class Context:
    """Options shared by the subcommands, and the store they read."""

    out: Path
    tracking_uri: str
    experiment: str = "temseg-ablation"

    def client(self) -> Any:
        """An ``MlflowClient`` of the store (an error when a sqlite store does not exist)."""
        return queries.open_client(self.tracking_uri)

    def metrics(self, run_id: str) -> dict[str, float]:
        """Every metric of one run (latest values)."""
        return queries.run_metrics(self.client(), run_id)

    def checkpoint(self, run_id: str, dest: Path) -> Path:
        """The run's best checkpoint on this machine (downloaded into ``dest`` when needed)."""
        return queries.checkpoint(self.client(), run_id, dest)

    def job_config(self, run_id: str, overrides: Sequence[str]) -> dict[str, Any]:
        """The resolved config a run trained with, as plain containers.

        The ``job_config.yaml`` its job wrote, when the run folder is still on this machine;
        otherwise the app's config composed from ``overrides`` (the overrides that started the
        job: they gave the run its config hash, so they compose the same config).
        """
        path = queries.job_config_file(self.client().get_run(run_id))
        return to_plain(load_config(path) if path else compose_config(list(overrides)))


def sweep_parent_id(sweep: str) -> str:
    """A ``--sweep`` value as a parent run id: a sweep folder is read for the id it recorded.

    'latest' and run ids pass through unchanged.
    """
    folder = Path(sweep)
    if sweep == "latest" or not folder.is_dir():
        return sweep
    run_id = parent_run_id(folder)
    if run_id is None:
        raise FileNotFoundError(f"{folder}: not a sweep folder (no {PARENT_FILE}); pass a sweep "
                                "folder, a sweep's parent run id or 'latest'")
    return run_id


def sweep_runs(ctx: Context, sweep: str) -> tuple[pd.DataFrame, str]:
    """The finished runs of a ``--sweep`` as a frame (``report.runs.load_sweep_runs``), and a
    one-line description of where they came from."""
    from ..runs import load_sweep_runs

    if not queries.store_exists(ctx.tracking_uri):
        raise FileNotFoundError(f"{queries.sqlite_path(ctx.tracking_uri)}: no MLflow tracking "
                                "database here; run a sweep first or pass --tracking-uri")
    client = ctx.client()
    sweep_id: str | None = sweep_parent_id(sweep)
    if sweep == "latest":
        exp_id = queries.experiment_id(client, ctx.experiment)
        sweep_id = queries.latest_sweep_run_id(client, exp_id) if exp_id else None
        if sweep_id is None:
            raise ValueError(f"{ctx.tracking_uri}: no sweep in experiment {ctx.experiment!r}; "
                             "run one first (e.g. `make sweep` or `make reproduce-table1`)")
    runs = load_sweep_runs(ctx.tracking_uri, ctx.experiment, sweep_run_id=sweep_id)
    done = finished_runs(runs)
    if len(done) == 0:
        raise ValueError(f"sweep {sweep_id}: none of its {len(runs)} runs has finished yet")
    name = client.get_run(sweep_id).info.run_name
    return done, f"sweep `{name}` (parent run {sweep_id}; {len(done)} finished of {len(runs)} runs)"
