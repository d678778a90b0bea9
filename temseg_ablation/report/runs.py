"""Load the runs of a sweep, and their threshold curves, from MLflow into pandas frames.

Only reads the tracking store; the frames feed ``compare_plots`` and the browsing notebook.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from ..tracking import queries
from ..tracking.queries import latest_sweep_run_id, open_client  # noqa: F401 - public here too
from ..tracking.tags import TAG_HASH, TAG_PARENT, TAG_VARIANT

#: Config keys that tell the ablation variants apart (logged as params by every job).
KEY_PARAMS = ("net.arch", "net.norm", "net.extra_conv", "data.blur_sigma", "net.activation",
              "net.kernel_size", "net.depth", "optim.lr", "seed")
#: Threshold-curve series read by ``load_curves`` by default.
CURVE_NAMES = ("precision", "recall", "f1", "f1_mean", "f1_std")


def _experiment_id(client: MlflowClient, tracking_uri: str, experiment_name: str) -> str:
    exp_id = queries.experiment_id(client, experiment_name)
    if exp_id is None:
        names = ", ".join(e.name for e in client.search_experiments(max_results=20)) or "none"
        raise ValueError(f"{tracking_uri}: no experiment named {experiment_name!r} "
                         f"(experiments there: {names})")
    return exp_id


def _parse_param(value: str | None) -> Any:
    """MLflow stores params as strings; give numbers and booleans back their type."""
    if value is None:
        return None
    if value in ("True", "true"):
        return True
    if value in ("False", "false"):
        return False
    if value in ("None", "null"):
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def _row(run: Any, params: Iterable[str]) -> dict[str, Any]:
    tags, data_params = run.data.tags, run.data.params
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "variant": data_params.get("variant") or tags.get(TAG_VARIANT) or run.info.run_name,
        "parent_run_id": tags.get(TAG_PARENT),
        "config_hash": tags.get(TAG_HASH),
        "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
    }
    for key in params:
        row[key] = _parse_param(data_params.get(key))
    for key, value in sorted(run.data.metrics.items()):
        if key.startswith("final/"):
            row[key] = value
    return row


def load_sweep_runs(tracking_uri: str, experiment_name: str = "temseg-ablation",
                    sweep_run_id: str | None = None,
                    params: Sequence[str] = KEY_PARAMS) -> pd.DataFrame:
    """One row per job run: id, status, variant, key params and every ``final/...`` metric.

    ``sweep_run_id``: None for all job runs of the experiment, ``"latest"`` for the newest
    sweep, or a sweep's parent run id (its child runs, plus runs its summary lists as
    skipped). Columns: run_id, run_name, status, variant, parent_run_id, config_hash,
    start_time, ``params`` (typed), then ``final/<split>/<name>`` sorted; ordered by start time.
    """
    client = open_client(tracking_uri)
    exp_id = _experiment_id(client, tracking_uri, experiment_name)
    if sweep_run_id is None:
        runs = queries.job_runs(client, exp_id)
    else:
        if sweep_run_id == "latest":
            sweep_run_id = latest_sweep_run_id(client, exp_id)
            if sweep_run_id is None:
                raise ValueError(f"{tracking_uri}: experiment {experiment_name!r} has no sweep "
                                 "runs (start one with `python -m temseg_ablation -m ...`)")
        else:
            try:
                client.get_run(sweep_run_id)
            except Exception as err:  # noqa: BLE001 - MlflowException for unknown ids
                raise ValueError(f"{tracking_uri}: no run with id {sweep_run_id!r} "
                                 f"({str(err).splitlines()[0][:120]})") from None
        runs = queries.sweep_runs(client, exp_id, sweep_run_id)
    base = ["run_id", "run_name", "status", "variant", "parent_run_id", "config_hash",
            "start_time", *params]
    if not runs:
        return pd.DataFrame(columns=base)
    df = pd.DataFrame([_row(r, params) for r in runs])
    finals = sorted(c for c in df.columns if c.startswith("final/"))
    return df[base + finals].sort_values("start_time", kind="stable").reset_index(drop=True)


def load_curves(tracking_uri: str, run_ids: Iterable[str], split: str = "val",
                names: Sequence[str] = CURVE_NAMES) -> pd.DataFrame:
    """Threshold curves ``curve/<split>/<name>`` of several runs as one long frame.

    Columns: run_id, threshold (softmax threshold in [0, 1], the metric step / 100), then one
    column per name (default precision, recall, f1, f1_mean, f1_std; NaN where a run lacks
    that series). Runs without any curve for ``split`` contribute no rows.
    """
    client = open_client(tracking_uri)
    frames = []
    for run_id in run_ids:
        series = [queries.metric_history(client, run_id, f"curve/{split}/{name}")
                  for name in names]
        if all(s.empty for s in series):
            continue
        df = pd.concat(series, axis=1).sort_index()
        df = df.reindex(columns=list(names))
        df.insert(0, "threshold", df.index.to_numpy(dtype=float) / 100.0)
        df.insert(0, "run_id", run_id)
        frames.append(df.reset_index(drop=True))
    if not frames:
        return pd.DataFrame(columns=["run_id", "threshold", *names])
    return pd.concat(frames, ignore_index=True)


def summarise(runs: pd.DataFrame, metrics: Sequence[str] = ("final/val/f1_otsu",
                                                            "final/heldout/f1_otsu",
                                                            "final/gap/f1_otsu"),
              by: str = "variant") -> pd.DataFrame:
    """Mean, standard deviation (over seeds) and count of ``metrics`` per ``by`` group.

    Returns a frame indexed by group with columns ``<metric> mean``, ``<metric> std`` and ``n``,
    sorted by the first metric's mean, best first. Metrics missing from ``runs`` are skipped.
    """
    if by not in runs.columns:
        raise ValueError(f"runs frame has no column {by!r}")
    present = [m for m in metrics if m in runs.columns]
    if not present:
        raise ValueError(f"runs frame has none of the metrics {list(metrics)}")
    grouped = runs.groupby(by, sort=False)[present]
    out = pd.concat({"mean": grouped.mean(), "std": grouped.std(ddof=1)}, axis=1)
    out.columns = [f"{m} {stat}" for stat, m in out.columns]
    out = out[[f"{m} {s}" for m in present for s in ("mean", "std")]]
    out["n"] = runs.groupby(by, sort=False).size()
    first = f"{present[0]} mean"
    return out.sort_values(first, ascending=False, na_position="last")

