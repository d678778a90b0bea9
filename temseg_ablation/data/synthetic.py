"""Synthetic bright-field ETEM frames of supported Au nanoparticles with exact ground truth.

The generator imitates the frames of Horwath et al. (2020): 1792 x 1920 px at about 0.18 nm/px,
Au particles about 5 nm across on an amorphous SiN membrane, about 15 % particle pixels, recorded
at 400 frames/s so that shot noise dominates. Every part of the image formation is a switch in
:class:`SyntheticConfig` and every random draw comes from a seeded stream, so a frame is a pure
function of ``(config, seed)`` (and, for sequences, of the sequence arguments).

Model, in the order it is applied
---------------------------------
1. Population. Volume-equivalent diameters are log-normal (median ``median_diameter_nm``) with a
   tail of 1-2 nm particles and a few large, coarsened or coalesced particles built from 1-3
   elliptical lobes. Positions come from rejection sampling with a gap of ``min_gap_nm`` between
   bounding circles, so distinct particles never overlap or touch at frame 0.
2. Projected thickness. Each lobe is an ellipsoid (a sphere for ordinary particles):
   ``t = 2 c sqrt(1 - q)`` with ``q`` the normalised elliptical radius; a multi-lobe particle takes
   the maximum over its lobes (exact for lobes centred at the same height).
3. Contrast. Darkening ``D = 1 - exp(-k t / lambda)``; ``k`` is a per-particle orientation factor
   (near 1, or 2-3.5 for the ``bragg_fraction`` of particles close to a Bragg orientation).
4. Optics. Gaussian point spread; an underfocus Fresnel fringe as a difference of two blurs of
   ``D`` (bright just outside the rim, slightly dark just inside).
5. Support. Multiplicative amorphous speckle (band-pass noise peaked near ``speckle_scale_nm``)
   plus a slow thickness variation; it moves with the sample when the stage drifts.
6. Camera. Slow uneven illumination, faint fixed-pattern row/column gain, Poisson shot noise at
   ``dose_e_per_px`` electrons per pixel. The image is in electrons per pixel.

Ground truth
------------
``mask`` is the geometric projection (pixel centre inside at least one lobe ellipse), ``labels``
holds the particle id (int32, 0 background) and ids persist across the frames of a sequence. Two
distinct particles never share pixels at frame 0; in sequences particles whose volume-equivalent
spheres come to touch coalesce into ONE particle (the larger one's id) that rounds off over
``coalescence_relax_s``. If coalescence is switched off and two particles grow into each other,
the larger one keeps the shared pixels. The per-frame table is measured from the rendered labels,
so it agrees with the mask to the pixel; ``radius_nm`` keeps the model's volume-equivalent radius.

Table columns: ``id`` (persistent, equals the label value), ``y_px``/``x_px`` (centroid of the
visible mask pixels, pixel-index coordinates), ``area_px``, ``diameter_px``/``diameter_nm``
(equivalent diameter of the visible mask), ``radius_nm`` (volume-equivalent radius of the whole
particle), ``contrast`` (peak fractional darkening 1 - exp(-k t_max / lambda) before blur and
noise), ``mean_contrast`` (mean darkening inside the mask after the point spread),
``orientation_factor`` (k), ``n_lobes`` (1 for round or elongated particles, 2+ for coalesced
ones), ``touches_border`` (mask reaches the first or last row or column).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import fft as sfft
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = [
    "Frame",
    "SyntheticConfig",
    "experiment_configs",
    "generate_frame",
    "generate_sequence",
    "heldout_config",
    "iter_sequence",
    "true_coarsening_curves",
]

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

    def replace(self, **changes: object) -> SyntheticConfig:
        """Return a copy with the given fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, object]:
        """All fields as a JSON-friendly dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def cache_key(self) -> str:
        """Stable 12-hex-digit hash of all fields, for naming cached data sets."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


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


# ----------------------------------------------------------------------------------------------
# particle population


@dataclass
class _Population:
    """Mutable state of all particles on the sample canvas (sample coordinates in nm)."""

    ids: np.ndarray  # (N,) int64
    pos: np.ndarray  # (N, 2) anchor position (y, x)
    disp: np.ndarray  # (N, 2) jitter displacement from the anchor
    radius: np.ndarray  # (N,) volume-equivalent radius
    kfac: np.ndarray  # (N,) orientation (diffraction) factor
    twin: np.ndarray  # (N, 3) twin domain: factor ratio, boundary angle, boundary offset / R
    relax: np.ndarray  # (N,) 1 = shape as made, 0 = rounded off
    relaxes: np.ndarray  # (N,) bool, whether the shape rounds off over time
    # per particle (L, 6): oy, ox, rho, log_aspect, theta, orientation multiplier; lengths in R
    lobes: list[np.ndarray]

    def keep(self, sel: np.ndarray) -> None:
        idx = np.flatnonzero(sel)
        self.ids, self.pos, self.disp = self.ids[idx], self.pos[idx], self.disp[idx]
        self.radius, self.kfac, self.twin = self.radius[idx], self.kfac[idx], self.twin[idx]
        self.relax, self.relaxes = self.relax[idx], self.relaxes[idx]
        self.lobes = [self.lobes[i] for i in idx]


def _current_lobes(lobes0: np.ndarray, f: float) -> np.ndarray:
    """Lobes at relaxation state f: offsets and ellipticity shrink, lobes swell to the full sphere.

    The lobes' orientation multipliers tend to one as well (the merged crystal recrystallises).
    """
    if f >= 1.0:
        return lobes0
    out = lobes0.copy()
    out[:, 0:2] *= f
    out[:, 2] = np.cbrt(lobes0[:, 2] ** 3 * f + (1.0 - f))
    out[:, 3] *= f
    out[:, 5] = lobes0[:, 5] ** f
    return out


def _extent(lobes: np.ndarray) -> float:
    """Bounding-circle radius of a lobe set, in units of R."""
    reach = np.hypot(lobes[:, 0], lobes[:, 1]) + lobes[:, 2] * np.exp(np.abs(lobes[:, 3]) / 2)
    return float(reach.max())


def _coalesced_lobes(rng: np.random.Generator, n_lobes: int, kmult: np.ndarray) -> np.ndarray:
    """Lobes of a recently coalesced particle: 2-3 overlapping spheres, volume-centred."""
    w = rng.dirichlet(np.full(n_lobes, 3.0))
    rho = np.cbrt(w)
    centres = np.zeros((n_lobes, 2))
    for k in range(1, n_lobes):
        j = int(rng.integers(0, k))
        ang = rng.uniform(0, 2 * np.pi)
        dist = (rho[j] + rho[k]) * rng.uniform(0.55, 0.85)
        centres[k] = centres[j] + dist * np.array([np.sin(ang), np.cos(ang)])
    centres -= (w[:, None] * centres).sum(axis=0)
    la = np.abs(rng.normal(0, 0.05, n_lobes))
    theta = rng.uniform(0, np.pi, n_lobes)
    return np.column_stack([centres, rho, la, theta, kmult])


def _mean_area_nm2(cfg: SyntheticConfig) -> float:
    """Expected projected area of one particle drawn from the size mixture (sphere estimate)."""
    d_med, s = cfg.median_diameter_nm, cfg.size_sigma
    lo, hi = cfg.small_diameter_nm
    f0, f1 = cfg.large_factor
    e_main = d_med**2 * math.exp(2 * s * s)
    e_small = (hi**3 - lo**3) / (3 * (hi - lo)) if hi > lo else lo**2
    e_large = d_med**2 * ((f1**3 - f0**3) / (3 * (f1 - f0)) if f1 > f0 else f0**2)
    w_main = 1 - cfg.small_fraction - cfg.large_fraction
    return math.pi / 4 * (w_main * e_main + cfg.small_fraction * e_small + cfg.large_fraction * e_large)


Box = tuple[float, float, float, float]  # y0, y1, x0, x1 in nm


def _boxes_area(boxes: list[Box]) -> float:
    return float(sum((b[1] - b[0]) * (b[3] - b[2]) for b in boxes))


def _uniform_in_boxes(rng: np.random.Generator, boxes: list[Box], n: int) -> np.ndarray:
    """(n, 2) points uniform over the union of disjoint boxes."""
    areas = np.array([(b[1] - b[0]) * (b[3] - b[2]) for b in boxes])
    which = rng.choice(len(boxes), size=n, p=areas / areas.sum())
    b = np.asarray(boxes)[which]
    return np.column_stack([rng.uniform(b[:, 0], b[:, 1]), rng.uniform(b[:, 2], b[:, 3])])


def _place(rng: np.random.Generator, ext: np.ndarray, boxes: list[Box], gap: float,
           fixed_pos: np.ndarray | None = None, fixed_ext: np.ndarray | None = None,
           rounds: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Random sequential placement of discs of radius ext (largest first) with a minimum gap.

    Centres fall in the union of boxes and avoid the discs already fixed (fixed_pos, fixed_ext).
    Returns (placed indices into ext, (n, 2) positions); discs that found no room are dropped.
    """
    pending = np.argsort(-ext, kind="stable")
    placed_idx: list[np.ndarray] = []
    placed_pos: list[np.ndarray] = []
    acc_pos = np.zeros((0, 2)) if fixed_pos is None else np.asarray(fixed_pos, dtype=float)
    acc_ext = np.zeros(0) if fixed_ext is None else np.asarray(fixed_ext, dtype=float)
    for _ in range(rounds):
        if pending.size == 0:
            break
        cand = _uniform_in_boxes(rng, boxes, pending.size)
        e = ext[pending]
        ok = np.ones(pending.size, dtype=bool)
        if acc_ext.size:
            reach = float(e.max() + acc_ext.max() + gap)
            pairs = cKDTree(cand).sparse_distance_matrix(
                cKDTree(acc_pos), reach, output_type="ndarray")
            if pairs.size:
                bad = pairs["v"] < e[pairs["i"]] + acc_ext[pairs["j"]] + gap
                ok[pairs["i"][bad]] = False
        sub = np.flatnonzero(ok)
        if sub.size > 1:
            pr = cKDTree(cand[sub]).query_pairs(float(2 * e[sub].max() + gap), output_type="ndarray")
            if pr.size:
                a, b = pr.min(axis=1), pr.max(axis=1)
                d = np.linalg.norm(cand[sub[a]] - cand[sub[b]], axis=1)
                clash = d < e[sub[a]] + e[sub[b]] + gap
                a, b = a[clash], b[clash]
                # pending is in descending size order, so the lower index keeps priority
                order = np.lexsort((b, a))
                keep = np.ones(sub.size, dtype=bool)
                for ai, bi in zip(a[order].tolist(), b[order].tolist(), strict=True):
                    if keep[ai]:
                        keep[bi] = False
                sub = sub[keep]
        ok[:] = False
        ok[sub] = True
        placed_idx.append(pending[ok])
        placed_pos.append(cand[ok])
        acc_ext = np.concatenate([acc_ext, ext[pending[ok]]])
        acc_pos = np.concatenate([acc_pos, cand[ok]])
        pending = pending[~ok]
    if not placed_idx:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 2))
    return np.concatenate(placed_idx), np.concatenate(placed_pos)


def _orientation_factors(cfg: SyntheticConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    """Diffraction-contrast factors: near one, or 2-3.5 for crystals near a Bragg orientation."""
    k = np.clip(1 + cfg.orientation_spread * rng.standard_normal(n), 0.5, None)
    bragg = rng.random(n) < cfg.bragg_fraction
    k[bragg] = rng.uniform(*cfg.bragg_factor, size=int(bragg.sum()))
    return k


def _sample_population(cfg: SyntheticConfig, rng: np.random.Generator, boxes: list[Box],
                       first_id: int = 1, avoid: _Population | None = None) -> _Population:
    """Draw sizes, shapes and orientations and place particles in the boxes, clear of avoid."""
    area = _boxes_area(boxes)
    n = int(rng.poisson(cfg.coverage * area / _mean_area_nm2(cfg))) if cfg.coverage > 0 else 0
    w_main = max(0.0, 1 - cfg.small_fraction - cfg.large_fraction)
    kind = rng.choice(3, size=n, p=[w_main, cfg.small_fraction, cfg.large_fraction])
    diam = np.exp(np.log(cfg.median_diameter_nm) + cfg.size_sigma * rng.standard_normal(n))
    diam[kind == 1] = rng.uniform(*cfg.small_diameter_nm, size=int((kind == 1).sum()))
    diam[kind == 2] = cfg.median_diameter_nm * rng.uniform(*cfg.large_factor, size=int((kind == 2).sum()))
    radius = diam / 2
    relax = np.ones(n)
    relaxes = kind == 2
    k = _orientation_factors(cfg, rng, n)
    # multiply twinned particles: one domain diffracts differently across a straight boundary
    twin = np.column_stack([np.ones(n), rng.uniform(0, np.pi, n), rng.uniform(-0.5, 0.5, n)])
    twinned = rng.random(n) < cfg.twin_fraction
    twin[twinned, 0] = _orientation_factors(cfg, rng, int(twinned.sum())) / k[twinned]
    lobes: list[np.ndarray] = []
    for i in range(n):
        if kind[i] == 2:
            style = rng.random()
            if style < 0.4:  # elongated, coarsened
                lob = np.array([[0.0, 0.0, 1.0, rng.uniform(0.3, 0.7), rng.uniform(0, np.pi), 1.0]])
            else:  # coalesced from 2-3 particles of different orientation, partly rounded off
                nl = 2 if style < 0.8 else 3
                lob = _coalesced_lobes(rng, nl, _orientation_factors(cfg, rng, nl) / k[i])
            relax[i] = rng.uniform(0.4, 1.0)
        else:
            lob = np.array([[0.0, 0.0, 1.0, abs(rng.normal(0, cfg.ellipticity)), rng.uniform(0, np.pi), 1.0]])
        lobes.append(lob)
    ext = np.array([_extent(_current_lobes(lobes[i], relax[i])) * radius[i] for i in range(n)])
    fixed_pos = fixed_ext = None
    if avoid is not None and avoid.ids.size:
        fixed_pos = avoid.pos
        fixed_ext = np.array([_extent(_current_lobes(lob, f)) * r
                              for lob, f, r in zip(avoid.lobes, avoid.relax, avoid.radius, strict=True)])
    idx, pos = _place(rng, ext, boxes, cfg.min_gap_nm, fixed_pos, fixed_ext)
    idx_sorted = np.argsort(idx, kind="stable")  # ids follow the draw order, not the placement
    idx, pos = idx[idx_sorted], pos[idx_sorted]
    return _Population(
        ids=np.arange(first_id, first_id + idx.size, dtype=np.int64),
        pos=pos,
        disp=np.zeros_like(pos),
        radius=radius[idx],
        kfac=k[idx],
        twin=twin[idx],
        relax=relax[idx],
        relaxes=relaxes[idx],
        lobes=[lobes[i] for i in idx],
    )


def _box_difference(outer: Box, inner: Box) -> list[Box]:
    """Disjoint boxes covering outer minus inner (inner lies within outer)."""
    oy0, oy1, ox0, ox1 = outer
    iy0, iy1, ix0, ix1 = inner
    parts = [(oy0, iy0, ox0, ox1), (iy1, oy1, ox0, ox1), (iy0, iy1, ox0, ix0), (iy0, iy1, ix1, ox1)]
    return [b for b in parts if b[1] - b[0] > 1e-9 and b[3] - b[2] > 1e-9]


def _concat(a: _Population, b: _Population) -> _Population:
    """Join two populations (b's ids follow a's)."""
    return _Population(
        ids=np.concatenate([a.ids, b.ids]), pos=np.concatenate([a.pos, b.pos]),
        disp=np.concatenate([a.disp, b.disp]), radius=np.concatenate([a.radius, b.radius]),
        kfac=np.concatenate([a.kfac, b.kfac]), twin=np.concatenate([a.twin, b.twin]),
        relax=np.concatenate([a.relax, b.relax]), relaxes=np.concatenate([a.relaxes, b.relaxes]),
        lobes=a.lobes + b.lobes,
    )


# ----------------------------------------------------------------------------------------------
# dynamics


def _advance(pop: _Population, cfg: SyntheticConfig, dt: float, rate: float,
             rng: np.random.Generator) -> None:
    """Move the population on by dt seconds: jitter, Ostwald ripening, rounding off, coalescence."""
    n = pop.ids.size
    if n == 0:
        return
    if cfg.jitter_nm > 0:
        # Ornstein-Uhlenbeck: particles wander about their site without diffusing away
        phi = math.exp(-dt / cfg.jitter_time_s)
        pop.disp = pop.disp * phi + cfg.jitter_nm * math.sqrt(1 - phi * phi) * rng.standard_normal((n, 2))
    kin = cfg.ripening_k_nm3_per_s * rate
    if kin > 0:
        # LSW-like law in volume form, d(R^3)/dt = 3K (R/Rc - 1) with Rc the mean radius: it
        # conserves total volume exactly and makes small particles vanish at a finite rate
        vol = pop.radius**3
        alive = np.ones(n, dtype=bool)
        n_sub = int(np.clip(math.ceil(3 * kin * dt / (0.02 * vol.mean())), 1, 400))
        h = dt / n_sub
        for _ in range(n_sub):
            r = np.cbrt(vol[alive])
            vol[alive] += 3 * kin * h * (r / r.mean() - 1)
            alive &= vol > _MIN_RADIUS_NM**3
            if alive.sum() < 2:
                break
        pop.radius = np.cbrt(np.clip(vol, 0, None))
        pop.keep(alive)
    if np.any(pop.relaxes):
        pop.relax[pop.relaxes] *= math.exp(-dt * rate / cfg.coalescence_relax_s)
        # once practically round, a merged particle becomes one sphere again (bounded lobe lists)
        for i in np.flatnonzero(pop.relaxes & (pop.relax < 0.02)).tolist():
            pop.lobes[i] = np.array([[0.0, 0.0, 1.0, 0.0, pop.lobes[i][0, 4], 1.0]])
            pop.relax[i] = 1.0
            pop.relaxes[i] = False
    if cfg.coalescence and pop.ids.size > 1:
        _coalesce(pop)


def _coalesce(pop: _Population) -> None:
    """Merge particles whose volume-equivalent spheres touch into one (the larger one's id)."""
    centre = pop.pos + pop.disp
    rmax = float(pop.radius.max())
    pairs = cKDTree(centre).query_pairs(2 * rmax, output_type="ndarray")
    if pairs.size == 0:
        return
    d = np.linalg.norm(centre[pairs[:, 0]] - centre[pairs[:, 1]], axis=1)
    touch = d < pop.radius[pairs[:, 0]] + pop.radius[pairs[:, 1]]
    if not touch.any():
        return
    pairs, d = pairs[touch], d[touch]
    used = np.zeros(pop.ids.size, dtype=bool)
    drop = np.zeros(pop.ids.size, dtype=bool)
    for (i, j) in pairs[np.argsort(d)].tolist():
        if used[i] or used[j]:
            continue
        used[i] = used[j] = True
        big, small = (i, j) if pop.radius[i] >= pop.radius[j] else (j, i)
        vb, vs = pop.radius[big] ** 3, pop.radius[small] ** 3
        r_new = float(np.cbrt(vb + vs))
        c_new = (vb * centre[big] + vs * centre[small]) / (vb + vs)
        parts = []
        for p in (big, small):
            lob = _current_lobes(pop.lobes[p], float(pop.relax[p])).copy()
            lob[:, 0:2] = (centre[p] + lob[:, 0:2] * pop.radius[p] - c_new) / r_new
            lob[:, 2] *= pop.radius[p] / r_new
            lob[:, 5] *= pop.kfac[p]
            parts.append(lob)
        lob = np.concatenate(parts)
        # partly rounded lobes overlap, so their cubes sum to more than one; renormalise volume
        lob[:, 2] /= np.cbrt((lob[:, 2] ** 3).sum())
        pop.lobes[big] = lob
        pop.radius[big] = r_new
        pop.pos[big] = (vb * pop.pos[big] + vs * pop.pos[small]) / (vb + vs)
        pop.disp[big] = c_new - pop.pos[big]
        pop.kfac[big] = (vb * pop.kfac[big] + vs * pop.kfac[small]) / (vb + vs)
        pop.lobes[big][:, 5] /= pop.kfac[big]
        pop.relax[big] = 1.0
        pop.relaxes[big] = True
        drop[small] = True
    pop.keep(~drop)


# ----------------------------------------------------------------------------------------------
# static fields of one experiment (support, illumination, camera)


@dataclass
class _Statics:
    support_spec: np.ndarray | None  # rfft2 spectrum of (support transmission - 1)
    illumination: np.ndarray | None  # (H, W) float32 relative beam intensity
    fixed_pattern: np.ndarray | None  # (H, W) float32 camera gain


def _make_statics(cfg: SyntheticConfig, rng: np.random.Generator) -> _Statics:
    """Support texture spectrum, illumination and fixed pattern, shared by a sequence's frames."""
    h, w = cfg.height, cfg.width
    spec = None
    if cfg.support_texture and (cfg.speckle_amplitude > 0 or cfg.support_thickness_amplitude > 0):
        ky = sfft.fftfreq(h).astype(np.float32)[:, None]
        kx = sfft.rfftfreq(w).astype(np.float32)[None, :]
        k = np.sqrt(ky * ky + kx * kx)
        # amorphous phase contrast: a ring in the power spectrum near 1/speckle_scale
        k0 = cfg.pixel_size_nm / cfg.speckle_scale_nm
        speckle = np.exp(np.float32(-0.5) * ((k - np.float32(k0)) / np.float32(0.45 * k0)) ** 2)
        sig_l = cfg.support_thickness_scale_nm / cfg.pixel_size_nm
        thick = np.exp(np.float32(-2 * (np.pi * sig_l) ** 2) * (k * k))
        noise = (rng.standard_normal((h, kx.size), dtype=np.float32)
                 + 1j * rng.standard_normal((h, kx.size), dtype=np.float32)).astype(np.complex64)
        noise[0, 0] = 0  # keep the mean support transmission at exactly one
        # rms of the filtered field on an unbounded frame, (2 / HW) * integral of W^2 over k, so
        # the texture amplitude does not depend on the frame size (small frames lack long waves)
        kf = np.linspace(-0.5, 0.5, 256, endpoint=False, dtype=np.float32)
        kf = np.sqrt(kf[:, None] ** 2 + kf[None, :] ** 2)
        ring_int = float(np.mean(np.exp(-(((kf - k0) / (0.45 * k0)) ** 2))))
        low_int = 1 / (4 * np.pi * sig_l**2)
        spec = np.zeros_like(noise)
        for filt, amp, integral in ((speckle, cfg.speckle_amplitude, ring_int),
                                    (thick, cfg.support_thickness_amplitude, low_int)):
            if amp > 0:
                spec += noise * (filt * np.float32(amp / math.sqrt(2 * integral / (h * w))))
    illum = None
    if cfg.illumination and cfg.illumination_amplitude > 0:
        order = 3
        yy = np.linspace(0, 1, h)[:, None]
        xx = np.linspace(0, 1, w)[:, None]
        by = np.cos(np.pi * np.arange(order)[None, :] * (yy + rng.uniform(0, 1, order)[None, :]))
        bx = np.cos(np.pi * np.arange(order)[None, :] * (xx + rng.uniform(0, 1, order)[None, :]))
        coef = rng.standard_normal((order, order)) / (1 + np.add.outer(np.arange(order), np.arange(order)))
        coef[0, 0] = 0
        # a smooth separable field: (H, 3) @ (3, 3) @ (3, W), cheap at any frame size
        left = (by @ coef).astype(np.float32)
        fld = left @ bx.T.astype(np.float32)
        scale = float(np.abs(fld).max())
        fld *= np.float32(cfg.illumination_amplitude / (scale if scale > 0 else 1))
        fld += np.float32(1)
        illum = fld
    fp = None
    if cfg.fixed_pattern and cfg.fixed_pattern_amplitude > 0:
        a = cfg.fixed_pattern_amplitude
        fp = (1 + a * rng.standard_normal((h, 1)) + a * rng.standard_normal((1, w))).astype(np.float32)
    return _Statics(spec, illum, fp)


def _support_field(st: _Statics, shape: tuple[int, int], shift_px: np.ndarray) -> np.ndarray | None:
    """Support transmission minus one, shifted by shift_px (y, x) with a Fourier phase ramp."""
    if st.support_spec is None:
        return None
    h, w = shape
    spec = st.support_spec
    if np.any(shift_px != 0):
        ry = np.exp(-2j * np.pi * sfft.fftfreq(h) * shift_px[0]).astype(np.complex64)
        rx = np.exp(-2j * np.pi * sfft.rfftfreq(w) * shift_px[1]).astype(np.complex64)
        spec = spec * ry[:, None] * rx[None, :]
    return sfft.irfft2(spec, s=(h, w), workers=1).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------
# rendering


def _render(pop: _Population, st: _Statics, cfg: SyntheticConfig, offset_nm: np.ndarray,
            noise_rng: np.random.Generator, time_s: float, index: int) -> Frame:
    """Render the population seen through a frame whose origin sits at offset_nm on the sample."""
    h, w = cfg.height, cfg.width
    ps = cfg.pixel_size_nm
    dark = np.zeros((h, w), dtype=np.float32)
    labels = np.zeros((h, w), dtype=np.int32)
    centre_px = (pop.pos + pop.disp - offset_nm) / ps
    rendered: list[tuple[int, int, int, int, int, float, float, float, int]] = []
    for i in np.argsort(-pop.radius, kind="stable").tolist():
        r_nm = float(pop.radius[i])
        lob = _current_lobes(pop.lobes[i], float(pop.relax[i]))
        r_px = r_nm / ps
        cy, cx = centre_px[i]
        reach = _extent(lob) * r_px + 1
        y0, y1 = max(int(math.floor(cy - reach)), 0), min(int(math.ceil(cy + reach)) + 1, h)
        x0, x1 = max(int(math.floor(cx - reach)), 0), min(int(math.ceil(cx + reach)) + 1, w)
        if y0 >= y1 or x0 >= x1:
            continue
        yy = np.arange(y0, y1, dtype=np.float32)[:, None]
        xx = np.arange(x0, x1, dtype=np.float32)[None, :]
        # path = orientation factor x projected thickness (nm), the exponent of the darkening
        path = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
        inside = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        k = float(pop.kfac[i]) if cfg.diffraction_contrast else 1.0
        for oy, ox, rho, la, th, km in lob.tolist():
            a = rho * r_px * math.exp(la / 2)
            b = rho * r_px * math.exp(-la / 2)
            dy, dx = yy - (cy + oy * r_px), xx - (cx + ox * r_px)
            cs, sn = math.cos(th), math.sin(th)
            q = ((dy * cs + dx * sn) / a) ** 2 + ((dx * cs - dy * sn) / b) ** 2
            ins = q <= 1
            inside |= ins
            kl = k * km if cfg.diffraction_contrast else 1.0
            # ellipsoid with out-of-plane semi-axis rho * R * height_ratio; a flat disc of the
            # sphere's mean projected thickness 4/3 rho R when thickness contrast is off
            if cfg.thickness_contrast:
                t = (2 * rho * r_nm * cfg.height_ratio * kl) * np.sqrt(np.clip(1 - q, 0, None))
            else:
                t = ins * np.float32(4 / 3 * rho * r_nm * cfg.height_ratio * kl)
            np.maximum(path, t, out=path)
        if not inside.any():
            continue
        ratio, tang, toff = pop.twin[i]
        if cfg.diffraction_contrast and ratio != 1.0:
            # second twin domain beyond a straight boundary, blended over about one pixel
            side = (yy - cy) * math.sin(tang) + (xx - cx) * math.cos(tang) - toff * r_px
            path *= 1 + (ratio - 1) * np.clip(side + 0.5, 0, 1)
        tau = path / np.float32(cfg.mean_free_path_nm)
        peak = 1 - math.exp(-float(tau.max()))
        d_box = (1 - np.exp(-tau)).astype(np.float32)
        d_box[~inside] = 0
        np.maximum(dark[y0:y1, x0:x1], d_box, out=dark[y0:y1, x0:x1])
        lab = labels[y0:y1, x0:x1]
        lab[inside & (lab == 0)] = pop.ids[i]
        rendered.append((int(pop.ids[i]), y0, y1, x0, x1, r_nm, peak, k, lob.shape[0]))

    blurred = dark
    fringe = None
    if cfg.psf_blur and cfg.psf_sigma_nm > 0:
        blurred = ndimage.gaussian_filter(dark, cfg.psf_sigma_nm / ps, mode="nearest", truncate=3.5)
    if cfg.fresnel_fringe and cfg.particles == "dark" and cfg.fresnel_amplitude > 0 and cfg.fresnel_width_nm > 0:
        sig_wide = (cfg.psf_sigma_nm if cfg.psf_blur else 0) / ps + cfg.fresnel_width_nm / ps
        wide = ndimage.gaussian_filter(dark, sig_wide, mode="nearest", truncate=3.0)
        fringe = cfg.fresnel_amplitude * (wide - blurred)

    mask = labels > 0
    rows = []
    for pid, y0, y1, x0, x1, r_nm, peak, k, nl in rendered:
        region = labels[y0:y1, x0:x1] == pid
        area = int(region.sum())
        if area == 0:
            continue
        ry, rx = np.nonzero(region)
        touches = bool((y0 == 0 and ry.min() == 0) or (y1 == h and ry.max() == y1 - y0 - 1)
                       or (x0 == 0 and rx.min() == 0) or (x1 == w and rx.max() == x1 - x0 - 1))
        d_px = math.sqrt(4 * area / math.pi)
        rows.append((pid, y0 + ry.mean(), x0 + rx.mean(), area, d_px, d_px * ps, r_nm, peak,
                     float(blurred[y0:y1, x0:x1][region].mean()), k, nl, touches))
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table = table.astype({"id": "int64", "area_px": "int64", "n_lobes": "int64", "touches_border": "bool"})
    table = table.sort_values("id", ignore_index=True)

    support = _support_field(st, (h, w), -offset_nm / ps)
    if cfg.particles == "dark":
        signal = 1 - blurred
        if support is not None:
            signal = signal * (1 + support)
        if fringe is not None:
            signal = signal + fringe
    else:
        # HAADF-like: signal grows with scattering; no phase contrast, so weaker texture, no fringe
        bg = np.float32(cfg.bright_background)
        signal = bg * (1 + 0.5 * support) if support is not None else np.full((h, w), bg, np.float32)
        signal = signal + blurred
    expected = signal.astype(np.float32, copy=False)
    if st.illumination is not None:
        expected = expected * st.illumination
    if st.fixed_pattern is not None:
        expected = expected * st.fixed_pattern
    dose = cfg.dose_e_per_px if cfg.dose_e_per_px > 0 else 1.0
    expected = np.clip(expected * np.float32(dose), 0, None)
    if cfg.shot_noise:
        image = noise_rng.poisson(expected).astype(np.float32)
    else:
        image = expected.astype(np.float32, copy=False)
    if cfg.output_dtype == "uint16":
        image = np.clip(np.rint(image), 0, 65535).astype(np.uint16)
    return Frame(image=image, mask=mask, labels=labels, particles=table, pixel_size_nm=ps,
                 time_s=float(time_s), frame_index=int(index),
                 metadata={"config_key": cfg.cache_key(), "offset_nm": tuple(float(v) for v in offset_nm)})


# ----------------------------------------------------------------------------------------------
# public API


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"synthetic: seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def iter_sequence(config: SyntheticConfig, n_frames: int, seed: int, frame_interval_s: float = 1 / 400,
                  ripening_rate: float = 1.0) -> Iterator[Frame]:
    """Yield n_frames consecutive frames of one experiment (shared, drifting, coarsening particles).

    ripening_rate multiplies the kinetics (ripening and rounding off) like a time-acceleration
    factor, so short test sequences can show visible coarsening; drift and jitter are not sped up.
    """
    seed = _check_seed(seed)
    if not isinstance(config, SyntheticConfig):
        raise TypeError(f"synthetic: config must be a SyntheticConfig, got {type(config).__name__}")
    if n_frames < 1:
        raise ValueError(f"synthetic: n_frames must be >= 1, got {n_frames!r}")
    if not frame_interval_s > 0:
        raise ValueError(f"synthetic: frame_interval_s must be > 0, got {frame_interval_s!r}")
    if not ripening_rate >= 0:
        raise ValueError(f"synthetic: ripening_rate must be >= 0, got {ripening_rate!r}")
    cfg = config
    rng_pop = np.random.default_rng([seed, 1])
    rng_static = np.random.default_rng([seed, 2])
    rng_dyn = np.random.default_rng([seed, 3])
    ang = rng_dyn.uniform(0, 2 * np.pi)
    velocity = cfg.drift_nm_per_s * np.array([math.sin(ang), math.cos(ang)])
    duration = (n_frames - 1) * frame_interval_s
    travel = velocity * duration
    fh, fw = cfg.height * cfg.pixel_size_nm, cfg.width * cfg.pixel_size_nm
    margin = (cfg.median_diameter_nm * max(cfg.large_factor) * 0.9 + cfg.min_gap_nm
              + 4 * cfg.jitter_nm + 1.0)
    # the particles around frame 0 come from their own stream and are placed first, so frame 0
    # depends only on (config, seed); the strip the drift uncovers later is filled around them
    base = (-margin, fh + margin, -margin, fw + margin)
    pop = _sample_population(cfg, rng_pop, [base])
    full = (min(0.0, travel[0]) - margin, max(fh, fh + travel[0]) + margin,
            min(0.0, travel[1]) - margin, max(fw, fw + travel[1]) + margin)
    extension = _box_difference(full, base)
    if extension:
        more = _sample_population(cfg, np.random.default_rng([seed, 5]), extension,
                                  first_id=int(pop.ids.max(initial=0)) + 1, avoid=pop)
        pop = _concat(pop, more)
    statics = _make_statics(cfg, rng_static)
    for i in range(n_frames):
        if i > 0:
            _advance(pop, cfg, frame_interval_s, ripening_rate, rng_dyn)
        t = i * frame_interval_s
        yield _render(pop, statics, cfg, velocity * t, np.random.default_rng([seed, 4, i]), t, i)


def generate_sequence(config: SyntheticConfig, n_frames: int, seed: int, frame_interval_s: float = 1 / 400,
                      ripening_rate: float = 1.0) -> list[Frame]:
    """List of n_frames consecutive frames of one experiment; see iter_sequence."""
    return list(iter_sequence(config, n_frames, seed, frame_interval_s, ripening_rate))


def generate_frame(config: SyntheticConfig, seed: int) -> Frame:
    """One frame for (config, seed); identical to the first frame of a one-frame sequence."""
    return next(iter_sequence(config, 1, seed))


def true_coarsening_curves(frames: list[Frame], exclude_border: bool = True) -> pd.DataFrame:
    """True coarsening curves from the truth tables, one row per frame.

    count and number_density_per_um2 include every particle with a pixel in the frame;
    mean_diameter_nm averages equivalent diameters of the particles not touching the border
    (all of them when exclude_border is False). Columns: frame, time_s, count,
    number_density_per_um2, mean_diameter_nm.
    """
    rows = []
    for fr in frames:
        tab = fr.particles
        h, w = fr.labels.shape
        area_um2 = h * w * fr.pixel_size_nm**2 / 1e6
        sizes = tab.loc[~tab["touches_border"], "diameter_nm"] if exclude_border else tab["diameter_nm"]
        rows.append({
            "frame": fr.frame_index,
            "time_s": fr.time_s,
            "count": len(tab),
            "number_density_per_um2": len(tab) / area_um2,
            "mean_diameter_nm": float(sizes.mean()) if len(sizes) else float("nan"),
        })
    return pd.DataFrame(rows, columns=["frame", "time_s", "count", "number_density_per_um2", "mean_diameter_nm"])


def experiment_configs(n_experiments: int, seed: int, base: SyntheticConfig | None = None) -> list[SyntheticConfig]:
    """n_experiments configs that differ modestly in magnification, dose and particle density."""
    seed = _check_seed(seed)
    if n_experiments < 0:
        raise ValueError(f"synthetic: n_experiments must be >= 0, got {n_experiments!r}")
    base = base or SyntheticConfig()
    rng = np.random.default_rng([seed, 99])
    out = []
    for _ in range(n_experiments):
        out.append(base.replace(
            pixel_size_nm=round(float(base.pixel_size_nm * rng.uniform(0.16 / 0.18, 0.20 / 0.18)), 4),
            dose_e_per_px=round(float(base.dose_e_per_px * math.exp(rng.uniform(-0.5, 0.5))), 3),
            coverage=round(float(min(0.45, base.coverage * rng.uniform(0.75, 1.25))), 4),
            median_diameter_nm=round(float(base.median_diameter_nm * rng.uniform(0.9, 1.1)), 3),
            illumination_amplitude=round(float(base.illumination_amplitude * rng.uniform(0.5, 1.5)), 4),
        ))
    return out


def heldout_config(base: SyntheticConfig | None = None) -> SyntheticConfig:
    """A clearly different acquisition for generalisation tests: 0.25 nm/px at half the dose."""
    base = base or SyntheticConfig()
    return base.replace(pixel_size_nm=round(base.pixel_size_nm * 0.25 / 0.18, 4),
                        dose_e_per_px=base.dose_e_per_px / 2)
