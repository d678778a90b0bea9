"""Where the Hydra config lives, and the one place it is composed or loaded."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def _config_dir() -> str:
    # Installed: shipped inside the package (setup.py maps conf/ to temseg_ablation.conf).
    # Source checkout (editable install): the repository's own conf/.
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"temseg-ablation config not found in {package / 'conf'} or "
                            f"{package.parent / 'conf'}; reinstall the package")


#: Absolute path of the primary config folder (``config.yaml`` and its groups).
CONFIG_DIR = _config_dir()


def _uid() -> str:
    # One token per command (inherited by its worker processes), so output folders of commands
    # started in the same second never collide while every job of one sweep agrees on the folder.
    return os.environ.setdefault("TEMSEG_RUN_UID", secrets.token_hex(3))


OmegaConf.register_new_resolver("uid", _uid, replace=True)

#: Config groups whose option names are numbers (kernel size, depth).
NUMERIC_GROUPS = ("kernel", "depth")
_NUMERIC_OVERRIDE = re.compile(r"^(\+{0,2}(?:" + "|".join(NUMERIC_GROUPS) + r"))=(\d+(?:,\d+)*)$")


def quote_numeric_groups(argv: list[str]) -> list[str]:
    """Rewrite ``kernel=7`` / ``depth=3,4`` as quoted option names.

    Hydra parses ``7`` as an integer and refuses integers as group choices; quoting keeps
    ``kernel=7`` (and sweeps like ``kernel=3,7``) working as users expect.
    """
    out = []
    for arg in argv:
        m = _NUMERIC_OVERRIDE.match(arg)
        out.append(f"{m[1]}=" + ",".join(f'"{v}"' for v in m[2].split(",")) if m else arg)
    return out


def compose_config(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """The job config Hydra would build for ``overrides``, outside a Hydra run."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name,
                       overrides=quote_numeric_groups(list(overrides or [])))


def load_config(path: str | Path) -> DictConfig:
    """A saved, resolved job config (``job_config.yaml``)."""
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{path}: not a job config (a YAML mapping was expected)")
    return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file (e.g. an arm in ``conf/table1/``) as plain containers."""
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a YAML mapping was expected")
    return data


def to_plain(cfg: DictConfig | dict) -> dict[str, Any]:
    """Resolved config as plain Python containers (no Hydra node)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in cfg.items() if k != "hydra"}


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML text."""
    return OmegaConf.to_yaml(cfg, resolve=True)


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
