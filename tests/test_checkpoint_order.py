"""An epoch's training loss is handed to the logger before any checkpoint of that epoch exists.

Lightning logs on_epoch values only after the epoch's checkpoints are written; a kill in that
window resumed after the epoch and its ``train/loss_epoch`` point was never logged.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from omegaconf import open_dict
from pytorch_lightning import Callback
from pytorch_lightning.loggers.logger import Logger

from temseg_ablation.app.build import build_callbacks, build_datamodule, build_module, build_trainer

from .conftest import TINY, compose_cfg


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call as ``(step, metrics)``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict[str, float]]] = []

    name = "recording"
    version = "0"

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:  # noqa: D102
        self.calls.append((int(step or 0), dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        pass

    def epochs_with(self, key: str) -> list[int]:
        """Epoch numbers that came with each logged ``key`` point."""
        return [int(m["epoch"]) for _, m in self.calls if key in m]


class CheckpointWatch(Callback):
    """At every checkpoint save: the epoch, and the epochs whose training loss was logged."""

    def __init__(self, logger: RecordingLogger) -> None:
        self.logger = logger
        self.saves: list[tuple[int, list[int]]] = []

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict) -> None:  # noqa: D102
        self.saves.append((trainer.current_epoch, self.logger.epochs_with("train/loss_epoch")))


@pytest.mark.parametrize("val_every", [1, 2])
def test_the_epoch_loss_is_logged_before_the_epochs_checkpoints(tmp_path, val_every):
    cfg = compose_cfg([*TINY, "data.samples_per_epoch=8", "trainer.max_epochs=3",
                       f"trainer.check_val_every_n_epoch={val_every}"], tmp_path)
    with open_dict(cfg):
        cfg.trainer.accelerator = "cpu"
    logger = RecordingLogger()
    watch = CheckpointWatch(logger)
    _, callbacks = build_callbacks(cfg, tmp_path / "ckpt")
    trainer = build_trainer(cfg, logger=logger, callbacks=[*callbacks, watch], job_dir=tmp_path)
    trainer.fit(build_module(cfg), datamodule=build_datamodule(cfg))

    assert {epoch for epoch, _ in watch.saves} == {0, 1, 2}  # last.ckpt after every epoch
    for epoch, logged in watch.saves:
        assert epoch in logged, f"epoch {epoch} checkpointed before its loss was logged"
    assert logger.epochs_with("train/loss_epoch") == [0, 1, 2]  # once each, none lost or repeated
    # the epoch value is the mean of that epoch's step losses (4 equal batches of 2)
    for epoch in range(3):
        steps = [m["train/loss_step"] for _, m in logger.calls
                 if "train/loss_step" in m and int(m["epoch"]) == epoch]
        (value,) = [m["train/loss_epoch"] for _, m in logger.calls
                    if "train/loss_epoch" in m and int(m["epoch"]) == epoch]
        assert len(steps) == 4 and math.isclose(value, sum(steps) / 4, rel_tol=1e-6)
