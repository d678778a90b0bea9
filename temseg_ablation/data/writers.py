"""Atomic file writes: masks, probability maps and caches appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["atomic_write", "write_image"]


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it onto ``path``."""
    # the temporary name keeps the suffix so writers that infer the format from it still work
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_image(array: np.ndarray, path: Path) -> None:
    """Write a mask or probability map atomically; the format follows the suffix.

    Parameters
    ----------
    array : ndarray, shape (H, W)
        bool masks are written as uint8 0/255 (PNG or zlib TIFF); float maps as float32 TIFF.
    path : Path
        ``.png``, ``.tif`` / ``.tiff`` or ``.npy``.
    """
    a = np.asarray(array)
    data = a.astype(np.uint8) * 255 if a.dtype == bool else a
    suffix = path.suffix.lower()
    if suffix == ".png":
        from PIL import Image

        if data.dtype != np.uint8:
            raise ValueError(f"{path}: PNG holds 8-bit masks only, got {data.dtype}")
        atomic_write(path, lambda tmp: Image.fromarray(data).save(tmp, format="PNG"))
    elif suffix in (".tif", ".tiff"):
        import tifffile

        compression = "zlib" if data.dtype == np.uint8 else None
        atomic_write(path, lambda tmp: tifffile.imwrite(tmp, data, compression=compression))
    elif suffix == ".npy":
        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, data)
        atomic_write(path, write)
    else:
        raise ValueError(f"{path}: unsupported image suffix {suffix!r}")
