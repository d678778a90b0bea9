"""One training job: skip or resume by config hash, train (in process or as DDP ranks), evaluate, log.

Only rank 0 writes to MLflow, and the run is created before any rank starts, so a job is exactly
one MLflow run however many processes train it.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import traceback
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
    TAG_CHECKPOINT,
    TAG_HASH,
    TAG_KIND,
    TAG_SWEEP,
    Tracker,
    git_commit,
    prepare_store,
)

log = logging.getLogger(__name__)

MONITOR = "val/f1_otsu"
_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
             "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID", "NODE_RANK")


def _tracker(cfg: DictConfig) -> Tracker:
    uri = absolute_uri(str(cfg.logger.tracking_uri))
    art = cfg.logger.get("artifact_location")
    art = str(absolute(art)) if art and "://" not in str(art) else art
    return Tracker(uri, str(cfg.logger.experiment_name), artifact_location=art,
                   retry_timeout_s=float(cfg.logger.get("retry_timeout_s", 60)))


def run_job(cfg: DictConfig, job_dir: Path, *, job_name: str,
            parent_run_id: str | None = None, sweep_dir: str | None = None) -> dict[str, Any]:
    """Run one job end to end; returns ``{'status': 'finished'|'skipped', 'run_id', 'metrics'}``.

    Raises on failure after marking the MLflow run FAILED (or KILLED on interrupt).
    """
    job_dir.mkdir(parents=True, exist_ok=True)
    uri = absolute_uri(str(cfg.logger.tracking_uri))
    prepare_store(uri)
    tracker = _tracker(cfg)
    chash = config_hash(cfg)

    if not cfg.get("rerun", False):
        done = tracker.finished_run(chash)
        if done is not None:
            log.info("skipping %s: identical config %s already finished as run %s",
                     job_name, chash, done.info.run_id)
            metrics = {k: v for k, v in done.data.metrics.items() if k.startswith("final/")}
            return {"status": "skipped", "run_id": done.info.run_id, "config_hash": chash,
                    "metrics": metrics}
    previous = None if cfg.get("rerun", False) else tracker.resumable_run(chash)
    if previous is not None:
        run_id = previous.info.run_id
        tracker.set_status(run_id, "RUNNING")
        ckpt_dir = Path(previous.data.tags.get(TAG_CHECKPOINT) or
                        absolute(cfg.paths.checkpoint_dir) / chash / run_id)
        log.info("resuming %s into run %s (checkpoints in %s)", job_name, run_id, ckpt_dir)
    else:
        ckpt_dir = None
        run_id = tracker.create_run(job_name, {TAG_KIND: "job", TAG_HASH: chash}, parent_run_id)
        ckpt_dir = absolute(cfg.paths.checkpoint_dir) / chash / run_id
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    resume = ckpt_dir / "last.ckpt"
    resume_path = str(resume) if resume.exists() else None

    tracker.log_params(run_id, flatten(to_plain(cfg)))
    tracker.set_tags(run_id, {
        TAG_CHECKPOINT: str(ckpt_dir), TAG_SWEEP: sweep_dir or "", "temseg.job_dir": str(job_dir),
        "temseg.variant": cfg.get("variant", "custom"), "temseg.profile": cfg.get("profile", ""),
        "temseg.arch": cfg.net.arch, "git_commit": git_commit(Path(__file__).parent),
        "host": platform.node(), "temseg.resumed_from": resume_path or "",
    })
    (job_dir / "job_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    try:
        if str(cfg.trainer.get("strategy", "auto")).startswith("ddp") and int(cfg.trainer.devices) > 1:
            metrics = _launch_ddp_ranks(job_dir, run_id, ckpt_dir, resume_path)
        else:
            metrics = train_and_evaluate(cfg, run_id=run_id, ckpt_dir=ckpt_dir,
                                         resume=resume_path, job_dir=job_dir)
        tracker.set_status(run_id, "FINISHED")
    except (KeyboardInterrupt, SystemExit):
        _safe(lambda: tracker.set_status(run_id, "KILLED"))
        raise
    except Exception as err:
        message = f"{type(err).__name__}: {err}"
        (job_dir / "error.txt").write_text(traceback.format_exc())
        _safe(lambda: tracker.set_tags(run_id, {"error": message.splitlines()[0][:500]}))
        _safe(lambda: tracker.log_artifact(run_id, job_dir / "error.txt"))
        _safe(lambda: tracker.set_status(run_id, "FAILED"))
        raise
    return {"status": "finished", "run_id": run_id, "config_hash": chash, "metrics": metrics}


def _safe(fn) -> None:
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - bookkeeping must not mask the job's own error
        log.warning("could not update the tracking store: %s", err)


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
                       job_dir: Path) -> dict[str, float]:
    """Fit, then evaluate the best checkpoint on validation and held-out data; log on rank 0."""
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
    from pytorch_lightning.loggers import MLFlowLogger

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.trainer.get("num_threads"):
        torch.set_num_threads(int(cfg.trainer.num_threads))
    net = build_net(cfg)
    module = build_module(cfg, net)
    dm = build_datamodule(cfg, input_multiple=int(getattr(net, "input_multiple", 1)))
    uri = absolute_uri(str(cfg.logger.tracking_uri))
    logger = MLFlowLogger(tracking_uri=uri, run_id=run_id,
                          experiment_name=str(cfg.logger.experiment_name))
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=MONITOR, mode="max",
                           save_last=True, save_top_k=1, enable_version_counter=False)
    callbacks: list[Any] = [ckpt]
    if cfg.get("fail_after_epochs") is not None:
        callbacks.append(_FailAfter(int(cfg.fail_after_epochs)))
    if cfg.trainer.get("early_stopping"):
        es = dict(cfg.trainer.early_stopping)
        callbacks.append(EarlyStopping(monitor=es.get("monitor", MONITOR),
                                       patience=int(es.get("patience", 5)), mode="max"))
    trainer = pl.Trainer(logger=logger, callbacks=callbacks, default_root_dir=str(job_dir),
                         **_trainer_kwargs(cfg))
    trainer.fit(module, datamodule=dm, ckpt_path=resume)

    best = ckpt.best_model_path or None
    results: dict[str, dict[str, Any]] = {}
    module.prefix = "val"
    trainer.validate(module, datamodule=dm, ckpt_path=best, verbose=False)
    results["val"] = module.results["val"]
    if dm.heldout_set is not None:
        module.prefix = "heldout"
        trainer.validate(module, dataloaders=dm.heldout_dataloader(), ckpt_path=best, verbose=False)
        results["heldout"] = module.results["heldout"]
    module.prefix = "val"

    metrics: dict[str, float] = {}
    if trainer.is_global_zero:
        from ..tracking.final_logging import log_final_results

        metrics = log_final_results(cfg, _tracker(cfg), run_id, results, module, dm,
                                    job_dir=job_dir, best_checkpoint=best)
        (job_dir / "result.json").write_text(json.dumps(metrics, indent=1))
    return metrics


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
