"""Lightning callbacks of the training loop that are not Lightning's own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl

from ..metrics.convergence import should_stop


class FailAfter(pl.Callback):
    """Test hook: raise after ``n`` finished training epochs (checkpoints already written)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Raise once ``n`` epochs are done."""
        if trainer.current_epoch >= self.n:
            raise RuntimeError(f"fail_after_epochs={self.n}: simulated crash (a test hook)")


class PlateauStopping(pl.Callback):
    """Stop training once the validation learning curve meets the plateau rule.

    The rule is :func:`temseg_ablation.metrics.convergence.should_stop` on the module's
    ``val_curve`` (step, val/f1_otsu), so a run stops exactly when the convergence judgement that
    the report uses would call it converged (or when the metric has become non-finite). Fast
    arms stop early; slow ones run on to the step budget and are reported as not converged.
    """

    def __init__(self, slope_tol: float, spread_tol: float, min_points: int,
                 min_evals: int) -> None:
        self.rule = dict(slope_tol=slope_tol, spread_tol=spread_tol, min_points=min_points,
                         min_evals=min_evals)
        self.reason = ""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Judge the curve after every validation run of the fit."""
        curve = getattr(pl_module, "val_curve", [])
        if trainer.sanity_checking or trainer.state.fn != "fit" or not curve:
            return
        steps = np.array([s for s, _ in curve], dtype=float)
        values = np.array([v for _, v in curve], dtype=float)
        decision = should_stop(steps, values, **self.rule)
        if decision.stop:
            self.reason = decision.reason
            trainer.should_stop = True


class LogDatasetInputs(pl.Callback):
    """Hands the data module's ``dataset_records()`` to ``log`` once the data are set up
    (rank zero only), so a run names the exact frames it trained, validated and tested on."""

    def __init__(self, log: Callable[[list[dict[str, Any]]], None]) -> None:
        self.write = log

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the records of the attached data module (a data module without them: nothing)."""
        records = getattr(trainer.datamodule, "dataset_records", None)
        if trainer.is_global_zero and callable(records):
            self.write(records())
