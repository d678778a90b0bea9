"""One training job: skip or resume by config hash, train (in process or as DDP ranks), evaluate, log.

Only rank 0 writes to MLflow, and the run is created before any rank starts, so a job is exactly
one MLflow run however many processes train it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from ..build import (
    absolute,
    absolute_uri,
    build_datamodule,
    build_module,
    build_net,
    config_hash,
    flatten,
    to_plain,
)
from ..tracking.mlflow_store import (
    DEFAULT_RETRY_TIMEOUT_S,
    TAG_CHECKPOINT,
    TAG_HASH,
    TAG_KIND,
    TAG_PROCESS,
    TAG_SWEEP,
    Tracker,
    git_commit,
    prepare_store,
    process_token,
)
from ..tracking.outbox import OUTBOX_DIR, Outbox

log = logging.getLogger(__name__)

MONITOR = "val/f1_otsu"
_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
             "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID", "NODE_RANK")
#: Free disk space (MB) a job needs in each output folder unless ``paths.min_free_mb`` says.
DEFAULT_MIN_FREE_MB = 200.0
#: How long an interrupted or failed job waits for the tracking store before leaving its outbox.
_CLEANUP_TIMEOUT_S = 10.0


class OutputPathError(OSError):
    """An output folder that cannot be used; ``str`` is one line naming the setting and path."""


class ResumeCheckpointError(RuntimeError):
    """A ``last.ckpt`` the job refuses to resume from; ``str`` names the file and the fix."""


class RunBusyError(RuntimeError):
    """The run is being trained right now by another process on this machine."""


def retry_timeout(cfg: DictConfig) -> float:
    """``logger.retry_timeout_s``: how long tracking calls keep retrying an unreachable store."""
    return float(cfg.logger.get("retry_timeout_s", DEFAULT_RETRY_TIMEOUT_S))


def make_tracker(cfg: DictConfig) -> Tracker:
    """The job's ``Tracker`` (store, experiment, retry budget from ``cfg.logger``)."""
    uri = absolute_uri(str(cfg.logger.tracking_uri))
    art = cfg.logger.get("artifact_location")
    art = str(absolute(art)) if art and "://" not in str(art) else art
    return Tracker(uri, str(cfg.logger.experiment_name), artifact_location=art,
                   retry_timeout_s=retry_timeout(cfg))


# --------------------------------------------------------------------------- preflight
def output_paths(cfg: DictConfig, job_dir: str | Path | None = None) -> dict[str, Path]:
    """Every local folder a job writes to, keyed by the setting that names it."""
    paths = {f"paths.{k}": absolute(cfg.paths[k]) for k in ("output_dir", "checkpoint_dir", "cache_dir")
             if cfg.paths.get(k)}
    if cfg.get("data") is not None and cfg.data.get("cache_dir"):
        paths["data.cache_dir"] = absolute(cfg.data.cache_dir)
    uri = absolute_uri(str(cfg.logger.tracking_uri))
    if uri.startswith("sqlite:///"):
        paths["logger.tracking_uri"] = Path(uri[len("sqlite:///"):]).parent
    elif uri.startswith("file:") or "://" not in uri:
        paths["logger.tracking_uri"] = Path(uri.removeprefix("file://").removeprefix("file:"))
    art = cfg.logger.get("artifact_location")
    if art and "://" not in str(art) and not uri.startswith(("http://", "https://")):
        paths["logger.artifact_location"] = absolute(art)
    if job_dir is not None:
        paths["job folder"] = Path(job_dir)
    return paths


def check_output_paths(paths: Mapping[str, str | Path], min_free_mb: float = DEFAULT_MIN_FREE_MB) -> None:
    """Create each folder and prove it writable with ``min_free_mb`` MB free, or raise
    ``OutputPathError`` naming the setting, the path and the problem (before any training)."""
    for name, folder in paths.items():
        folder = Path(folder)
        where = f"{name}={folder}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            blocker = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()),
                           folder)
            raise OutputPathError(f"{where}: cannot create this folder: {blocker} is a file, "
                                  "not a folder") from None
        except OSError as err:
            raise OutputPathError(f"{where}: cannot create this folder ({err.strerror or err})") from None
        probe = folder / f".temseg-write-test-{os.getpid()}"
        try:
            with open(probe, "wb") as fh:
                fh.write(b"0" * 4096)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            raise OutputPathError(f"{where}: folder is not writable ({err.strerror or err})") from None
        finally:
            probe.unlink(missing_ok=True)
        free_mb = shutil.disk_usage(folder).free / 2**20
        if free_mb < min_free_mb:
            raise OutputPathError(f"{where}: only {free_mb:.0f} MB free on its disk, a job needs at "
                                  f"least {min_free_mb:.0f} MB (paths.min_free_mb)")


def preflight(cfg: DictConfig, job_dir: str | Path | None = None) -> None:
    """Check all output folders of ``cfg`` (see ``check_output_paths``)."""
    check_output_paths(output_paths(cfg, job_dir),
                       float(cfg.paths.get("min_free_mb", DEFAULT_MIN_FREE_MB)))


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
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL [\w.]+", text)
        if found:
            raise ResumeCheckpointError(f"{path}: refused to resume: it holds pickled objects "
                                        f"that could run code ({found[0]}); {fix}") from None
        detail = re.search(r"Unsupported \w+ \S+|invalid load key[^\n]*", text)
        raise ResumeCheckpointError(f"{path}: unreadable checkpoint "
                                    f"({detail[0] if detail else 'not a PyTorch file'}); {fix}"
                                    ) from None
    except Exception as err:  # noqa: BLE001 - any failure to read means it cannot be resumed
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:150]
        raise ResumeCheckpointError(f"{path}: unreadable checkpoint ({first}); {fix}") from None
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
    uri = absolute_uri(str(cfg.logger.tracking_uri))
    prepare_store(uri, timeout)
    tracker = make_tracker(cfg)
    chash = config_hash(cfg)
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
        outbox.set_tags(run_id, {
            TAG_CHECKPOINT: str(ckpt_dir), TAG_SWEEP: sweep_dir or "", "temseg.job_dir": str(job_dir),
            "temseg.variant": cfg.get("variant", "custom"), "temseg.profile": cfg.get("profile", ""),
            "temseg.arch": cfg.net.arch, "git_commit": git_commit(Path(__file__).parent),
            "host": platform.node(), "temseg.resumed_from": resume_path or "",
            TAG_PROCESS: process_token(),
        })
        (job_dir / "job_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        if str(cfg.trainer.get("strategy", "auto")).startswith("ddp") and int(cfg.trainer.devices) > 1:
            outbox.close()  # rank 0 owns the outbox while the ranks train
            try:
                metrics = _launch_ddp_ranks(job_dir, run_id, ckpt_dir, resume_path)
            finally:  # take over what rank 0 could not deliver (also when the ranks failed)
                outbox = Outbox(ckpt_dir / OUTBOX_DIR, tracker, run_id, retry_timeout(cfg))
        else:
            metrics = train_and_evaluate(cfg, run_id=run_id, ckpt_dir=ckpt_dir,
                                         resume=resume_path, job_dir=job_dir, outbox=outbox)
        outbox.set_status(run_id, "FINISHED")
    except (KeyboardInterrupt, SystemExit):
        _end(outbox, run_id, "KILLED")
        raise
    except Exception as err:
        message = f"{type(err).__name__}: {err}"
        (job_dir / "error.txt").write_text(traceback.format_exc())
        _end(outbox, run_id, "FAILED", tags={"error": message.splitlines()[0][:500]},
             artifact=job_dir / "error.txt")
        raise
    result = {"status": "finished", "run_id": run_id, "config_hash": chash, "metrics": metrics}
    if not outbox.close():
        result.update(status="spooled", message=outbox.message())
        log.error("%s", result["message"])
    return result


def _end(outbox: Outbox, run_id: str, status: str, tags: dict[str, str] | None = None,
         artifact: Path | None = None) -> None:
    """Record how a run ended; the job's own error always wins over bookkeeping errors."""
    try:
        if not outbox.closed:
            if tags:
                outbox.set_tags(run_id, tags)
            if artifact is not None:
                outbox.log_artifact(run_id, artifact)
            outbox.set_status(run_id, status)
        if not outbox.close(min(_CLEANUP_TIMEOUT_S, outbox.retry_timeout_s)):
            log.warning("%s", outbox.message())
    except BaseException as err:  # noqa: BLE001 - e.g. a second Ctrl-C during cleanup
        log.warning("could not record run %s as %s: %s", run_id, status, err)


def _launch_ddp_ranks(job_dir: Path, run_id: str, ckpt_dir: Path, resume: str | None) -> dict:
    """Train one job over ``trainer.devices`` ranks started by ``torch.distributed.run``.

    The ranks run the job worker on the saved job config, not the Hydra command line, so they
    cannot re-run a sweep; the environment they inherit is stripped of stale DDP variables.
    """
    cfg = OmegaConf.load(job_dir / "job_config.yaml")
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={int(cfg.trainer.devices)}",
           "-m", "temseg_ablation.training.worker", str(job_dir / "job_config.yaml"),
           "--run-id", run_id, "--ckpt-dir", str(ckpt_dir), "--job-dir", str(job_dir)]
    if resume:
        cmd += ["--resume", resume]
    result_file = job_dir / "result.json"
    result_file.unlink(missing_ok=True)
    log.info("launching %d DDP ranks: %s", int(cfg.trainer.devices), " ".join(cmd))
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"DDP ranks exited with status {proc.returncode} (see {job_dir})")
    return json.loads(result_file.read_text())


def _trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    t = cfg.trainer
    kwargs: dict[str, Any] = dict(
        accelerator=t.accelerator, devices=t.devices, precision=t.precision,
        max_epochs=t.max_epochs, max_steps=t.max_steps, log_every_n_steps=t.log_every_n_steps,
        check_val_every_n_epoch=t.check_val_every_n_epoch, enable_progress_bar=t.enable_progress_bar,
        deterministic=t.deterministic, num_sanity_val_steps=0, use_distributed_sampler=False,
    )
    if t.get("val_check_interval") is not None:
        kwargs["val_check_interval"] = t.val_check_interval
    strategy = str(t.get("strategy", "auto"))
    if strategy.startswith("ddp") and int(t.devices) > 1:
        from pytorch_lightning.strategies import DDPStrategy

        kwargs["strategy"] = DDPStrategy(process_group_backend=t.get("process_group_backend"))
    elif strategy != "auto":
        kwargs["strategy"] = strategy
    return kwargs


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
            own.append(Outbox(ckpt_dir / OUTBOX_DIR, make_tracker(cfg), run_id, retry_timeout(cfg)))
        return own[0]

    try:
        return _fit_and_log(cfg, run_id=run_id, ckpt_dir=ckpt_dir, resume=resume, job_dir=job_dir,
                            get_outbox=get_outbox)
    finally:
        for box in own:  # a DDP rank: whatever could not go out waits for the launcher
            box.close(0.0)


def _fit_and_log(cfg: DictConfig, *, run_id: str, ckpt_dir: Path, resume: str | None,
                 job_dir: Path, get_outbox: Callable[[], Outbox]) -> dict[str, float]:
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from ..tracking.lightning_logger import OutboxLogger

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.trainer.get("num_threads"):
        torch.set_num_threads(int(cfg.trainer.num_threads))
    net = build_net(cfg)
    module = build_module(cfg, net)
    dm = build_datamodule(cfg, input_multiple=int(getattr(net, "input_multiple", 1)))
    logger = OutboxLogger(get_outbox, run_id=run_id, experiment_name=str(cfg.logger.experiment_name),
                          flush_every_s=float(cfg.logger.get("flush_every_s", 10.0)))
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=MONITOR, mode="max",
                           save_top_k=1, enable_version_counter=False)
    # last.ckpt is what a resume starts from, so it must be the newest epoch; Lightning's own
    # save_last only rewrites it when the monitored best improves, hence a second callback
    latest = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                             every_n_epochs=1, enable_version_counter=False)
    callbacks: list[Any] = [ckpt, latest]
    if cfg.get("fail_after_epochs") is not None:
        callbacks.append(_FailAfter(int(cfg.fail_after_epochs)))
    if cfg.trainer.get("early_stopping"):
        es = dict(cfg.trainer.early_stopping)
        callbacks.append(EarlyStopping(monitor=es.get("monitor", MONITOR),
                                       patience=int(es.get("patience", 5)), mode="max"))
    trainer = pl.Trainer(logger=logger, callbacks=callbacks, default_root_dir=str(job_dir),
                         **_trainer_kwargs(cfg))
    # weights_only: Lightning must never unpickle code from a checkpoint (see checked_resume)
    _interruptible(trainer, trainer.fit, module, datamodule=dm, ckpt_path=resume, weights_only=True)

    best = ckpt.best_model_path or None
    results: dict[str, dict[str, Any]] = {}
    module.prefix = "val"
    _interruptible(trainer, trainer.validate, module, datamodule=dm, ckpt_path=best, verbose=False,
                   weights_only=True)
    results["val"] = module.results["val"]
    if dm.heldout_set is not None:
        module.prefix = "heldout"
        _interruptible(trainer, trainer.validate, module, dataloaders=dm.heldout_dataloader(),
                       ckpt_path=best, verbose=False, weights_only=True)
        results["heldout"] = module.results["heldout"]
    module.prefix = "val"

    metrics: dict[str, float] = {}
    if trainer.is_global_zero:
        from ..tracking.final_logging import log_final_results

        logger.flush()
        metrics = log_final_results(cfg, get_outbox(), run_id, results, module, dm,
                                    job_dir=job_dir, best_checkpoint=best)
        (job_dir / "result.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def _interruptible(trainer: pl.Trainer, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a trainer entry point; Lightning turns Ctrl-C into ``sys.exit(1)``, which is turned
    back into ``KeyboardInterrupt`` so the job and the sweep see an interrupt, not an exit."""
    try:
        return fn(*args, **kwargs)
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise


class _FailAfter(pl.Callback):
    """Test hook: raise after ``n`` finished training epochs (checkpoints already written)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch >= self.n:
            raise RuntimeError(f"fail_after_epochs={self.n}: simulated crash (a test hook)")


def numpy_safe(value: Any) -> Any:
    """Tensors / arrays to lists, for JSON."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: numpy_safe(v) for k, v in value.items()}
    return value
