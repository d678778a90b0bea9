"""Parameters of the classical pseudo-labelling, and how nm lengths become pixels for a frame.

``PseudoLabelParams`` holds the paper's lengths (pixels, or nm strings such as ``"0.36nm"``);
``resolve_params`` turns nm lengths into pixels with the frame's pixel size or with one implied
by the typical particle diameter read off the image (``estimate_scale``; see `scale`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .scale import (
    PAPER_DIAMETER_PX,
    PAPER_OPENING_RADIUS_NM,
    PAPER_PIXEL_SIZE_NM,
    PAPER_SIGMA_NM,
    Length,
    LengthLike,
    ScaleEstimate,
    estimate_particle_diameter_px,
    parse_length,
)

log = logging.getLogger(__name__)

# bump when the pipeline's output changes for the same parameters, so old caches are missed
PIPELINE_VERSION = 1

__all__ = [
    "PIPELINE_VERSION",
    "PseudoLabelParams",
    "ScaleUsed",
    "ESTIMATE_SCALE_MODES",
    "resolve_params",
    "params_for_scale",
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


def params_for_scale(
    diameter_px: float,
    params: PseudoLabelParams | None = None,
    reference_diameter_px: float = PAPER_DIAMETER_PX,
) -> PseudoLabelParams:
    """Pixel parameters for frames whose typical particle spans ``diameter_px``: ``params`` (default: the paper's) are taken as tuned at the paper's reference (28 px, 0.18 nm/px) and every length is scaled by ``diameter_px / reference_diameter_px``."""
    d = float(diameter_px)
    ref = float(reference_diameter_px)
    if not (math.isfinite(d) and d > 0):
        raise ValueError(f"diameter_px must be a finite number > 0, got {diameter_px!r}")
    if not (math.isfinite(ref) and ref > 0):
        raise ValueError(f"reference_diameter_px must be a finite number > 0, got {reference_diameter_px!r}")
    base = params if params is not None else PseudoLabelParams()
    return base.scaled(d / ref, reference_pixel_size_nm=PAPER_PIXEL_SIZE_NM)


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
    as :func:`params_for_scale`).
    """
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
