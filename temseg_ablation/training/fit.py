"""Fit a module, then evaluate its best checkpoint on every evaluation split (plain objects)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl

from ..data.datamodule import TEMDataModule
from .module import SegmentationModule


def interruptible(trainer: pl.Trainer, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a trainer entry point; Lightning turns Ctrl-C into ``sys.exit(1)``, which is turned
    back into ``KeyboardInterrupt`` so the job and the sweep see an interrupt, not an exit."""
    try:
        return fn(*args, **kwargs)
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise


def fit_and_evaluate(trainer: pl.Trainer, module: SegmentationModule, dm: TEMDataModule, *,
                     best_checkpoint: Callable[[], str | None],
                     last_checkpoint: Callable[[], str | None] | None = None,
                     resume: str | None = None) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Train, then evaluate the best checkpoint on validation, test and held-out data.

    ``best_checkpoint`` / ``last_checkpoint`` return the paths of the best (selected on
    validation) and the newest checkpoint once training is over; the last one is also scored
    on the test split (``results["test_last"]``). ``module.fit_curve`` keeps the validation
    learning curve of the fit (loading a checkpoint for evaluation replaces ``val_curve``).
    Returns ``(results by split, best checkpoint path)``; checkpoints load weights-only.
    """
    interruptible(trainer, trainer.fit, module, datamodule=dm, ckpt_path=resume, weights_only=True)
    module.fit_curve = list(module.val_curve)
    best = best_checkpoint() or None
    results: dict[str, dict[str, Any]] = {}

    def evaluate(split: str, ckpt: str | None, **data: Any) -> None:
        module.prefix = split
        interruptible(trainer, trainer.validate, module, ckpt_path=ckpt, verbose=False,
                      weights_only=True, **data)
        results[split] = module.results[split]

    evaluate("val", best, datamodule=dm)
    if dm.test_set is not None:
        # whole experiments never trained on nor used to pick the checkpoint: what results report
        evaluate("test", best, dataloaders=dm.test_dataloader())
        last = last_checkpoint() if last_checkpoint is not None else None
        if last:
            evaluate("test_last", last, dataloaders=dm.test_dataloader())
    if dm.heldout_set is not None:
        evaluate("heldout", best, dataloaders=dm.heldout_dataloader())
    module.prefix = "val"
    return results, best
