"""Shared pieces of the benchmark suite: result rows, machine facts, config composition, tables.

Every row pairs a measured figure with the baseline it was measured against in the same run;
the ratio is always computed from those two numbers, never entered by hand.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: Order of the groups in the table.
GROUPS = ("training", "paper_loop", "validation", "inference", "pseudolabel", "sweep")

CSV_FIELDS = ("group", "item", "value", "unit", "base_name", "base_value", "ratio", "derived",
              "target", "verdict", "note", "measured_at")


@dataclass
class Row:
    """One line of the benchmark table: a measured ``value`` beside its ``base_value``.

    ``ratio`` is ``value / base_value`` (None without a baseline); ``derived`` is a human-readable
    figure computed from the same two numbers (overhead, speed-up, share of an epoch).
    """

    group: str
    item: str
    value: float | None
    unit: str
    base_name: str = ""
    base_value: float | None = None
    derived: str = ""
    target: str = ""
    verdict: str = ""
    note: str = ""
    measured_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M"))
    #: raw measurements behind ``value`` / ``base_value`` (kept in results.json, not the table)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """``value / base_value`` when both were measured, else None."""
        if self.value is None or self.base_value is None or self.base_value == 0:
            return None
        return self.value / self.base_value

    def as_record(self) -> dict[str, Any]:
        """Flat dict of the table fields (ratio included), for CSV."""
        rec = {k: v for k, v in asdict(self).items() if k != "raw"}
        rec["ratio"] = self.ratio
        return {k: rec[k] for k in CSV_FIELDS}


def rate_from_times(step_seconds: Sequence[float], items_per_step: int) -> float:
    """Items per second over timed steps (sum of their durations, not a mean of rates)."""
    total = float(sum(step_seconds))
    if total <= 0 or not step_seconds:
        raise ValueError("no timed steps: cannot compute a rate")
    return items_per_step * len(step_seconds) / total


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels so that wall-clock timing covers them (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quiet_logs() -> None:
    """Silence Lightning / MLflow chatter so that the benchmark's own lines stay readable."""
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "mlflow",
                 "alembic", "torch._dynamo", "torch._inductor"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info() -> dict[str, Any]:
    """Facts that decide the numbers: CPU, cores, threads, library versions, GPU, load."""
    flags = _cpu_flags()
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_simd": ",".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "loadavg_1min_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    try:
        import pytorch_lightning as pl

        info["pytorch_lightning"] = pl.__version__
    except ImportError:
        pass
    return info


def compose(overrides: Iterable[str], root: str | os.PathLike) -> Any:
    """The project's Hydra config with ``overrides``, all paths (MLflow store included) under ``root``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from temseg_ablation.app import CONFIG_DIR, quote_numeric_groups

    root = Path(root).resolve()
    # the benchmark never writes to a configured team server: a private sqlite store under root
    ov = quote_numeric_groups(list(overrides)) + [
        f"paths.root_dir={root}", f"logger.tracking_uri=sqlite:///{root}/mlruns/mlflow.db",
        f"logger.artifact_location={root}/mlruns/artifacts", "logger.experiment_name=temseg-bench"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=ov)


def job_logger(cfg: Any, run_name: str) -> tuple[Any, Any, str]:
    """The Lightning logger a real job uses, on a fresh MLflow run in ``cfg.logger``'s store.

    Returns ``(logger, close, kind)``: ``close()`` ends the run, ``kind`` names the logger. The
    job's own ``OutboxLogger`` (buffered, sends through the run's outbox) is used when this
    version of the package has it; otherwise Lightning's ``MLFlowLogger`` on the same store.
    """
    from temseg_ablation.tracking.uri import absolute_uri

    uri = absolute_uri(str(cfg.logger.tracking_uri))
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    try:
        from temseg_ablation.app.build import build_tracker
        from temseg_ablation.tracking.lightning_logger import OutboxLogger
        from temseg_ablation.tracking.outbox import OUTBOX_DIR, Outbox
    except ImportError:
        from pytorch_lightning.loggers import MLFlowLogger

        logger = MLFlowLogger(experiment_name=str(cfg.logger.experiment_name), tracking_uri=uri,
                              run_name=run_name)
        return logger, lambda: None, "MLFlowLogger"
    tracker = build_tracker(cfg)
    run_id = tracker.create_run(run_name, {"temseg.kind": "bench"})
    outbox = Outbox(Path(cfg.paths.root_dir) / OUTBOX_DIR / run_id, tracker, run_id)
    logger = OutboxLogger(lambda: outbox, run_id=run_id,
                          experiment_name=str(cfg.logger.experiment_name),
                          flush_every_s=float(cfg.logger.get("flush_every_s", 10.0)))

    def close() -> None:
        outbox.set_status(run_id, "FINISHED")
        outbox.close()

    return logger, close, "OutboxLogger (the job's)"


def fmt(value: float | None, unit: str = "") -> str:
    """Compact number with unit: 3 significant digits, '-' when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    text = f"{value:.3g}" if abs(value) < 1e5 else f"{value:.0f}"
    return f"{text} {unit}".strip()


def markdown_table(rows: Sequence[Row]) -> str:
    """The results as one markdown table, in group order."""
    head = ["group", "measurement", "value", "baseline (same run)", "ratio", "derived", "target",
            "verdict", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {g: i for i, g in enumerate(GROUPS)}
    for r in sorted(rows, key=lambda r: order.get(r.group, len(order))):
        base = f"{r.base_name} {fmt(r.base_value, r.unit)}".strip() if r.base_name else ""
        ratio = "-" if r.ratio is None else f"{r.ratio:.3f}"
        cells = [r.group, r.item, fmt(r.value, r.unit), base, ratio, r.derived, r.target,
                 r.verdict, r.note]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def machine_lines(info: dict[str, Any]) -> list[str]:
    """Machine facts as markdown bullet lines."""
    return [f"- {k}: {v}" for k, v in info.items()]


def _num(rec: dict[str, str], key: str) -> float | None:
    text = rec.get(key)
    return None if text in (None, "", "None") else float(text)


def read_rows_csv(path: Path) -> list[Row]:
    """Rows of an earlier ``results.csv`` (raw measurements are not kept there)."""
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as fh:
        for rec in csv.DictReader(fh):
            rows.append(Row(group=rec["group"], item=rec["item"], value=_num(rec, "value"),
                            unit=rec["unit"], base_name=rec["base_name"],
                            base_value=_num(rec, "base_value"),
                            derived=rec["derived"], target=rec["target"], verdict=rec["verdict"],
                            note=rec["note"], measured_at=rec["measured_at"]))
    return rows


def _kept_raw(out_dir: Path, groups_run: Sequence[str]) -> list[dict[str, Any]]:
    """Raw records of an earlier ``results.json`` for the groups this run did not measure."""
    try:
        old = json.loads((out_dir / "results.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return [rec for rec in old if isinstance(rec, dict) and rec.get("group") not in groups_run]


def write_results(rows: Sequence[Row], info: dict[str, Any], out_dir: Path, *,
                  groups_run: Sequence[str], title: str = "Benchmark") -> str:
    """Write ``results.md``, ``results.csv``, ``results.json`` and ``machine.json``; return the markdown.

    Rows of groups that this run did not measure are carried over from the previous
    ``results.csv`` (with their own dates), and their raw records from ``results.json``, so a
    partial run (e.g. only the sweep) updates its rows without wiping the others.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = [r for r in read_rows_csv(out_dir / "results.csv") if r.group not in groups_run]
    all_rows = list(rows) + kept
    md = "\n".join([
        f"# {title}",
        "",
        "Each ratio is value / baseline, both measured side by side in the same run on this "
        "machine. Rows carried over from an earlier run keep that run's date (measured_at in "
        "results.csv).",
        "",
        *machine_lines(info),
        f"- groups measured in this run: {', '.join(groups_run)}",
        "",
        markdown_table(all_rows),
        "",
    ])
    (out_dir / "results.md").write_text(md)
    with open(out_dir / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(CSV_FIELDS))
        w.writeheader()
        for r in all_rows:
            w.writerow(r.as_record())
    (out_dir / "results.json").write_text(json.dumps(
        [{**r.as_record(), "raw": r.raw} for r in rows] + _kept_raw(out_dir, groups_run),
        indent=1, default=str))
    (out_dir / "machine.json").write_text(json.dumps(info, indent=1))
    return md
