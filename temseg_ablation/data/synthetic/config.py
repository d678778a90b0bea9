"""Configuration, frame record and table columns of the synthetic ETEM generator."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

TABLE_COLUMNS = [
    "id",
    "y_px",
    "x_px",
    "area_px",
    "diameter_px",
    "diameter_nm",
    "radius_nm",
    "contrast",
    "mean_contrast",
    "orientation_factor",
    "n_lobes",
    "touches_border",
]

# Particles whose volume-equivalent radius falls below this have dissolved (sub-pixel anyway).
_MIN_RADIUS_NM = 0.3
# atomic number of gold, the reference of the HAADF signal scale
_Z_GOLD = 79.0


@dataclass(frozen=True)
class SyntheticConfig:
    """Every physical and rendering knob of the synthetic bright-field ETEM generator.

    Lengths are in nm unless the name says px; doses in electrons per pixel per frame; the
    ``(lo, hi)`` tuples are uniform ranges. Population: ``size_sigma`` is the log-normal shape of
    the ordinary particles' diameters, ``small_fraction`` / ``large_fraction`` the number fractions
    of the 1-2 nm tail and of the large (``large_factor`` x median) elongated or coalesced ones,
    ``coverage`` the target projected area fraction, ``min_gap_nm`` the clearance between
    bounding circles, ``height_ratio`` the out-of-plane / in-plane semi-axis ratio. Contrast:
    ``mean_free_path_nm`` sets exp(-k t / lambda); ``bragg_fraction`` of particles get k in
    ``bragg_factor``, the rest k = 1 +- ``orientation_spread``; ``twin_fraction`` of particles
    have a second, differently diffracting domain. ``dose_e_per_px`` = 0 (only without shot noise)
    leaves the image in units of the incident beam. ``particles="bright"`` gives an HAADF-like
    inversion (particles bright on a dim support, ``bright_background``, no Fresnel fringe).
    Dynamics (sequences only): stage ``drift_nm_per_s`` in a random direction, per-particle
    Ornstein-Uhlenbeck ``jitter_nm`` with ``jitter_time_s``, the ripening coefficient K in
    d(R^3)/dt = 3K (R / <R> - 1), and the e-folding time with which coalesced shapes round off.
    Optional effects (``EFFECT_FIELDS``, from ``imaging_mode`` on) are described in the module
    docstring; each is off at its default.
    """

    # frame geometry
    height: int = 1792
    width: int = 1920
    pixel_size_nm: float = 0.18
    # particle population (sizes are volume-equivalent diameters)
    median_diameter_nm: float = 5.0
    size_sigma: float = 0.25
    small_fraction: float = 0.2
    small_diameter_nm: tuple[float, float] = (1.0, 2.0)
    large_fraction: float = 0.03
    large_factor: tuple[float, float] = (1.6, 2.6)
    ellipticity: float = 0.06
    coverage: float = 0.15
    min_gap_nm: float = 0.5
    height_ratio: float = 1.0
    # contrast and optics
    particles: str = "dark"
    mean_free_path_nm: float = 15.0
    bragg_fraction: float = 0.2
    bragg_factor: tuple[float, float] = (2.0, 3.5)
    twin_fraction: float = 0.25
    orientation_spread: float = 0.2
    psf_sigma_nm: float = 0.25
    fresnel_amplitude: float = 0.6
    fresnel_width_nm: float = 0.35
    # support and camera
    speckle_amplitude: float = 0.05
    speckle_scale_nm: float = 0.6
    support_thickness_amplitude: float = 0.03
    support_thickness_scale_nm: float = 12.0
    illumination_amplitude: float = 0.08
    dose_e_per_px: float = 20.0
    fixed_pattern_amplitude: float = 0.004
    bright_background: float = 0.3
    # switches for each part of the image formation
    thickness_contrast: bool = True
    diffraction_contrast: bool = True
    psf_blur: bool = True
    fresnel_fringe: bool = True
    support_texture: bool = True
    illumination: bool = True
    shot_noise: bool = True
    fixed_pattern: bool = True
    # dynamics of sequences
    drift_nm_per_s: float = 2.0
    jitter_nm: float = 0.05
    jitter_time_s: float = 0.05
    ripening_k_nm3_per_s: float = 0.05
    coalescence: bool = True
    coalescence_relax_s: float = 2.0
    # output
    output_dtype: str = "float32"
    # optional effects; every default leaves the image exactly as without them
    imaging_mode: str = "bf"
    vacuum_fraction: float = 0.0
    aggregate_fraction: float = 0.0
    aggregate_scale_nm: float = 20.0
    aggregate_thickness_nm: float = 30.0
    aggregate_edge_nm: float = 1.5
    aggregate_texture: float = 0.3
    film_thickness_nm: float = 20.0
    support_mean_free_path_nm: float = 150.0
    detector_blur_px: float = 0.0
    detector_tail_fraction: float = 0.0
    detector_tail_px: float = 6.0
    noise_mode: str = "counting"
    linear_spread_px: float = 0.8
    read_noise_e: float = 0.5
    defocus_nm: float = 0.0
    accelerating_voltage_kv: float = 300.0
    inner_potential_v: float = 30.0
    lattice_amplitude: float = 0.0
    lattice_spacing_nm: float = 0.235
    lattice_fraction: float = 0.6
    moire_fraction: float = 0.0
    haadf_z_particle: float = 79.0
    haadf_z_support: float = 10.0
    haadf_z_exponent: float = 1.7
    jpeg_quality: int = 0
    vary_effects: bool = False

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"SyntheticConfig: frame size must be positive, got {self.height} x {self.width}")
        positive = (
            "pixel_size_nm", "median_diameter_nm", "mean_free_path_nm", "height_ratio",
            "speckle_scale_nm", "support_thickness_scale_nm", "jitter_time_s", "coalescence_relax_s",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"SyntheticConfig: {name} must be > 0, got {getattr(self, name)!r}")
        non_negative = (
            "size_sigma", "ellipticity", "min_gap_nm", "orientation_spread", "psf_sigma_nm",
            "fresnel_amplitude", "fresnel_width_nm", "speckle_amplitude",
            "support_thickness_amplitude", "illumination_amplitude", "dose_e_per_px",
            "fixed_pattern_amplitude", "bright_background", "drift_nm_per_s", "jitter_nm",
            "ripening_k_nm3_per_s",
        )
        for name in non_negative:
            if not getattr(self, name) >= 0:
                raise ValueError(f"SyntheticConfig: {name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("small_fraction", "large_fraction", "bragg_fraction", "twin_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"SyntheticConfig: {name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.small_fraction + self.large_fraction > 1:
            raise ValueError("SyntheticConfig: small_fraction + large_fraction must be <= 1")
        if not 0 <= self.coverage < 0.5:
            raise ValueError(f"SyntheticConfig: coverage must be in [0, 0.5), got {self.coverage!r}")
        for name in ("small_diameter_nm", "large_factor", "bragg_factor"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"SyntheticConfig: {name} must be a range 0 < lo <= hi, got {(lo, hi)!r}")
        if self.particles not in ("dark", "bright"):
            raise ValueError(f"SyntheticConfig: particles must be 'dark' or 'bright', got {self.particles!r}")
        if self.output_dtype not in ("float32", "uint16"):
            raise ValueError(f"SyntheticConfig: output_dtype must be 'float32' or 'uint16', got {self.output_dtype!r}")
        if self.shot_noise and self.dose_e_per_px <= 0:
            raise ValueError("SyntheticConfig: shot_noise needs dose_e_per_px > 0")
        self._check_effects()

    def _check_effects(self) -> None:
        """Validate the optional-effect fields (see EFFECT_FIELDS)."""
        for name in ("aggregate_scale_nm", "lattice_spacing_nm", "accelerating_voltage_kv",
                     "support_mean_free_path_nm", "haadf_z_particle", "haadf_z_support"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SyntheticConfig: {name} must be > 0, got {getattr(self, name)!r}")
        for name in ("aggregate_thickness_nm", "aggregate_edge_nm", "aggregate_texture", "film_thickness_nm",
                     "detector_blur_px", "detector_tail_px", "linear_spread_px", "read_noise_e",
                     "inner_potential_v", "lattice_amplitude", "haadf_z_exponent"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"SyntheticConfig: {name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("vacuum_fraction", "aggregate_fraction", "detector_tail_fraction", "lattice_fraction",
                     "moire_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"SyntheticConfig: {name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.vacuum_fraction + self.aggregate_fraction >= 1:
            raise ValueError("SyntheticConfig: vacuum_fraction + aggregate_fraction must be < 1")
        if not math.isfinite(self.defocus_nm):
            raise ValueError(f"SyntheticConfig: defocus_nm must be finite, got {self.defocus_nm!r}")
        if self.imaging_mode not in ("bf", "haadf"):
            raise ValueError(f"SyntheticConfig: imaging_mode must be 'bf' or 'haadf', got {self.imaging_mode!r}")
        if self.imaging_mode == "haadf" and self.particles == "bright":
            raise ValueError("SyntheticConfig: imaging_mode='haadf' already gives bright particles; "
                             "keep particles='dark' (the bright-field polarity switch)")
        if self.noise_mode not in ("counting", "linear"):
            raise ValueError(f"SyntheticConfig: noise_mode must be 'counting' or 'linear', got {self.noise_mode!r}")
        if isinstance(self.jpeg_quality, bool) or not isinstance(self.jpeg_quality, int) \
                or not 0 <= self.jpeg_quality <= 100:
            raise ValueError(f"SyntheticConfig: jpeg_quality must be an int in 0..100 (0 = off), "
                             f"got {self.jpeg_quality!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, object] | None = None, **base: object) -> SyntheticConfig:
        """Config from keyword fields (e.g. ``data.synthetic`` of a Hydra config); unknown keys raise.

        Lists become tuples (YAML has no tuples); ``base`` fields are applied first.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        merged = {**base, **dict(values or {})}
        unknown = sorted(set(merged) - names)
        if unknown:
            raise ValueError(f"SyntheticConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()})

    def replace(self, **changes: object) -> SyntheticConfig:
        """Return a copy with the given fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, object]:
        """All fields as a JSON-friendly dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def cache_key(self) -> str:
        """Stable 12-hex-digit hash of all fields, for naming cached data sets.

        Optional-effect fields at their defaults are left out, so keys made before the effects
        existed stay valid (the images are bit-identical).
        """
        fields = dataclasses.asdict(self)
        for name in EFFECT_FIELDS:
            if fields[name] == _EFFECT_DEFAULTS[name]:
                del fields[name]
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# the optional effects' fields, in declaration order (imaging_mode .. vary_effects)
EFFECT_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(SyntheticConfig)
)[[f.name for f in dataclasses.fields(SyntheticConfig)].index("imaging_mode"):]
_EFFECT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SyntheticConfig) if f.name in EFFECT_FIELDS}


@dataclass
class Frame:
    """One synthetic frame and its exact truth.

    image: (H, W) float32 electrons per pixel (or uint16); mask: (H, W) bool; labels: (H, W)
    int32 particle ids (0 background); particles: one row per visible particle (TABLE_COLUMNS).
    """

    image: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    particles: pd.DataFrame
    pixel_size_nm: float
    time_s: float = 0.0
    frame_index: int = 0
    metadata: dict[str, object] = field(default_factory=dict)
