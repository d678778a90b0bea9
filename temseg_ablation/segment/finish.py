"""Last step of :func:`.pipeline.run_segmentation`: tracks, plots, ``failed.txt``, ``summary.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from .outdir import OutputStore
from .results import (
    EVENTS_CSV_COLUMNS,
    FRAME_CSV_COLUMNS,
    PARTICLE_CSV_COLUMNS,
    calibration_groups,
    scale_summary,
    track_frames,
)

__all__ = ["finish_run"]


def _event_counts(events: Any) -> dict[str, int] | None:
    """Merges and splits in events.csv; None when not tracked or the tracker detects none."""
    if events is None:
        return None
    return {kind: int((events["event"] == kind).sum()) for kind in ("merge", "split")}


def finish_run(o: Any, store: OutputStore, model_info: dict[str, Any], *, failures: list[str],
               n_new: int, n_skipped: int, seconds_segment: float, seconds_total: float,
               inputs: list[str], command: Sequence[str] | None) -> dict[str, Any]:
    """Write the run's whole-set outputs from the folder's tables; returns the summary."""
    from .plots import plot_coarsening, plot_size_distribution

    frames = store.read_table("frames.csv", FRAME_CSV_COLUMNS).sort_values("frame")
    particles = store.read_table("particles.csv", PARTICLE_CSV_COLUMNS)
    particles["touches_border"] = particles["touches_border"].astype(bool)
    written = ["frames.csv", "particles.csv", "size_distribution.png"]
    events = None
    if o.track and len(frames):
        curves, track_id, events = track_frames(
            frames, particles, sequence=o.sequence, max_disp_px_=o.max_disp_px,
            max_disp_nm=o.max_disp_nm, drift_search_px=o.drift_search_px,
            frame_interval_s=o.frame_interval_s, tracker=o.tracker, gap_frames=o.gap_frames)
        particles["track_id"] = track_id.astype("Int64")
        store.write_csv("particles.csv", particles)
        store.write_csv("coarsening.csv", curves)
        # header only with --tracker nearest: that linker detects no merges or splits
        store.write_csv("events.csv", events.reindex(columns=EVENTS_CSV_COLUMNS))
        plot_coarsening(curves, store.out / "coarsening.png")
        written += ["coarsening.csv", "coarsening.png", "events.csv"]
    else:
        for name in ("coarsening.csv", "coarsening.png", "events.csv"):
            store.write_text(name, None)
    removed = store.remove_orphans()

    interior = particles.loc[~particles["touches_border"]]
    calibrated = frames.loc[frames["pixel_size_nm"].notna(), "frame"]
    d_nm = interior.loc[interior["frame"].isin(calibrated), "equivalent_diameter_nm"]
    diam, unit = d_nm.to_numpy(np.float64), "nm"
    if not np.isfinite(diam).any():
        diam, unit = interior["equivalent_diameter_px"].to_numpy(np.float64), "px"
    n = len(frames)
    plot_size_distribution(diam, store.out / "size_distribution.png", unit=unit,
                           title=f"equivalent diameters of {np.isfinite(diam).sum()} particles not "
                                 f"touching the frame border, {n} frame(s)")
    # failed.txt lists this run's failures only: earlier failures were retried now
    store.write_text("failed.txt", "\n".join(failures) + "\n" if failures else None)
    if failures:
        written.append("failed.txt")
    finite = diam[np.isfinite(diam)]
    summary = {
        "command": ["python", "-m", "temseg_ablation.segment", *(command or [])],
        "model": model_info,
        "settings": o.settings(),
        "options_hash": store.options_hash,
        "inputs": inputs,
        "frames_processed": n,
        "frames_new": n_new,
        "frames_already_done": n_skipped,
        "continued": store.resumed,
        "files_processed": int(frames["source"].nunique()) if n else 0,
        "failures": failures,
        "orphans_removed": removed,
        "particles": int(len(particles)),
        "particles_not_touching_border": int(len(interior)),
        "events": _event_counts(events if o.tracker == "laptrack" else None),
        "median_diameter": float(np.median(finite)) if finite.size else None,
        "diameter_unit": unit,
        **calibration_groups(frames, interior),
        "scale": scale_summary(frames),
        "scale_factors": sorted({round(float(s), 6) for s in frames["scale_factor"]}) if n else [],
        "pixel_sizes_nm": sorted({round(float(s), 6) for s in frames["pixel_size_nm"]
                                  if np.isfinite(s)}) if n else [],
        "thresholds": {"min": float(frames["threshold"].min()), "max": float(frames["threshold"].max()),
                       "mean": float(frames["threshold"].mean())} if n else None,
        "seconds_segmentation": round(seconds_segment, 3),
        "seconds_total": round(seconds_total, 3),
        "frames_per_s": round(n_new / seconds_segment, 4) if seconds_segment > 0 else None,
        "outputs": [*written, "masks/", "labels/", "manifest.json"] + (["prob/"] if o.save_prob else [])
                   + (["rois/"] if o.rois else [])
                   + (["hspy/"] if o.hspy else []),
    }
    store.write_text("summary.json", json.dumps(summary, indent=1, default=str))
    return summary
