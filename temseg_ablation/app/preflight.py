"""Checks a command makes before it creates any run: output folders usable, disk space free."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig

from ..tracking.uri import absolute, absolute_uri

#: Free disk space (MB) a job needs in each output folder unless ``paths.min_free_mb`` says.
DEFAULT_MIN_FREE_MB = 200.0


class OutputPathError(OSError):
    """An output folder that cannot be used; ``str`` is one line naming the setting and path."""


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
            with contextlib.suppress(OSError):  # a read-only disk refuses even this unlink
                probe.unlink(missing_ok=True)
        free_mb = shutil.disk_usage(folder).free / 2**20
        if free_mb < min_free_mb:
            raise OutputPathError(f"{where}: only {free_mb:.0f} MB free on its disk, a job needs at "
                                  f"least {min_free_mb:.0f} MB (paths.min_free_mb)")


def preflight(cfg: DictConfig, job_dir: str | Path | None = None) -> None:
    """Check all output folders of ``cfg`` (see ``check_output_paths``)."""
    check_output_paths(output_paths(cfg, job_dir),
                       float(cfg.paths.get("min_free_mb", DEFAULT_MIN_FREE_MB)))
