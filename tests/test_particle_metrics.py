"""Tests for particle-level metrics (temseg_ablation.metrics.particle)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from temseg_ablation.metrics import matching as pmod
from temseg_ablation.metrics.particle import (
    SIZE_BINS_NM,
    ParticleMetrics,
    binned_detection_counts,
    binned_scores,
    boundary_f1,
    label_instances,
    match_particles,
    size_bin_names,
    size_distribution_distance,
)


def _two_squares_case():
    """True: squares 1 and 2. Pred: square 1 exactly, nothing at 2, an extra square elsewhere."""
    true = np.zeros((20, 20), dtype=np.int32)
    true[2:6, 2:6] = 1
    true[2:6, 12:16] = 2
    pred = np.zeros((20, 20), dtype=bool)
    pred[2:6, 2:6] = True
    pred[13:17, 5:9] = True
    return pred, true


def test_one_matched_one_missed_one_false_positive():
    pred, true = _two_squares_case()
    r = match_particles(pred, true)
    assert (r.tp, r.fp, r.fn) == (1, 1, 1)
    assert r.true_matched.tolist() == [True, False]
    assert r.pred_matched.sum() == 1
    assert r.pair_iou.tolist() == [1.0]
    m = ParticleMetrics()
    m.update(torch.from_numpy(pred)[None], torch.from_numpy(true)[None], 0.1)
    out = m.compute()
    assert out["det_precision"] == 0.5 and out["det_recall"] == 0.5 and out["det_f1"] == 0.5
    assert out["n_true"] == 2 and out["n_pred"] == 2 and out["n_matched"] == 1
    assert out["diam_mae_nm"] == 0.0 and out["diam_bias_nm"] == 0.0


@pytest.mark.parametrize(
    "has_true, has_pred, expected",
    [
        (False, False, (1.0, 1.0, 1.0)),
        (True, False, (0.0, 0.0, 0.0)),
        (False, True, (0.0, 0.0, 0.0)),
    ],
)
def test_empty_cases(has_true, has_pred, expected):
    true = np.zeros((10, 10), dtype=np.int32)
    pred = np.zeros((10, 10), dtype=bool)
    if has_true:
        true[2:5, 2:5] = 3
    if has_pred:
        pred[6:9, 6:9] = True
    r = match_particles(pred, true, pixel_size_nm=0.2)
    assert r.tp == 0 and r.fn == int(has_true) and r.fp == int(has_pred)
    m = ParticleMetrics()
    m.update(torch.from_numpy(pred)[None], torch.from_numpy(true)[None], 0.2)
    out = m.compute()
    assert (out["det_precision"], out["det_recall"], out["det_f1"]) == expected
    assert math.isnan(out["diam_mae_nm"])
    if has_true == has_pred:
        assert out["size_wasserstein_nm"] == 0.0 and out["boundary_f1"] == 1.0
    else:
        assert math.isnan(out["size_wasserstein_nm"]) and out["boundary_f1"] == 0.0


def test_speck_filter_removes_small_false_positives():
    pred, true = _two_squares_case()
    pred[18, 18] = True
    pred[0, 18:20] = True
    assert match_particles(pred, true).fp == 3
    r = match_particles(pred, true, min_size_px=3)
    assert (r.tp, r.fp, r.fn) == (1, 1, 1)
    r = match_particles(pred, true, min_size_px=17)
    assert (r.tp, r.fp, r.fn) == (0, 0, 2)


def test_eight_connectivity_joins_diagonals():
    mask = np.zeros((5, 5), dtype=bool)
    mask[[0, 1, 2, 3], [0, 1, 2, 3]] = True
    assert label_instances(mask)[1] == 1


def test_iou_threshold_controls_matching():
    true = np.zeros((10, 20), dtype=np.int32)
    true[0:10, 0:10] = 1
    pred = np.zeros((10, 20), dtype=bool)
    pred[0:10, 0:6] = True  # IoU 0.6
    assert match_particles(pred, true).tp == 1
    assert match_particles(pred, true, iou_threshold=0.7).tp == 0
    pred[:] = False
    pred[0:10, 0:4] = True  # IoU 0.4
    r = match_particles(pred, true)
    assert (r.tp, r.fp, r.fn) == (0, 1, 1)


def test_matching_is_one_to_one_at_iou_exactly_half():
    true = np.zeros((4, 8), dtype=np.int32)
    true[:, :4] = 1
    true[:, 4:] = 2
    pred = np.ones((4, 8), dtype=bool)  # IoU 0.5 with each half
    r = match_particles(pred, true, iou_threshold=0.5)
    assert (r.tp, r.fp, r.fn) == (1, 0, 1)
    assert r.true_matched.tolist() == [True, False]


def test_sparse_and_dense_overlap_paths_agree(monkeypatch):
    rng = np.random.default_rng(0)
    true, _ = label_instances(rng.random((40, 40)) > 0.6)
    pred = rng.random((40, 40)) > 0.55
    a = match_particles(pred, true)
    monkeypatch.setattr(pmod, "_DENSE_OVERLAP_LIMIT", 0)
    b = match_particles(pred, true)
    assert (a.tp, a.fp, a.fn) == (b.tp, b.fp, b.fn)
    np.testing.assert_array_equal(a.pair_true, b.pair_true)
    np.testing.assert_array_equal(a.pair_iou, b.pair_iou)


def test_label_values_and_bool_truth_are_accepted():
    pred, true = _two_squares_case()
    sparse = np.where(true == 1, 17, np.where(true == 2, 900, 0))
    a, b = match_particles(pred, true), match_particles(pred, sparse)
    c = match_particles(pred, true > 0)
    assert (a.tp, a.fp, a.fn) == (b.tp, b.fp, b.fn) == (c.tp, c.fp, c.fn)
    with pytest.raises(ValueError, match="shapes"):
        match_particles(pred, true[:5])
    with pytest.raises(TypeError, match="integer or bool"):
        match_particles(pred, true.astype(float))


def test_diameters_and_errors():
    true = np.zeros((20, 20), dtype=np.int32)
    true[0:4, 0:4] = 1  # area 16
    pred = np.zeros((20, 20), dtype=bool)
    pred[0:5, 0:4] = True  # area 20, IoU 0.8
    r = match_particles(pred, true, pixel_size_nm=0.5)
    assert r.unit == "nm"
    d_true = math.sqrt(4 * 16 / math.pi)
    d_pred = math.sqrt(4 * 20 / math.pi)
    assert r.true_diameter_px[0] == pytest.approx(d_true)
    assert r.true_diameter_nm[0] == pytest.approx(0.5 * d_true)
    assert r.diameter_error[0] == pytest.approx(0.5 * (d_pred - d_true))
    r_px = match_particles(pred, true)
    assert r_px.unit == "px" and r_px.true_diameter_nm is None
    assert r_px.diameter_error[0] == pytest.approx(d_pred - d_true)


def test_size_bins_recall_and_precision():
    assert size_bin_names() == ("0to2p5nm", "2p5to4nm", "4to7nm", "7toinfnm")
    assert SIZE_BINS_NM[1] == 2.5
    true = np.zeros((40, 40), dtype=np.int32)
    true[1:3, 1:3] = 1  # 4 px -> d = 2.26 px = 2.26 nm  (small, found)
    true[10:12, 1:3] = 2  # small, missed
    true[20:25, 20:25] = 3  # 25 px -> 5.64 nm (4-7 bin, found)
    pred = np.zeros((40, 40), dtype=bool)
    pred[1:3, 1:3] = True
    pred[20:25, 20:25] = True
    pred[30:33, 30:33] = True  # 9 px -> 3.39 nm, false positive in 2.5-4 bin
    r = match_particles(pred, true, pixel_size_nm=1.0)
    c = binned_detection_counts(r)
    np.testing.assert_array_equal(c["true_total"], [2, 0, 1, 0])
    np.testing.assert_array_equal(c["true_matched"], [1, 0, 1, 0])
    np.testing.assert_array_equal(c["pred_total"], [1, 1, 1, 0])
    np.testing.assert_array_equal(c["pred_matched"], [1, 0, 1, 0])
    s = binned_scores(c)
    np.testing.assert_allclose(s["recall"], [0.5, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(s["precision"], [1.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(s["f1"], [2 / 3, 0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="pixel_size_nm"):
        binned_detection_counts(match_particles(pred, true))


def test_boundary_f1():
    t = np.zeros((30, 30), dtype=bool)
    t[5:20, 5:20] = True
    same = boundary_f1(t, t)
    assert same["precision"] == same["recall"] == same["f1"] == 1.0
    assert same["pred_boundary"] == same["true_boundary"] == 56
    near = boundary_f1(np.roll(t, 1, axis=1), t, tolerance_px=2)
    assert near["f1"] == 1.0
    far = boundary_f1(np.roll(t, 5, axis=1), t, tolerance_px=2)
    assert far["f1"] < 1.0
    assert 0 < far["pred_hit"] < far["pred_boundary"]
    assert boundary_f1(np.zeros_like(t), np.zeros_like(t))["f1"] == 1.0
    assert boundary_f1(t, np.zeros_like(t))["f1"] == 0.0
    # a particle filling the frame has no boundary: the frame edge is not one
    assert boundary_f1(np.ones_like(t), np.ones_like(t))["true_boundary"] == 0


def test_size_distribution_distance():
    a = np.array([1.0, 2.0, 3.0])
    assert size_distribution_distance(a, a) == {"wasserstein": 0.0, "ks": 0.0}
    d = size_distribution_distance(a + 10, a)
    assert d["wasserstein"] == pytest.approx(10.0) and d["ks"] == 1.0
    assert size_distribution_distance([], []) == {"wasserstein": 0.0, "ks": 0.0}
    assert all(math.isnan(v) for v in size_distribution_distance([], a).values())


def _disks(seed, n_img=4, size=48):
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    lab = np.zeros((n_img, size, size), dtype=np.int32)
    for b in range(n_img):
        for i in range(6):
            r, c = rng.integers(4, size - 4, 2)
            rr, cc = disk((r, c), rng.uniform(1.0, 5.0), shape=(size, size))
            lab[b, rr, cc] = i + 1
    noise = rng.random(lab.shape) < 0.02
    pred = ((lab > 0) ^ noise) & ~(rng.random(lab.shape) < 0.05)
    return torch.from_numpy(pred), torch.from_numpy(lab)


def test_merge_of_two_ranks_equals_single_metric():
    pred, lab = _disks(1)
    px = torch.tensor([0.2, 0.25, 0.2, 0.3])
    whole = ParticleMetrics(min_size_px=2)
    whole.update(pred, lab, px)
    a, b = ParticleMetrics(min_size_px=2), ParticleMetrics(min_size_px=2)
    a.update(pred[:1], lab[:1], px[:1])
    b.update(pred[1:], lab[1:], px[1:])
    a.merge_state(b)
    ra, rw = a.compute(), whole.compute()
    assert ra.keys() == rw.keys()
    for k in rw:
        if math.isnan(rw[k]):
            assert math.isnan(ra[k]), k
        else:
            assert ra[k] == rw[k], k
    assert rw["n_true"] > 0 and 0 < rw["det_f1"] < 1 and rw["diam_mae_nm"] > 0


def test_update_checks_pixel_sizes():
    pred, lab = _disks(2, n_img=2, size=16)
    m = ParticleMetrics()
    with pytest.raises(ValueError, match="pixel sizes"):
        m.update(pred, lab, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="positive"):
        m.update(pred, lab, 0.0)


def test_compute_keys():
    pred, lab = _disks(3, n_img=1, size=24)
    m = ParticleMetrics()
    m.update(pred, lab, 0.1)
    out = m.compute()
    expected = {
        "det_precision",
        "det_recall",
        "det_f1",
        "diam_mae_nm",
        "diam_bias_nm",
        "diam_rmse_nm",
        "size_wasserstein_nm",
        "size_ks",
        "boundary_precision",
        "boundary_recall",
        "boundary_f1",
        "boundary_f1_1px",
        "boundary_f1_2px",
        "boundary_f1_3px",
        "recall_small",
        "n_true_small",
        "n_true",
        "n_pred",
        "n_matched",
        "n_images",
    }
    for name in size_bin_names():
        expected |= {f"recall_{name}", f"precision_{name}", f"f1_{name}"}
    assert set(out) == expected
    assert all(isinstance(v, float) for v in out.values())


@settings(max_examples=30, deadline=None, database=None)
@given(
    arrays(np.bool_, (12, 12)),
    arrays(np.int8, (12, 12), elements=st.integers(0, 4)),
    st.integers(0, 4),
    st.sampled_from([0.3, 0.5, 0.9]),
)
def test_random_masks_never_crash(pred, true, min_size, iou_thr):
    r = match_particles(pred, true, iou_threshold=iou_thr, min_size_px=min_size, pixel_size_nm=0.1)
    assert r.tp + r.fp == r.n_pred and r.tp + r.fn == r.n_true
    assert r.true_matched.sum() == r.pred_matched.sum() == r.tp
    assert np.all(r.pair_iou >= iou_thr)
    m = ParticleMetrics(iou_threshold=iou_thr, min_size_px=min_size)
    m.update(torch.from_numpy(pred)[None], torch.from_numpy(true)[None], 0.1)
    for k, v in m.compute().items():
        if k.startswith(("det_", "recall_", "precision_", "f1_", "boundary_", "size_ks")):
            assert math.isnan(v) or 0.0 <= v <= 1.0, k
