"""Instance labels as ImageJ ROI sets (roifile) and HyperSpy signals (rosettasciio), from the
writers, the segment command (``--rois`` / ``--hspy``) and batch pseudo-labelling."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from temseg_ablation.data.writers import (
    ROIS_MISSING,
    MissingExtraError,
    trace_outline,
    write_hspy,
    write_rois,
)
from temseg_ablation.segment.cli import main

PX_NM = 0.5


def _labels() -> np.ndarray:
    """Two discs (labels 1, 2) and a 10 x 10 square (label 5: ids need not be consecutive)."""
    yy, xx = np.mgrid[:64, :96]
    lab = np.zeros((64, 96), np.int32)
    lab[(yy - 20) ** 2 + (xx - 22) ** 2 <= 12**2] = 1
    lab[(yy - 40) ** 2 + (xx - 70) ** 2 <= 8**2] = 2
    lab[48:58, 6:16] = 5
    return lab


def _shoelace(xy: np.ndarray) -> float:
    x, y = xy[:, 0].astype(float), xy[:, 1].astype(float)
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)))


def _frame(path: Path, size: int = 96, seed: int = 0, n: int = 6) -> Path:
    """``n`` dark soft-edged discs (radius 7-10 px) on a noisy bright background, saved as .npy."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(float)
    taken = np.zeros((size, size), bool)
    thick = np.zeros((size, size))
    for _ in range(10_000):
        if not n:
            break
        rad, cy, cx = rng.uniform(7, 10), *rng.uniform(12, size - 12, 2)
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        if taken[r2 <= (rad + 4) ** 2].any():
            continue
        n -= 1
        taken |= r2 <= rad**2
        thick += 2 * np.sqrt(np.clip(rad**2 - r2, 0, None)) / rad
    else:
        raise ValueError(f"{n} discs do not fit a {size} px frame")
    image = ndi.gaussian_filter(np.exp(-0.8 * thick), 1.0)
    np.save(path, image * (1 + 0.03 * rng.standard_normal(image.shape)))
    return path


# ------------------------------------------------------------------------------ writers


def test_rois_one_named_outline_per_particle(tmp_path):
    import roifile

    lab = _labels()
    path = tmp_path / "f.zip"
    assert write_rois(lab, path, PX_NM) == 3
    rois = roifile.roiread(path)
    assert [r.name for r in rois] == ["1", "2", "5"]
    for roi in rois:
        region = lab == int(roi.name)
        xy = roi.coordinates()
        # pixel-edge outlines: ImageJ measures the region's pixel area
        assert _shoelace(xy) == pytest.approx(region.sum(), rel=0.02)
        rows, cols = np.nonzero(region)
        assert xy[:, 0].min() == cols.min() and xy[:, 0].max() == cols.max() + 1
        assert xy[:, 1].min() == rows.min() and xy[:, 1].max() == rows.max() + 1
        props = roi.properties
        assert props["particle_id"] == int(roi.name) and props["area_px"] == region.sum()
        assert props["area_nm2"] == pytest.approx(region.sum() * PX_NM**2)
    # no particles: an empty (valid) ROI set, written over the old one
    assert write_rois(np.zeros((8, 8), np.uint16), path) == 0
    assert roifile.roiread(path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["f.zip"]  # no temporary file left


def test_trace_outline_joins_diagonal_pixels_and_fills_holes():
    diagonal = np.eye(3, dtype=bool)  # one 8-connected particle
    assert _shoelace(trace_outline(diagonal)) == 3
    ring = np.ones((5, 5), bool)
    ring[2, 2] = False
    outline = trace_outline(ring)
    assert _shoelace(outline) == 25  # the outer boundary: the hole is not cut out
    assert sorted(map(tuple, outline.tolist())) == [(0, 0), (0, 5), (5, 0), (5, 5)]
    assert trace_outline(np.zeros((3, 3), bool)).shape == (0, 2)


def test_hspy_calibrated_and_uncalibrated(tmp_path):
    from rsciio.hspy import file_reader

    lab = _labels()
    write_hspy(lab, tmp_path / "a.hspy", PX_NM, title="frame_f0000", source="in/frame.dm4")
    (sig,) = file_reader(str(tmp_path / "a.hspy"))
    np.testing.assert_array_equal(sig["data"], lab)
    assert sig["data"].dtype == np.uint16
    assert [(a["name"], a["size"], a["scale"], a["units"], a["navigate"]) for a in sig["axes"]] == \
           [("y", 64, PX_NM, "nm", False), ("x", 96, PX_NM, "nm", False)]
    assert sig["metadata"]["General"]["title"] == "frame_f0000"
    assert sig["original_metadata"]["source"] == "in/frame.dm4"

    write_hspy(lab, tmp_path / "b.hspy")
    (sig,) = file_reader(str(tmp_path / "b.hspy"))
    assert [(a["scale"], a["units"]) for a in sig["axes"]] == [(1.0, "px"), (1.0, "px")]
    with pytest.raises(ValueError, match="integer labels"):
        write_hspy(lab.astype(float), tmp_path / "c.hspy")


# ------------------------------------------------------------------------------ segment command


def test_segment_writes_rois_and_hspy_per_frame(tmp_path, capsys):
    import roifile
    from rsciio.hspy import file_reader

    frame = _frame(tmp_path / "f.npy")
    out = tmp_path / "o"
    args = ["--model", "classical", "--pixel-size-nm", "0.18", "--min-size-px", "4", "--rois",
            "--hspy", "--no-progress", "--out", str(out), str(frame)]
    assert main(args) == 0, capsys.readouterr().err
    particles = pd.read_csv(out / "particles.csv")
    assert len(particles) == 6
    rois = roifile.roiread(out / "rois" / "f_f0000.zip")
    assert len(rois) == len(particles)
    assert sorted(int(r.name) for r in rois) == sorted(particles["particle_id"])
    labels = tifffile.imread(out / "labels" / "f_f0000.tif")
    (sig,) = file_reader(str(out / "hspy" / "f_f0000.hspy"))
    np.testing.assert_array_equal(sig["data"], labels)
    assert sig["axes"][0]["scale"] == pytest.approx(0.18) and sig["axes"][0]["units"] == "nm"
    summary = json.loads((out / "summary.json").read_text())
    assert {"rois/", "hspy/"} <= set(summary["outputs"])
    # a leftover of an unfinished frame is removed; the finished frame's files are kept
    (out / "rois" / "gone_f0000.zip").write_bytes(b"")
    (out / "hspy" / "gone_f0000.hspy").write_bytes(b"")
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_already_done"] == 1
    assert sorted(summary["orphans_removed"]) == ["hspy/gone_f0000.hspy", "rois/gone_f0000.zip"]
    assert [p.name for p in (out / "rois").iterdir()] == ["f_f0000.zip"]
    # the ROI sets are part of the results: a rerun without --rois is refused, not mixed in
    assert main([a for a in args if a != "--rois"]) == 2
    assert "other options" in capsys.readouterr().err


def test_rois_without_roifile_fails_up_front(tmp_path, capsys, monkeypatch):
    frame = _frame(tmp_path / "f.npy", size=48, n=2)
    monkeypatch.setitem(sys.modules, "roifile", None)  # ``import roifile`` raises ImportError
    out = tmp_path / "o"
    rc = main(["--model", "classical", "--rois", "--no-progress", "--out", str(out), str(frame)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: {ROIS_MISSING}"]
    assert ROIS_MISSING == "--rois needs roifile: pip install 'temseg-ablation[imagej]'"
    assert not out.exists()  # nothing was created, no frame segmented
    with pytest.raises(MissingExtraError):
        write_rois(_labels(), tmp_path / "x.zip")

    from temseg_ablation.data.label_folder import label_folder

    with pytest.raises(ImportError, match="temseg-ablation\\[imagej\\]"):
        label_folder([frame], tmp_path / "pl", n_jobs=1, progress=False, rois=True)
    assert not (tmp_path / "pl").exists()


# ------------------------------------------------------------------------------ pseudo-labels


def test_pseudo_labels_get_the_same_writers(tmp_path):
    import roifile
    from rsciio.hspy import file_reader

    from temseg_ablation.data.label_folder import label_folder

    frame = _frame(tmp_path / "f.npy")
    out = tmp_path / "pl"
    kw = {"n_jobs": 1, "progress": False, "labels": True, "rois": True, "hspy": True,
          "default_pixel_size_nm": 0.18}
    rep = label_folder([frame], out, **kw)
    assert rep.failed == [] and rep.outputs == [out / "f.npy"]
    assert rep.instance_outputs == [out / "labels" / "f.tif", out / "rois" / "f.zip",
                                    out / "hspy" / "f.hspy"]
    mask = np.load(out / "f.npy").astype(bool)
    labels = tifffile.imread(out / "labels" / "f.tif")
    assert ((labels > 0) == mask).all() and labels.max() == 6
    assert len(roifile.roiread(out / "rois" / "f.zip")) == len(np.unique(labels)) - 1
    (sig,) = file_reader(str(out / "hspy" / "f.hspy"))
    np.testing.assert_array_equal(sig["data"], labels)
    assert (sig["axes"][1]["scale"], sig["axes"][1]["units"]) == (pytest.approx(0.18), "nm")
    # from the cache: the same files (the cache keeps the file's own calibration)
    before = {p: p.read_bytes() for p in rep.instance_outputs[:1]}
    again = label_folder([frame], out, **kw)
    assert again.n_cached == 1 and again.instance_outputs == rep.instance_outputs
    assert {p: p.read_bytes() for p in again.instance_outputs[:1]} == before
    # without a calibration the axes are in px
    label_folder([frame], tmp_path / "px", n_jobs=1, progress=False, hspy=True)
    (sig,) = file_reader(str(tmp_path / "px" / "hspy" / "f.hspy"))
    assert (sig["axes"][0]["scale"], sig["axes"][0]["units"]) == (1.0, "px")
