"""The segment command's particle table at ParticleSpy parity, and its instance-label TIFFs.

Shapes of known size: a digital disc of radius R (pixel centres within R of the centre) and an
axis-aligned ellipse of semi-axes a, b. Their pixel outline (centres +- 0.5) spans 2 R + 1 and
2 a + 1, 2 b + 1 px, so Feret diameters are checked against those within a pixel, and the
moment-based axes against 2 R, 2 a, 2 b.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from temseg_ablation.data.writers import label_dtype, write_labels
from temseg_ablation.segment.measure import PARTICLE_COLUMNS, measure_labels, measure_particles
from temseg_ablation.segment.shape import convex_hull, hull_diameter, hull_width

PX = 0.25   # nm / px
LENGTHS = ["centroid_y", "centroid_x", "equivalent_diameter", "major_axis_length",
           "minor_axis_length", "feret_min", "feret_max", "perimeter"]


def _scene() -> tuple[np.ndarray, dict[str, tuple[int, ...]]]:
    """Labels (160, 200): 1 = disc (R 20 at 50, 50), 2 = ellipse (a 30 rows, b 10 cols at 80, 140)."""
    yy, xx = np.mgrid[:160, :200]
    labels = np.zeros((160, 200), np.int32)
    labels[(yy - 50) ** 2 + (xx - 50) ** 2 <= 20**2] = 1
    labels[((yy - 80) / 30) ** 2 + ((xx - 140) / 10) ** 2 <= 1] = 2
    return labels, {"disc": (50, 50, 20), "ellipse": (80, 140, 30, 10)}


def test_columns_and_units_of_a_disc_and_an_ellipse():
    labels, _ = _scene()
    tab = measure_labels(labels, PX).set_index("particle_id")
    assert [c for c in PARTICLE_COLUMNS if c != "particle_id"] == list(tab.columns)
    disc, ell = tab.loc[1], tab.loc[2]
    r = 20
    assert (disc["centroid_y_px"], disc["centroid_x_px"]) == pytest.approx((50, 50))
    assert disc["equivalent_diameter_px"] == pytest.approx(2 * r, abs=0.1)
    assert disc["major_axis_length_px"] == pytest.approx(2 * r, abs=0.1)
    assert disc["minor_axis_length_px"] == pytest.approx(2 * r, abs=0.1)
    assert disc["feret_min_px"] == pytest.approx(2 * r + 1, abs=1.0)
    assert disc["feret_max_px"] == pytest.approx(2 * r + 1, abs=1.0)
    assert disc["feret_min_px"] <= disc["feret_max_px"]
    assert disc["aspect_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert disc["eccentricity"] == pytest.approx(0.0, abs=1e-6)
    assert 0.95 < disc["circularity"] <= 1.02
    assert disc["perimeter_px"] == pytest.approx(2 * math.pi * r, rel=0.03)
    assert 0.9 < disc["solidity"] <= 1.0
    # the ellipse: axes from moments, Feret from the outline, circularity of an ellipse
    a, b = 30, 10
    assert ell["major_axis_length_px"] == pytest.approx(2 * a, abs=0.5)
    assert ell["minor_axis_length_px"] == pytest.approx(2 * b, abs=0.5)
    assert ell["feret_max_px"] == pytest.approx(2 * a + 1, abs=1.0)
    assert ell["feret_min_px"] == pytest.approx(2 * b + 1, abs=1.0)
    assert ell["aspect_ratio"] == pytest.approx(a / b, rel=0.03)
    assert ell["eccentricity"] == pytest.approx(math.sqrt(1 - (b / a) ** 2), abs=0.01)
    ramanujan = math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))
    assert ell["perimeter_px"] == pytest.approx(ramanujan, rel=0.03)
    assert ell["circularity"] == pytest.approx(4 * math.pi * math.pi * a * b / ramanujan**2, rel=0.06)
    assert not tab["touches_border"].any()
    # nm columns are the px columns times the pixel size (area: its square)
    for name in LENGTHS:
        assert np.allclose(tab[f"{name}_nm"], tab[f"{name}_px"] * PX, rtol=1e-12), name
    assert np.allclose(tab["area_nm2"], tab["area_px"] * PX**2, rtol=1e-12)
    # unitless columns do not depend on the calibration; without one nm columns are NaN
    raw = measure_labels(labels).set_index("particle_id")
    unitless = ["area_px", "aspect_ratio", "eccentricity", "circularity", "solidity",
                *(f"{n}_px" for n in LENGTHS)]
    pd.testing.assert_frame_equal(raw[unitless], tab[unitless], rtol=1e-12)
    assert raw[[f"{n}_nm" for n in LENGTHS] + ["area_nm2"]].isna().all().all()


def test_table_agrees_with_scikit_image():
    from scipy import ndimage
    from skimage.measure import label, regionprops_table

    rng = np.random.default_rng(2)
    mask = ndimage.gaussian_filter(rng.random((120, 110)), 2) > 0.52
    tab = measure_particles(mask, pixel_size_nm=0.2)
    ref = pd.DataFrame(regionprops_table(label(mask, connectivity=2), properties=(
        "label", "area", "axis_minor_length", "eccentricity", "solidity", "perimeter_crofton",
        "feret_diameter_max")))
    assert len(tab) == len(ref) > 5
    assert np.array_equal(tab["particle_id"], ref["label"])
    assert np.allclose(tab["minor_axis_length_px"], ref["axis_minor_length"])
    assert np.allclose(tab["eccentricity"], ref["eccentricity"])
    assert np.allclose(tab["solidity"], ref["solidity"])
    assert np.allclose(tab["perimeter_px"], ref["perimeter_crofton"])
    assert np.allclose(tab["feret_max_px"], ref["feret_diameter_max"])
    assert (tab["feret_min_px"] <= tab["feret_max_px"] + 1e-9).all()
    assert (tab["feret_min_px"] > 0).all()


def test_intensity_columns_against_a_hand_computation():
    labels = np.zeros((8, 9), np.int32)
    labels[1:3, 1:4] = 5           # 6 pixels
    labels[5, 6] = 2               # 1 pixel
    image = np.arange(72, dtype=np.float32).reshape(8, 9) * 0.5
    tab = measure_labels(labels, 0.3, intensity_image=image).set_index("particle_id")
    five = image[1:3, 1:4].astype(np.float64)
    assert tab.loc[5, "mean_intensity"] == pytest.approx(five.mean())
    assert tab.loc[5, "integrated_intensity"] == pytest.approx(five.sum())
    assert tab.loc[2, "mean_intensity"] == tab.loc[2, "integrated_intensity"] == image[5, 6]
    # a one-pixel particle: no minor axis, so no aspect ratio
    assert tab.loc[2, "minor_axis_length_px"] == 0 and np.isnan(tab.loc[2, "aspect_ratio"])
    assert measure_labels(labels)["mean_intensity"].isna().all()
    with pytest.raises(ValueError, match="intensity image shape"):
        measure_labels(labels, intensity_image=image[:, :5])


def test_empty_table_keeps_columns_and_types():
    tab = measure_labels(np.zeros((6, 6), np.int32), 0.5, intensity_image=np.ones((6, 6)))
    assert list(tab.columns) == PARTICLE_COLUMNS and len(tab) == 0
    assert tab["particle_id"].dtype == np.int64 and tab["touches_border"].dtype == bool


def test_rotating_calipers_equal_brute_force_width():
    rng = np.random.default_rng(0)
    for _ in range(100):
        pts = rng.normal(size=(int(rng.integers(3, 80)), 2)) * rng.uniform(0.2, 5, size=2)
        hull = convex_hull(pts)
        edge = np.roll(hull, -1, axis=0) - hull
        rel = hull[None, :, :] - hull[:, None, :]
        dist = np.abs(edge[:, None, 0] * rel[..., 1] - edge[:, None, 1] * rel[..., 0])
        width = (dist / np.hypot(edge[:, 0], edge[:, 1])[:, None]).max(axis=1).min()
        assert hull_width(hull) == pytest.approx(width, rel=1e-12)
        assert hull_diameter(hull) == pytest.approx(
            np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1).max()), rel=1e-12)
    # a rectangle rotated by 30 degrees: width = short side, diameter = diagonal
    t = math.radians(30)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    rect = np.array([[0, 0], [4, 0], [4, 1.5], [0, 1.5]]) @ rot.T
    assert hull_width(convex_hull(rect)) == pytest.approx(1.5)
    assert hull_diameter(convex_hull(rect)) == pytest.approx(math.hypot(4, 1.5))
    assert hull_width(convex_hull(np.array([[0, 0], [1, 1], [2, 2.0]]))) == 0.0


# ------------------------------------------------------------------------- label TIFFs


def _read_tiff(path):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        res = page.tags.get("XResolution")
        xres = res.value[0] / res.value[1] if res is not None else None
        return tif.asarray(), xres, (tif.imagej_metadata or {}) if tif.is_imagej else None


@pytest.mark.parametrize("px", [0.18, 0.1234567, None])
def test_label_tiff_round_trip(tmp_path, px):
    labels, _ = _scene()
    table = measure_labels(labels, px)
    path = tmp_path / "f.tif"
    write_labels(labels, path, px)
    data, xres, ij = _read_tiff(path)
    assert data.dtype == np.uint16
    assert np.array_equal(data, labels)
    assert sorted(set(np.unique(data)) - {0}) == table["particle_id"].tolist()
    assert ij is not None
    if px is None:
        assert "unit" not in ij and xres in (None, 1.0)
    else:
        assert ij["unit"] == "nm" and 1 / xres == pytest.approx(px, rel=1e-9)
    assert [p.name for p in tmp_path.iterdir()] == ["f.tif"]   # no temporary file left


def test_label_tiff_above_65535_is_uint32_and_keeps_calibration(tmp_path):
    labels = np.zeros((4, 5), np.int64)
    labels[0, 0], labels[2, 3], labels[3, 4] = 1, 65535, 70001
    assert label_dtype(65535) == np.uint16 and label_dtype(65536) == np.uint32
    write_labels(labels, tmp_path / "big.tif", 0.5)
    data, xres, ij = _read_tiff(tmp_path / "big.tif")
    assert data.dtype == np.uint32 and np.array_equal(data, labels)
    assert ij["unit"] == "nm" and 1 / xres == pytest.approx(0.5)
    # the project's own reader gets the pixel size back, as from any ImageJ TIFF
    from temseg_ablation.data.readers import read_frames

    assert read_frames(tmp_path / "big.tif").pixel_size_nm == pytest.approx(0.5)


def test_label_tiff_write_is_atomic(tmp_path, monkeypatch):
    import tifffile

    path = tmp_path / "f.tif"
    write_labels(np.ones((3, 3), np.int32), path, 0.2)
    before = path.read_bytes()

    def crash(tmp, *args, **kwargs):
        with open(tmp, "wb") as fh:
            fh.write(b"II*\x00half")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", crash)
    with pytest.raises(OSError, match="disk full"):
        write_labels(np.full((3, 3), 2, np.int32), path, 0.2)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["f.tif"]
    with pytest.raises(ValueError, match=">= 0"):
        write_labels(np.full((2, 2), -1), tmp_path / "neg.tif")


def test_segment_run_writes_calibrated_label_tiffs(tmp_path):
    import tifffile

    from temseg_ablation.data.readers import read_mask
    from temseg_ablation.data.synthetic import SyntheticConfig, generate_sequence
    from temseg_ablation.segment.pipeline import SegmentOptions, run_segmentation

    cfg = SyntheticConfig(height=96, width=96, pixel_size_nm=0.18)
    a, b = (f.image.astype(np.float32) for f in generate_sequence(cfg, 2, seed=4))
    tifffile.imwrite(tmp_path / "cal.tif", a, imagej=True, resolution=(1 / 0.18, 1 / 0.18),
                     metadata={"unit": "nm"})
    np.save(tmp_path / "raw.npy", b)
    out = tmp_path / "o"
    run_segmentation([tmp_path / "cal.tif", tmp_path / "raw.npy"],
                     SegmentOptions(model="classical", out=out, progress=False), log=lambda m: None)
    frames = pd.read_csv(out / "frames.csv")
    particles = pd.read_csv(out / "particles.csv")
    assert set(PARTICLE_COLUMNS) <= set(particles.columns)
    assert frames["labels"].tolist() == ["labels/cal_f0000.tif", "labels/raw_f0000.tif"]
    for (_, row), image, px in zip(frames.iterrows(), (a, b), (0.18, None), strict=True):
        data, xres, ij = _read_tiff(out / row["labels"])
        table = particles.loc[particles["frame"] == row["frame"]].set_index("particle_id")
        assert data.dtype == np.uint16 and len(table) == row["count"] > 0
        assert sorted(set(np.unique(data)) - {0}) == table.index.tolist()
        assert np.array_equal(data > 0, read_mask(out / row["mask"]))
        if px is None:
            assert "unit" not in ij and table["feret_max_nm"].isna().all()
        else:
            assert ij["unit"] == "nm" and 1 / xres == pytest.approx(px)
            assert np.allclose(table["feret_max_nm"], table["feret_max_px"] * px)
        # intensities are of the frame as read, over each particle's label pixels
        first = table.index[0]
        pixels = image[data == first].astype(np.float64)
        assert table.loc[first, "mean_intensity"] == pytest.approx(pixels.mean(), rel=1e-6)
        assert table.loc[first, "integrated_intensity"] == pytest.approx(pixels.sum(), rel=1e-6)
        assert table.loc[first, "area_px"] == pixels.size


def test_output_folder_keeps_labels_of_done_frames_and_refuses_old_versions(tmp_path):
    import json

    from temseg_ablation.segment.outdir import MANIFEST, OutputError, OutputStore
    from temseg_ablation.segment.results import FRAME_CSV_COLUMNS, PARTICLE_CSV_COLUMNS

    cols = {"frame_columns": FRAME_CSV_COLUMNS, "particle_columns": PARTICLE_CSV_COLUMNS}
    store = OutputStore.open(tmp_path, "h", {}, overwrite=False, **cols)
    store.begin()
    store.frames_done["a#0"] = {"frame": 0, "mask": "masks/a_f0000.png"}
    for name in ("a_f0000.tif", "b_f0000.tif"):   # b: written before a crash, never recorded
        write_labels(np.ones((2, 2), np.int32), tmp_path / "labels" / name)
    assert store.remove_orphans() == ["labels/b_f0000.tif"]
    assert [p.name for p in (tmp_path / "labels").iterdir()] == ["a_f0000.tif"]
    # a folder of the previous manifest version has other columns: refused, not appended to
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    (tmp_path / MANIFEST).write_text(json.dumps({**manifest, "version": 1}))
    with pytest.raises(OutputError, match="older version"):
        OutputStore.open(tmp_path, "h", {}, overwrite=False, **cols)
    assert OutputStore.open(tmp_path, "h", {}, overwrite=True, **cols)._fresh
