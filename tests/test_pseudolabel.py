"""Tests of the classical pseudo-labeller: exactness of the fast path, quality, batch caching."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import disk, opening, reconstruction

from temseg_ablation.data import _morph
from temseg_ablation.data.label_folder import LabelReport, label_folder
from temseg_ablation.data.pseudolabel import (
    PseudoLabelParams,
    pseudo_label,
    pseudo_label_instances,
    pseudo_label_reference,
    pseudo_label_stages,
    score_against_truth,
)

ROOT = Path(__file__).resolve().parents[1]


def _disc_frame(h: int = 128, w: int = 128, seed: int = 0, n: int = 6, noise: float = 0.03):
    """Dark soft-edged discs (thickness contrast) on a noisy bright background: (image, mask, labels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    labels = np.zeros((h, w), np.int32)
    thick = np.zeros((h, w))
    k = 0
    while k < n:
        rad = rng.uniform(7, 11)
        cy, cx = rng.uniform(14, h - 14), rng.uniform(14, w - 14)
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        if np.any(labels[r2 <= (rad + 4) ** 2]):
            continue
        k += 1
        labels[r2 <= rad**2] = k
        thick += 2 * np.sqrt(np.clip(rad**2 - r2, 0, None)) / rad
    img = ndi.gaussian_filter(np.exp(-0.8 * thick), 1.0)
    img = img * (1 + noise * rng.standard_normal((h, w)))
    return img, labels > 0, labels


def _ref_reconstruct(image: np.ndarray, method: str) -> np.ndarray:
    seed = image.copy()
    seed[1:-1, 1:-1] = image.min() if method == "dilation" else image.max()
    return reconstruction(seed, image, method=method)


def _small_images():
    """Random small images: continuous, heavily tied (plateaus), 1-ulp near-ties, thin shapes."""
    rng = np.random.default_rng(1234)
    for i in range(120):
        h, w = (int(v) for v in rng.integers(1, 16, 2))
        kind = i % 3
        if kind == 0:
            yield rng.random((h, w))
        elif kind == 1:
            yield rng.integers(0, 4, (h, w)).astype(float)
        else:
            # values 1 ulp apart: the result must copy values exactly, never round them
            yield 0.5 + rng.integers(0, 5, (h, w)) * np.spacing(0.5)


# --------------------------------------------------------------------------- exact morphology


@pytest.mark.parametrize("method", ["dilation", "erosion"])
def test_border_reconstruction_equals_skimage(method):
    for img in _small_images():
        np.testing.assert_array_equal(
            _morph.reconstruct_from_border(img, method), _ref_reconstruct(img, method)
        )


def test_basin_depth_equals_skimage_pair():
    for img in _small_images():
        r_ref = _ref_reconstruct(img, "dilation")
        d_ref = np.abs(r_ref - _ref_reconstruct(r_ref, "erosion"))
        r, d = _morph.basin_depth(img)
        np.testing.assert_array_equal(r, r_ref)
        np.testing.assert_array_equal(d, d_ref)


def _spiral_corridor(n: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(bool mask of a 1-px corridor spiralling in from the left border, its inner end)."""
    path = np.zeros((n, n), bool)
    y, x, dy, dx = 1, 0, 0, 1
    path[y, x] = True
    while True:
        for _ in range(2):  # go straight if the cell two ahead is free, else turn right once
            ny, nx = y + 2 * dy, x + 2 * dx
            if 1 <= ny < n - 1 and 1 <= nx < n - 1 and not path[ny, nx]:
                break
            dy, dx = dx, -dy
        else:
            return path, (y, x)
        path[y + dy, x + dx] = path[ny, nx] = True
        y, x = ny, nx


@pytest.mark.parametrize("n", [31, 64])
def test_reconstruction_follows_a_spiral_against_the_scan_order(n):
    """A value that must travel a corridor winding against both raster directions."""
    path, end = _spiral_corridor(n)
    ridge = np.where(path, 0.9, 0.0)
    ridge[end] = 1.0  # a dome at the spiral's heart, reachable only along the corridor
    r = _morph.reconstruct_from_border(ridge, "dilation")
    np.testing.assert_array_equal(r, _ref_reconstruct(ridge, "dilation"))
    assert r[end] == 0.9 and r[path].min() == 0.9  # 0.9 came in along the whole spiral
    basin = 1.0 - ridge
    np.testing.assert_array_equal(_morph.reconstruct_from_border(basin, "erosion"),
                                  _ref_reconstruct(basin, "erosion"))
    r_ref = _ref_reconstruct(basin, "dilation")
    rb, d = _morph.basin_depth(basin)
    np.testing.assert_array_equal(rb, r_ref)
    np.testing.assert_array_equal(d, np.abs(r_ref - _ref_reconstruct(r_ref, "erosion")))
    assert d[end] == pytest.approx(0.1)  # the heart fills only to the corridor's floor


def test_basin_depth_finds_enclosed_basin_depth():
    img = np.ones((7, 7))
    img[2:5, 2:5] = 0.25  # a basin enclosed by a rim at 1.0
    img[3, 3] = 0.0
    _, d = _morph.basin_depth(img)
    assert d[3, 3] == 1.0 and d[2, 2] == 0.75 and d[0, 0] == 0.0


def test_basin_connected_to_border_is_not_filled():
    img = np.ones((7, 7))
    img[3, 0:5] = 0.0  # a dark channel reaching the border drains
    _, d = _morph.basin_depth(img)
    assert not d.any()


@pytest.mark.parametrize("radius", [1, 2, 3, 5, 7])
def test_disk_opening_equals_skimage(radius):
    rng = np.random.default_rng(radius)
    for h, w in [(1, 1), (1, 9), (4, 3), (13, 17), (30, 24)]:
        img = rng.random((h, w))
        np.testing.assert_array_equal(_morph.disk_opening(img, radius), opening(img, disk(radius)))


def test_morph_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        _morph.reconstruct_from_border(np.zeros((3, 3)), "closing")
    with pytest.raises(ValueError, match="2-D"):
        _morph.basin_depth(np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="radius"):
        _morph.disk_opening(np.zeros((3, 3)), -1)


# --------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize(
    "params",
    [
        PseudoLabelParams(),
        PseudoLabelParams(sigma=1.0, opening_radius=3, sobel_weight=0.5),
        PseudoLabelParams(threshold=0.3, min_size_px=40),
        PseudoLabelParams(sigma=0.0, opening_radius=0, sobel_weight=0.0),
    ],
)
def test_fast_path_equals_reference(params):
    for seed in range(3):
        img, _, _ = _disc_frame(96, 112, seed=seed, n=4, noise=0.05)
        fast = pseudo_label(img, params)
        ref = pseudo_label_reference(img, params)
        assert fast.dtype == bool and fast.shape == img.shape
        union = np.count_nonzero(fast | ref)
        iou = np.count_nonzero(fast & ref) / union if union else 1.0
        assert iou >= 0.99
        np.testing.assert_array_equal(fast, ref)


def test_min_size_removes_small_components_like_reference():
    img, _, _ = _disc_frame(96, 112, seed=1, n=4, noise=0.05)
    sizes = np.bincount(ndi.label(pseudo_label(img), structure=np.ones((3, 3)))[0].ravel())[1:]
    cut = int(np.median(sizes)) + 1  # removes about half of the components
    params = PseudoLabelParams(min_size_px=cut)
    fast = pseudo_label(img, params)
    np.testing.assert_array_equal(fast, pseudo_label_reference(img, params))
    kept = np.bincount(ndi.label(fast, structure=np.ones((3, 3)))[0].ravel())[1:]
    assert 0 < kept.size < sizes.size and kept.min() >= cut


def test_without_numba_fallback_is_identical(monkeypatch):
    img, _, _ = _disc_frame(64, 72, seed=2, n=2)
    fast = pseudo_label(img)
    monkeypatch.setattr(_morph, "HAVE_NUMBA", False)
    np.testing.assert_array_equal(pseudo_label(img), fast)
    np.testing.assert_array_equal(_morph.disk_opening(img, 3), opening(img, disk(3)))


def test_fast_path_equals_reference_on_noise():
    # pure smoothed noise: many tiny basins and domes, the worst case for the floods
    img = np.random.default_rng(7).random((80, 90)).astype(np.float32)
    np.testing.assert_array_equal(pseudo_label(img), pseudo_label_reference(img))


def test_detects_dark_discs():
    for seed in range(3):
        img, mask, labels = _disc_frame(seed=seed)
        s = score_against_truth(pseudo_label(img), mask, labels)
        assert s["pixel_f1"] > 0.9
        assert s["count_error"] == 0


def test_bright_polarity():
    img, mask, labels = _disc_frame(seed=3)
    bright = img.max() - img + 0.1
    s = score_against_truth(pseudo_label(bright, PseudoLabelParams(particles="bright")), mask, labels)
    assert s["pixel_f1"] > 0.9
    # the wrong polarity must not find these particles
    wrong = score_against_truth(pseudo_label(bright), mask, labels)
    assert wrong["pixel_f1"] < 0.5


def test_stages_expose_intermediates():
    img, _, _ = _disc_frame(64, 64, seed=0, n=2)
    st = pseudo_label_stages(img)
    np.testing.assert_array_equal(st["r"], _ref_reconstruct(st["smoothed"], "dilation"))
    assert st["d"].min() >= 0 and st["d"].max() > 0
    assert 0 < st["threshold"] < 1
    np.testing.assert_array_equal(st["mask"], st["opened"] > st["threshold"])


def test_flat_background_gives_empty_mask():
    # a ramp has no enclosed basins: nothing to label, but no error either
    img = np.tile(np.linspace(0, 1, 40), (30, 1))
    assert not pseudo_label(img).any()
    assert not pseudo_label_reference(img).any()


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 8, 8)), "2-D"),
        (np.zeros(8), "2-D"),
        (np.zeros((0, 5)), "empty"),
        (np.full((8, 8), 3.0), "constant"),
        (np.where(np.eye(8) > 0, np.nan, 1.0), "non-finite"),
        (np.where(np.eye(8) > 0, np.inf, 1.0), "non-finite"),
        (np.full((8, 8), "a"), "dtype"),
    ],
)
def test_bad_images_raise(bad, message):
    with pytest.raises(ValueError, match=message):
        pseudo_label(bad)
    with pytest.raises(ValueError, match=message):
        pseudo_label_reference(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sigma": -1.0},
        {"sigma": float("nan")},
        {"opening_radius": 2.5},
        {"opening_radius": -1},
        {"sobel_weight": -0.1},
        {"particles": "grey"},
        {"threshold": "li"},
        {"threshold": 1.5},
        {"threshold": True},
        {"min_size_px": -3},
    ],
)
def test_bad_params_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        PseudoLabelParams(**kwargs)


def test_cache_key_stable_and_sensitive():
    base = PseudoLabelParams()
    assert base.cache_key() == PseudoLabelParams().cache_key()
    assert PseudoLabelParams(sigma=2).cache_key() == base.cache_key()  # 2 == 2.0
    changed = [
        PseudoLabelParams(sigma=1.5),
        PseudoLabelParams(opening_radius=4),
        PseudoLabelParams(sobel_weight=0.5),
        PseudoLabelParams(particles="bright"),
        PseudoLabelParams(threshold=0.5),
        PseudoLabelParams(min_size_px=10),
    ]
    keys = {p.cache_key() for p in changed}
    assert len(keys) == len(changed) and base.cache_key() not in keys
    # same key in a fresh interpreter with a different hash seed
    code = (
        "from temseg_ablation.data.pseudolabel import PseudoLabelParams;"
        "print(PseudoLabelParams().cache_key())"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == base.cache_key()


def test_score_against_truth_known_values():
    true = np.zeros((10, 10), bool)
    true[1:3, 1:3] = True
    true[6:8, 6:8] = True
    labels = ndi.label(true)[0]
    pred = np.zeros_like(true)
    pred[1:3, 1:4] = True  # 4 hits, 2 false positives, misses the second particle
    s = score_against_truth(pred, true, labels)
    assert s["precision"] == pytest.approx(4 / 6)
    assert s["recall"] == pytest.approx(4 / 8)
    assert s["pixel_f1"] == pytest.approx(2 * 4 / 14)
    assert (s["count_pred"], s["count_true"], s["count_error"]) == (1, 2, -1)
    with pytest.raises(ValueError, match="shape"):
        score_against_truth(pred[:5], true, labels)


# --------------------------------------------------------------------------- batch labelling


@pytest.fixture
def readers():
    from temseg_ablation.data import readers

    return readers


def _write_inputs(folder: Path, n: int = 2) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img, _, _ = _disc_frame(64, 72, seed=10 + i, n=2)
        p = folder / f"frame{i}.npy"
        np.save(p, img.astype(np.float32))
        paths.append(p)
    return paths


def test_label_folder_writes_masks_and_hits_cache(tmp_path, readers):
    paths = _write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    rep = label_folder(paths, out, n_jobs=1, cache_dir=cache, progress=False)
    assert isinstance(rep, LabelReport)
    assert rep.failed == [] and rep.ok == paths
    assert (rep.n_computed, rep.n_cached, rep.n_frames) == (2, 0, 2)
    for p, o in zip(paths, rep.outputs, strict=True):
        assert o == out / f"{p.stem}.npy"
        saved = np.load(o)
        assert saved.dtype == np.uint8
        expected = pseudo_label(readers.read_frames(p).images[0])
        np.testing.assert_array_equal(saved.astype(bool), expected)
    cache_files = sorted(cache.iterdir())
    assert len(cache_files) == 2
    mtimes = [f.stat().st_mtime_ns for f in cache_files]
    first = [np.load(o) for o in rep.outputs]

    again = label_folder(paths, out, n_jobs=1, cache_dir=cache, progress=False)
    assert (again.n_computed, again.n_cached) == (0, 2)
    assert sorted(cache.iterdir()) == cache_files
    assert [f.stat().st_mtime_ns for f in cache_files] == mtimes
    for o, m in zip(again.outputs, first, strict=True):
        np.testing.assert_array_equal(np.load(o), m)  # cached masks are the computed ones

    # a parameter change must not reuse the old entries
    other = label_folder(
        paths, out, PseudoLabelParams(opening_radius=3), n_jobs=1, cache_dir=cache, progress=False
    )
    assert (other.n_computed, other.n_cached) == (2, 0)
    assert len(list(cache.iterdir())) == 4


def test_label_folder_cache_follows_content_not_name(tmp_path, readers):
    (p,) = _write_inputs(tmp_path / "in", n=1)
    out = tmp_path / "out"
    label_folder([p], out, n_jobs=1, progress=False)
    assert (out / ".cache").is_dir()  # default cache location
    img = np.load(p)
    img[10:20, 10:20] *= 0.5
    np.save(p, img)
    rep = label_folder([p], out, n_jobs=1, progress=False)
    assert (rep.n_computed, rep.n_cached) == (1, 0)


def test_label_folder_reports_bad_files_and_goes_on(tmp_path, readers):
    good = _write_inputs(tmp_path / "in", n=1)
    corrupt = tmp_path / "in" / "broken.npy"
    corrupt.write_bytes(b"not an npy file at all")
    flat = tmp_path / "in" / "flat.npy"
    np.save(flat, np.ones((32, 32), np.float32))
    missing = tmp_path / "in" / "missing.npy"
    rep = label_folder(
        [corrupt, *good, flat, missing], tmp_path / "out", n_jobs=1, progress=False
    )
    assert rep.ok == good
    failed = dict(rep.failed)
    assert set(failed) == {corrupt, flat, missing}
    for path, msg in failed.items():
        assert str(path) in msg and "\n" not in msg
    assert "constant" in failed[flat]
    assert len(rep.outputs) == 1 and rep.outputs[0].exists()


def test_label_folder_png_and_name_collision(tmp_path, readers):
    a = _write_inputs(tmp_path / "a", n=1)[0]
    b = _write_inputs(tmp_path / "b", n=1)[0]  # same stem as a
    rep = label_folder([a, b], tmp_path / "out", n_jobs=1, progress=False, fmt="png")
    assert rep.ok == [a]
    assert rep.failed[0][0] == b and "collides" in rep.failed[0][1]
    from PIL import Image

    png = np.asarray(Image.open(rep.outputs[0]))
    assert set(np.unique(png)) <= {0, 255}
    np.testing.assert_array_equal(png > 0, pseudo_label(np.load(a)))
    with pytest.raises(ValueError, match="fmt"):
        label_folder([a], tmp_path / "out", fmt="jpg")


def test_label_folder_multiframe_file(tmp_path, readers):
    frames = np.stack([_disc_frame(48, 48, seed=s, n=1)[0] for s in range(3)]).astype(np.float32)
    p = tmp_path / "stack.npy"
    np.save(p, frames)
    rep = label_folder([p], tmp_path / "out", n_jobs=1, progress=False)
    assert not rep.failed  # an (N, H, W) .npy is a stack of N frames
    assert rep.n_frames == 3
    assert [o.name for o in rep.outputs] == [f"stack_f{i:04d}.npy" for i in range(3)]
    for i, o in enumerate(rep.outputs):
        np.testing.assert_array_equal(np.load(o).astype(bool), pseudo_label(frames[i]))


@pytest.mark.slow
def test_label_folder_parallel_matches_serial(tmp_path, readers):
    paths = _write_inputs(tmp_path / "in", n=4)
    par = label_folder(paths, tmp_path / "par", n_jobs=2, progress=False)
    ser = label_folder(paths, tmp_path / "ser", n_jobs=1, progress=False)
    assert par.failed == [] and par.n_computed == 4
    for a, b in zip(par.outputs, ser.outputs, strict=True):
        np.testing.assert_array_equal(np.load(a), np.load(b))


# --------------------------------------------------------------------------- lengths in nm, scale, instances


def test_cache_keys_of_existing_params_are_unchanged():
    # keys computed before nm lengths and instance splitting existed: old caches must still hit
    assert PseudoLabelParams().cache_key() == "e23c7066df97bff6"
    assert PseudoLabelParams(sigma=1.0, opening_radius=3).cache_key() == "4f0abafb76196de0"
    assert (
        PseudoLabelParams(particles="bright", min_size_px=10, threshold=0.4).cache_key()
        == "54e9114b9bad7629"
    )
    # the same pixel values written as lengths hash alike
    assert PseudoLabelParams(sigma="2px", opening_radius="5px").cache_key() == "e23c7066df97bff6"
    nm = PseudoLabelParams.from_nm()
    assert nm.cache_key() != PseudoLabelParams().cache_key()
    assert nm.cache_key() == PseudoLabelParams(sigma="0.36nm", opening_radius="0.9nm").cache_key()
    changed = [
        PseudoLabelParams(min_diameter=3),
        PseudoLabelParams(min_diameter="1nm"),
        PseudoLabelParams(split_touching=True),
        PseudoLabelParams(split_touching=True, split_by="intensity"),
        PseudoLabelParams(split_touching=True, split_min_distance=4),
        PseudoLabelParams.from_nm(sigma_nm=0.4),
    ]
    keys = {p.cache_key() for p in changed} | {nm.cache_key(), PseudoLabelParams().cache_key()}
    assert len(keys) == len(changed) + 2


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"sigma": "2 furlongs"}, "sigma"),
        ({"sigma": "-1nm"}, "sigma"),
        ({"opening_radius": "2.5px"}, "opening_radius"),
        ({"opening_radius": True}, "opening_radius"),
        ({"min_diameter": -1}, "min_diameter"),
        ({"split_min_distance": "x"}, "split_min_distance"),
        ({"split_touching": "yes"}, "split_touching"),
        ({"split_by": "colour"}, "split_by"),
    ],
)
def test_bad_length_params_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PseudoLabelParams(**kwargs)


def test_params_to_dict_round_trips():
    p = PseudoLabelParams.from_nm(split_touching=True, min_diameter_nm=1.0)
    d = p.to_dict()
    assert d["sigma"] == "0.36nm" and d["opening_radius"] == "0.9nm" and d["min_diameter"] == "1nm"
    assert PseudoLabelParams(**d) == p
    assert PseudoLabelParams(**PseudoLabelParams().to_dict()) == PseudoLabelParams()


@pytest.mark.parametrize(
    "params",
    [
        PseudoLabelParams.from_nm(),
        PseudoLabelParams.from_nm(min_diameter_nm=3.0),
        PseudoLabelParams(min_diameter=9.5),
        PseudoLabelParams(split_touching=True),
        PseudoLabelParams(split_touching=True, split_by="intensity", sigma=1.0, opening_radius=3),
    ],
)
def test_fast_path_equals_reference_with_new_options(params):
    img, _, _ = _disc_frame(96, 112, seed=4, n=5, noise=0.05)
    fast = pseudo_label(img, params, 0.18)
    np.testing.assert_array_equal(fast, pseudo_label_reference(img, params, 0.18))
    assert fast.any()


def test_min_diameter_is_min_size_of_a_disc():
    img, _, _ = _disc_frame(96, 112, seed=1, n=4, noise=0.05)
    sizes = np.bincount(ndi.label(pseudo_label(img), structure=np.ones((3, 3)))[0].ravel())[1:]
    d = 2 * np.sqrt(np.median(sizes) / np.pi) + 0.5  # removes about half of the components
    by_diameter = pseudo_label(img, PseudoLabelParams(min_diameter=d))
    by_area = pseudo_label(img, PseudoLabelParams(min_size_px=int(np.ceil(np.pi / 4 * d * d))))
    np.testing.assert_array_equal(by_diameter, by_area)
    # the same in nm at 0.5 nm/px
    np.testing.assert_array_equal(
        pseudo_label(img, PseudoLabelParams(min_diameter=f"{d * 0.5}nm"), 0.5), by_diameter
    )
    assert np.count_nonzero(by_diameter) < np.count_nonzero(pseudo_label(img))


def test_stages_report_params_and_scale():
    img, _, _ = _disc_frame(64, 64, seed=0, n=2)
    st = pseudo_label_stages(img)
    assert st["params"] == PseudoLabelParams() and st["scale"].source == "pixels"
    st = pseudo_label_stages(img, PseudoLabelParams.from_nm(), 0.09)
    assert (st["params"].sigma, st["params"].opening_radius) == (4.0, 10)
    assert st["scale"].source == "calibration" and st["scale"].pixel_size_nm == 0.09
    assert "labels" not in st
    st = pseudo_label_stages(img, PseudoLabelParams(split_touching=True))
    assert st["labels"].dtype == np.int32
    np.testing.assert_array_equal(st["labels"] > 0, st["mask"])


def test_pseudo_label_instances_without_split_are_components():
    img, mask, labels = _disc_frame(seed=2)
    inst = pseudo_label_instances(img)
    assert inst.dtype == np.int32
    assert inst.max() == ndi.label(pseudo_label(img), structure=np.ones((3, 3)))[1] == labels.max()
    split = pseudo_label_instances(img, PseudoLabelParams(split_touching=True))
    assert split.max() == labels.max()  # separate discs stay as they are


def test_label_folder_with_nm_params(tmp_path, readers):
    paths = _write_inputs(tmp_path / "in", n=2)  # .npy files carry no calibration
    nm = PseudoLabelParams.from_nm()
    cache = tmp_path / "cache"
    rep = label_folder(paths, tmp_path / "a", nm, n_jobs=1, cache_dir=cache, progress=False)
    assert rep.ok == [] and len(rep.failed) == 2
    for path, msg in rep.failed:
        assert str(path) in msg and "pixel size" in msg and "\n" not in msg

    rep = label_folder(
        paths, tmp_path / "b", nm, n_jobs=1, cache_dir=cache, progress=False, default_pixel_size_nm=0.18
    )
    assert rep.ok == paths and rep.n_computed == 2
    assert rep.scales[paths[0]] == ["calibration 0.18 nm/px"]
    for p, o in zip(paths, rep.outputs, strict=True):
        # nm parameters at 0.18 nm/px are the paper's pixels
        np.testing.assert_array_equal(np.load(o).astype(bool), pseudo_label(np.load(p)))

    # the scale estimate wants more than two particles per frame
    for i, p in enumerate(paths):
        np.save(p, _disc_frame(128, 128, seed=20 + i, n=6)[0].astype(np.float32))
    est = label_folder(
        paths, tmp_path / "c", nm, n_jobs=1, cache_dir=cache, progress=False, estimate_scale="if_missing"
    )
    assert est.ok == paths and est.n_computed == 2  # a different cache entry than the calibrated one
    assert all(s[0].startswith("estimated") for s in est.scales.values())
    again = label_folder(
        paths, tmp_path / "c", nm, n_jobs=1, cache_dir=cache, progress=False, estimate_scale="if_missing"
    )
    assert again.n_cached == 2 and again.scales == est.scales
    with pytest.raises(ValueError, match="estimate_scale"):
        label_folder(paths, tmp_path / "d", nm, estimate_scale="maybe")
    with pytest.raises(ValueError, match="default_pixel_size_nm"):
        label_folder(paths, tmp_path / "d", nm, default_pixel_size_nm=-1.0)
