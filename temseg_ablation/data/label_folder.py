"""Batch pseudo-labelling of a folder of frames, with a content-addressed cache and atomic writes.

Besides the masks, the instance labels (the 8-connected components of each mask) can be written
with the segment command's writers: ImageJ label TIFFs, ImageJ ROI sets and HyperSpy signals.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .components import label_components
from .pseudolabel import pseudo_label_stages
from .pseudolabel_params import ESTIMATE_SCALE_MODES, PseudoLabelParams
from .writers import (
    atomic_write,
    require_roifile,
    write_hspy,
    write_image,
    write_labels,
    write_rois,
)

log = logging.getLogger(__name__)

__all__ = ["LabelReport", "label_folder"]


@dataclass
class LabelReport:
    """Outcome of `label_folder`: inputs labelled, inputs that failed (path, one-line reason), masks written and cache use."""

    ok: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    # labels/<stem>.tif, rois/<stem>.zip, hspy/<stem>.hspy written on request, per frame
    instance_outputs: list[Path] = field(default_factory=list)
    n_frames: int = 0
    n_cached: int = 0  # input files served from the cache (no pipeline run)
    n_computed: int = 0  # input files that ran the pipeline
    seconds: float = 0.0
    # per labelled input, how each frame's lengths became pixels (str of `ScaleUsed`)
    scales: dict[Path, list[str]] = field(default_factory=dict)


def _sha1_file(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_mask(mask: np.ndarray, path: Path, fmt: str) -> None:
    # PNG holds the mask as 0/255 (viewable), NPY as 0/1 (what the readers load as labels)
    write_image(mask.astype(bool) if fmt == "png" else mask.astype(np.uint8), path)


def _output_paths(path: Path, out_dir: Path, n_frames: int, fmt: str) -> list[Path]:
    if n_frames == 1:
        return [out_dir / f"{path.stem}.{fmt}"]
    return [out_dir / f"{path.stem}_f{i:04d}.{fmt}" for i in range(n_frames)]


#: Instance-label outputs of `label_folder`: folder and suffix of each (named as the masks).
INSTANCE_OUTPUTS = {"labels": ".tif", "rois": ".zip", "hspy": ".hspy"}


def _write_instances(masks: np.ndarray, outputs: list[Path], kinds: tuple[str, ...],
                     pixel_size_nm: float | None, source: Path) -> list[Path]:
    """Write the instance labels of each mask in the ``kinds`` of `INSTANCE_OUTPUTS`; the paths written."""
    written = []
    for mask, out in zip(masks, outputs, strict=True):
        labels = label_components(mask, 0, connectivity=2)[0]
        for kind in kinds:
            path = out.parent / kind / f"{out.stem}{INSTANCE_OUTPUTS[kind]}"
            path.parent.mkdir(exist_ok=True)
            if kind == "labels":
                write_labels(labels, path, pixel_size_nm)
            elif kind == "rois":
                write_rois(labels, path, pixel_size_nm)
            else:
                write_hspy(labels, path, pixel_size_nm, title=out.stem, source=str(source))
            written.append(path)
    return written


def _scale_tag(params: PseudoLabelParams, estimate_scale: str, default_pixel_size_nm: float | None) -> str:
    """Cache-name suffix for the settings that change the pixel parameters of a file ('' for plain pixel parameters)."""
    if estimate_scale == "always":
        return "_scale-always"
    if not params.needs_pixel_size:
        return ""
    tag = f"_scale-{estimate_scale}"
    if default_pixel_size_nm is not None:
        tag += f"-{float(default_pixel_size_nm)!r}"
    return tag


def _label_one(
    path: Path,
    out_dir: Path,
    params: PseudoLabelParams,
    cache_dir: Path,
    fmt: str,
    estimate_scale: str = "never",
    default_pixel_size_nm: float | None = None,
    instances: tuple[str, ...] = (),
) -> tuple[Path, list[Path], bool, int, str | None, list[str], list[Path]]:
    """Label one input file; returns (path, outputs, from_cache, n_frames, error message or None, per-frame scale notes, instance outputs)."""
    try:
        digest = _sha1_file(path)
        tag = _scale_tag(params, estimate_scale, default_pixel_size_nm)
        cache_file = cache_dir / f"{digest}_{params.cache_key()}{tag}.npz"
        masks = None
        scales: list[str] = []
        file_px: float | None = None  # the file's own calibration (nm/px), once read or cached
        file_px_known = False
        if cache_file.is_file():
            try:
                with np.load(cache_file) as z:
                    shape = tuple(int(s) for s in z["shape"])
                    bits = np.unpackbits(z["bits"], count=int(np.prod(shape)))
                    masks = bits.reshape(shape).astype(bool)
                    scales = [str(v) for v in z["scales"]] if "scales" in z.files else []
                    if "pixel_size_nm" in z.files:  # absent from caches written before it
                        v = float(z["pixel_size_nm"])
                        file_px, file_px_known = (v if math.isfinite(v) else None), True
            except Exception:  # a damaged cache entry is recomputed, never trusted
                masks = None
        from_cache = masks is not None
        if masks is None:
            from temseg_ablation.data.readers import read_frames

            stack = read_frames(path)
            images = np.asarray(stack.images)
            if images.ndim == 2:
                images = images[None]
            if images.ndim != 3 or images.shape[0] == 0:
                raise ValueError(f"expected (N, H, W) frames, got shape {images.shape}")
            file_px, file_px_known = (stack.pixel_size_nm or None), True
            pixel_size = stack.pixel_size_nm if stack.pixel_size_nm else default_pixel_size_nm
            results = [
                pseudo_label_stages(im, params, pixel_size, estimate_scale=estimate_scale)
                for im in images
            ]
            masks = np.stack([r["mask"] for r in results])
            scales = [str(r["scale"]) for r in results]

            def write_cache(tmp: str) -> None:
                with open(tmp, "wb") as fh:
                    np.savez(
                        fh,
                        shape=np.array(masks.shape),
                        bits=np.packbits(masks.ravel()),
                        scales=np.array(scales, dtype=str),
                        pixel_size_nm=np.float64(file_px or np.nan),
                    )

            atomic_write(cache_file, write_cache)
        outputs = _output_paths(path, out_dir, masks.shape[0], fmt)
        for m, out in zip(masks, outputs, strict=True):
            _save_mask(m, out, fmt)
        extra: list[Path] = []
        if instances:
            if not file_px_known:
                from temseg_ablation.data.readers import read_frames

                file_px = read_frames(path).pixel_size_nm or None
            extra = _write_instances(masks, outputs, instances, file_px or default_pixel_size_nm, path)
        return path, outputs, from_cache, int(masks.shape[0]), None, scales, extra
    except Exception as exc:  # one bad file must not stop the batch
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if str(path) not in msg:
            msg = f"{path}: {msg}"
        return path, [], False, 0, msg, [], []


def label_folder(
    paths: list[Path],
    out_dir: Path,
    params: PseudoLabelParams = PseudoLabelParams(),
    n_jobs: int = -1,
    cache_dir: Path | None = None,
    progress: bool = True,
    fmt: str = "npy",
    *,
    estimate_scale: str = "never",
    default_pixel_size_nm: float | None = None,
    labels: bool = False,
    rois: bool = False,
    hspy: bool = False,
) -> LabelReport:
    """Pseudo-label every frame of many image files in parallel; writes `<stem>.npy` (uint8 0/1) or `<stem>.png` (0/255) per frame (`<stem>_fNNNN` for multi-frame files); cache defaults to out_dir/.cache.

    nm lengths use each file's calibration, else ``default_pixel_size_nm``, else (with
    ``estimate_scale='if_missing'``) the typical particle size read off each frame; a file that
    needs a pixel size and has none fails with a one-line reason. ``report.scales`` says which.

    ``labels`` / ``rois`` / ``hspy`` also write each mask's instance labels (its 8-connected
    components) as ``labels/<stem>.tif`` (ImageJ TIFF), ``rois/<stem>.zip`` (ImageJ ROI set; needs
    roifile, else ``MissingExtraError`` before anything is labelled) and ``hspy/<stem>.hspy``
    (HyperSpy signal) under ``out_dir``, calibrated with the file's pixel size, else
    ``default_pixel_size_nm`` (an estimated scale is not a calibration); ``report.instance_outputs``
    lists them.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    if fmt not in ("npy", "png"):
        raise ValueError(f"fmt must be 'npy' or 'png', got {fmt!r}")
    if estimate_scale not in ESTIMATE_SCALE_MODES:
        raise ValueError(f"estimate_scale must be one of {ESTIMATE_SCALE_MODES}, got {estimate_scale!r}")
    instances = tuple(k for k, on in (("labels", labels), ("rois", rois), ("hspy", hspy)) if on)
    if rois:
        require_roifile()
    if default_pixel_size_nm is not None and not (
        math.isfinite(float(default_pixel_size_nm)) and float(default_pixel_size_nm) > 0
    ):
        raise ValueError(f"default_pixel_size_nm must be a finite number > 0, got {default_pixel_size_nm!r}")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else out_dir / ".cache"
    cache_dir.mkdir(parents=True, exist_ok=True)

    report = LabelReport()
    todo: list[Path] = []
    stems: dict[str, Path] = {}
    for p in map(Path, paths):
        if p.stem in stems:
            report.failed.append((p, f"{p}: output name '{p.stem}' collides with {stems[p.stem]}"))
        elif not p.is_file():
            report.failed.append((p, f"{p}: no such file"))
        else:
            stems[p.stem] = p
            todo.append(p)

    if todo:
        if n_jobs == 1 or len(todo) == 1:  # no process pool for trivial batches
            results = (
                _label_one(p, out_dir, params, cache_dir, fmt, estimate_scale, default_pixel_size_nm,
                           instances)
                for p in todo
            )
        else:
            results = Parallel(n_jobs=n_jobs, return_as="generator")(
                delayed(_label_one)(
                    p, out_dir, params, cache_dir, fmt, estimate_scale, default_pixel_size_nm,
                    instances,
                )
                for p in todo
            )
        for path, outputs, from_cache, n_frames, err, scales, extra in tqdm(
            results, total=len(todo), disable=not progress, desc="pseudo-labelling", unit="file"
        ):
            if err is not None:
                report.failed.append((path, err))
                continue
            report.ok.append(path)
            report.scales[path] = scales
            report.outputs.extend(outputs)
            report.instance_outputs.extend(extra)
            report.n_frames += n_frames
            if from_cache:
                report.n_cached += 1
            else:
                report.n_computed += 1
    report.seconds = time.perf_counter() - t0
    return report
