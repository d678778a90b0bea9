"""End of a segmentation run: tracks, coarsening curves, the size plot and ``summary.json``.

Everything here is computed from the tables in the output folder (all frames done so far,
including those of earlier runs into the same folder), so a continued run reports the whole set.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from .measure import FRAME_COLUMNS, PARTICLE_COLUMNS

__all__ = ["EVENTS_CSV_COLUMNS", "FRAME_CSV_COLUMNS", "PARTICLE_CSV_COLUMNS", "calibration_groups",
           "max_disp_px", "track_frames"]

FRAME_CSV_COLUMNS = [
    "frame", "source", "frame_in_source", "height", "width", "pixel_size_nm", "scale_source",
    "scale_confidence", "estimated_diameter_px", "implied_pixel_size_nm", "scale_factor",
    "classical_sigma_px", "classical_opening_px", "threshold", *FRAME_COLUMNS, "mask", "labels",
]
PARTICLE_CSV_COLUMNS = ["frame", "source", "frame_in_source", *PARTICLE_COLUMNS]
#: events.csv: merges / splits found by ``--tracker laptrack`` (see track_laptrack.EVENT_COLUMNS);
#: ``frame`` and ``parent_frame`` are frames.csv frames, ``time_s`` that of ``frame``.
EVENTS_CSV_COLUMNS = ["sequence", "event", "frame", "frame_in_sequence", "time_s", "parent_frame",
                      "parent_track_ids", "child_track_ids", "parent_particle_ids",
                      "child_particle_ids"]


def max_disp_px(max_disp_px_: float | None, max_disp_nm: float | None, px: float | None) -> float:
    """Largest centroid move between frames (px): given in px, in nm (needs ``px``), or the default."""
    if max_disp_px_:
        return float(max_disp_px_)
    if px:
        return float(max_disp_nm or 1.0) / px
    if max_disp_nm:
        raise ValueError("--max-disp-nm needs the pixel size (from the file or --pixel-size-nm)")
    return 5.0


def track_frames(frames: pd.DataFrame, particles: pd.DataFrame, *, sequence: str,
                 max_disp_px_: float | None, max_disp_nm: float | None,
                 drift_search_px: float | None, frame_interval_s: float,
                 tracker: str = "nearest", gap_frames: int = 2
                 ) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """Link particles per sequence: coarsening curves, a ``track_id`` per particle row, events.

    ``tracker`` 'nearest' is :func:`.track.link_particles` (no merge detection: the events table
    is empty and ``coalescence_events`` NaN); 'laptrack' is
    :func:`.track_laptrack.link_particles_laptrack` with ``gap_frames``.
    """
    from .track import coarsening_curves

    frames = frames.sort_values("frame")
    mode = sequence
    if mode == "auto":
        mode = "file" if frames.groupby("source").size().max() > 1 else "all"
    keys = frames["source"] if mode == "file" else pd.Series("all", index=frames.index)
    by_frame = {int(f): g for f, g in particles.groupby("frame", sort=False)}
    empty = particles.iloc[:0]
    track_id = pd.Series(np.nan, index=particles.index)
    curves, events, next_id = [], [pd.DataFrame(columns=EVENTS_CSV_COLUMNS)], 1
    for key, sub in frames.groupby(keys, sort=False):
        px = float(sub["pixel_size_nm"].median())
        disp = max_disp_px(max_disp_px_, max_disp_nm, px if np.isfinite(px) else None)
        search = disp * 4 if drift_search_px is None else float(drift_search_px)
        # time runs with the frame number in the file, so a failed frame leaves a gap
        seq_index = (sub["frame_in_source"].to_numpy() if mode == "file" else np.arange(len(sub)))
        tables = [by_frame.get(int(f), empty).assign(frame_in_sequence=int(j))
                  for j, f in zip(seq_index, sub["frame"], strict=True)]
        linked, ev = _link(tables, disp, tracker, gap_frames, search or None, next_id)
        rows = np.concatenate([t.index.to_numpy() for t in tables]) if tables else np.zeros(0, int)
        track_id.loc[rows] = linked["track_id"].to_numpy()
        if len(linked):
            next_id = int(linked["track_id"].max()) + 1
        seq_table = linked.drop(columns=["frame"]).rename(columns={"frame_in_sequence": "frame"})
        if ev is not None:
            # events name frames.csv frames; the curves count in frames of the sequence
            in_seq = dict(zip(sub["frame"].astype(int), seq_index.astype(int), strict=True))
            ev = ev.assign(sequence=key if mode == "file" else "all",
                           frame_in_sequence=ev["frame"].map(in_seq).astype(int))
            ev["time_s"] = ev["frame_in_sequence"] * float(frame_interval_s)
            events.append(ev.reindex(columns=EVENTS_CSV_COLUMNS))
        c = coarsening_curves(seq_table, 1.0, frame_interval_s, frames=seq_index,
                              events=None if ev is None else ev.assign(frame=ev["frame_in_sequence"]))
        # frames of one sequence may differ in size or calibration: each gets its own area
        area_um2 = (sub["height"] * sub["width"] * sub["pixel_size_nm"] ** 2 / 1e6).to_numpy()
        c["number_density_per_um2"] = c["count"].to_numpy() / area_um2
        c = c.rename(columns={"frame": "frame_in_sequence"})
        c.insert(0, "frame", sub["frame"].to_numpy())
        c.insert(0, "sequence", key if mode == "file" else "all")
        curves.append(c)
    events = pd.concat([e for e in events if len(e)] or events[:1], ignore_index=True)
    return pd.concat(curves, ignore_index=True), track_id, events


def _link(tables: list[pd.DataFrame], disp: float, tracker: str, gap_frames: int,
          search: float | None, first_id: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """One sequence's linked table and its events (None: the tracker detects no events)."""
    if tracker == "laptrack":
        from .track_laptrack import link_particles_laptrack

        return link_particles_laptrack(tables, disp, gap_frames=gap_frames, drift_search_px=search,
                                       first_track_id=first_id)
    from .track import link_particles

    return link_particles(tables, disp, drift_search_px=search, first_track_id=first_id), None


def _stats(values: pd.Series) -> dict[str, float | None]:
    v = values.to_numpy(np.float64)
    v = v[np.isfinite(v)]
    return {"median": float(np.median(v)) if v.size else None,
            "mean": float(np.mean(v)) if v.size else None}


def calibration_groups(frames: pd.DataFrame, interior: pd.DataFrame) -> dict[str, Any]:
    """nm statistics per calibration (pixel size and its source) and px statistics of the rest."""
    groups = []
    cal = frames.loc[frames["pixel_size_nm"].notna()]
    for (px, source), sub in cal.groupby(["pixel_size_nm", "scale_source"], sort=True):
        parts = interior.loc[interior["frame"].isin(sub["frame"])]
        s = _stats(parts["equivalent_diameter_nm"])
        groups.append({"pixel_size_nm": float(px), "source": str(source), "frames": int(len(sub)),
                       "particles_not_touching_border": int(len(parts)),
                       "median_diameter_nm": s["median"], "mean_diameter_nm": s["mean"]})
    rest = frames.loc[frames["pixel_size_nm"].isna()]
    parts = interior.loc[interior["frame"].isin(rest["frame"])]
    s = _stats(parts["equivalent_diameter_px"])
    return {"calibrated": groups, "frames_without_calibration": int(len(rest)),
            "without_calibration": {
                "frames": int(len(rest)),
                "scale_sources": dict(Counter(rest["scale_source"].astype(str))),
                "particles_not_touching_border": int(len(parts)),
                "median_diameter_px": s["median"], "mean_diameter_px": s["mean"]}}


def scale_summary(frames: pd.DataFrame) -> dict[str, Any]:
    """Where the frames' scales came from and how confident the estimates are."""
    est = frames.loc[frames["scale_source"] == "estimate"]
    return {"sources": dict(Counter(frames["scale_source"].astype(str))),
            "estimate_confidence": dict(Counter(est["scale_confidence"].astype(str))),
            "estimated_diameter_px": _stats(est["estimated_diameter_px"]),
            "implied_pixel_size_nm": _stats(est["implied_pixel_size_nm"])}
