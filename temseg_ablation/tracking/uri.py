"""Local paths and tracking URIs made absolute (Hydra jobs and subprocesses may change folder)."""

from __future__ import annotations

import os
from pathlib import Path


def absolute(path: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
    """``path`` made absolute against ``base`` (default: the current directory)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (Path(base or os.getcwd()) / p).resolve()


def absolute_uri(uri: str, base: str | os.PathLike | None = None) -> str:
    """A tracking URI with a relative sqlite / file path made absolute."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(absolute(uri[len("sqlite:///"):], base))
    if "://" not in uri:
        return str(absolute(uri, base))
    return uri
