"""Classical automated training-set generation ("pseudo-labelling") of TEM particle frames.

Pipeline (paper's parameters as defaults): polarity so particles are dark -> normalise to
[0, 1] -> Gaussian (sigma 2 px) -> normalise -> border reconstruction by dilation (r, removes
bright domes) -> border reconstruction by erosion of r (r1, fills dark basins, i.e. estimates
the background) -> d = |r - r1| -> normalise(d + sobel(d)) -> opening (disk r = 5) ->
normalise -> Otsu threshold.

`pseudo_label` is the fast path (exact linear-time reconstructions and a run-based disk
opening from `_morph`); `pseudo_label_reference` is the plain scikit-image version used as
the yardstick. Both give identical masks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

# bump when the pipeline's output changes for the same parameters, so old caches are missed
PIPELINE_VERSION = 1

__all__ = [
    "PIPELINE_VERSION",
    "PseudoLabelParams",
    "LabelReport",
    "pseudo_label",
    "pseudo_label_reference",
    "pseudo_label_stages",
    "label_folder",
    "score_against_truth",
]


@dataclass(frozen=True)
class PseudoLabelParams:
    """Parameters of the classical pseudo-labelling pipeline (lengths in pixels)."""

    sigma: float = 2.0
    opening_radius: int = 5
    sobel_weight: float = 1.0
    particles: str = "dark"
    threshold: str | float = "otsu"
    min_size_px: int = 0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {self.sigma!r}")
        if int(self.opening_radius) != self.opening_radius or self.opening_radius < 0:
            raise ValueError(f"opening_radius must be an integer >= 0, got {self.opening_radius!r}")
        if not (np.isfinite(self.sobel_weight) and self.sobel_weight >= 0):
            raise ValueError(f"sobel_weight must be a finite number >= 0, got {self.sobel_weight!r}")
        if self.particles not in ("dark", "bright"):
            raise ValueError(f"particles must be 'dark' or 'bright', got {self.particles!r}")
        if isinstance(self.threshold, str):
            if self.threshold != "otsu":
                raise ValueError(f"threshold must be 'otsu' or a float in [0, 1], got {self.threshold!r}")
        elif isinstance(self.threshold, bool) or not (
            isinstance(self.threshold, int | float) and 0.0 <= self.threshold <= 1.0
        ):
            raise ValueError(f"threshold must be 'otsu' or a float in [0, 1], got {self.threshold!r}")
        if int(self.min_size_px) != self.min_size_px or self.min_size_px < 0:
            raise ValueError(f"min_size_px must be an integer >= 0, got {self.min_size_px!r}")

    def cache_key(self) -> str:
        """Stable hex digest of the parameters and pipeline version (same across runs and machines)."""
        fields = dataclasses.asdict(self)
        # canonical numeric forms so 2 and 2.0 (or 5 and 5.0) hash alike
        fields["sigma"] = float(self.sigma)
        fields["sobel_weight"] = float(self.sobel_weight)
        fields["opening_radius"] = int(self.opening_radius)
        fields["min_size_px"] = int(self.min_size_px)
        if not isinstance(self.threshold, str):
            fields["threshold"] = float(self.threshold)
        payload = json.dumps(
            {"pipeline": "pseudolabel", "version": PIPELINE_VERSION, "params": fields},
            sort_keys=True,
        )
        return hashlib.sha1(payload.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# shared small steps (identical in both paths so only the heavy steps differ)


def _validated(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"pseudo_label needs a 2-D image, got shape {image.shape}")
    if image.size == 0:
        raise ValueError("pseudo_label got an empty image")
    if not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer)
            or image.dtype == bool):
        raise ValueError(f"pseudo_label needs a real-valued image, got dtype {image.dtype}")
    x = np.array(image, dtype=np.float64)  # always a private float64 copy
    if not np.all(np.isfinite(x)):
        raise ValueError(f"image has {int(np.count_nonzero(~np.isfinite(x)))} non-finite values")
    if x.max() == x.min():
        raise ValueError(f"image is constant (all pixels = {x.flat[0]!r}); nothing to label")
    return x


def _normalise(x: np.ndarray) -> np.ndarray | None:
    """(x - min) / (max - min), or None when x is constant."""
    lo = x.min()
    hi = x.max()
    if not hi > lo:
        return None
    return (x - lo) / (hi - lo)


def _prepared(image: np.ndarray, params: PseudoLabelParams) -> np.ndarray:
    from skimage.filters import gaussian

    x = _validated(image)
    if params.particles == "bright":
        x = -x
    x = _normalise(x)
    if params.sigma > 0:
        x = gaussian(x, sigma=params.sigma)
    g = _normalise(x)
    if g is None:
        raise ValueError("image is constant after Gaussian smoothing; nothing to label")
    return g


def _edge_enhanced(d: np.ndarray, params: PseudoLabelParams) -> np.ndarray | None:
    from skimage.filters import sobel

    if params.sobel_weight > 0:
        d = d + params.sobel_weight * sobel(d)
    return _normalise(d)


def _thresholded(
    o: np.ndarray | None, params: PseudoLabelParams
) -> tuple[np.ndarray | None, float]:
    from skimage.filters import threshold_otsu

    if o is None:  # no signal at all: nothing is a particle
        return None, float("nan")
    thr = float(threshold_otsu(o)) if params.threshold == "otsu" else float(params.threshold)
    return o > thr, thr


def _remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    if min_size <= 1 or not mask.any():
        return mask
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


# ---------------------------------------------------------------------------------------------
# public pipeline


def pseudo_label_stages(
    image: np.ndarray, params: PseudoLabelParams = PseudoLabelParams()
) -> dict[str, Any]:
    """Fast pipeline keeping intermediates: dict of 'smoothed', 'r', 'd', 'edge', 'opened' (float64 HxW or None), 'threshold' (float) and 'mask' (bool HxW)."""
    from temseg_ablation.data import _morph

    g = _prepared(image, params)
    r, d = _morph.basin_depth(g)
    e = _edge_enhanced(d, params) if d.max() > d.min() else None
    o = None
    if e is not None:
        o = _normalise(_morph.disk_opening(e, params.opening_radius))
    mask, thr = _thresholded(o, params)
    if mask is None:
        mask = np.zeros(g.shape, bool)
    mask = _remove_small(mask, int(params.min_size_px))
    return {"smoothed": g, "r": r, "d": d, "edge": e, "opened": o, "threshold": thr, "mask": mask}


def pseudo_label(image: np.ndarray, params: PseudoLabelParams = PseudoLabelParams()) -> np.ndarray:
    """Pseudo-label one 2-D frame: bool (H, W) mask, True on particles (fast exact path)."""
    return pseudo_label_stages(image, params)["mask"]


def pseudo_label_reference(
    image: np.ndarray, params: PseudoLabelParams = PseudoLabelParams()
) -> np.ndarray:
    """Same pipeline as `pseudo_label` written plainly with scikit-image (slow yardstick); bool (H, W)."""
    from skimage.filters import gaussian, sobel, threshold_otsu
    from skimage.morphology import disk, opening, reconstruction, remove_small_objects

    x = _validated(image)
    if params.particles == "bright":
        x = -x
    x = (x - x.min()) / (x.max() - x.min())
    if params.sigma > 0:
        x = gaussian(x, sigma=params.sigma)
    if x.max() == x.min():
        raise ValueError("image is constant after Gaussian smoothing; nothing to label")
    g = (x - x.min()) / (x.max() - x.min())

    seed = g.copy()
    seed[1:-1, 1:-1] = g.min()
    r = reconstruction(seed, g, method="dilation")
    seed = r.copy()
    seed[1:-1, 1:-1] = r.max()
    r1 = reconstruction(seed, r, method="erosion")
    d = np.abs(r - r1)
    if d.max() == d.min():
        return np.zeros(g.shape, bool)

    if params.sobel_weight > 0:
        d = d + params.sobel_weight * sobel(d)
    e = (d - d.min()) / (d.max() - d.min())
    if params.opening_radius > 0:
        e = opening(e, disk(int(params.opening_radius)))
    if e.max() == e.min():
        return np.zeros(g.shape, bool)
    o = (e - e.min()) / (e.max() - e.min())
    thr = threshold_otsu(o) if params.threshold == "otsu" else float(params.threshold)
    mask = o > thr
    if params.min_size_px > 1:
        mask = remove_small_objects(mask, max_size=int(params.min_size_px) - 1, connectivity=2)
    return mask


# ---------------------------------------------------------------------------------------------
# scoring


def score_against_truth(
    pred_mask: np.ndarray, true_mask: np.ndarray, true_labels: np.ndarray
) -> dict[str, float]:
    """Pixel precision/recall/F1 of a predicted mask and particle counts (8-connected components of pred vs distinct nonzero true labels)."""
    pred = np.asarray(pred_mask, bool)
    true = np.asarray(true_mask, bool)
    labels = np.asarray(true_labels)
    if pred.shape != true.shape or labels.shape != true.shape:
        raise ValueError(
            f"shape mismatch: pred {pred.shape}, true mask {true.shape}, labels {labels.shape}"
        )
    tp = int(np.count_nonzero(pred & true))
    n_pred = int(np.count_nonzero(pred))
    n_true = int(np.count_nonzero(true))
    precision = tp / n_pred if n_pred else (1.0 if n_true == 0 else 0.0)
    recall = tp / n_true if n_true else (1.0 if n_pred == 0 else 0.0)
    denom = n_pred + n_true
    f1 = 2.0 * tp / denom if denom else 1.0
    _, count_pred = ndi.label(pred, structure=np.ones((3, 3), bool))
    ids = np.unique(labels)
    count_true = int(np.count_nonzero(ids > 0))
    return {
        "pixel_f1": f1,
        "precision": precision,
        "recall": recall,
        "count_pred": int(count_pred),
        "count_true": count_true,
        "count_error": int(count_pred) - count_true,
        "count_rel_error": (int(count_pred) - count_true) / count_true if count_true else float("nan"),
    }


# ---------------------------------------------------------------------------------------------
# batch labelling with a content-addressed cache


@dataclass
class LabelReport:
    """Outcome of `label_folder`: inputs labelled, inputs that failed (path, one-line reason), masks written and cache use."""

    ok: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    n_frames: int = 0
    n_cached: int = 0  # input files served from the cache (no pipeline run)
    n_computed: int = 0  # input files that ran the pipeline
    seconds: float = 0.0


def _sha1_file(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    # write-then-rename so parallel workers and interrupted runs never leave half files
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _save_mask(mask: np.ndarray, path: Path, fmt: str) -> None:
    if fmt == "npy":

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, mask.astype(np.uint8))

    else:
        from PIL import Image

        def write(tmp: str) -> None:
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")

    _atomic_write(path, write)


def _output_paths(path: Path, out_dir: Path, n_frames: int, fmt: str) -> list[Path]:
    if n_frames == 1:
        return [out_dir / f"{path.stem}.{fmt}"]
    return [out_dir / f"{path.stem}_f{i:04d}.{fmt}" for i in range(n_frames)]


def _label_one(
    path: Path, out_dir: Path, params: PseudoLabelParams, cache_dir: Path, fmt: str
) -> tuple[Path, list[Path], bool, int, str | None]:
    """Label one input file; returns (path, outputs, from_cache, n_frames, error message or None)."""
    try:
        digest = _sha1_file(path)
        cache_file = cache_dir / f"{digest}_{params.cache_key()}.npz"
        masks = None
        if cache_file.is_file():
            try:
                with np.load(cache_file) as z:
                    shape = tuple(int(s) for s in z["shape"])
                    bits = np.unpackbits(z["bits"], count=int(np.prod(shape)))
                    masks = bits.reshape(shape).astype(bool)
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
            masks = np.stack([pseudo_label(im, params) for im in images])

            def write_cache(tmp: str) -> None:
                with open(tmp, "wb") as fh:
                    np.savez(fh, shape=np.array(masks.shape), bits=np.packbits(masks.ravel()))

            _atomic_write(cache_file, write_cache)
        outputs = _output_paths(path, out_dir, masks.shape[0], fmt)
        for m, out in zip(masks, outputs, strict=True):
            _save_mask(m, out, fmt)
        return path, outputs, from_cache, int(masks.shape[0]), None
    except Exception as exc:  # one bad file must not stop the batch
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if str(path) not in msg:
            msg = f"{path}: {msg}"
        return path, [], False, 0, msg


def label_folder(
    paths: list[Path],
    out_dir: Path,
    params: PseudoLabelParams = PseudoLabelParams(),
    n_jobs: int = -1,
    cache_dir: Path | None = None,
    progress: bool = True,
    fmt: str = "npy",
) -> LabelReport:
    """Pseudo-label every frame of many image files in parallel; writes `<stem>.npy` (uint8 0/1) or `<stem>.png` (0/255) per frame (`<stem>_fNNNN` for multi-frame files); cache defaults to out_dir/.cache."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    if fmt not in ("npy", "png"):
        raise ValueError(f"fmt must be 'npy' or 'png', got {fmt!r}")
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
            results = (_label_one(p, out_dir, params, cache_dir, fmt) for p in todo)
        else:
            results = Parallel(n_jobs=n_jobs, return_as="generator")(
                delayed(_label_one)(p, out_dir, params, cache_dir, fmt) for p in todo
            )
        for path, outputs, from_cache, n_frames, err in tqdm(
            results, total=len(todo), disable=not progress, desc="pseudo-labelling", unit="file"
        ):
            if err is not None:
                report.failed.append((path, err))
                continue
            report.ok.append(path)
            report.outputs.extend(outputs)
            report.n_frames += n_frames
            if from_cache:
                report.n_cached += 1
            else:
                report.n_computed += 1
    report.seconds = time.perf_counter() - t0
    return report
