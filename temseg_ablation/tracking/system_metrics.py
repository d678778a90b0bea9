"""Optional system metrics (CPU, memory, disk, network, GPU when present) of a training run.

MLflow's own monitor samples them in a thread and logs ``system/*`` metrics to the run; it is
started only when ``logger.system_metrics`` asks for it, because it adds a store write every
``interval_s`` seconds to every job of a sweep.
"""

from __future__ import annotations

import logging
from typing import Any

from .mlflow_store import one_line

log = logging.getLogger(__name__)


class SystemMetrics:
    """Samples system metrics into run ``run_id`` of ``tracking_uri`` until :meth:`stop`."""

    def __init__(self, run_id: str, tracking_uri: str, interval_s: float = 10.0) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # resume_logging: a resumed run continues its system/* steps instead of restarting at 0
        self._monitor: Any = SystemMetricsMonitor(run_id, sampling_interval=float(interval_s),
                                                  resume_logging=True, tracking_uri=tracking_uri)

    def start(self) -> SystemMetrics:
        """Start sampling; returns self."""
        self._monitor.start()
        return self

    def stop(self) -> None:
        """Stop sampling (the last samples are logged); never raises."""
        try:
            self._monitor.finish()
        except Exception as err:  # noqa: BLE001 - system metrics must never fail a run
            log.warning("system metrics: %s", one_line(err, 200))
