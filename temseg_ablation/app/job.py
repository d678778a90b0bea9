"""One training job: skip or resume by config hash, train (in process or as DDP ranks), evaluate, log.

Only rank 0 writes to MLflow, and the run is created before any rank starts, so a job is exactly
one MLflow run however many processes train it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from ..models.io import CheckpointError, safe_torch_load
from ..tracking.mlflow_store import (
    Tracker,
    context_tags,
    git_commit,
    prepare_store,
    process_token,
)
from ..tracking.outbox import OUTBOX_DIR, Outbox
from ..tracking.system_metrics import SystemMetrics
from ..tracking.tags import (
    TAG_ARCH,
    TAG_CHECKPOINT,
    TAG_ERROR,
    TAG_GIT_COMMIT,
    TAG_HASH,
    TAG_HOST,
    TAG_JOB_DIR,
    TAG_KIND,
    TAG_PROCESS,
    TAG_PROFILE,
    TAG_RESUMED_FROM,
    TAG_SWEEP,
    TAG_VARIANT,
)
from ..tracking.uri import absolute
from ..training.callbacks import LogDatasetInputs
from ..training.fit import fit_and_evaluate
from . import ddp
from .build import (
    ConfigError,
    build_callbacks,
    build_datamodule,
    build_logger,
    build_module,
    build_net,
    build_tracker,
    build_trainer,
    config_hash,
    retry_timeout,
    tracking_uri,
)
from .config import flatten, to_plain, to_yaml
from .finalize import log_final_results
from .preflight import preflight
from .validate import validate_config
from .watchdog import interrupt_taken

log = logging.getLogger(__name__)

#: How long an interrupted or failed job waits for the tracking store before leaving its outbox.
_CLEANUP_TIMEOUT_S = 10.0


class ResumeCheckpointError(RuntimeError):
    """A ``last.ckpt`` the job refuses to resume from; ``str`` names the file and the fix."""


class RunBusyError(RuntimeError):
    """The run is being trained right now by another process on this machine."""


def checked_resume(path: str | Path) -> str | None:
    """``path`` when it is a checkpoint safe to resume from, None when it does not exist.

    Lightning would unpickle the file; it is opened with ``weights_only=True`` first so a
    checkpoint carrying pickled code (or a damaged one) is refused with a clear message.
    """
    path = Path(path)
    if not path.exists():
        return None
    fix = "delete it to train this job from scratch, or set rerun=true"
    try:
        ckpt = safe_torch_load(path)
    except CheckpointError as err:
        if err.problem.startswith("refused"):
            raise ResumeCheckpointError(f"{path}: refused to resume: {err.problem[len('refused: '):]}"
                                        f"; {fix}") from None
        raise ResumeCheckpointError(f"{path}: unreadable checkpoint: {err.problem}; {fix}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "loops" not in ckpt:
        raise ResumeCheckpointError(f"{path}: not a Lightning training checkpoint; {fix}")
    return str(path)


@contextmanager
def run_lock(ckpt_dir: Path, run_id: str) -> Iterator[None]:
    """Hold ``.<run folder>.lock`` beside the run's checkpoint folder (inside it, Lightning
    would warn about a non-empty folder) so two processes never train the same run at once."""
    fd = os.open(ckpt_dir.parent / f".{ckpt_dir.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            raise RunBusyError(f"run {run_id} is being trained right now by another process "
                               f"(pid {holder}) on this machine; not starting it twice") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the job
def run_job(cfg: DictConfig, job_dir: Path, *, job_name: str,
            parent_run_id: str | None = None, sweep_dir: str | None = None) -> dict[str, Any]:
    """Run one job end to end.

    Returns ``{'status', 'run_id', 'config_hash', 'metrics'}`` with status ``finished``,
    ``skipped`` (already finished, or finished once its waiting tracking writes arrived) or
    ``spooled`` (trained, but the tracking store stayed unreachable: the writes wait in the
    run's outbox and ``'message'`` says how to deliver them). Raises on failure after marking
    the MLflow run FAILED (or KILLED on interrupt).
    """
    preflight(cfg, job_dir)
    timeout = retry_timeout(cfg)
    prepare_store(tracking_uri(cfg), timeout)
    tracker = build_tracker(cfg)
    try:
        validate_config(cfg)
        chash = config_hash(cfg)
    except ConfigError as err:
        if sweep_dir is not None:  # a sweep job that cannot start still shows up, FAILED, in the UI
            _record_invalid(tracker, cfg, job_name, parent_run_id, err)
        raise
    rerun = bool(cfg.get("rerun", False))

    if not rerun:
        done = tracker.finished_run(chash)
        if done is not None:
            log.info("skipping %s: identical config %s already finished as run %s",
                     job_name, chash, done.info.run_id)
            return _skipped(done, chash)
    previous = None if rerun else tracker.resumable_run(chash)
    if previous is not None:
        run_id = previous.info.run_id
        ckpt_dir = Path(previous.data.tags.get(TAG_CHECKPOINT) or
                        absolute(cfg.paths.checkpoint_dir) / chash / run_id)
    else:
        run_id = tracker.create_run(job_name, {TAG_KIND: "job", TAG_HASH: chash}, parent_run_id)
        ckpt_dir = absolute(cfg.paths.checkpoint_dir) / chash / run_id
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(ckpt_dir, run_id):
        outbox = Outbox(ckpt_dir / OUTBOX_DIR, tracker, run_id, timeout)
        if previous is not None:
            if outbox.pending:
                log.info("delivering %d tracking writes an earlier attempt of run %s left in %s",
                         outbox.pending, run_id, outbox.folder)
                outbox.flush()
            run = tracker.get_run(run_id)
            if not outbox.pending and run.info.status == "FINISHED":
                outbox.close()
                log.info("run %s of %s finished once its waiting tracking writes arrived",
                         run_id, job_name)
                return _skipped(run, chash)
            log.info("resuming %s into run %s (checkpoints in %s)", job_name, run_id, ckpt_dir)
            outbox.set_status(run_id, "RUNNING")
        return _train_run(cfg, tracker, outbox, job_dir, run_id=run_id, ckpt_dir=ckpt_dir,
                          chash=chash, sweep_dir=sweep_dir)


def _record_invalid(tracker: Tracker, cfg: DictConfig, job_name: str,
                    parent_run_id: str | None, err: ConfigError) -> None:
    """A FAILED run (params, error tag, no hash) for a sweep job whose config is refused."""
    run_id = tracker.create_run(job_name, {TAG_KIND: "job", TAG_VARIANT: cfg.get("variant", "custom"),
                                           TAG_ERROR: str(err)[:500]}, parent_run_id)
    tracker.log_params(run_id, flatten(to_plain(cfg)))
    tracker.set_status(run_id, "FAILED")


def _skipped(run: Any, chash: str) -> dict[str, Any]:
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("final/")}
    return {"status": "skipped", "run_id": run.info.run_id, "config_hash": chash,
            "metrics": metrics}


def _train_run(cfg: DictConfig, tracker: Tracker, outbox: Outbox, job_dir: Path, *, run_id: str,
               ckpt_dir: Path, chash: str, sweep_dir: str | None) -> dict[str, Any]:
    """Train and log one run whose outbox is open; always closes the outbox."""
    try:
        resume_path = checked_resume(ckpt_dir / "last.ckpt")
        outbox.log_params(run_id, flatten(to_plain(cfg)))  # keys already logged are left out
        commit = git_commit(Path(__file__).parent)
        outbox.set_tags(run_id, {
            TAG_CHECKPOINT: str(ckpt_dir), TAG_SWEEP: sweep_dir or "", TAG_JOB_DIR: str(job_dir),
            TAG_VARIANT: cfg.get("variant", "custom"), TAG_PROFILE: cfg.get("profile", ""),
            TAG_ARCH: cfg.net.arch, TAG_GIT_COMMIT: commit,
            TAG_HOST: platform.node(), TAG_RESUMED_FROM: resume_path or "",
            TAG_PROCESS: process_token(),
            # the context tags MLflow's fluent API would add (the client API does not)
            **context_tags(commit),
        })
        (job_dir / "job_config.yaml").write_text(to_yaml(cfg))
        outbox.log_artifact(run_id, job_dir / "job_config.yaml")  # the resolved config, whole
        if str(cfg.trainer.get("strategy", "auto")).startswith("ddp") and int(cfg.trainer.devices) > 1:
            outbox.close()  # rank 0 owns the outbox while the ranks train
            try:
                metrics = ddp.launch_ranks(job_dir, run_id, ckpt_dir, resume_path)
            finally:  # take over what rank 0 could not deliver (also when the ranks failed)
                outbox = Outbox(ckpt_dir / OUTBOX_DIR, tracker, run_id, retry_timeout(cfg))
        else:
            metrics = train_and_evaluate(cfg, run_id=run_id, ckpt_dir=ckpt_dir,
                                         resume=resume_path, job_dir=job_dir, outbox=outbox)
        outbox.set_status(run_id, "FINISHED")
    except (KeyboardInterrupt, SystemExit):
        interrupt_taken()  # before any write: a resent interrupt must not cut the cleanup short
        _end(outbox, run_id, "KILLED")
        raise
    except Exception as err:
        message = f"{type(err).__name__}: {err}"
        try:
            (job_dir / "error.txt").write_text(traceback.format_exc())
            artifact: Path | None = job_dir / "error.txt"
        except OSError as write_err:  # e.g. the disk is full: the run must still end FAILED
            log.warning("could not write %s: %s", job_dir / "error.txt", write_err)
            artifact = None
        _end(outbox, run_id, "FAILED", tags={"error": message.splitlines()[0][:500]},
             artifact=artifact)
        raise
    result = {"status": "finished", "run_id": run_id, "config_hash": chash, "metrics": metrics}
    if not outbox.close():
        result.update(status="spooled", message=outbox.message())
        log.error("%s", result["message"])
    return result


def _end(outbox: Outbox, run_id: str, status: str, tags: dict[str, str] | None = None,
         artifact: Path | None = None) -> None:
    """Record how a run ended; the job's own error always wins over bookkeeping errors.

    Each write is tried on its own, so a tag or artifact that cannot be written (full disk,
    rejected value) never keeps the run from leaving RUNNING.
    """
    writes: list[tuple[str, Callable[[], Any]]] = []
    if tags:
        writes.append(("tags", lambda: outbox.set_tags(run_id, tags)))
    if artifact is not None:
        writes.append(("error artifact", lambda: outbox.log_artifact(run_id, artifact)))
    for what, write in writes:
        if outbox.closed:
            break
        try:
            write()
        except Exception as err:  # noqa: BLE001 - the status below matters more
            log.warning("could not record the %s of run %s: %s", what, run_id, err)
    try:
        if not outbox.closed:
            outbox.set_status(run_id, status)
        if not outbox.close(min(_CLEANUP_TIMEOUT_S, outbox.retry_timeout_s)):
            log.warning("%s", outbox.message())
    except BaseException as err:  # noqa: BLE001 - e.g. a second Ctrl-C during cleanup
        log.warning("could not record run %s as %s: %s", run_id, status, err)


def train_and_evaluate(cfg: DictConfig, *, run_id: str, ckpt_dir: Path, resume: str | None,
                       job_dir: Path, outbox: Outbox | None = None) -> dict[str, float]:
    """Fit, then evaluate the best checkpoint on validation and held-out data; log on rank 0.

    Tracking writes go through ``outbox`` (a DDP rank 0 opens its own and leaves what it could
    not deliver on disk for the launching process), so training never waits on the server.
    """
    own: list[Outbox] = []

    def get_outbox() -> Outbox:
        if outbox is not None:
            return outbox
        if not own:
            own.append(Outbox(ckpt_dir / OUTBOX_DIR, build_tracker(cfg), run_id, retry_timeout(cfg)))
        return own[0]

    try:
        return _fit_and_log(cfg, run_id=run_id, ckpt_dir=ckpt_dir, resume=resume, job_dir=job_dir,
                            get_outbox=get_outbox)
    finally:
        for box in own:  # a DDP rank: whatever could not go out waits for the launcher
            box.close(0.0)


def _fit_and_log(cfg: DictConfig, *, run_id: str, ckpt_dir: Path, resume: str | None,
                 job_dir: Path, get_outbox: Callable[[], Outbox]) -> dict[str, float]:
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.trainer.get("num_threads"):
        torch.set_num_threads(int(cfg.trainer.num_threads))
    net = build_net(cfg)
    module = build_module(cfg, net)
    dm = build_datamodule(cfg, input_multiple=int(getattr(net, "input_multiple", 1)))
    logger = build_logger(cfg, get_outbox, run_id)
    best_ckpt, callbacks = build_callbacks(cfg, ckpt_dir)
    # the frames each split saw, as MLflow dataset inputs (digest: frame store hash + indices)
    callbacks.append(LogDatasetInputs(lambda records: get_outbox().log_inputs(run_id, records)))
    trainer = build_trainer(cfg, logger=logger, callbacks=callbacks, job_dir=job_dir)
    last = ckpt_dir / "last.ckpt"
    monitor = None
    if cfg.logger.get("system_metrics") and trainer.is_global_zero:
        monitor = SystemMetrics(run_id, tracking_uri(cfg),
                                float(cfg.logger.get("system_metrics_interval_s", 10))).start()
    try:
        results, best = fit_and_evaluate(
            trainer, module, dm, resume=resume, best_checkpoint=lambda: best_ckpt.best_model_path,
            last_checkpoint=lambda: str(last) if last.exists() else None)
    finally:
        if monitor is not None:
            monitor.stop()
    metrics: dict[str, float] = {}
    if trainer.is_global_zero:
        logger.flush()
        metrics = log_final_results(cfg, get_outbox(), run_id, results, module, dm,
                                    job_dir=job_dir, best_checkpoint=best)
        (job_dir / "result.json").write_text(json.dumps(metrics, indent=1))
    return metrics
