"""The laptrack tracking backend (``--tracker laptrack``): gap closing, merge and split events.

laptrack (Jaqaman et al. 2008, Nat. Methods) links frame pairs, then joins the resulting track
segments in a second assignment: a segment that ends may continue after up to ``gap_frames``
missing frames (gap closing), run into a particle of the next frame that continues another
track (a merge: coalescence) or start at a particle of the previous frame that continues
another track (a split). Every cost is a squared centroid distance and every cutoff is
``max_disp_px ** 2``. The alternative costs (end a track, start one, refuse a merge) are fixed at
the cutoff instead of laptrack's percentile estimate from the data, so any candidate within
``max_disp_px`` is taken, as in :func:`.track.link_frames`, whatever else is in the sequence.

Tracks are cut at every merge and split: the merged particle starts a new track whose parents
are the tracks that ran into it, which is what :data:`EVENT_COLUMNS` records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .track import estimate_shift

__all__ = ["EVENT_COLUMNS", "LAPTRACK_MISSING", "link_particles_laptrack", "require_laptrack"]

LAPTRACK_MISSING = "--tracker laptrack needs laptrack: pip install 'temseg-ablation[tracking]'"
#: Events table of :func:`link_particles_laptrack`: one row per merge or split. ``frame``: the
#: frame (the tables' ``frame`` value) where the new particle(s) appear; ``parent_frame``: the
#: frame before it, which holds the parent particle(s). Ids are ``;``-joined ints.
EVENT_COLUMNS = ["event", "frame", "parent_frame", "parent_track_ids", "child_track_ids",
                 "parent_particle_ids", "child_particle_ids"]


def require_laptrack() -> Any:
    """The ``laptrack.LapTrack`` class; ``ImportError`` (:data:`LAPTRACK_MISSING`) without it."""
    try:
        from laptrack import LapTrack
    except ImportError:
        raise ImportError(LAPTRACK_MISSING) from None
    return LapTrack


def _tracker(max_disp_px: float, gap_frames: int) -> Any:
    lap_track = require_laptrack()
    # laptrack keeps candidates with cost < cutoff; one ulp more keeps a move of exactly
    # max_disp_px, as link_frames does
    cutoff = float(np.nextafter(float(max_disp_px) ** 2, np.inf))
    return lap_track(
        cutoff=cutoff, track_start_cost=cutoff, track_end_cost=cutoff,
        # laptrack counts the frame step of the join: a step of gap_frames + 1 skips gap_frames
        gap_closing_cutoff=cutoff if gap_frames > 0 else False,
        gap_closing_max_frame_count=int(gap_frames) + 1,
        merging_cutoff=cutoff, splitting_cutoff=cutoff,
        segment_start_cost=cutoff, segment_end_cost=cutoff,
        no_merging_cost=cutoff, no_splitting_cost=cutoff)


def _drift_corrected(yx: list[np.ndarray], drift_search_px: float | None,
                     max_disp_px: float) -> list[np.ndarray]:
    """Centroids with the accumulated global shift of each frame removed (frame 0 as reference)."""
    if not drift_search_px:
        return yx
    out, offset, prev = [], np.zeros(2), None
    for a in yx:
        if prev is not None and len(a):
            offset = offset + estimate_shift(prev, a, drift_search_px, max(1.0, max_disp_px / 4))
        out.append(a - offset)
        if len(a):
            prev = a
    return out


def _cut_tree(n: int, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Track label per node (0 = first to appear) and a mask of the edges kept inside tracks.

    A node with several predecessors (a merge) starts a new track and one with several
    successors (a split) ends its track, so edges into the first and out of the second go.
    """
    indeg = np.bincount(dst, minlength=n)
    outdeg = np.bincount(src, minlength=n)
    keep = (indeg[dst] == 1) & (outdeg[src] == 1)
    graph = coo_matrix((np.ones(int(keep.sum())), (src[keep], dst[keep])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    # number tracks by first appearance (nodes are in frame order), as link_particles does
    _, first = np.unique(comp, return_index=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[comp], keep


def _ids(values: np.ndarray) -> str:
    return ";".join(str(int(v)) for v in sorted(values))


def _events(src: np.ndarray, dst: np.ndarray, track: np.ndarray, frame: np.ndarray,
            pid: np.ndarray | None) -> pd.DataFrame:
    """One row per merge node (several predecessors) and split node (several successors)."""
    rows = []
    for kind, hub, other in (("merge", dst, src), ("split", src, dst)):
        hubs, counts = np.unique(hub, return_counts=True)
        for h in hubs[counts > 1]:
            others = other[hub == h]
            parents, children = (others, np.array([h])) if kind == "merge" else (np.array([h]), others)
            row = {"event": kind, "frame": int(frame[children[0]]),
                   "parent_frame": int(frame[parents[0]]),
                   "parent_track_ids": _ids(track[parents]), "child_track_ids": _ids(track[children])}
            if pid is not None:
                row |= {"parent_particle_ids": _ids(pid[parents]),
                        "child_particle_ids": _ids(pid[children])}
            rows.append(row)
    columns = EVENT_COLUMNS if pid is not None else EVENT_COLUMNS[:-2]
    events = pd.DataFrame(rows, columns=columns)
    # stable: within a frame, events stay in node (table row) order
    return events.sort_values(["frame", "event"], kind="stable", ignore_index=True)


def link_particles_laptrack(
    tables: Sequence[pd.DataFrame],
    max_disp_px: float,
    *,
    gap_frames: int = 2,
    drift_search_px: float | None = None,
    y_col: str = "centroid_y_px",
    x_col: str = "centroid_x_px",
    first_track_id: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Link a sequence of per-frame tables with laptrack: tracks with gaps closed, and the events.

    Parameters
    ----------
    tables, max_disp_px, drift_search_px, y_col, x_col, first_track_id
        As :func:`.track.link_particles`; ``tables[k]`` is time step k.
    gap_frames
        Most consecutive frames a particle may be missing and keep its track (0: no gap closing).

    Returns
    -------
    linked
        As :func:`.track.link_particles`: the tables concatenated with ``track_id`` and
        ``link_distance_px`` (drift removed; across a closed gap, the distance over the gap).
    events
        :data:`EVENT_COLUMNS` (the particle-id columns only when the tables have ``particle_id``).
    """
    if max_disp_px <= 0:
        raise ValueError(f"max_disp_px must be > 0, got {max_disp_px}")
    if gap_frames < 0:
        raise ValueError(f"gap_frames must be >= 0, got {gap_frames}")
    tracker = _tracker(max_disp_px, gap_frames)  # fails before any work when laptrack is missing
    parts = [t.copy() for t in tables]
    for k, t in enumerate(parts):
        if "frame" not in t.columns:
            t.insert(0, "frame", k)
    if not parts:
        return (pd.DataFrame(columns=["frame", y_col, x_col, "track_id", "link_distance_px"]),
                pd.DataFrame(columns=EVENT_COLUMNS))
    linked = pd.concat(parts, ignore_index=True)
    raw = [t[[y_col, x_col]].to_numpy(np.float64).reshape(-1, 2) for t in parts]
    yx = _drift_corrected(raw, drift_search_px, max_disp_px)
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in yx])])
    n = int(offsets[-1])
    src, dst = np.zeros(0, np.int64), np.zeros(0, np.int64)
    if n:
        tree = tracker.predict(yx)
        edges = np.array([(offsets[int(a[0])] + int(a[1]), offsets[int(b[0])] + int(b[1]))
                          for a, b in tree.edges()], np.int64).reshape(-1, 2)
        src, dst = edges[:, 0], edges[:, 1]
    track, keep = _cut_tree(n, src, dst) if n else (np.zeros(0, np.int64), np.zeros(0, bool))
    flat = np.concatenate(yx) if n else np.zeros((0, 2))
    dist = np.full(n, np.nan)
    dist[dst[keep]] = np.linalg.norm(flat[dst[keep]] - flat[src[keep]], axis=1)
    track_id = track + int(first_track_id)
    linked["track_id"] = track_id
    linked["link_distance_px"] = dist
    pid = linked["particle_id"].to_numpy() if "particle_id" in linked else None
    events = _events(src, dst, track_id, linked["frame"].to_numpy(), pid)
    return linked, events
