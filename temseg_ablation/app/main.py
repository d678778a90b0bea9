"""The Hydra application: ``python -m temseg_ablation [-m] [group=option ...]``."""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from ..tracking.mlflow_store import one_line
from . import sweep
from .build import ConfigError
from .config import CONFIG_DIR, quote_numeric_groups
from .job import run_job
from .watchdog import die_with_parent, interrupt_taken

log = logging.getLogger("temseg_ablation")
#: Environment variable naming the pid of the process that runs the sweep.
LAUNCHER_PID_ENV = "TEMSEG_LAUNCHER_PID"


def _place_job(cfg: DictConfig, hc: Any) -> None:
    """Pin a sweep job to a device of ``trainer.device_pool``, split CPU cores between jobs and
    turn off per-job progress bars when jobs run side by side."""
    n_jobs = int(OmegaConf.select(hc, "launcher.n_jobs", default=1) or 1)
    with open_dict(cfg):
        pool = cfg.trainer.get("device_pool")
        if pool:
            device = list(pool)[int(hc.job.get("num", 0) or 0) % len(pool)]
            cfg.trainer.devices = [int(device)]
        if n_jobs > 1 and not cfg.trainer.get("num_threads") and cfg.trainer.accelerator == "cpu":
            cfg.trainer.num_threads = max(1, (os.cpu_count() or 1) // n_jobs)
        if n_jobs > 1:
            # bars of jobs running side by side interleave into one unreadable line; the sweep
            # prints its own progress line and each job's log keeps its epoch lines
            cfg.trainer.enable_progress_bar = False
            cfg.data.progress = False


_QUIET_PREFIXES = ("data.", "trainer.", "paths.", "logger.", "eval.", "experiment", "model=",
                   "hydra", "rerun", "fail_after_epochs")


def _job_name(cfg: DictConfig, overrides: list[str]) -> str:
    """Variant name plus the overrides that change the network or optimisation."""
    shown = [o for o in overrides if not o.lstrip("+~").startswith(_QUIET_PREFIXES)]
    return f"{cfg.get('variant', 'custom')}" + (f" [{','.join(shown)}]" if shown else "")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def task(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one configuration; in a multirun a failure is recorded, not raised."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    job_dir = Path(hc.runtime.output_dir)
    sweep_dir = str(Path(hc.sweep.dir).resolve()) if multirun else None
    job_num = int(hc.job.num) if multirun else 0
    job_name = _job_name(cfg, list(hc.overrides.task))
    if os.environ.get(LAUNCHER_PID_ENV) == str(os.getppid()):
        die_with_parent()  # a worker of hydra/launcher=parallel: never outlive the launcher
    _place_job(cfg, hc)
    record: dict[str, Any] = {"job_num": job_num, "job_name": job_name, "job_dir": str(job_dir)}
    start = time.time()
    try:
        result = run_job(cfg, job_dir, job_name=job_name, sweep_dir=sweep_dir,
                         parent_run_id=sweep.parent_run_id(sweep_dir) if multirun else None)
    except (KeyboardInterrupt, SystemExit):
        interrupt_taken()
        sweep.write_status(job_dir, {**record, "status": "killed",
                                     "seconds": round(time.time() - start, 1)})
        raise
    except Exception as err:
        message = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        sweep.write_status(job_dir, {**record, "status": "failed", "error": message,
                                     "seconds": round(time.time() - start, 1)})
        if not multirun:
            if isinstance(err, ConfigError):
                print(f"error: {err}", file=sys.stderr)
                raise SystemExit(EXIT_USAGE) from None
            full = disk_full(err)
            if full is not None:
                print(f"error: {job_name}: no space left on device ({one_line(full)}); "
                      "the run is marked FAILED and its checkpoints so far are kept: free space "
                      "and run the same command again to resume", file=sys.stderr)
                raise SystemExit(EXIT_FAILED) from None
            raise
        log.error("job %d (%s) failed: %s; the sweep goes on", job_num, job_name, message)
        return {"status": "failed", "error": message}
    sweep.write_status(job_dir, {
        **record, "status": result["status"], "run_id": result["run_id"],
        "config_hash": result["config_hash"], "seconds": round(time.time() - start, 1),
        "f1_otsu": result["metrics"].get("final/val/f1_otsu"),
        **({"message": result["message"]} if result.get("message") else {}),
    })
    if not multirun:
        sweep.STATE.single = result["status"]
    f1 = result["metrics"].get("final/val/f1_otsu")
    log.info("%s %s: run %s%s", job_name, result["status"], result["run_id"],
             f", validation F1 at Otsu {f1:.3f}" if f1 is not None else "")
    return result


#: launcher options that live in an optional extra: (module that provides it, the extra)
OPTIONAL_LAUNCHERS = {"slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm")}


def _installed(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing too
        return False


def missing_launcher(argv: list[str], have: Callable[[str], bool] = _installed) -> str | None:
    """One line naming the extra to install when ``argv`` picks a launcher that is not installed.

    Hydra would otherwise stop with a page about config search paths before any of our code runs.
    """
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        if key == "hydra/launcher" and value in OPTIONAL_LAUNCHERS:
            module, extra = OPTIONAL_LAUNCHERS[value]
            if not have(module):
                return (f"hydra/launcher={value} needs an optional extra: "
                        f"pip install 'temseg-ablation[{extra}]'")
    return None


def main() -> None:
    """Console entry point: run the Hydra app, close the sweep run on crashes, set exit status."""
    missing = missing_launcher(sys.argv[1:])
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    sys.argv[1:] = quote_numeric_groups(sys.argv[1:])
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())  # inherited by parallel-launcher workers
    try:
        task()
    except KeyboardInterrupt:
        sweep.end_parent("KILLED")
        print("\ninterrupted: runs in progress are marked KILLED. Run the same command again to "
              "continue: finished jobs are skipped, interrupted ones resume from their last "
              "checkpoint.", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as exc:
        sweep.end_parent("KILLED" if exc.code else "FINISHED")
        raise
    except BaseException:
        sweep.end_parent("FAILED")
        raise
    sys.exit(exit_status(sweep.STATE.summary, sweep.STATE.single))


#: Exit statuses: every job finished (or was reused) / a job failed / bad config or input /
#: trained, but results wait in an outbox for an unreachable tracking store / interrupted.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SPOOLED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def disk_full(err: BaseException) -> OSError | None:
    """The 'no space left on device' error in ``err``'s chain of causes, if any."""
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno == errno.ENOSPC:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def exit_status(summary: Any, single: str | None = None) -> int:
    """The command's exit status from a sweep's job table or a single job's status."""
    statuses = set(summary["status"]) if summary is not None and len(summary) else set()
    if single is not None:
        statuses.add(single)
    if "failed" in statuses:
        return EXIT_FAILED
    if "spooled" in statuses:
        return EXIT_SPOOLED
    return EXIT_OK
