"""Particle population: sizes, shapes, orientations and non-overlapping placement."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .config import SyntheticConfig

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
