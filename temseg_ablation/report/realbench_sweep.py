"""Every network of a sweep on the real HAADF benchmark: ``final/real/*`` per run, and whether
synthetic validation F1 ranks the networks the way real frames do.

Each finished job run's ``best.ckpt`` is loaded (weights only) and run through
``segment_image`` on every benchmark frame, at the pixel size implied by the frame's particle-
scale estimate and with the frame's polarity inverted for bright-field-trained networks (the
segment command's ``--particles bright``). Detections are scored one-to-one against the human
boxes as in :mod:`.realbench`; the per-frame medians go to the run as ``final/real/f1``,
``final/real/precision``, ``final/real/recall``, ``final/real/f1_centroid`` and
``final/real/abs_count_rel_error`` (with ``final/real/frames``), so Table 1, the findings and the
MLflow UI show them beside the synthetic ``final/val`` / ``final/test`` metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.scale import ScaleEstimate
from ..tracking.queries import open_client
from . import realbench_methods as rm
from .runs import load_sweep_runs

__all__ = ["RealFrame", "load_frames", "finished_runs", "score_network", "score_sweep",
           "rank_correlation", "REAL_PREFIX"]

REAL_PREFIX = "final/real/"
#: Per-frame scores whose median over frames is logged (under ``REAL_PREFIX``).
LOGGED = ("f1", "precision", "recall", "f1_centroid")


@dataclass(frozen=True)
class RealFrame:
    """One benchmark frame: name, grey image (H, W), human boxes (N, 4) px, scale estimate."""

    name: str
    image: np.ndarray
    boxes: np.ndarray
    estimate: ScaleEstimate | None


def load_frames(data: Path, names: list[str], progress: bool = True) -> list[RealFrame]:
    """Read the named frames and estimate each one's particle scale once (shared by all networks)."""
    from tqdm.auto import tqdm

    from .realbench import load_frame

    out = []
    for name in tqdm(names, desc="frames + scale", unit="image", disable=not progress):
        image, boxes = load_frame(data, name)
        out.append(RealFrame(name, image, boxes, rm.estimate_scale(image)))
    return out


def score_network(model: Any, frames: list[RealFrame]) -> pd.DataFrame:
    """Per-frame detection scores (columns of ``realbench.score_frame``) of one loaded network."""
    from .realbench import score_frame

    rows = []
    for f in frames:
        det = rm.network(f.image, f.estimate, model)
        rows.append({"image": f.name, **score_frame(det, f.boxes)})
    return pd.DataFrame(rows)


def summarise(per_frame: pd.DataFrame) -> dict[str, float]:
    """Medians over frames of the logged scores, the median |relative count error| and the frame count."""
    out = {f"{REAL_PREFIX}{k}": float(per_frame[k].median()) for k in LOGGED}
    out[f"{REAL_PREFIX}abs_count_rel_error"] = float(per_frame["count_rel_error"].abs().median())
    out[f"{REAL_PREFIX}frames"] = float(len(per_frame))
    return out


def rank_correlation(x: pd.Series, y: pd.Series) -> float:
    """Spearman rank correlation of two equally indexed series (NaN below three complete pairs)."""
    both = pd.concat([x, y], axis=1).dropna()
    if len(both) < 3:
        return float("nan")
    return float(both.iloc[:, 0].rank().corr(both.iloc[:, 1].rank()))


def finished_runs(tracking_uri: str, sweep: str,
                  experiment_name: str = "temseg-ablation") -> pd.DataFrame:
    """The FINISHED job runs of ``sweep`` (parent run id or ``"latest"``); ValueError when none."""
    runs = load_sweep_runs(tracking_uri, experiment_name, sweep)
    runs = runs[runs["status"] == "FINISHED"]
    if runs.empty:
        raise ValueError(f"{tracking_uri}: sweep {sweep!r} has no finished job runs to score")
    return runs


def _logged_scores(run: pd.Series, n_frames: int) -> dict[str, float] | None:
    """The run's logged ``final/real/*`` scores when complete for ``n_frames`` frames, else None."""
    keys = [f"{REAL_PREFIX}{k}" for k in (*LOGGED, "abs_count_rel_error", "frames")]
    values = {k: run.get(k) for k in keys}
    if any(v is None or not np.isfinite(float(v)) for v in values.values()):
        return None
    if int(values[f"{REAL_PREFIX}frames"]) != n_frames:
        return None
    return {k: float(v) for k, v in values.items()}


def score_sweep(tracking_uri: str, runs: pd.DataFrame, frames: list[RealFrame], *,
                log: bool = True, progress: bool = True) -> pd.DataFrame:
    """Score every run of ``runs`` (``finished_runs``) on ``frames``.

    Returns one row per run: run_id, run_name, variant, seed, ``final/val/f1_otsu``,
    ``final/test/f1_otsu`` (when logged) and the ``final/real/*`` medians; with ``log`` the
    medians are logged to each run. A run that already carries every ``final/real/*`` score for
    this many frames (an earlier, interrupted pass) is not scored again, so a rerun resumes. A
    run whose checkpoint cannot be loaded is listed with its error and no scores; the others go
    on.
    """
    from tqdm.auto import tqdm

    from ..segment.loading import load_model

    client = open_client(tracking_uri) if log else None
    rows = []
    for _, run in tqdm(list(runs.iterrows()), desc="networks", unit="run", disable=not progress):
        row = {k: run.get(k) for k in ("run_id", "run_name", "variant", "seed",
                                       "final/val/f1_otsu", "final/test/f1_otsu") if k in run}
        done = _logged_scores(run, len(frames))
        if done is not None:
            rows.append({**row, **done})
            continue
        try:
            model = load_model(str(run["run_id"]), tracking_uri)
        except Exception as err:  # noqa: BLE001 - one unloadable run must not stop the others
            rows.append({**row, "error": str(err).splitlines()[0][:300]})
            continue
        scores = summarise(score_network(model, frames))
        if client is not None:
            for key, value in scores.items():
                client.log_metric(str(run["run_id"]), key, value)
        rows.append({**row, **scores})
    return pd.DataFrame(rows)


def write_sweep_markdown(table: pd.DataFrame, path: Path, data: Path, sweep: str) -> str:
    """``results_sweep.md``: per variant the mean synthetic and real F1 over seeds, per run below,
    and the rank correlation between synthetic validation F1 and real F1; returns the text."""
    real, val = f"{REAL_PREFIX}f1", "final/val/f1_otsu"
    ok = table.dropna(subset=[real]) if real in table else table.iloc[0:0]
    rho_runs = rank_correlation(ok.get(val, pd.Series(dtype=float)), ok.get(real, pd.Series(dtype=float)))
    lines = [f"# Sweep {sweep} on the real HAADF benchmark", "",
             f"Data: `{data}` ({int(ok[f'{REAL_PREFIX}frames'].max()) if len(ok) else 0} frames). "
             "Each network sees every frame at the pixel size its scale estimate implies, "
             "polarity inverted (bright particles); detection F1 is the median over frames of the "
             "box-IoU >= 0.5 one-to-one rule of `results.md`.", ""]
    if len(ok) and "variant" in ok:
        cols = [c for c in (val, "final/test/f1_otsu", real, f"{REAL_PREFIX}f1_centroid") if c in ok]
        by = ok.groupby("variant")[cols].mean().sort_values(real, ascending=False)
        by.insert(0, "runs", ok.groupby("variant").size())
        rho_variants = rank_correlation(by[val], by[real]) if val in by else float("nan")
        lines += [f"Spearman rank correlation, synthetic validation F1 vs real F1: {rho_runs:.2f} "
                  f"over {len(ok)} runs, {rho_variants:.2f} over {len(by)} variants (seed means).",
                  "", "| variant | " + " | ".join(by.columns) + " |",
                  "|---|" + "---|" * len(by.columns)]
        for name, r in by.iterrows():
            lines.append(f"| {name} | " + " | ".join(
                f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.to_numpy()) + " |")
    failed = table[table["error"].notna()] if "error" in table else table.iloc[0:0]
    if len(failed):
        lines += ["", f"{len(failed)} run(s) could not be scored:"]
        lines += [f"- {r['run_id']}: {r['error']}" for _, r in failed.iterrows()]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text
