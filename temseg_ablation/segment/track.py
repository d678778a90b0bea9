"""Link particles through a frame sequence and turn the tables into coarsening curves.

Linking between two consecutive frames is a minimum-cost assignment on centroid distance,
restricted to pairs closer than ``max_disp_px``: among the assignments with the most links, the
one with the smallest total distance wins. Particles left without a partner end their track
(dissolved, coalesced or left the field of view); new ones start a track. The problem is split
into the connected groups of candidate pairs, so the cost stays near-linear in the number of
particles. An optional global shift per frame pair (stage drift) is estimated first by voting
over all candidate displacement vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = [
    "COARSENING_COLUMNS",
    "coarsening_curves",
    "estimate_shift",
    "link_frames",
    "link_particles",
]

COARSENING_COLUMNS = [
    "frame",
    "time_s",
    "count",
    "count_interior",
    "number_density_per_um2",
    "mean_diameter_nm",
    "median_diameter_nm",
    "coalescence_events",
]


def _pairs(a: np.ndarray, b: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) with |a[i] - b[j]| <= radius."""
    if len(a) == 0 or len(b) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    near = cKDTree(a).sparse_distance_matrix(cKDTree(b), radius, output_type="coo_matrix")
    return near.row.astype(np.int64), near.col.astype(np.int64)


def estimate_shift(prev_yx: np.ndarray, next_yx: np.ndarray, search_px: float,
                   bin_px: float = 1.0) -> np.ndarray:
    """Global displacement (dy, dx) px from frame t to t+1: the densest cluster of pair vectors.

    Every pair closer than ``search_px`` votes for its displacement; the true common shift
    collects one vote per particle while chance pairs spread over the search disk. Returns
    (0, 0) when fewer than three pairs agree.
    """
    prev_yx = np.asarray(prev_yx, np.float64).reshape(-1, 2)
    next_yx = np.asarray(next_yx, np.float64).reshape(-1, 2)
    i, j = _pairs(prev_yx, next_yx, search_px)
    if i.size < 3:
        return np.zeros(2)
    d = next_yx[j] - prev_yx[i]
    nb = int(np.ceil(search_px / bin_px))
    edges = np.linspace(-nb * bin_px, nb * bin_px, 2 * nb + 1)
    hist, _, _ = np.histogram2d(d[:, 0], d[:, 1], bins=(edges, edges))
    # a 3 x 3 box sum so that a shift falling on a bin corner is not split four ways
    padded = np.pad(hist, 1)
    votes = sum(padded[a:a + hist.shape[0], b:b + hist.shape[1]] for a in range(3) for b in range(3))
    ky, kx = np.unravel_index(int(np.argmax(votes)), votes.shape)
    centre = np.array([(edges[ky] + edges[ky + 1]) / 2, (edges[kx] + edges[kx + 1]) / 2])
    near = np.max(np.abs(d - centre), axis=1) <= 1.5 * bin_px
    if near.sum() < 3:
        return np.zeros(2)
    return np.median(d[near], axis=0)


def link_frames(prev_yx: np.ndarray, next_yx: np.ndarray, max_disp_px: float,
                shift: Sequence[float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Links between two frames' centroids (N, 2) and (M, 2): index arrays (i_prev, j_next).

    Only pairs with |next - (prev + shift)| <= ``max_disp_px`` can link; each particle links at
    most once (maximum number of links, then minimum total distance).
    """
    a = np.asarray(prev_yx, np.float64).reshape(-1, 2) + np.asarray(shift, np.float64)
    b = np.asarray(next_yx, np.float64).reshape(-1, 2)
    i, j = _pairs(a, b, max_disp_px)
    if i.size == 0:
        return i, j
    n, m = len(a), len(b)
    graph = coo_matrix((np.ones(i.size), (i, n + j)), shape=(n + m, n + m))
    _, comp = connected_components(graph, directed=False)
    dist = np.linalg.norm(a[i] - b[j], axis=1)
    edge_comp = comp[i]
    order = np.argsort(edge_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
    out_i, out_j = [], []
    for group in np.split(order, bounds):
        gi, gj, gd = i[group], j[group], dist[group]
        if group.size == 1:
            out_i.append(gi)
            out_j.append(gj)
            continue
        ui, ri = np.unique(gi, return_inverse=True)
        uj, rj = np.unique(gj, return_inverse=True)
        # a forbidden pair costs more than any full set of allowed ones, so the solver first
        # maximises the number of allowed links, then minimises their total distance
        forbidden = 1.0 + gd.sum() + max_disp_px * (len(ui) + len(uj))
        cost = np.full((len(ui), len(uj)), forbidden)
        cost[ri, rj] = gd
        r, c = linear_sum_assignment(cost)
        ok = cost[r, c] < forbidden
        out_i.append(ui[r[ok]])
        out_j.append(uj[c[ok]])
    return np.concatenate(out_i), np.concatenate(out_j)


def link_particles(
    tables: Sequence[pd.DataFrame],
    max_disp_px: float,
    *,
    drift_search_px: float | None = None,
    y_col: str = "centroid_y_px",
    x_col: str = "centroid_x_px",
    first_track_id: int = 1,
) -> pd.DataFrame:
    """Give every particle of a sequence of per-frame tables a ``track_id`` (int, from ``first_track_id``).

    ``tables[k]`` holds frame k's particles (centroid columns ``y_col``, ``x_col``); a ``frame``
    column is added when missing. With ``drift_search_px`` a global shift is estimated between
    each pair of frames (:func:`estimate_shift`) and removed before linking. Returns the tables
    concatenated in order, with ``track_id`` and ``link_distance_px`` (NaN at a track's start).
    """
    if max_disp_px <= 0:
        raise ValueError(f"max_disp_px must be > 0, got {max_disp_px}")
    out = []
    next_id = int(first_track_id)
    prev_ids = np.empty(0, np.int64)
    prev_yx = np.empty((0, 2))
    for k, table in enumerate(tables):
        t = table.copy()
        if "frame" not in t.columns:
            t.insert(0, "frame", k)
        yx = t[[y_col, x_col]].to_numpy(np.float64)
        ids = np.full(len(t), -1, np.int64)
        dist = np.full(len(t), np.nan)
        if len(prev_yx) and len(yx):
            shift = (estimate_shift(prev_yx, yx, drift_search_px, max(1.0, max_disp_px / 4))
                     if drift_search_px else np.zeros(2))
            i, j = link_frames(prev_yx, yx, max_disp_px, shift)
            ids[j] = prev_ids[i]
            dist[j] = np.linalg.norm(yx[j] - prev_yx[i] - shift, axis=1)
        new = ids < 0
        ids[new] = np.arange(next_id, next_id + int(new.sum()))
        next_id += int(new.sum())
        t["track_id"] = ids
        t["link_distance_px"] = dist
        out.append(t)
        prev_ids, prev_yx = ids, yx
    if not out:
        return pd.DataFrame(columns=["frame", y_col, x_col, "track_id", "link_distance_px"])
    return pd.concat(out, ignore_index=True)


def _merges_per_frame(events: pd.DataFrame | None) -> dict[int, int] | None:
    """Merge events per frame of an events table; None when there is no table (not detected)."""
    if events is None:
        return None
    merges = events.loc[events["event"] == "merge", "frame"].astype(int)
    return {int(f): int(n) for f, n in merges.value_counts().items()}


def coarsening_curves(
    particle_table: pd.DataFrame,
    frame_area_um2: float,
    frame_interval_s: float,
    *,
    frames: Sequence[int] | None = None,
    exclude_border: bool = True,
    diameter_col: str = "equivalent_diameter_nm",
    events: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per-frame coarsening curves (``COARSENING_COLUMNS``) of a sequence's particle table.

    ``count`` and ``number_density_per_um2`` count every particle with a pixel in the frame;
    mean and median diameters (nm) use the particles not touching the border when
    ``exclude_border`` (border particles are truncated). ``time_s = frame * frame_interval_s``;
    ``frames`` lists the frames to report (frames without particles get count 0), by default the
    frames present in the table. ``coalescence_events`` counts the ``events`` rows (``event``,
    ``frame`` in the table's frame numbers; see :mod:`.track_laptrack`) that are merges whose
    merged particle appears in the frame; without ``events`` it is NaN (merges not detected).
    """
    if not frame_area_um2 or not np.isfinite(frame_area_um2) or frame_area_um2 <= 0:
        frame_area_um2 = float("nan")
    tab = particle_table
    if frames is None:
        frames = sorted(int(f) for f in pd.unique(tab["frame"])) if len(tab) else []
    groups = {int(f): g for f, g in tab.groupby("frame", sort=True)} if len(tab) else {}
    merges = _merges_per_frame(events)
    rows = []
    for f in frames:
        g = groups.get(int(f), tab.iloc[:0])
        border = g["touches_border"].astype(bool).to_numpy() if len(g) else np.zeros(0, bool)
        sizes = g[diameter_col].to_numpy(np.float64) if len(g) else np.zeros(0)
        if exclude_border:
            sizes = sizes[~border]
        sizes = sizes[np.isfinite(sizes)]
        rows.append({
            "frame": int(f),
            "time_s": int(f) * float(frame_interval_s),
            "count": int(len(g)),
            "count_interior": int((~border).sum()),
            "number_density_per_um2": len(g) / frame_area_um2,
            "mean_diameter_nm": float(sizes.mean()) if sizes.size else float("nan"),
            "median_diameter_nm": float(np.median(sizes)) if sizes.size else float("nan"),
            "coalescence_events": merges.get(int(f), 0) if merges is not None else float("nan"),
        })
    return pd.DataFrame(rows, columns=COARSENING_COLUMNS)
