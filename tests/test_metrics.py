"""Tests for pixel-level metrics (temseg_ablation.metrics.pixel)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from temseg_ablation.metrics.pixel import (
    THRESHOLDS,
    PixelThresholdMetrics,
    activation_spread,
    binarize,
    confusion_by_threshold,
    curves_dataframe,
    otsu_threshold,
    otsu_thresholds,
    prf,
    scalar_items,
)
from temseg_ablation.metrics.uncertainty import (
    DeadOutputFraction,
    EdgeUncertainty,
    dead_output_fraction,
    edge_band,
    edge_uncertainty,
    edge_uncertainty_counts,
)

# ---------------------------------------------------------------- thresholds and binarize


def test_thresholds_are_exact_decimals():
    assert THRESHOLDS.shape == (21,)
    assert THRESHOLDS[0] == 0.0 and THRESHOLDS[-1] == 1.0
    assert THRESHOLDS[7] == 0.35 and THRESHOLDS[8] == 0.4
    np.testing.assert_array_equal(THRESHOLDS, [round(0.05 * i, 2) for i in range(21)])


def test_threshold_zero_predicts_everything_and_one_only_exact_ones():
    prob = np.array([[0.0, 1e-9, 0.5], [0.999999, 1.0, 0.0]], dtype=np.float32)
    assert binarize(prob, 0.0).all()
    np.testing.assert_array_equal(binarize(prob, 1.0), prob == 1.0)
    tp = torch.from_numpy(prob)
    assert bool(binarize(tp, 0.0).all())
    assert torch.equal(binarize(tp, 1.0), tp == 1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binarize_numpy_and_torch_agree_at_threshold_values(dtype):
    # probabilities sitting exactly on (rounded) thresholds are the delicate case
    prob = np.concatenate([THRESHOLDS, np.nextafter(THRESHOLDS, -1.0).clip(0, 1)]).astype(dtype)
    for t in THRESHOLDS:
        a = binarize(prob, t)
        b = binarize(torch.from_numpy(prob), float(t)).numpy()
        np.testing.assert_array_equal(a, b)
        # a probability stored as exactly t (in its precision) is predicted at t
        assert a[np.flatnonzero(prob == dtype(t))].all()


def test_confusion_by_threshold_matches_bruteforce_and_torch():
    rng = np.random.default_rng(1)
    prob = rng.random((3, 9, 11)).astype(np.float32)
    prob[0, 0, :5] = [0.05, 0.35, 0.4, 1.0, 0.0]
    target = rng.random((3, 9, 11)) > 0.6
    c = confusion_by_threshold(prob, target)
    for i, t in enumerate(THRESHOLDS):
        pred = binarize(prob, t)
        assert c["tp"][i] == (pred & target).sum()
        assert c["fp"][i] == (pred & ~target).sum()
        assert c["fn"][i] == (~pred & target).sum()
        assert c["tn"][i] == (~pred & ~target).sum()
    ct = confusion_by_threshold(torch.from_numpy(prob), torch.from_numpy(target))
    for k in c:
        np.testing.assert_array_equal(c[k], ct[k])
    # threshold 0 predicts everything
    assert c["fn"][0] == 0 and c["tn"][0] == 0


def test_bad_probabilities_raise():
    m = PixelThresholdMetrics()
    t = torch.zeros(1, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.update(torch.full((1, 2, 2), 1.5), t)
    with pytest.raises(ValueError, match="NaN"):
        m.update(torch.full((1, 2, 2), float("nan")), t)
    with pytest.raises(ValueError, match="shapes differ"):
        m.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3, dtype=torch.bool))


# ---------------------------------------------------------------- prf


def test_prf_known_values():
    r = prf(6, 2, 4)
    assert r["precision"] == pytest.approx(0.75)
    assert r["recall"] == pytest.approx(0.6)
    assert r["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert r["iou"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "counts, expected",
    [
        ((0, 0, 0), 1.0),  # nothing to find, nothing predicted
        ((0, 3, 0), 0.0),  # predictions but no truth
        ((0, 0, 3), 0.0),  # truth but no predictions
        ((0, 2, 3), 0.0),
    ],
)
def test_prf_empty_conventions(counts, expected):
    r = prf(*counts)
    for key in ("precision", "recall", "f1", "iou"):
        assert float(r[key]) == expected, key


def test_prf_elementwise_numpy_and_torch_agree():
    tp = np.array([0, 0, 0, 5, 1])
    fp = np.array([0, 4, 0, 1, 0])
    fn = np.array([0, 0, 2, 3, 0])
    a = prf(tp, fp, fn)
    b = prf(torch.from_numpy(tp), torch.from_numpy(fp), torch.from_numpy(fn))
    for k in a:
        assert a[k].shape == (5,)
        np.testing.assert_allclose(a[k], b[k].numpy(), rtol=0, atol=0)
    np.testing.assert_array_equal(a["f1"][:3], [1.0, 0.0, 0.0])


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
)
def test_prf_properties(tp, fp, fn):
    r = {k: float(v) for k, v in prf(tp, fp, fn).items()}
    for v in r.values():
        assert 0.0 <= v <= 1.0
    p, rc = r["precision"], r["recall"]
    if p + rc > 0:
        assert r["f1"] == pytest.approx(2 * p * rc / (p + rc), rel=1e-12, abs=1e-15)
    else:
        assert r["f1"] == 0.0
    assert r["iou"] == pytest.approx(r["f1"] / (2 - r["f1"]), rel=1e-12, abs=1e-15)


# ---------------------------------------------------------------- Otsu


def test_otsu_bimodal_constant_and_paths():
    img = np.zeros((8, 8), dtype=np.float32)
    img[:, 4:] = 0.8
    t = otsu_threshold(img)
    assert 0.0 < t <= 0.8
    assert binarize(img, t).sum() == 32
    # empty bins between the modes: report the middle of the gap
    assert t == pytest.approx(0.4, abs=0.8 / 256)
    assert otsu_threshold(torch.from_numpy(img)) == t
    assert otsu_threshold(np.full((5, 5), 0.3)) == 0.5
    assert otsu_threshold(np.zeros((5, 5))) == 0.5


def test_otsu_close_to_skimage_on_noisy_bimodal():
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(3)
    img = np.concatenate([rng.normal(0.2, 0.05, 3000), rng.normal(0.7, 0.1, 1000)]).clip(0, 1)
    ours = otsu_threshold(img)
    assert abs(ours - threshold_otsu(img)) <= 2 * (img.max() - img.min()) / 256


def test_otsu_thresholds_batched_matches_single():
    rng = np.random.default_rng(4)
    batch = torch.from_numpy(rng.beta(0.4, 0.4, (3, 16, 16)))
    many = otsu_thresholds(batch)
    for i in range(3):
        assert float(many[i]) == otsu_threshold(batch[i])


# ---------------------------------------------------------------- PixelThresholdMetrics


def _uneven_batch():
    """Image A: 32 particle px predicted perfectly; image B: 2 particle px all missed."""
    prob = torch.zeros(2, 8, 8)
    target = torch.zeros(2, 8, 8, dtype=torch.bool)
    target[0, :, :4] = True
    prob[0, :, :4] = 1.0
    target[1, 0, :2] = True
    return prob, target


def test_pooled_and_per_image_statistics_differ_correctly():
    prob, target = _uneven_batch()
    m = PixelThresholdMetrics()
    m.update(prob, target)
    r = m.compute()
    i = int(np.flatnonzero(THRESHOLDS == 0.5)[0])
    # pooled: tp=32, fp=0, fn=2
    assert float(r["f1"][i]) == pytest.approx(64 / 66)
    assert float(r["recall"][i]) == pytest.approx(32 / 34)
    assert float(r["precision"][i]) == 1.0
    # per image: F1 = 1 and 0
    assert float(r["f1_mean"][i]) == pytest.approx(0.5)
    assert float(r["f1_std"][i]) == pytest.approx(0.5)
    # image B has no predictions but truth: precision 0 by convention
    assert float(r["precision_mean"][i]) == pytest.approx(0.5)
    # threshold 0 predicts everything: recall 1, precision = positives / all pixels
    assert float(r["recall"][0]) == 1.0
    assert int(r["tn"][0]) == 0 and int(r["fn"][0]) == 0
    assert float(r["precision"][0]) == pytest.approx(34 / 128)
    # threshold 1 predicts only prob == 1.0 (exactly image A's particle)
    assert int(r["tp"][-1]) == 32 and int(r["fp"][-1]) == 0
    assert float(r["n_images"]) == 2


def test_all_background_image_scores_one():
    m = PixelThresholdMetrics()
    m.update(torch.full((1, 4, 4), 0.2), torch.zeros(1, 4, 4, dtype=torch.bool))
    r = m.compute()
    above = THRESHOLDS > 0.2
    # nothing predicted and nothing true above 0.2
    np.testing.assert_array_equal(r["f1"].numpy()[above], 1.0)
    np.testing.assert_array_equal(r["f1_mean"].numpy()[above], 1.0)
    # everything predicted, nothing true below 0.2
    np.testing.assert_array_equal(r["precision"].numpy()[~above], 0.0)


def test_otsu_entries_match_direct_computation():
    rng = np.random.default_rng(5)
    target = torch.from_numpy(rng.random((3, 12, 12)) > 0.7)
    prob = (target.double() * 0.7 + torch.from_numpy(rng.random((3, 12, 12))) * 0.3).float()
    m = PixelThresholdMetrics()
    m.update(prob, target)
    r = m.compute()
    f1s, thr, tp, fp, fn = [], [], 0, 0, 0
    for i in range(3):
        t = otsu_threshold(prob[i])
        pred = binarize(prob[i], t)
        a, b, c = (
            int((pred & target[i]).sum()),
            int((pred & ~target[i]).sum()),
            int((~pred & target[i]).sum()),
        )
        tp, fp, fn = tp + a, fp + b, fn + c
        f1s.append(float(prf(a, b, c)["f1"]))
        thr.append(t)
    assert float(r["otsu_f1"]) == pytest.approx(float(prf(tp, fp, fn)["f1"]))
    assert float(r["otsu_f1_mean"]) == pytest.approx(np.mean(f1s))
    assert float(r["otsu_f1_std"]) == pytest.approx(np.std(f1s))
    assert float(r["mean_otsu_threshold"]) == pytest.approx(np.mean(thr))


def test_merge_of_two_ranks_equals_single_metric():
    rng = np.random.default_rng(6)
    target = torch.from_numpy(rng.random((6, 10, 10)) > 0.6)
    prob = torch.from_numpy(rng.random((6, 10, 10))).float()
    whole = PixelThresholdMetrics()
    whole.update(prob[:2], target[:2])
    whole.update(prob[2:], target[2:])
    a, b = PixelThresholdMetrics(), PixelThresholdMetrics()
    a.update(prob[:3], target[:3])
    b.update(prob[3:], target[3:])
    a.merge_state(b)
    ra, rw = a.compute(), whole.compute()
    assert ra.keys() == rw.keys()
    # all states are integer sums, so the split must not change a single bit
    for k in rw:
        assert torch.equal(ra[k], rw[k]), k
    assert 0 < float(rw["f1_std"][10]) < 1


def test_curves_dataframe_and_scalar_items():
    prob, target = _uneven_batch()
    m = PixelThresholdMetrics()
    m.update(prob, target)
    r = m.compute()
    df = curves_dataframe(r)
    assert len(df) == 21
    assert {"threshold", "precision", "recall", "f1", "iou", "f1_mean", "f1_std"} <= set(df.columns)
    np.testing.assert_allclose(df["threshold"], THRESHOLDS)
    np.testing.assert_allclose(df["f1"], r["f1"].numpy())
    s = scalar_items(r)
    assert "otsu_f1" in s and "f1" not in s
    assert all(isinstance(v, float) for v in s.values())
    with pytest.raises(KeyError):
        curves_dataframe({"threshold": r["threshold"]})


def test_empty_metric_compute_gives_nan_means():
    r = PixelThresholdMetrics().compute()
    assert torch.isnan(r["f1_mean"]).all()
    assert float(r["n_images"]) == 0


@settings(max_examples=30, deadline=None, database=None)
@given(
    arrays(np.float32, (2, 5, 6), elements=st.floats(0, 1, width=32)),
    arrays(np.bool_, (2, 5, 6)),
)
def test_pixel_metrics_random_inputs_stay_in_range(prob, target):
    m = PixelThresholdMetrics()
    m.update(torch.from_numpy(prob), torch.from_numpy(target))
    r = m.compute()
    for k in ("precision", "recall", "f1", "iou", "f1_mean", "f1_std", "otsu_f1", "otsu_f1_mean"):
        v = r[k].numpy()
        assert np.all((v >= 0) & (v <= 1)), k
    total = r["tp"] + r["fp"] + r["fn"] + r["tn"]
    assert bool((total == prob.size).all())
    # recall never increases with the threshold
    assert bool((r["tp"][1:] <= r["tp"][:-1]).all())
    assert int(r["tp"][0]) == int(target.sum())


# ---------------------------------------------------------------- edge uncertainty


def _square(h=10, lo=3, hi=7):
    t = np.zeros((h, h), dtype=bool)
    t[lo:hi, lo:hi] = True
    return t


def test_edge_band_counts_both_sides():
    t = _square()
    band = edge_band(t, band_px=1)[0].numpy()
    # inner ring of a 4x4 square: 12 px; outer 6x6 ring: 20 px
    assert band.sum() == 32
    assert band[t].sum() == 12 and band[~t].sum() == 20
    assert edge_band(t, 0).sum() == 0
    # the image border is not an edge
    full = np.ones((6, 6), dtype=bool)
    assert edge_band(full, 2).sum() == 0


def test_edge_uncertainty_known_fraction():
    t = _square()
    band = edge_band(t, 1)[0].numpy()
    prob = np.where(t, 0.95, 0.02).astype(np.float32)
    idx = np.argwhere(band)[:8]
    prob[idx[:, 0], idx[:, 1]] = 0.5
    prob[0, 0] = 0.5  # uncertain but far from any edge
    assert edge_uncertainty(prob, t, band_px=1) == pytest.approx(8 / 32)
    # bounds are strict
    prob2 = np.where(band, 0.1, 0.0).astype(np.float32)
    assert edge_uncertainty(prob2, t, band_px=1) == 0.0
    assert math.isnan(edge_uncertainty(prob, np.zeros_like(t)))


def test_edge_uncertainty_metric_accumulates_and_merges():
    rng = np.random.default_rng(7)
    t = torch.from_numpy(rng.random((4, 16, 16)) > 0.8)
    p = torch.from_numpy(rng.random((4, 16, 16))).float()
    whole = EdgeUncertainty(band_px=2)
    whole.update(p, t)
    a, b = EdgeUncertainty(band_px=2), EdgeUncertainty(band_px=2)
    a.update(p[:1], t[:1])
    b.update(p[1:], t[1:])
    a.merge_state(b)
    num, den = edge_uncertainty_counts(p, t, band_px=2)
    assert float(whole.compute()) == num / den
    assert float(a.compute()) == float(whole.compute())
    assert math.isnan(float(EdgeUncertainty().compute()))


# ---------------------------------------------------------------- dead outputs, activation spread


def test_dead_output_fraction_of_relu_negative_is_one():
    x = torch.relu(-torch.rand(2, 8, 8) - 0.1)
    assert dead_output_fraction(x) == 1.0
    assert dead_output_fraction(torch.relu(torch.rand(2, 8, 8) + 0.1)) == 0.0
    half = torch.cat([torch.zeros(4), torch.ones(4)])
    assert dead_output_fraction(half.numpy()) == 0.5
    m = DeadOutputFraction()
    m.update(x)
    m.update(torch.ones(2, 8, 8))
    assert float(m.compute()) == pytest.approx(0.5)


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (5, 7), (11,), ()])
def test_moments_match_a_float64_pass(shape):
    """Float32 plane sums + float64 accumulation agree with a float64 pass, even far off zero."""
    from temseg_ablation.metrics.activation import moments

    g = torch.Generator().manual_seed(1)
    x = 50.0 + torch.randn(shape, generator=g)  # mean 50 x the sd: the hard case for E[x^2] - E[x]^2
    total, total_sq, n = moments(x)
    ref = x.to(torch.float64)
    assert n == ref.numel() and total.dtype == total_sq.dtype == torch.float64
    assert float(total) == pytest.approx(float(ref.sum()), rel=1e-6)
    assert float(total_sq) == pytest.approx(float((ref * ref).sum()), rel=1e-6)
    if n > 1:
        var = float(total_sq) / n - (float(total) / n) ** 2
        assert var == pytest.approx(float(ref.var(unbiased=False)), rel=1e-2)
    half, _, _ = moments(x.to(torch.bfloat16))
    assert float(half) == pytest.approx(float(x.to(torch.bfloat16).double().sum()), rel=1e-6)
    assert moments(torch.zeros(0, 4, 4))[2] == 0


def test_activation_spread():
    g = torch.Generator().manual_seed(0)
    acts = [torch.randn(1000, generator=g), 10 * torch.randn(1000, generator=g)]
    out = activation_spread(acts)
    assert out["std"].shape == (2,)
    assert out["ratio"] == pytest.approx(out["std"][1] / out["std"][0])
    assert 8 < out["ratio"] < 12
    assert activation_spread([torch.ones(3), torch.zeros(3)])["ratio"] == 1.0
    assert activation_spread([torch.ones(3), torch.arange(3.0)])["ratio"] == math.inf
    with pytest.raises(ValueError):
        activation_spread([])
