"""Classical automated training-set generation ("pseudo-labelling") of TEM particle frames.

Pipeline (paper's parameters as defaults): polarity so particles are dark -> normalise to
[0, 1] -> Gaussian (sigma 2 px) -> normalise -> border reconstruction by dilation (r, removes
bright domes) -> border reconstruction by erosion of r (r1, fills dark basins, i.e. estimates
the background) -> d = |r - r1| -> normalise(d + sobel(d)) -> opening (disk r = 5) ->
normalise -> Otsu threshold.

`pseudo_label` is the fast path (exact linear-time reconstructions and a run-based disk
opening from `_morph`); `pseudo_label_reference` is the plain scikit-image version used as
the yardstick. Both give identical masks.

Scale: the lengths (sigma, opening radius, minimum diameter, split distance) are pixels when
given as plain numbers and may be given in nm (``"0.36nm"``, or ``PseudoLabelParams.from_nm``);
nm lengths are converted with the frame's pixel size, or with one implied by the typical
particle diameter read off the image (``estimate_scale``; see `scale`). With
``split_touching`` the mask has touching particles cut apart and `pseudo_label_instances`
returns their labels (see `instances`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .scale import (
    PAPER_OPENING_RADIUS_NM,
    PAPER_PIXEL_SIZE_NM,
    PAPER_SIGMA_NM,
    Length,
    LengthLike,
    ScaleEstimate,
    parse_length,
)

log = logging.getLogger(__name__)

# bump when the pipeline's output changes for the same parameters, so old caches are missed
PIPELINE_VERSION = 1

__all__ = [
    "PIPELINE_VERSION",
    "PseudoLabelParams",
    "ScaleUsed",
    "LabelReport",
    "ESTIMATE_SCALE_MODES",
    "resolve_params",
    "pseudo_label",
    "pseudo_label_instances",
    "pseudo_label_reference",
    "pseudo_label_stages",
    "label_folder",
    "score_against_truth",
]


# fields added after the paper's six; left at these defaults they stay out of the cache key so
# the keys (and cached masks) of existing parameter sets do not change
_LATER_FIELD_DEFAULTS: dict[str, Any] = {
    "min_diameter": 0.0,
    "split_touching": False,
    "split_min_distance": None,
    "split_by": "shape",
}
_LENGTH_FIELDS = ("sigma", "opening_radius", "min_diameter", "split_min_distance")


def _round_half_up(x: float) -> int:
    # round() would send 2.5 px to 2 and 3.5 px to 4; a radius should grow monotonically
    return int(math.floor(x + 0.5))


def _length_key(v: float | Length | None) -> float | str | None:
    if isinstance(v, Length):
        return f"{v.value!r}{v.unit}"
    return None if v is None else float(v)


@dataclass(frozen=True)
class PseudoLabelParams:
    """Parameters of the classical pseudo-labelling pipeline.

    Lengths (``sigma``, ``opening_radius``, ``min_diameter``, ``split_min_distance``) are pixels
    when given as plain numbers (or ``"2px"``) and nanometres when given as ``"0.36nm"`` or a
    :class:`Length`; pixel values are stored as plain numbers, nm values as ``Length`` and
    turned into pixels per frame (:meth:`resolve`). ``opening_radius`` in pixels must be a whole
    number (nm radii are rounded half up). ``min_size_px`` is an area in pixels; components
    whose equivalent-circle diameter is below ``min_diameter`` are removed as well.
    ``split_touching`` cuts touching particles apart (distance-transform watershed, see
    :mod:`instances`), with ``split_min_distance`` the least distance between two particle
    centres (None: half the median inscribed radius of the mask's components); ``split_by``
    'shape' cuts at necks of the outline (distance transform), 'intensity' at dips of the
    background-corrected intensity (compact clusters of uniform particles, e.g. HAADF; it
    over-splits particles with internal diffraction contrast).
    """

    sigma: LengthLike = 2.0
    opening_radius: LengthLike = 5
    sobel_weight: float = 1.0
    particles: str = "dark"
    threshold: str | float = "otsu"
    min_size_px: int = 0
    min_diameter: LengthLike = 0.0
    split_touching: bool = False
    split_min_distance: LengthLike | None = None
    split_by: str = "shape"

    def __post_init__(self) -> None:
        for name in _LENGTH_FIELDS:
            raw = getattr(self, name)
            if raw is None and name == "split_min_distance":
                continue
            length = parse_length(raw, name=name)
            if length.is_physical and length.value > 0:  # zero is zero in any unit
                object.__setattr__(self, name, length)
                continue
            v = length.value
            if name == "opening_radius":
                if int(v) != v:
                    raise ValueError(
                        f"opening_radius must be a whole number of pixels >= 0 (or a length in nm), got {raw!r}"
                    )
                v = int(v)
            object.__setattr__(self, name, v)
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
        if not isinstance(self.split_touching, bool | np.bool_):
            raise ValueError(f"split_touching must be True or False, got {self.split_touching!r}")
        if self.split_by not in ("shape", "intensity"):
            raise ValueError(f"split_by must be 'shape' or 'intensity', got {self.split_by!r}")

    # ------------------------------------------------------------------ scale

    @classmethod
    def from_nm(
        cls,
        sigma_nm: float = PAPER_SIGMA_NM,
        opening_radius_nm: float = PAPER_OPENING_RADIUS_NM,
        pixel_size_nm: float | None = None,
        *,
        min_diameter_nm: float = 0.0,
        split_min_distance_nm: float | None = None,
        **kwargs: Any,
    ) -> PseudoLabelParams:
        """Parameters with lengths in nm (defaults: the paper's 2 px / 5 px at 0.18 nm/px = 0.36 nm / 0.9 nm); resolved to pixels when ``pixel_size_nm`` is given."""
        params = cls(
            sigma=Length(sigma_nm, "nm"),
            opening_radius=Length(opening_radius_nm, "nm"),
            min_diameter=Length(min_diameter_nm, "nm") if min_diameter_nm else 0.0,
            split_min_distance=(
                None if split_min_distance_nm is None else Length(split_min_distance_nm, "nm")
            ),
            **kwargs,
        )
        return params if pixel_size_nm is None else params.resolve(pixel_size_nm)

    @property
    def needs_pixel_size(self) -> bool:
        """True when some length is in nm, so a pixel size (or a scale estimate) is needed."""
        return any(isinstance(getattr(self, n), Length) for n in _LENGTH_FIELDS)

    def resolve(self, pixel_size_nm: float | None) -> PseudoLabelParams:
        """The same parameters with every length in pixels, nm lengths divided by ``pixel_size_nm`` (nm/px)."""
        if not self.needs_pixel_size:
            return self
        if pixel_size_nm is None:
            nm = ", ".join(
                f"{n}={getattr(self, n)}" for n in _LENGTH_FIELDS if isinstance(getattr(self, n), Length)
            )
            raise ValueError(
                f"parameters {nm} are in nm but the frame has no pixel size; give pixel_size_nm "
                "or allow a scale estimate (estimate_scale='if_missing')"
            )
        p = float(pixel_size_nm)
        if not (math.isfinite(p) and p > 0):
            raise ValueError(f"pixel_size_nm must be a finite number > 0, got {pixel_size_nm!r}")
        return self._mapped(lambda v: v.to_px(p), px_factor=1.0)

    def scaled(self, factor: float, reference_pixel_size_nm: float = PAPER_PIXEL_SIZE_NM) -> PseudoLabelParams:
        """Pixel parameters for particles ``factor`` times as many pixels across as at the reference sampling: px lengths are multiplied by ``factor``, nm lengths first converted at ``reference_pixel_size_nm``."""
        f = float(factor)
        if not (math.isfinite(f) and f > 0):
            raise ValueError(f"scale factor must be a finite number > 0, got {factor!r}")

        def nm_to_px(v: Length) -> float:
            return round(v.to_px(reference_pixel_size_nm) * f, 6)

        return self._mapped(nm_to_px, px_factor=f)

    def _mapped(self, nm_to_px: Any, px_factor: float) -> PseudoLabelParams:
        changes: dict[str, Any] = {}
        for name in _LENGTH_FIELDS:
            v = getattr(self, name)
            if isinstance(v, Length):
                value = nm_to_px(v)
            elif v is not None and px_factor != 1.0:
                value = round(float(v) * px_factor, 6)
            else:
                continue
            changes[name] = _round_half_up(value) if name == "opening_radius" else value
        if px_factor != 1.0:
            changes["min_size_px"] = _round_half_up(self.min_size_px * px_factor**2)
        return dataclasses.replace(self, **changes)

    def min_area_px(self) -> int:
        """Least component area (px) kept: the larger of ``min_size_px`` and the area of a ``min_diameter`` disc (pixel parameters only)."""
        if self.needs_pixel_size:
            raise ValueError("min_area_px needs pixel parameters; call resolve(pixel_size_nm) first")
        d = float(self.min_diameter)
        disc = math.ceil(math.pi / 4 * d * d - 1e-9) if d > 0 else 0
        return max(int(self.min_size_px), disc)

    # ------------------------------------------------------------------ identity

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-friendly dict (nm lengths as strings such as '0.36nm')."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, Length) else v
        return out

    def cache_key(self) -> str:
        """Stable hex digest of the parameters and pipeline version (same across runs and machines)."""
        # canonical forms so 2 and 2.0 (or 5 and 5.0) hash alike
        fields: dict[str, Any] = {
            "sigma": _length_key(self.sigma),
            "opening_radius": (
                _length_key(self.opening_radius)
                if isinstance(self.opening_radius, Length)
                else int(self.opening_radius)
            ),
            "sobel_weight": float(self.sobel_weight),
            "particles": self.particles,
            "threshold": self.threshold if isinstance(self.threshold, str) else float(self.threshold),
            "min_size_px": int(self.min_size_px),
        }
        for name, default in _LATER_FIELD_DEFAULTS.items():
            v = getattr(self, name)
            if v != default:
                if name == "split_touching":
                    fields[name] = bool(v)
                elif name == "split_by":
                    fields[name] = v
                else:
                    fields[name] = _length_key(v)
        payload = json.dumps(
            {"pipeline": "pseudolabel", "version": PIPELINE_VERSION, "params": fields},
            sort_keys=True,
        )
        return hashlib.sha1(payload.encode()).hexdigest()[:16]


ESTIMATE_SCALE_MODES = ("never", "if_missing", "always")


@dataclass(frozen=True)
class ScaleUsed:
    """How one frame's lengths became pixels: source 'pixels' (all given in px), 'calibration' (nm with the frame's pixel size) or 'estimate' (scaled to the typical particle diameter read off the image; pixel_size_nm is then the one implied if particles are as large as the paper's)."""

    source: str
    pixel_size_nm: float | None = None
    estimate: ScaleEstimate | None = None

    def __str__(self) -> str:
        if self.source == "pixels":
            return "lengths in pixels"
        if self.source == "calibration":
            return f"calibration {self.pixel_size_nm:.4g} nm/px"
        return f"estimated: {self.estimate}; parameters scaled from the paper's 28 px particles"


def resolve_params(
    image: np.ndarray,
    params: PseudoLabelParams = PseudoLabelParams(),
    pixel_size_nm: float | None = None,
    estimate_scale: str = "never",
) -> tuple[PseudoLabelParams, ScaleUsed]:
    """Pixel parameters for one frame and how they were obtained.

    estimate_scale: 'never' (nm lengths need ``pixel_size_nm``), 'if_missing' (estimate the
    typical particle diameter when nm lengths meet no pixel size) or 'always' (ignore the
    calibration; every length, px or nm, is scaled from the paper's reference to the estimate,
    as :func:`scale.params_for_scale`).
    """
    from .scale import estimate_particle_diameter_px, params_for_scale

    if estimate_scale not in ESTIMATE_SCALE_MODES:
        raise ValueError(f"estimate_scale must be one of {ESTIMATE_SCALE_MODES}, got {estimate_scale!r}")
    if pixel_size_nm is not None:
        p = float(pixel_size_nm)
        if not (math.isfinite(p) and p > 0):
            raise ValueError(f"pixel_size_nm must be a finite number > 0, got {pixel_size_nm!r}")
    use_estimate = estimate_scale == "always" or (
        estimate_scale == "if_missing" and params.needs_pixel_size and pixel_size_nm is None
    )
    if use_estimate:
        est = estimate_particle_diameter_px(image, params.particles)
        used = ScaleUsed("estimate", est.pixel_size_nm(), est)
        resolved = params_for_scale(est.diameter_px, params)
        log.info("pseudo-label scale: %s -> sigma %.3g px, opening radius %d px",
                 used, resolved.sigma, resolved.opening_radius)
        return resolved, used
    if params.needs_pixel_size:
        resolved = params.resolve(pixel_size_nm)
        return resolved, ScaleUsed("calibration", float(pixel_size_nm))
    return params, ScaleUsed("pixels")


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


def _prepared(x: np.ndarray, params: PseudoLabelParams) -> np.ndarray:
    """Polarity, normalise, Gaussian, normalise, on an image that passed `_validated`."""
    from skimage.filters import gaussian

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


def _split(
    mask: np.ndarray, params: PseudoLabelParams, depth: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(instance labels, mask with the contacts between instances cut) for pixel parameters; depth: the basin depth (background-corrected intensity, particles high)."""
    from .instances import separate_instances, split_touching

    labels = split_touching(
        mask, params.split_min_distance, intensity=depth if params.split_by == "intensity" else None
    )
    cut = separate_instances(labels)
    return np.where(cut, labels, 0).astype(np.int32), cut


def pseudo_label_stages(
    image: np.ndarray,
    params: PseudoLabelParams = PseudoLabelParams(),
    pixel_size_nm: float | None = None,
    *,
    estimate_scale: str = "never",
) -> dict[str, Any]:
    """Fast pipeline keeping intermediates: dict of 'smoothed', 'r', 'd', 'edge', 'opened' (float64 HxW or None), 'threshold' (float), 'mask' (bool HxW), 'params' (the pixel parameters used), 'scale' (`ScaleUsed`) and, with split_touching, 'labels' (int32 HxW).

    nm lengths are converted with ``pixel_size_nm`` (nm/px) or, per ``estimate_scale``, from the
    typical particle diameter read off the image (see `resolve_params`).
    """
    from temseg_ablation.data import _morph

    x = _validated(image)
    px, used = resolve_params(x, params, pixel_size_nm, estimate_scale)
    g = _prepared(x, px)
    r, d = _morph.basin_depth(g)
    e = _edge_enhanced(d, px) if d.max() > d.min() else None
    o = None
    if e is not None:
        o = _normalise(_morph.disk_opening(e, int(px.opening_radius)))
    mask, thr = _thresholded(o, px)
    if mask is None:
        mask = np.zeros(g.shape, bool)
    mask = _remove_small(mask, px.min_area_px())
    out = {"smoothed": g, "r": r, "d": d, "edge": e, "opened": o, "threshold": thr}
    if px.split_touching:
        out["labels"], mask = _split(mask, px, d)
    out.update(mask=mask, params=px, scale=used)
    return out


def pseudo_label(
    image: np.ndarray,
    params: PseudoLabelParams = PseudoLabelParams(),
    pixel_size_nm: float | None = None,
    *,
    estimate_scale: str = "never",
) -> np.ndarray:
    """Pseudo-label one 2-D frame: bool (H, W) mask, True on particles (fast exact path); nm lengths need ``pixel_size_nm`` (nm/px) or ``estimate_scale``."""
    return pseudo_label_stages(image, params, pixel_size_nm, estimate_scale=estimate_scale)["mask"]


def pseudo_label_instances(
    image: np.ndarray,
    params: PseudoLabelParams = PseudoLabelParams(),
    pixel_size_nm: float | None = None,
    *,
    estimate_scale: str = "never",
) -> np.ndarray:
    """Particle instances of one 2-D frame: int32 (H, W) labels 1..N (0 background); touching particles are split when ``params.split_touching``, otherwise instances are the mask's 8-connected components."""
    st = pseudo_label_stages(image, params, pixel_size_nm, estimate_scale=estimate_scale)
    if "labels" in st:
        return st["labels"]
    labels, _ = ndi.label(st["mask"], structure=np.ones((3, 3), bool))
    return labels.astype(np.int32)


def pseudo_label_reference(
    image: np.ndarray, params: PseudoLabelParams = PseudoLabelParams(), pixel_size_nm: float | None = None
) -> np.ndarray:
    """Same pipeline as `pseudo_label` written plainly with scikit-image (slow yardstick); bool (H, W); nm lengths need ``pixel_size_nm``."""
    from skimage.filters import gaussian, sobel, threshold_otsu
    from skimage.morphology import disk, opening, reconstruction, remove_small_objects

    x = _validated(image)
    params = params.resolve(pixel_size_nm)
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
    d = d0 = np.abs(r - r1)
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
    if params.min_area_px() > 1:
        mask = remove_small_objects(mask, max_size=params.min_area_px() - 1, connectivity=2)
    if params.split_touching:
        mask = _split(mask, params, d0)[1]
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
    # per labelled input, how each frame's lengths became pixels (str of `ScaleUsed`)
    scales: dict[Path, list[str]] = field(default_factory=dict)


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
) -> tuple[Path, list[Path], bool, int, str | None, list[str]]:
    """Label one input file; returns (path, outputs, from_cache, n_frames, error message or None, per-frame scale notes)."""
    try:
        digest = _sha1_file(path)
        tag = _scale_tag(params, estimate_scale, default_pixel_size_nm)
        cache_file = cache_dir / f"{digest}_{params.cache_key()}{tag}.npz"
        masks = None
        scales: list[str] = []
        if cache_file.is_file():
            try:
                with np.load(cache_file) as z:
                    shape = tuple(int(s) for s in z["shape"])
                    bits = np.unpackbits(z["bits"], count=int(np.prod(shape)))
                    masks = bits.reshape(shape).astype(bool)
                    scales = [str(v) for v in z["scales"]] if "scales" in z.files else []
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
                    )

            _atomic_write(cache_file, write_cache)
        outputs = _output_paths(path, out_dir, masks.shape[0], fmt)
        for m, out in zip(masks, outputs, strict=True):
            _save_mask(m, out, fmt)
        return path, outputs, from_cache, int(masks.shape[0]), None, scales
    except Exception as exc:  # one bad file must not stop the batch
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if str(path) not in msg:
            msg = f"{path}: {msg}"
        return path, [], False, 0, msg, []


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
) -> LabelReport:
    """Pseudo-label every frame of many image files in parallel; writes `<stem>.npy` (uint8 0/1) or `<stem>.png` (0/255) per frame (`<stem>_fNNNN` for multi-frame files); cache defaults to out_dir/.cache.

    nm lengths use each file's calibration, else ``default_pixel_size_nm``, else (with
    ``estimate_scale='if_missing'``) the typical particle size read off each frame; a file that
    needs a pixel size and has none fails with a one-line reason. ``report.scales`` says which.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    if fmt not in ("npy", "png"):
        raise ValueError(f"fmt must be 'npy' or 'png', got {fmt!r}")
    if estimate_scale not in ESTIMATE_SCALE_MODES:
        raise ValueError(f"estimate_scale must be one of {ESTIMATE_SCALE_MODES}, got {estimate_scale!r}")
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
                _label_one(p, out_dir, params, cache_dir, fmt, estimate_scale, default_pixel_size_nm)
                for p in todo
            )
        else:
            results = Parallel(n_jobs=n_jobs, return_as="generator")(
                delayed(_label_one)(
                    p, out_dir, params, cache_dir, fmt, estimate_scale, default_pixel_size_nm
                )
                for p in todo
            )
        for path, outputs, from_cache, n_frames, err, scales in tqdm(
            results, total=len(todo), disable=not progress, desc="pseudo-labelling", unit="file"
        ):
            if err is not None:
                report.failed.append((path, err))
                continue
            report.ok.append(path)
            report.scales[path] = scales
            report.outputs.extend(outputs)
            report.n_frames += n_frames
            if from_cache:
                report.n_cached += 1
            else:
                report.n_computed += 1
    report.seconds = time.perf_counter() - t0
    return report
