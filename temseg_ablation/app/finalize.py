"""End-of-job logging: final metrics, threshold curves (table + stepped metrics), figures, checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from ..metrics.convergence import plateau
from ..metrics.pixel import curves_dataframe
from ..tracking.mlflow_store import Tracker
from ..tracking.outbox import Outbox
from ..tracking.tags import TAG_CONVERGENCE
from ..training import figures
from .config import to_plain

CURVE_KEYS = ("precision", "recall", "f1", "iou", "precision_mean", "recall_mean", "f1_mean",
              "f1_std")


def log_final_results(cfg: DictConfig, tracker: Tracker | Outbox, run_id: str,
                      results: dict[str, dict[str, Any]], module, dm, *, job_dir: Path,
                      best_checkpoint: str | None) -> dict[str, float]:
    """Log everything a finished job leaves in MLflow and return the final scalar metrics.

    Final scalars are ``final/<split>/<name>`` (``split`` = val, test (best checkpoint),
    test_last (newest checkpoint) or heldout) plus ``final/gap/<name>`` = val - heldout and the
    convergence judgement ``final/converged`` (1 / 0) with its measured drift and spread;
    threshold curves are both a CSV artifact and metrics
    ``curve/<split>/<name>`` stepped by round(100 x threshold) so the UI charts them.
    ``tracker`` is a ``Tracker`` or the run's ``Outbox`` (same write methods).
    """
    out_dir = job_dir / "artifacts"
    out_dir.mkdir(parents=True, exist_ok=True)
    final: dict[str, float] = {}
    for split, res in results.items():
        for k, v in res["scalars"].items():
            final[f"final/{split}/{k}"] = float(v)
        curves = curves_dataframe(res["pixel"])
        csv = out_dir / f"{split}_threshold_curves.csv"
        curves.to_csv(csv, index=False)
        tracker.log_artifact(run_id, csv, "curves")
        steps = np.round(curves["threshold"].to_numpy() * 100).astype(int)
        for key in CURVE_KEYS:
            tracker.log_series(run_id, f"curve/{split}/{key}", curves[key].to_numpy(), steps)
        png = figures.threshold_curves(
            curves, out_dir / f"{split}_threshold_curves.png",
            title=f"{cfg.get('variant', 'custom')} - {split}",
            otsu=res["scalars"].get("otsu_threshold"),
        )
        tracker.log_artifact(run_id, png, "figures")
    if "heldout" in results:
        for k, v in results["val"]["scalars"].items():
            if k in results["heldout"]["scalars"]:
                final[f"final/gap/{k}"] = float(v) - float(results["heldout"]["scalars"][k])
    final.update(_convergence(cfg, tracker, run_id, module))
    tracker.log_metrics(run_id, final)

    summary = {split: {"scalars": res["scalars"],
                       "activation_std": res.get("activation_std")} for split, res in results.items()}
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=1, default=float))
    tracker.log_artifact(run_id, out_dir / "metrics.json")

    if cfg.eval.get("figures", True):
        _overlay(cfg, tracker, run_id, module, dm, out_dir)
        kernels = getattr(module.net, "kernels", None)
        if callable(kernels):
            png = figures.kernel_images(kernels().numpy(), out_dir / "learned_kernels.png",
                                        title=f"{cfg.net.arch}: learned {cfg.net.kernel_size}x"
                                              f"{cfg.net.kernel_size} filters")
            tracker.log_artifact(run_id, png, "figures")
    if best_checkpoint and cfg.logger.get("log_checkpoint", True):
        tracker.log_artifact(run_id, best_checkpoint, "checkpoints")
    return final


def _convergence(cfg: DictConfig, tracker: Tracker | Outbox, run_id: str,
                 module) -> dict[str, float]:
    """``final/converged`` and the plateau rule's measures on the fit's validation curve."""
    curve = getattr(module, "fit_curve", None) or getattr(module, "val_curve", [])
    rule = {k: v for k, v in to_plain(cfg.eval.get("plateau") or {}).items()
            if k in ("slope_tol", "spread_tol", "min_points")}
    steps = np.array([s for s, _ in curve], dtype=float)
    values = np.array([v for _, v in curve], dtype=float)
    judged = plateau(steps, values, **rule)
    tracker.set_tags(run_id, {TAG_CONVERGENCE: judged.reason[:500]})
    return {"final/converged": float(judged.converged),
            "final/plateau_drift_per_1k_steps": judged.slope_per_1k_steps,
            "final/plateau_spread": judged.spread,
            "final/plateau_points": float(judged.n_points),
            "final/validations": float(steps.size),
            "final/steps": float(steps[-1]) if steps.size else 0.0}


def _overlay(cfg, tracker: Tracker | Outbox, run_id: str, module, dm, out_dir: Path) -> None:
    if dm.val_set is None or len(dm.val_set) == 0:
        return
    sample = dm.val_set[0]
    module.eval()
    with torch.no_grad():
        prob = module.predict_proba(sample["image"][None].to(module.device))[0].cpu().numpy()
    thr = float(module.results.get("val", {}).get("scalars", {}).get("otsu_threshold", 0.5))
    if not np.isfinite(thr):
        thr = 0.5
    png = figures.prediction_overlay(sample["image"][0].numpy(), prob, sample["mask"].numpy() > 0,
                                     out_dir / "val_overlay.png", threshold=thr,
                                     title=f"{cfg.get('variant', 'custom')}: first validation frame")
    tracker.log_artifact(run_id, png, "figures")
