"""Atomic file writes: masks, probability maps and caches appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["atomic_write", "label_dtype", "write_image", "write_labels"]


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


def label_dtype(max_label: int) -> np.dtype:
    """uint16 for labels up to 65535, uint32 above (up to 2**32 - 1)."""
    if max_label < 0 or max_label > np.iinfo(np.uint32).max:
        raise ValueError(f"instance labels must lie in [0, 2**32 - 1], got a maximum of {max_label}")
    return np.dtype(np.uint16 if max_label <= np.iinfo(np.uint16).max else np.uint32)


def write_labels(labels: np.ndarray, path: Path, pixel_size_nm: float | None = None) -> None:
    """Write instance labels (H, W) (0 = background) atomically as an ImageJ TIFF, zlib-compressed.

    The values are kept as they are, in uint16 (uint32 when a label exceeds 65535). With a pixel
    size the resolution tags hold ``1 / pixel_size_nm`` pixels per unit and the ImageJ
    description ``unit=nm``, so ImageJ / Fiji and ``tifffile`` read the calibration back;
    without one neither is written. The ImageJ format has no uint32, so a uint32 image is a plain
    TIFF that carries the same ImageJ description and resolution (Fiji opens it as 32-bit).
    """
    import tifffile

    a = np.asarray(labels)
    if a.ndim != 2 or not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise ValueError(f"{path}: expected 2-D integer labels, got {a.dtype} {a.shape}")
    if a.size and a.min() < 0:
        raise ValueError(f"{path}: instance labels must be >= 0")
    data = a.astype(label_dtype(int(a.max()) if a.size else 0), copy=False)
    kw: dict = {"compression": "zlib"}
    meta: dict = {}
    if pixel_size_nm:
        px = float(pixel_size_nm)
        if not (np.isfinite(px) and px > 0):
            raise ValueError(f"{path}: pixel size must be a positive number, got {pixel_size_nm!r}")
        kw["resolution"] = (1.0 / px, 1.0 / px)
        meta["unit"] = "nm"
    if data.dtype == np.uint16:
        kw.update(imagej=True, metadata=meta)
    else:
        kw.update(description=tifffile.imagej_description(data.shape, **meta), metadata=None,
                  resolutionunit=tifffile.RESUNIT.NONE)
    atomic_write(path, lambda tmp: tifffile.imwrite(tmp, data, **kw))
