"""The one place where the composed config becomes objects; library code takes plain arguments."""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from ..data.datamodule import TEMDataModule
from ..data.preprocess import Preprocess
from ..models import build_model
from ..tracking.lightning_logger import OutboxLogger
from ..tracking.mlflow_store import DEFAULT_RETRY_TIMEOUT_S, Tracker
from ..tracking.outbox import Outbox
from ..tracking.uri import absolute, absolute_uri
from ..training.callbacks import FailAfter, PlateauStopping
from ..training.checkpoint_io import AtomicCheckpointIO
from ..training.module import SegmentationModule
from .config import flatten, to_plain

#: The metric that picks the best checkpoint and drives early stopping.
MONITOR = "val/f1_otsu"

# Keys that do not change what a job computes; left out of the config hash.
_VOLATILE = ("rerun", "paths", "logger", "hydra", "trainer.enable_progress_bar",
             "data.num_workers", "data.cache_dir", "data.progress", "trainer.num_threads",
             "trainer.device_pool", "fail_after_epochs")
#: ``trainer.*`` keys that are this project's own, not Lightning Trainer arguments.
_PROJECT_TRAINER_KEYS = {"num_threads", "device_pool", "early_stopping", "process_group_backend"}
#: Trainer arguments the job sets itself (a config must not override them).
_FIXED_TRAINER_ARGS = {"logger", "callbacks", "default_root_dir", "num_sanity_val_steps",
                       "use_distributed_sampler"}


class ConfigError(ValueError):
    """A config value that cannot work; ``str`` is one line naming the key."""


def _net_spec(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    net = to_plain(cfg.net)
    return net.pop("arch"), net


def build_net(cfg: DictConfig):
    """The network described by ``cfg.net`` (unknown arguments are refused by the registry)."""
    arch, kwargs = _net_spec(cfg)
    return build_model(arch, **kwargs)


def network_fingerprint(net) -> str:
    """What the built network is: its layers and parameter shapes, not the config that named it.

    Two configs that build the same network (e.g. ``norm=batch`` on a model without norm
    layers) share a fingerprint; a setting that changes the network changes it.
    """
    shapes = [(name, tuple(p.shape)) for name, p in net.state_dict().items()]
    text = f"{type(net).__name__}\n{net!r}\n{shapes}"
    return hashlib.sha1(text.encode()).hexdigest()


def config_hash(cfg: DictConfig | dict, net=None) -> str:
    """Short hash of everything that determines a job's result (seeds included).

    The network enters as what is built (``network_fingerprint``), not as the ``net.*``
    settings, so settings the chosen architecture ignores do not split one job into two.
    """
    plain = to_plain(cfg)
    if net is None and isinstance(cfg, DictConfig):
        net = build_net(cfg)
    flat = flatten(plain)
    kept = {k: v for k, v in flat.items()
            if not any(k == p or k.startswith(p + ".") for p in _VOLATILE)}
    if net is not None:
        kept = {k: v for k, v in kept.items() if not k.startswith("net.")}
        kept["net"] = network_fingerprint(net)
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


def preprocess_from_config(cfg: DictConfig) -> Preprocess:
    """The frame preprocessing a job evaluates with (recorded in its checkpoints for inference).

    With ``data.blur_eval`` false (the paper's protocol) the model trains on blurred frames but
    is scored, and so also applied, on unblurred ones.
    """
    d = cfg.data
    blur = float(d.blur_sigma) if d.get("blur_eval", True) else 0.0
    return Preprocess(pixel_size_nm=float(d.pixel_size_nm), blur_sigma=blur,
                      resolution=str(d.resolution), downsample_size=int(d.downsample_size),
                      frame_shape=(int(d.frame_height), int(d.frame_width)),
                      particles=str(d.particles))


def build_module(cfg: DictConfig, net=None) -> SegmentationModule:
    """LightningModule around ``net`` (built from ``cfg.net`` when not given)."""
    net = net if net is not None else build_net(cfg)
    arch, kwargs = _net_spec(cfg)
    preprocess = preprocess_from_config(cfg).to_dict()
    preprocess["variant"] = str(cfg.get("variant", "custom"))
    return SegmentationModule(
        net,
        net_config={"arch": arch, **kwargs},
        preprocess=preprocess,
        lr=float(cfg.optim.lr),
        weight_decay=float(cfg.optim.weight_decay),
        edge_band_px=int(cfg.eval.edge_band_px),
        particle_metrics=bool(cfg.eval.particle_metrics),
        min_particle_px=int(cfg.eval.min_particle_px),
        match_iou=float(cfg.eval.match_iou),
        boundary_tolerance_px=int(cfg.eval.boundary_tolerance_px),
    )


def build_datamodule(cfg: DictConfig, input_multiple: int = 16) -> TEMDataModule:
    """Data module from ``cfg.data``; ``input_multiple`` comes from the network."""
    d = to_plain(cfg.data)
    d["cache_dir"] = str(absolute(d["cache_dir"]))
    heldout = bool(d.pop("heldout")) and bool(cfg.eval.get("heldout", True))
    return TEMDataModule(input_multiple=input_multiple, heldout=heldout, **d)


def retry_timeout(cfg: DictConfig) -> float:
    """``logger.retry_timeout_s``: how long tracking calls keep retrying an unreachable store."""
    return float(cfg.logger.get("retry_timeout_s", DEFAULT_RETRY_TIMEOUT_S))


def tracking_uri(cfg: DictConfig) -> str:
    """``logger.tracking_uri`` made absolute."""
    return absolute_uri(str(cfg.logger.tracking_uri))


def build_tracker(cfg: DictConfig) -> Tracker:
    """The job's ``Tracker`` (store, experiment, retry budget from ``cfg.logger``)."""
    art = cfg.logger.get("artifact_location")
    art = str(absolute(art)) if art and "://" not in str(art) else art
    return Tracker(tracking_uri(cfg), str(cfg.logger.experiment_name), artifact_location=art,
                   retry_timeout_s=retry_timeout(cfg))


def _trainer_parameters() -> set[str]:
    return set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Every ``trainer.*`` key that is a Lightning Trainer argument, passed through as it is.

    The project's own keys (threads, device pool, early stopping, DDP backend) are taken out;
    anything else that ``pl.Trainer`` does not accept raises ``ConfigError`` (one line) instead
    of being hashed, logged and silently dropped.
    """
    t = to_plain(cfg.trainer)
    accepted = _trainer_parameters()
    kwargs: dict[str, Any] = {"num_sanity_val_steps": 0, "use_distributed_sampler": False}
    for key, value in t.items():
        if key in _PROJECT_TRAINER_KEYS:
            continue
        if key in _FIXED_TRAINER_ARGS:
            raise ConfigError(f"trainer.{key}: set by the job itself; remove it from the config")
        if key not in accepted:
            near = difflib.get_close_matches(key, sorted(accepted), n=1)
            hint = f" (did you mean trainer.{near[0]}?)" if near else ""
            raise ConfigError(f"trainer.{key}: not an argument of the Lightning Trainer{hint}")
        kwargs[key] = value
    strategy = str(t.get("strategy", "auto"))
    if strategy.startswith("ddp") and int(t.get("devices") or 1) > 1:
        from pytorch_lightning.strategies import DDPStrategy

        kwargs["strategy"] = DDPStrategy(process_group_backend=t.get("process_group_backend"))
    return kwargs


def build_logger(cfg: DictConfig, get_outbox: Callable[[], Outbox], run_id: str) -> OutboxLogger:
    """The Lightning logger that writes through the run's outbox."""
    return OutboxLogger(get_outbox, run_id=run_id, experiment_name=str(cfg.logger.experiment_name),
                        flush_every_s=float(cfg.logger.get("flush_every_s", 10.0)))


def build_callbacks(cfg: DictConfig, ckpt_dir: Path) -> tuple[Any, list[Any]]:
    """``(best-checkpoint callback, all callbacks)`` for a job writing into ``ckpt_dir``.

    The newest checkpoint is always ``ckpt_dir / "last.ckpt"``.
    """
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=MONITOR, mode="max",
                           save_top_k=1, enable_version_counter=False)
    # last.ckpt is what a resume starts from, so it must be the newest epoch; Lightning's own
    # save_last only rewrites it when the monitored best improves, hence a second callback;
    # saved at the end of every training epoch, not only of those that validate
    # (trainer.check_val_every_n_epoch > 1)
    latest = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                             every_n_epochs=1, save_on_train_epoch_end=True,
                             enable_version_counter=False)
    callbacks: list[Any] = [best, latest]
    if cfg.get("fail_after_epochs") is not None:
        callbacks.append(FailAfter(int(cfg.fail_after_epochs)))
    rule = cfg.trainer.get("early_stopping")
    if rule == "plateau":  # stop when the convergence rule of eval.plateau is met
        p = cfg.eval.plateau
        callbacks.append(PlateauStopping(float(p.slope_tol), float(p.spread_tol),
                                         int(p.min_points), int(p.get("min_evals", 8))))
    elif rule:
        es = dict(rule)
        callbacks.append(EarlyStopping(monitor=es.get("monitor", MONITOR),
                                       patience=int(es.get("patience", 5)), mode="max"))
    return best, callbacks


def build_trainer(cfg: DictConfig, *, logger: Any, callbacks: list[Any],
                  job_dir: Path) -> pl.Trainer:
    """The Lightning Trainer of one job."""
    kwargs = trainer_kwargs(cfg)
    kwargs.setdefault("plugins", [AtomicCheckpointIO()])
    return pl.Trainer(logger=logger, callbacks=callbacks, default_root_dir=str(job_dir), **kwargs)
