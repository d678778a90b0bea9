"""Checks of a composed job config before any run is created: one line naming the key."""

from __future__ import annotations

import logging
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from .build import ConfigError, build_net, trainer_kwargs

log = logging.getLogger("temseg_ablation")


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except MissingMandatoryValue:
        raise ConfigError(f"{key}: required but not set (add {key}=...)") from None


def _number(cfg: DictConfig, key: str, *, integer: bool = False, minimum: float | None = None,
            exclusive: bool = False, allow: tuple[Any, ...] = ()) -> None:
    value = _get(cfg, key)
    if value in allow:
        return
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            integer and not float(value).is_integer()):
        raise ConfigError(f"{key}={value!r}: must be {kind}")
    if not math.isfinite(float(value)):
        raise ConfigError(f"{key}={value!r}: must be finite")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
        extra = f" (or {', '.join(map(str, allow))})" if allow else ""
        raise ConfigError(f"{key}={value!r}: must be {bound}{extra}")


def validate_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` (one line, naming the key) for a config that cannot train.

    Types and ranges of the optimiser, data and trainer settings, files that must exist for a
    folder data set, Trainer arguments and network arguments are all checked here, so a bad
    value never leaves a FAILED run behind in the tracking store.
    """
    _number(cfg, "optim.lr", minimum=0, exclusive=True)
    _number(cfg, "optim.weight_decay", minimum=0)
    _number(cfg, "seed", integer=True, minimum=0)
    _number(cfg, "data.batch_size", integer=True, minimum=1)
    _number(cfg, "data.crop_size", integer=True, minimum=1, allow=(None,))
    _number(cfg, "data.samples_per_epoch", integer=True, minimum=1, allow=(None,))
    _number(cfg, "data.num_workers", integer=True, minimum=0)
    # 0 is allowed (it evaluates the seeded, untrained weights), but never silently
    _number(cfg, "trainer.max_epochs", integer=True, minimum=0, allow=(-1,))
    if _get(cfg, "trainer.max_epochs") == 0:
        log.warning("trainer.max_epochs=0: this job trains nothing; its run records the "
                    "untrained network's scores")
    _number(cfg, "trainer.max_steps", integer=True, minimum=1, allow=(-1,))
    if _get(cfg, "trainer.max_epochs") == -1 and _get(cfg, "trainer.max_steps") == -1:
        raise ConfigError("trainer.max_epochs=-1 with trainer.max_steps=-1: training would "
                          "never end; set one of them")
    source = _get(cfg, "data.source")
    if source == "synthetic":
        crop = _get(cfg, "data.crop_size")
        frame = (int(_get(cfg, "data.frame_height")), int(_get(cfg, "data.frame_width")))
        if crop is not None and _get(cfg, "data.resolution") == "crop" and crop > min(frame):
            raise ConfigError(f"data.crop_size={crop}: larger than the {frame[0]} x {frame[1]} "
                              "px frames (data.frame_height / data.frame_width)")
    elif source == "folder":
        images = _get(cfg, "data.images")
        if not images:
            raise ConfigError("data.images: required for data=folder (a file, folder or glob)")
        from ..data.readers import expand_inputs

        given = list(images) if OmegaConf.is_list(images) else [str(images)]
        if not [p for p in expand_inputs(given) if p.is_file()]:
            raise ConfigError(f"data.images={images}: no supported image files found there")
    else:
        raise ConfigError(f"data.source={source!r}: must be 'synthetic' or 'folder'")
    trainer_kwargs(cfg)
    try:
        build_net(cfg)
    except (TypeError, ValueError, KeyError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"net: {first}"[:300]) from None
