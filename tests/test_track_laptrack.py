"""``--tracker laptrack``: gap closing, merge / split events, events.csv and the coalescence curve.

Particle tables are built by hand: two particles approach and coalesce (the merged particle at
their midpoint with the combined area) while a third vanishes for one frame and comes back.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from temseg_ablation.segment.cli import main
from temseg_ablation.segment.results import EVENTS_CSV_COLUMNS
from temseg_ablation.segment.track import COARSENING_COLUMNS, coarsening_curves, link_particles
from temseg_ablation.segment.track_laptrack import (
    EVENT_COLUMNS,
    LAPTRACK_MISSING,
    link_particles_laptrack,
)

# the missing-laptrack test runs without it; the others need the [tracking] extra
needs_laptrack = pytest.mark.skipif(importlib.util.find_spec("laptrack") is None,
                                    reason="laptrack is not installed ([tracking] extra)")

COLS = ["particle_id", "centroid_y_px", "centroid_x_px", "area_px"]
MAX_DISP = 8.0


def _table(rows: list[tuple[float, ...]]) -> pd.DataFrame:
    t = pd.DataFrame(rows, columns=COLS)
    t["equivalent_diameter_nm"] = 2 * np.sqrt(t["area_px"] / np.pi)  # 1 nm/px
    t["touches_border"] = False
    return t


def _coalescence_and_gap() -> list[pd.DataFrame]:
    """A (id 1) and B (2) merge into one particle in frame 2; C (3) is missing in frame 2."""
    return [
        _table([(1, 50, 40, 50), (2, 50, 60, 50), (3, 20, 20, 30)]),
        _table([(1, 50, 44, 50), (2, 50, 56, 50), (3, 20, 20.5, 30)]),
        _table([(1, 50, 50, 100)]),                       # A + B at their midpoint, both areas
        _table([(1, 50, 50.3, 100), (2, 20, 21, 30)]),    # C is back, now particle 2
    ]


def _track(linked: pd.DataFrame, frame: int, pid: int) -> int:
    row = linked.loc[(linked["frame"] == frame) & (linked["particle_id"] == pid)]
    return int(row["track_id"].iloc[0])


@needs_laptrack
def test_laptrack_closes_the_gap_where_the_nearest_linker_cannot():
    tables = _coalescence_and_gap()
    linked, _ = link_particles_laptrack(tables, MAX_DISP, gap_frames=1)
    assert _track(linked, 3, 2) == _track(linked, 1, 3) == _track(linked, 0, 3)
    assert linked["link_distance_px"].iloc[-1] == pytest.approx(0.5)  # measured over the gap
    nearest = link_particles(tables, MAX_DISP)
    assert _track(nearest, 3, 2) != _track(nearest, 1, 3)
    no_gaps, _ = link_particles_laptrack(tables, MAX_DISP, gap_frames=0)
    assert _track(no_gaps, 3, 2) != _track(no_gaps, 1, 3)
    # the same track-id assignment shape as link_particles
    assert list(linked.columns) == list(nearest.columns)
    assert linked["track_id"].min() == 1


@needs_laptrack
def test_merge_event_names_both_parents_and_the_new_track():
    linked, events = link_particles_laptrack(_coalescence_and_gap(), MAX_DISP)
    assert list(events.columns) == EVENT_COLUMNS
    assert len(events) == 1
    ev = events.iloc[0]
    parents = sorted([_track(linked, 1, 1), _track(linked, 1, 2)])
    child = _track(linked, 2, 1)
    assert (ev["event"], ev["frame"], ev["parent_frame"]) == ("merge", 2, 1)
    assert ev["parent_track_ids"] == f"{parents[0]};{parents[1]}"
    assert ev["child_track_ids"] == str(child) and child not in parents
    assert (ev["parent_particle_ids"], ev["child_particle_ids"]) == ("1;2", "1")
    # the merged particle starts a track that goes on; the parents end
    assert _track(linked, 3, 1) == child
    assert linked.loc[linked["track_id"].isin(parents), "frame"].max() == 1

    curves = coarsening_curves(linked, 1.0, 0.5, frames=range(4), events=events)
    assert list(curves.columns) == COARSENING_COLUMNS and COARSENING_COLUMNS[-1] == "coalescence_events"
    assert curves["coalescence_events"].tolist() == [0, 0, 1, 0]
    # without an events table the curve says "not detected", not "none happened"
    assert coarsening_curves(linked, 1.0, 0.5)["coalescence_events"].isna().all()


@needs_laptrack
def test_split_event_and_drift_and_ids_offset():
    # the coalescence played backwards is a split; every frame also moves by 10 px (drift)
    tables = [t.assign(centroid_x_px=t["centroid_x_px"] + 10 * k)
              for k, t in enumerate(reversed(_coalescence_and_gap()))]
    extra = [(9 + i, 90, 10 + 15 * i, 40) for i in range(4)]  # static field that shows the drift
    tables = [pd.concat([t, _table([(p, y, x + 10 * k, a) for p, y, x, a in extra])],
                        ignore_index=True) for k, t in enumerate(tables)]
    linked, events = link_particles_laptrack(tables, MAX_DISP, drift_search_px=20.0,
                                             first_track_id=100)
    assert linked["track_id"].min() == 100
    assert events["event"].tolist() == ["split"]
    ev = events.iloc[0]
    assert (ev["frame"], ev["parent_frame"], ev["child_particle_ids"]) == (2, 1, "1;2")
    for p in range(9, 13):  # the static particles keep their tracks despite the drift
        assert linked.loc[linked["particle_id"] == p, "track_id"].nunique() == 1


def test_missing_laptrack_is_one_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "laptrack", None)  # `import laptrack` raises ImportError
    with pytest.raises(ImportError, match=r"^--tracker laptrack needs laptrack: pip install"):
        link_particles_laptrack(_coalescence_and_gap(), MAX_DISP)
    out = tmp_path / "out"
    rc = main(["--model", "classical", "--track", "--tracker", "laptrack", "--no-progress",
               "--out", str(out), str(tmp_path / "nothing.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: {LAPTRACK_MISSING}"]
    assert not out.exists()  # refused before the output folder is touched


# ------------------------------------------------------------------------------ command line


def _disk(img: np.ndarray, cy: float, cx: float, r: float) -> None:
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 0.2


def _merge_stack(path: Path) -> Path:
    """Dark disks (r 8 px): two coalesce in frame 2 (equal area); a third skips frame 2."""
    layout = [[(40, 30, 8), (40, 62, 8), (85, 85, 7)], [(40, 36, 8), (40, 56, 8), (85, 85, 7)],
              [(40, 46, 8 * np.sqrt(2))], [(40, 46, 8 * np.sqrt(2)), (85, 86, 7)]]
    rng = np.random.default_rng(0)
    frames = []
    for disks in layout:
        img = np.ones((112, 112))
        for d in disks:
            _disk(img, *d)
        frames.append(img + rng.normal(0, 0.02, img.shape))
    np.save(path, np.stack(frames).astype(np.float32))
    return path


def _segment(stack: Path, out: Path, tracker: str) -> int:
    return main(["--model", "classical", "--pixel-size-nm", "0.5", "--track", "--tracker", tracker,
                 "--max-disp-px", "12", "--no-progress", "--out", str(out), str(stack)])


@needs_laptrack
def test_cli_writes_events_csv_and_the_coalescence_curve(tmp_path):
    stack = _merge_stack(tmp_path / "stack.npy")
    out = tmp_path / "lap"
    assert _segment(stack, out, "laptrack") == 0
    events = pd.read_csv(out / "events.csv")
    assert list(events.columns) == EVENTS_CSV_COLUMNS
    assert events[["event", "frame", "frame_in_sequence", "parent_frame"]].values.tolist() == \
        [["merge", 2, 2, 1]]
    assert events["time_s"].iloc[0] == pytest.approx(2 / 400)
    assert events["sequence"].iloc[0] == str(stack)
    particles = pd.read_csv(out / "particles.csv")
    gap = particles.loc[particles["area_px"] < 250]  # the r 7 px disk, before and after its gap
    assert len(gap) == 3 and gap["track_id"].nunique() == 1
    curves = pd.read_csv(out / "coarsening.csv")
    assert curves["coalescence_events"].tolist() == [0, 0, 1, 0]
    assert (out / "coarsening.png").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert "events.csv" in summary["outputs"] and summary["events"] == {"merge": 1, "split": 0}
    assert summary["settings"]["tracker"] == "laptrack" and summary["settings"]["gap_frames"] == 2

    # the default linker detects no merges: a header-only events.csv and a NaN curve
    near = tmp_path / "near"
    assert _segment(stack, near, "nearest") == 0
    assert pd.read_csv(near / "events.csv").empty
    assert list(pd.read_csv(near / "events.csv").columns) == EVENTS_CSV_COLUMNS
    assert pd.read_csv(near / "coarsening.csv")["coalescence_events"].isna().all()
    assert json.loads((near / "summary.json").read_text())["events"] is None
