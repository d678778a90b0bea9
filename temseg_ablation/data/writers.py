"""Atomic file writes: masks, probability maps, instance labels (ImageJ TIFF, ImageJ ROI sets,
HyperSpy signals) and caches appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = [
    "ROIS_MISSING",
    "MissingExtraError",
    "atomic_write",
    "label_dtype",
    "require_roifile",
    "trace_outline",
    "write_hspy",
    "write_image",
    "write_labels",
    "write_rois",
]


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

    data = _checked_labels(labels, path)
    px = _checked_pixel_size(pixel_size_nm, path)
    kw: dict = {"compression": "zlib"}
    meta: dict = {}
    if px:
        kw["resolution"] = (1.0 / px, 1.0 / px)
        meta["unit"] = "nm"
    if data.dtype == np.uint16:
        kw.update(imagej=True, metadata=meta)
    else:
        kw.update(description=tifffile.imagej_description(data.shape, **meta), metadata=None,
                  resolutionunit=tifffile.RESUNIT.NONE)
    atomic_write(path, lambda tmp: tifffile.imwrite(tmp, data, **kw))


ROIS_MISSING = "--rois needs roifile: pip install 'temseg-ablation[imagej]'"


class MissingExtraError(ImportError):
    """An optional dependency (a ``temseg-ablation[...]`` extra) is not installed; ``str`` is one line."""


def require_roifile():
    """The ``roifile`` module, or ``MissingExtraError`` naming the ``[imagej]`` extra."""
    try:
        import roifile
    except ImportError:
        raise MissingExtraError(ROIS_MISSING) from None
    return roifile


def _checked_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    """``labels`` as uint16 / uint32 after checking they are 2-D, integer and >= 0."""
    a = np.asarray(labels)
    if a.ndim != 2 or not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise ValueError(f"{path}: expected 2-D integer labels, got {a.dtype} {a.shape}")
    if a.size and a.min() < 0:
        raise ValueError(f"{path}: instance labels must be >= 0")
    return a.astype(label_dtype(int(a.max()) if a.size else 0), copy=False)


def _checked_pixel_size(pixel_size_nm: float | None, path: Path) -> float | None:
    if not pixel_size_nm:
        return None
    px = float(pixel_size_nm)
    if not (np.isfinite(px) and px > 0):
        raise ValueError(f"{path}: pixel size must be a positive number, got {pixel_size_nm!r}")
    return px


def _turn_left(d: tuple[int, int]) -> tuple[int, int]:
    # heading (dx, dy) on screen (y down); its left-hand side is (dy, -dx)
    return d[1], -d[0]


def trace_outline(mask: np.ndarray) -> np.ndarray:
    """Outer boundary of the largest 8-connected piece of a bool mask (H, W), along pixel edges.

    Returns int (N, 2) polygon vertices (x, y) at pixel corners, clockwise on screen, without
    collinear vertices and without repeating the first; pixel (r, c) spans x in [c, c + 1], y in
    [r, r + 1] (ImageJ's convention), so the polygon's area is the piece's pixel count plus its
    holes (holes are not cut out, as ImageJ's wand). An empty mask gives shape (0, 2).
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    nxt: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def add(r: np.ndarray, c: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> None:
        # an edge (x0, y0) -> (x1, y1) relative to each pixel (r, c) of the padded mask
        for rr, cc in zip(r.tolist(), c.tolist(), strict=True):
            nxt.setdefault((cc + x0, rr + y0), []).append((cc + x1, rr + y1))

    inner = m[1:-1, 1:-1]
    rows, cols = np.nonzero(inner & ~m[:-2, 1:-1])  # background above: top edge, going +x
    add(rows, cols, 0, 0, 1, 0)
    rows, cols = np.nonzero(inner & ~m[1:-1, 2:])  # background right: right edge, going +y
    add(rows, cols, 1, 0, 1, 1)
    rows, cols = np.nonzero(inner & ~m[2:, 1:-1])  # background below: bottom edge, going -x
    add(rows, cols, 1, 1, 0, 1)
    rows, cols = np.nonzero(inner & ~m[1:-1, :-2])  # background left: left edge, going -y
    add(rows, cols, 0, 1, 0, 0)
    best, best_area = np.zeros((0, 2), dtype=np.int64), 0.0
    while nxt:
        start = next(iter(nxt))
        first = pick = nxt[start][0]
        here, loop = start, []
        while True:
            loop.append(here)
            outs = nxt[here]
            outs.remove(pick)
            if not outs:
                del nxt[here]
            heading = (pick[0] - here[0], pick[1] - here[1])
            here = pick
            cands = nxt.get(here, []) + ([first] if here == start else [])
            if len(cands) > 1:
                # two pixels touching only at this corner: turning left keeps them one
                # 8-connected piece (the foreground lies on the right of every edge)
                left = _turn_left(heading)
                pick = next(o for o in cands if (o[0] - here[0], o[1] - here[1]) == left)
            else:
                pick = cands[0]
            if here == start and pick == first:
                break
        pts = np.asarray(loop, dtype=np.int64)
        x, y = pts[:, 0], pts[:, 1]
        area = 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
        if area > best_area:  # outer boundaries run clockwise (area > 0), holes the other way
            best, best_area = pts, area
    if len(best):
        turn = np.roll(best, -1, axis=0) - 2 * best + np.roll(best, 1, axis=0)
        best = best[np.any(turn != 0, axis=1)]
    return best


def write_rois(labels: np.ndarray, path: Path, pixel_size_nm: float | None = None) -> int:
    """Write one ImageJ polygon ROI per particle of ``labels`` as an ROI set ``.zip``, atomically.

    Parameters
    ----------
    labels : ndarray, shape (H, W)
        Instance labels, 0 = background.
    path : Path
        The ``.zip`` written (ImageJ / Fiji: File > Open, or the ROI Manager).
    pixel_size_nm : float, optional
        Recorded in each ROI's properties (``pixel_size_nm``, ``area_nm2``); the outlines are
        in pixels whatever it is, as ImageJ ROIs hold no calibration.

    Returns
    -------
    int
        The number of ROIs written (one per label; a frame without particles gives an empty set).

    Each ROI is named by its label value (``particle_id`` in ``particles.csv``) and outlines the
    particle along its pixel edges (:func:`trace_outline`), as ImageJ's wand / Analyze Particles
    do, so ImageJ measures the particle's pixel area; holes are not cut out, and of a label in
    several pieces only the largest is outlined. Raises ``MissingExtraError`` without roifile.
    """
    from scipy import ndimage

    roifile = require_roifile()
    data = _checked_labels(labels, path)
    px = _checked_pixel_size(pixel_size_nm, path)
    rois = []
    for value, box in enumerate(ndimage.find_objects(data), start=1):
        if box is None:  # a label value not present
            continue
        piece = data[box] == value
        points = trace_outline(piece) + (box[1].start, box[0].start)
        roi = roifile.ImagejRoi.frompoints(points, name=str(value))
        roi.roitype = roifile.ROI_TYPE.TRACED  # ImageJ's type for outlines of pixel regions
        props: dict[str, float | int] = {"particle_id": value, "area_px": int(piece.sum())}
        if px:
            props.update(pixel_size_nm=px, area_nm2=float(piece.sum()) * px * px)
        roi.properties = props
        rois.append(roi)
    atomic_write(path, lambda tmp: roifile.roiwrite(tmp, rois, mode="w"))
    return len(rois)


def write_hspy(labels: np.ndarray, path: Path, pixel_size_nm: float | None = None, *,
               title: str = "", source: str | None = None) -> None:
    """Write instance labels as a HyperSpy ``.hspy`` Signal2D with calibrated axes, atomically.

    Parameters
    ----------
    labels : ndarray, shape (H, W)
        Instance labels, 0 = background; stored as uint16 (uint32 above 65535), gzip-compressed.
    path : Path
        The ``.hspy`` written (``hs.load(path)``, or ``rsciio.hspy.file_reader``).
    pixel_size_nm : float, optional
        The axes ``y`` / ``x`` get this scale in ``nm``; without it scale 1 in ``px``.
    title : str
        ``metadata.General.title`` (the frame's name).
    source : str, optional
        The frame's source file, kept as ``original_metadata.source``.
    """
    from rsciio.hspy import file_writer

    data = _checked_labels(labels, path)
    px = _checked_pixel_size(pixel_size_nm, path)
    scale, units = (px, "nm") if px else (1.0, "px")
    axes = [{"name": name, "size": int(size), "scale": float(scale), "offset": 0.0,
             "units": units, "navigate": False} for name, size in zip(("y", "x"), data.shape, strict=True)]
    original = {"labels": "instance labels, 0 = background", "pixel_size_nm": px or "unknown"}
    if source is not None:
        original["source"] = str(source)
    signal = {
        "data": data,
        "axes": axes,
        "metadata": {"General": {"title": title},
                     "Signal": {"signal_type": "", "quantity": "particle id"}},
        "original_metadata": original,
        "tmp_parameters": {},
        "attributes": {"_lazy": False},
        "learning_results": {},
        "models": {},
        # no package name: HyperSpy loads it as its own Signal2D (a name would be imported)
        "package_info": {"name": "", "version": ""},
    }
    atomic_write(path, lambda tmp: file_writer(tmp, signal, show_progressbar=False))
