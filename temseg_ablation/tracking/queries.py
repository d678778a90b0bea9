"""Read-only MLflow queries shared by the app, the reports and ``segment``: one place each.

Every function takes an ``MlflowClient`` (or a tracking URI where it opens one) and returns
plain values, runs or pandas objects; none writes to the store.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from .tags import TAG_CHECKPOINT, TAG_HASH, TAG_JOB_DIR, TAG_KIND, TAG_PARENT

#: Runs per search request (MLflow's own page limit for most stores).
PAGE = 1000
#: Where a job logs its best checkpoint (artifact path inside the run).
CHECKPOINT_ARTIFACT = "checkpoints/best.ckpt"
#: Resolved job config a job writes into its run folder (``temseg.job_dir`` tag).
JOB_CONFIG_FILE = "job_config.yaml"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, None for any other store."""
    return Path(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:///") else None


def store_exists(tracking_uri: str) -> bool:
    """False only for a sqlite URI whose file is missing (servers are assumed to exist)."""
    path = sqlite_path(tracking_uri)
    return path is None or path.is_file()


def open_client(tracking_uri: str) -> MlflowClient:
    """An ``MlflowClient`` for ``tracking_uri``; a sqlite file that does not exist is an error.

    MLflow would silently create an empty database there, which then looks like "no runs".
    """
    if not store_exists(tracking_uri):
        raise FileNotFoundError(f"{sqlite_path(tracking_uri)}: no MLflow tracking database here "
                                f"(tracking URI {tracking_uri}); run a sweep first")
    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(client: MlflowClient, name: str) -> str | None:
    """Id of the experiment called ``name``, None when there is none."""
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else None


def search_all(client: MlflowClient, experiment_id: str, query: str,
               order_by: Sequence[str] = ("attributes.start_time ASC",),
               max_results: int | None = None) -> list[Any]:
    """Every run of the experiment matching ``query`` (all pages, up to ``max_results``)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], query, order_by=list(order_by),
                                  max_results=min(PAGE, max_results or PAGE), page_token=token)
        runs.extend(page)
        token = page.token
        if not token or (max_results and len(runs) >= max_results):
            return runs[:max_results] if max_results else runs


def finished_run(client: MlflowClient, experiment_id: str, config_hash: str) -> Any | None:
    """The newest FINISHED job run of the exact config ``config_hash``, or None."""
    query = (f"tags.`{TAG_HASH}` = '{config_hash}' and tags.`{TAG_KIND}` = 'job' "
             "and attributes.status = 'FINISHED'")
    runs = client.search_runs([experiment_id], query, max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def latest_sweep_run_id(client: MlflowClient, experiment_id: str) -> str | None:
    """Id of the most recently started sweep parent run of the experiment, or None."""
    runs = search_all(client, experiment_id, f"tags.`{TAG_KIND}` = 'sweep'",
                      order_by=("attributes.start_time DESC",), max_results=1)
    return runs[0].info.run_id if runs else None


@contextmanager
def no_progress_bar() -> Iterator[None]:
    """Silence MLflow's tqdm bar for downloads (it clutters notebooks and logs)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def summary_run_ids(client: MlflowClient, sweep_run_id: str) -> list[str]:
    """Run ids in the sweep's ``summary.csv`` artifact: includes jobs skipped as already finished,
    whose runs stay under the sweep that trained them."""
    try:
        with tempfile.TemporaryDirectory() as tmp, no_progress_bar():
            path = client.download_artifacts(sweep_run_id, "summary.csv", tmp)
            ids = pd.read_csv(path).get("run_id")
            return [] if ids is None else [str(i) for i in ids.dropna()]
    except Exception:  # noqa: BLE001 - a sweep still running (or killed) has no summary yet
        return []


def job_runs(client: MlflowClient, experiment_id: str) -> list[Any]:
    """Every job run of the experiment, oldest first."""
    return search_all(client, experiment_id, f"tags.`{TAG_KIND}` = 'job'")


def sweep_runs(client: MlflowClient, experiment_id: str, sweep_run_id: str) -> list[Any]:
    """Job runs of one sweep: its child runs plus the runs its summary lists as reused."""
    runs = search_all(client, experiment_id, f"tags.`{TAG_PARENT}` = '{sweep_run_id}'")
    have = {r.info.run_id for r in runs}
    for run_id in summary_run_ids(client, sweep_run_id):
        if run_id in have:
            continue
        try:
            runs.append(client.get_run(run_id))
        except Exception:  # noqa: BLE001 - a listed run deleted since; nothing to show
            continue
        have.add(run_id)
    return runs


def run_metrics(client: MlflowClient, run_id: str, prefix: str = "") -> dict[str, float]:
    """Latest value of each metric of one run whose key starts with ``prefix``."""
    return {k: float(v) for k, v in client.get_run(run_id).data.metrics.items()
            if k.startswith(prefix)}


def metrics_of_runs(client: MlflowClient, run_ids: Iterable[str],
                    prefix: str = "final/") -> dict[str, dict[str, float]]:
    """``{run_id: {key: value}}`` of the metrics starting with ``prefix`` of several runs."""
    return {rid: run_metrics(client, rid, prefix) for rid in run_ids}


def metric_history(client: MlflowClient, run_id: str, key: str) -> pd.Series:
    """A stepped metric as a float Series indexed by step, named after the key's last part.

    The latest value wins on repeated steps (e.g. a resumed job that logged a step again).
    """
    hist = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    values = {m.step: m.value for m in hist}
    return pd.Series(values, name=key.rsplit("/", 1)[-1], dtype=float)


def histories(client: MlflowClient, run_ids: Iterable[str], key: str) -> pd.DataFrame:
    """Long frame ``run_id, step, value`` of metric ``key`` over several runs (runs without
    it contribute no rows)."""
    frames = []
    for rid in run_ids:
        s = metric_history(client, rid, key)
        if len(s):
            frames.append(pd.DataFrame({"run_id": rid, "step": s.index.astype(int),
                                        "value": s.to_numpy(float)}))
    if not frames:
        return pd.DataFrame(columns=["run_id", "step", "value"])
    return pd.concat(frames, ignore_index=True)


def checkpoint(client: MlflowClient, run_id: str, dest: str | Path) -> Path:
    """The run's best checkpoint: ``best.ckpt`` in its ``temseg.checkpoint_dir`` folder when that
    is on this machine, else the ``checkpoints/best.ckpt`` artifact downloaded into ``dest``."""
    run = client.get_run(run_id)
    folder = run.data.tags.get(TAG_CHECKPOINT)
    if folder and (Path(folder) / "best.ckpt").is_file():
        return Path(folder) / "best.ckpt"
    Path(dest).mkdir(parents=True, exist_ok=True)
    try:
        with no_progress_bar():
            return Path(client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, str(dest)))
    except Exception as err:  # noqa: BLE001 - MlflowException / OSError: report one line
        raise FileNotFoundError(f"run {run_id}: no best.ckpt in {folder or '(no checkpoint tag)'} "
                                f"nor as artifact {CHECKPOINT_ARTIFACT} ({str(err)[:160]})") from None


def checkpoints(client: MlflowClient, run_id: str) -> list[str]:
    """Artifact paths of the checkpoints a run logged (``checkpoints/*``)."""
    return sorted(a.path for a in client.list_artifacts(run_id, "checkpoints") if not a.is_dir)


def job_config_file(run: Any) -> Path | None:
    """The ``job_config.yaml`` the run's job wrote into its run folder, when it is still there."""
    folder = run.data.tags.get(TAG_JOB_DIR)
    path = Path(folder) / JOB_CONFIG_FILE if folder else None
    return path if path is not None and path.is_file() else None
