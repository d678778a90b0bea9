"""Wall time of the quick ``model=glob(*)`` sweep, run as the user would run it.

The sweep takes long on a small CPU, so it is measured only on request (``run_all.py --sweep``
or ``make bench-sweep``); the last measurement is kept in ``sweep.json`` and shown otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_common import BENCH_DIR, REPO, Row, machine_info

SWEEP_FILE = BENCH_DIR / "sweep.json"
NOT_MEASURED = "not measured (run make bench-sweep)"
# the same command as `make sweep`: two jobs at a time, the cores split between them
SWEEP_OVERRIDES = ("hydra/launcher=parallel",)


def measure(pattern: str = "*", overrides: Sequence[str] = SWEEP_OVERRIDES,
            out_file: Path = SWEEP_FILE, keep: bool = False, log=print) -> dict[str, Any]:
    """Run ``python -m temseg_ablation -m 'model=glob(<pattern>)' <overrides>`` in a fresh root.

    TEMSEG_ROOT (data cache, MLflow store, outputs) is a new temporary folder, so nothing is
    skipped as already finished and the data cache is built as on a first run. Writes and returns
    the record (wall seconds, jobs, failures, exit status); the console log goes next to it.
    """
    root = Path(tempfile.mkdtemp(prefix="temseg-sweep-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TEMSEG_"))}
    env.update(TEMSEG_ROOT=str(root), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "temseg_ablation", "-m", f"model=glob({pattern})", *overrides]
    log_file = out_file.with_suffix(".log")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    log(f"  running: {' '.join(cmd)} (TEMSEG_ROOT={root}; log {log_file})")
    t0 = time.perf_counter()
    with open(log_file, "w") as fh:
        proc = subprocess.run(cmd, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT,
                              check=False)
    wall = time.perf_counter() - t0
    summaries = sorted(root.glob("**/summary.csv"))
    n_jobs = n_failed = None
    if summaries:
        import pandas as pd

        df = pd.read_csv(summaries[-1])
        n_jobs = len(df)
        n_failed = (int((~df["status"].isin(["finished", "skipped"])).sum())
                    if "status" in df else None)
    info = machine_info()
    record = {
        "wall_s": wall, "n_jobs": n_jobs, "n_failed": n_failed, "returncode": proc.returncode,
        "command": " ".join(cmd[1:]), "measured_at": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {k: info[k] for k in ("cpu_model", "cpu_count", "torch", "torch_threads")},
    }
    out_file.write_text(json.dumps(record, indent=1))
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return record


def read_last(out_file: Path = SWEEP_FILE) -> dict[str, Any] | None:
    """The last recorded sweep measurement, or None when there is none (or it is unreadable)."""
    try:
        return json.loads(out_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def rows_from(record: dict[str, Any] | None) -> list[Row]:
    """The sweep row: wall time, jobs and seconds per job; or a 'not measured' row."""
    item = "quick model=glob(*) sweep wall time (`make sweep`)"
    if record is None:
        return [Row(group="sweep", item=item, value=None, unit="s", verdict=NOT_MEASURED)]
    n = record.get("n_jobs")
    per_job = f"{record['wall_s'] / n:.0f} s per job" if n else "job count unknown"
    ok = record.get("returncode") == 0 and not record.get("n_failed")
    m = record.get("machine", {})
    return [Row(
        group="sweep", item=item, value=record["wall_s"], unit="s",
        derived=f"{n} jobs, {per_job} ({record['wall_s'] / 60:.1f} min)",
        verdict="ok" if ok else f"exit {record.get('returncode')}, {record.get('n_failed')} failed",
        note=(f"`{record['command']}` on {m.get('cpu_model', '?')} x{m.get('cpu_count', '?')}, "
              f"torch {m.get('torch', '?')}; from sweep.json"),
        measured_at=record.get("measured_at", ""),
    )]


def run(measure_now: bool, out_file: Path = SWEEP_FILE, pattern: str = "*",
        overrides: Sequence[str] = SWEEP_OVERRIDES, log=print) -> list[Row]:
    """Measure the sweep now (``measure_now``) or report the last measurement."""
    record = measure(pattern, overrides, out_file, log=log) if measure_now else read_last(out_file)
    return rows_from(record)
