"""Lightning logger that hands per-epoch metrics to the run's ``Outbox`` (never blocks on a server)."""

from __future__ import annotations

import time
from argparse import Namespace
from collections.abc import Callable
from typing import Any

from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only

from .outbox import Outbox


class OutboxLogger(Logger):
    """Buffers Lightning's per-step metrics and sends them through an ``Outbox`` in batches.

    A batch goes out with every epoch-level metric (validation, ``*_epoch``: each reaches the
    outbox before the epoch's checkpoint, so a kill cannot leave a checkpointed epoch without
    them), after each checkpoint, every ``flush_every_s`` seconds, and at the end of each
    trainer call.
    ``get_outbox`` is called on first use, so ranks other than 0 never open the outbox.
    Hyperparameters are not logged here: the job logs the whole config as params.
    """

    def __init__(self, get_outbox: Callable[[], Outbox], *, run_id: str, experiment_name: str,
                 flush_every_s: float = 10.0) -> None:
        super().__init__()
        self._get_outbox = get_outbox
        self._run_id = run_id
        self._name = experiment_name
        self.flush_every_s = flush_every_s
        self._buffer: list[tuple[str, float, int, int]] = []
        self._last_flush = time.monotonic()

    @property
    def name(self) -> str:  # noqa: D102
        return self._name

    @property
    def version(self) -> str:  # noqa: D102
        return self._run_id

    @property
    def save_dir(self) -> None:  # noqa: D102
        return None

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Ignored: the job logs the resolved config as MLflow params itself."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Buffer one logging step; send the buffer when it is old or large."""
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            self._buffer.append((key, float(value), now, int(step or 0)))
        per_epoch = any(not k.endswith("_step") and k != "epoch" for k in metrics)
        if (per_epoch or len(self._buffer) >= 1000
                or time.monotonic() - self._last_flush >= self.flush_every_s):
            self.flush()

    @rank_zero_only
    def flush(self) -> None:
        """Send buffered metrics to the outbox (which delivers or keeps them)."""
        self._last_flush = time.monotonic()
        if self._buffer:
            items, self._buffer = self._buffer, []
            self._get_outbox().log_metric_items(self._run_id, items)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:  # noqa: D102
        self.flush()

    def finalize(self, status: str) -> None:
        """Send what is buffered; the run's status is set by the job, not by Lightning."""
        self.flush()
