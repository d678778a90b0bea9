"""The one place where the composed Hydra config becomes objects; library code takes plain args."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .data.datamodule import TEMDataModule
from .models import build_model
from .training.module import SegmentationModule

# Keys that do not change what a job computes; left out of the config hash.
_VOLATILE = ("rerun", "paths", "logger", "hydra", "trainer.enable_progress_bar",
             "data.num_workers", "data.cache_dir", "data.progress", "trainer.num_threads",
             "trainer.device_pool", "fail_after_epochs")


def to_plain(cfg: DictConfig | dict) -> dict[str, Any]:
    """Resolved config as plain Python containers (no Hydra node)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in cfg.items() if k != "hydra"}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}} -> {'a.b': 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_hash(cfg: DictConfig | dict) -> str:
    """Short hash of everything that determines a job's result (seeds included)."""
    flat = flatten(to_plain(cfg))
    kept = {k: v for k, v in flat.items()
            if not any(k == p or k.startswith(p + ".") for p in _VOLATILE)}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


def absolute(path: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
    """``path`` made absolute against ``base`` (default: the current directory)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (Path(base or os.getcwd()) / p).resolve()


def absolute_uri(uri: str, base: str | os.PathLike | None = None) -> str:
    """A tracking URI with a relative sqlite / file path made absolute (Hydra may chdir)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(absolute(uri[len("sqlite:///"):], base))
    if "://" not in uri:
        return str(absolute(uri, base))
    return uri


def build_net(cfg: DictConfig):
    """The network described by ``cfg.net``."""
    net = to_plain(cfg.net)
    arch = net.pop("arch")
    net.pop("depth", None)
    return build_model(arch, **net)


def build_module(cfg: DictConfig, net=None) -> SegmentationModule:
    """LightningModule around ``net`` (built from ``cfg.net`` when not given)."""
    net = net if net is not None else build_net(cfg)
    net_config = to_plain(cfg.net)
    net_config.pop("depth", None)
    d = cfg.data
    preprocess = {
        "pixel_size_nm": float(d.pixel_size_nm), "blur_sigma": float(d.blur_sigma),
        "resolution": str(d.resolution), "downsample_size": int(d.downsample_size),
        "frame_shape": [int(d.frame_height), int(d.frame_width)], "particles": str(d.particles),
        "normalise": "percentile 0.1-99.9 to [0, 1]", "variant": str(cfg.get("variant", "custom")),
    }
    return SegmentationModule(
        net,
        net_config=net_config,
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
