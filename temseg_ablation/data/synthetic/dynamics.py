"""Dynamics of a sequence: jitter, Ostwald ripening, rounding off and coalescence."""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from .config import _MIN_RADIUS_NM, SyntheticConfig
from .population import _current_lobes, _Population

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
