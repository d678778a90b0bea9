"""Table 1 measures that can fail: hand-made cases whose answer is known in advance."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import norm as gauss
from torch import nn

from temseg_ablation.metrics.activation import (
    ActivationMoments,
    activation_spread,
    output_norm_params,
    probed_layers,
    spread_ratio,
)
from temseg_ablation.metrics.edges import (
    EdgeProfileMetrics,
    boundary_hits,
    edge_profiles,
    ramp_and_offset,
    signed_distance,
)
from temseg_ablation.metrics.particle import ParticleMetrics, boundary_f1, match_particles
from temseg_ablation.metrics.separation import ParticleSeparation, auroc
from temseg_ablation.models.layers import ConvUnit
from temseg_ablation.models.unet import UNet
from temseg_ablation.training.module import SegmentationModule

GAUSS_10_90 = 2 * gauss.ppf(0.9)  # 2.563: 10-90 % rise of a Gaussian CDF, in sigmas


def _disc(size: int, radius: float, centre: tuple[float, float] | None = None) -> np.ndarray:
    """Distance (px) of every pixel centre from ``centre`` (default: the middle)."""
    cy, cx = centre if centre is not None else (size / 2, size / 2)
    y, x = np.mgrid[:size, :size]
    return np.hypot(y - cy, x - cx)


def _ramp(prob: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    r, o = ramp_and_offset(*edge_profiles(prob, labels))
    assert r.shape == (1,)
    return float(r[0]), float(o[0])


# ------------------------------------------------------------------ particle AUROC


def test_dead_particle_channel_gives_half_and_perfect_gives_one():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 32, 32, generator=g) > 0.7
    for constant in (0.0, -3.25, 7.0):  # dead ReLU output, or a batch-norm shift of it
        m = ParticleSeparation()
        m.update(torch.full((2, 32, 32), constant), target)
        out = m.compute()
        assert float(out["auroc"]) == 0.5
        assert auroc(torch.full((2, 32, 32), constant), target) == 0.5
    assert float(out["dead_on_true"]) == 0.0  # constant 7.0 is not zero
    perfect = torch.where(target, 2.0, -1.0) + 0.1 * torch.rand(2, 32, 32, generator=g)
    m = ParticleSeparation()
    m.update(perfect, target)
    assert float(m.compute()["auroc"]) == 1.0 and float(m.compute()["auroc_bin_error"]) == 0.0
    m = ParticleSeparation()
    m.update(-perfect, target)
    assert float(m.compute()["auroc"]) == 0.0


def test_relu_zeros_are_ties_and_dead_on_true_counts_them():
    target = torch.zeros(1, 4, 4, dtype=torch.bool)
    target[0, :2] = True  # 8 particle pixels
    logit = torch.ones(1, 4, 4)
    logit[0, 0] = 0.0  # 4 particle pixels dead
    logit[0, 2] = -0.0  # 4 background pixels at (negative) zero: tie with the dead ones
    m = ParticleSeparation()
    m.update(logit, target)
    out = m.compute()
    assert float(out["dead_on_true"]) == 0.5
    exact = auroc(logit, target)
    # pairs: dead particle vs zero background tie (16 x 0.5), vs one background (16 x 0),
    # live particle beats zero background (16 x 1), ties one background (16 x 0.5)
    assert exact == pytest.approx((8 + 16 + 8) / 64)
    assert float(out["auroc"]) == pytest.approx(exact, abs=1e-15)


def test_histogram_auroc_matches_exact_within_its_bound_and_is_split_invariant():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(4, 40, 40, generator=g) > 0.6
    logit = torch.randn(4, 40, 40, generator=g) + 1.2 * target
    whole = ParticleSeparation()
    whole.update(logit, target)
    parts = [ParticleSeparation(), ParticleSeparation()]
    parts[0].update(logit[:1], target[:1])
    parts[1].update(logit[1:], target[1:])
    parts[0].merge_state(parts[1])
    a, b = whole.compute(), parts[0].compute()
    assert float(a["auroc"]) == float(b["auroc"])
    exact = auroc(logit, target)
    assert 0.7 < exact < 0.9
    err = float(a["auroc_bin_error"])
    assert err < 1e-3
    assert abs(float(a["auroc"]) - exact) <= err + 1e-15


# ------------------------------------------------------------------ edge profiles


def test_signed_distance_of_a_straight_edge_is_half_pixels():
    m = np.zeros((6, 8), bool)
    m[:, :4] = True
    s = signed_distance(m)
    assert np.allclose(s[0], [-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5])


def test_sharp_step_has_sub_pixel_ramp_and_no_offset():
    r = _disc(64, 0)
    true = (r <= 20).astype(np.int64)
    ramp, offset = _ramp(true.astype(float), true)
    assert 0.0 <= ramp <= 1.0
    assert abs(offset) < 0.25


@pytest.mark.parametrize("sigma", [1.0, 1.5, 2.5])
def test_gaussian_blurred_straight_edge_ramp_is_2p56_sigma(sigma):
    labels = np.zeros((48, 48), np.int64)
    labels[:, :24] = 1
    x = np.arange(48)[None, :].repeat(48, 0)
    prob = gauss.cdf((23.5 - x) / sigma)  # the true edge lies between columns 23 and 24
    ramp, offset = _ramp(prob, labels)
    assert ramp == pytest.approx(GAUSS_10_90 * sigma, rel=0.015)
    assert abs(offset) < 1e-9


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_gaussian_blurred_disc_ramp_is_about_2p56_sigma_and_ignores_calibration(sigma):
    r = _disc(72, 0)
    labels = (r <= 22).astype(np.int64)
    prob = gauss.cdf((22 - r) / sigma)
    ramp, _ = _ramp(prob, labels)
    # digitising a curved edge shortens distances by ~0.25 px (module notes): a few % low
    assert ramp == pytest.approx(GAUSS_10_90 * sigma, rel=0.07)
    # a probability squeezed off 0 and 1 (the output batch norm's effect) gives the same ramp
    ramp2, _ = _ramp(0.3 + 0.4 * prob, labels)
    assert ramp2 == pytest.approx(ramp, abs=1e-9)
    # a sharper edge has a narrower ramp: the measure can fail
    sharper, _ = _ramp(gauss.cdf((22 - r) / (sigma / 2)), labels)
    assert sharper < 0.7 * ramp


@pytest.mark.parametrize("shift", [-2, 2])
def test_shifted_edge_offset(shift):
    r = _disc(64, 0)
    labels = (r <= 18).astype(np.int64)
    prob = (r <= 18 + shift).astype(float)  # shift < 0: the predicted disc is smaller (inward)
    _, offset = _ramp(prob, labels)
    assert offset == pytest.approx(shift, abs=0.3)


def test_missed_particle_has_no_profile_and_medians_pool_particles():
    r1 = _disc(64, 0, (16, 16))
    r2 = _disc(64, 0, (46, 46))
    labels = (r1 <= 8).astype(np.int64) + 2 * (r2 <= 8)
    prob = gauss.cdf((8 - r1) / 1.0)  # particle 2 missed entirely
    s, p, n = edge_profiles(prob, labels)
    ramp, offset = ramp_and_offset(s, p, n)
    assert np.isfinite(ramp[0]) and np.isnan(ramp[1]) and np.isnan(offset[1])
    m = EdgeProfileMetrics()
    m.update(torch.from_numpy(prob)[None], torch.from_numpy(labels)[None])
    out = m.compute()
    assert float(out["ramp_width_px"]) == pytest.approx(ramp[0], rel=1e-6)
    assert float(out["edge_profiled_fraction"]) == 0.5


def test_edge_profiles_rows_follow_label_order_whatever_the_label_values():
    # rows are the particles in increasing label order: gaps, a missing background and labels
    # far above the pixel count (np.unique path of compact_labels) all give the same profiles
    r1, r2, r3 = _disc(64, 0, (14, 14)), _disc(64, 0, (48, 20)), _disc(64, 0, (30, 48))
    discs = [(r1 <= 6), (r2 <= 8), (r3 <= 7)]
    prob = gauss.cdf((7 - np.minimum(np.minimum(r1, r2), r3)) / 1.2)
    dense = sum((i + 1) * d for i, d in enumerate(discs)).astype(np.int64)
    reference = edge_profiles(prob, dense)
    for values in ((3, 9, 40), (5, 6, 10**9)):
        sparse = sum(v * d for v, d in zip(values, discs, strict=True)).astype(np.int64)
        for a, b in zip(reference, edge_profiles(prob, sparse), strict=True):
            np.testing.assert_array_equal(a, b)
    no_background = dense + 1  # every pixel is a particle: nothing outside, no profiles
    s, p, n = edge_profiles(prob, no_background)
    assert s.shape[0] == 4 and np.isnan(s).all() and (n == 0).all()


# ------------------------------------------------------------------ boundary F1, small recall


def test_boundary_hits_equal_boundary_f1_counts_at_each_tolerance():
    g = np.random.default_rng(0)
    for _ in range(5):
        pred = g.random((30, 30)) > 0.6
        true = g.random((30, 30)) > 0.5
        hits = boundary_hits(pred, true, (0, 1, 2, 3))
        for tol in (0, 1, 2, 3):
            ref = boundary_f1(pred, true, tol)
            assert hits[tol] == {k: ref[k] for k in hits[tol]}


def test_boundary_f1_grows_with_tolerance_for_a_shifted_disc():
    r = _disc(48, 0)
    true = r <= 12
    pred = _disc(48, 0, (24, 26.5)) <= 12  # shifted 2.5 px
    m = ParticleMetrics()
    m.update(torch.from_numpy(pred)[None], torch.from_numpy(true.astype(np.int64))[None], 0.18)
    out = m.compute()
    assert out["boundary_f1_1px"] < out["boundary_f1_2px"] < out["boundary_f1_3px"] <= 1.0
    assert out["boundary_f1_2px"] == out["boundary_f1"]  # default tolerance is 2 px


def test_small_recall_excludes_particles_clipped_by_the_frame():
    size, px = 64, 0.18  # 2.5 nm = 13.9 px
    labels = np.zeros((size, size), np.int64)
    labels[_disc(size, 0, (30, 30)) <= 4] = 1  # small interior particle, 1.6 nm
    labels[_disc(size, 0, (-5, 40)) <= 10] = 2  # 3.6 nm particle clipped to ~1.6 nm visible
    labels[_disc(size, 0, (62, 10)) <= 4] = 3  # small particle touching the bottom edge
    pred = labels > 0
    r = match_particles(pred, labels, pixel_size_nm=px)
    assert r.true_diameter_nm[1] < 2.5  # clipped: looks small
    m = ParticleMetrics()
    m.update(torch.from_numpy(pred)[None], torch.from_numpy(labels)[None], px)
    out = m.compute()
    assert out["n_true_small"] == 1.0 and out["recall_small"] == 1.0
    # miss the interior small particle only: small recall drops to 0, the visible-size bin
    # still holds the two detected border particles
    m = ParticleMetrics()
    m.update(torch.from_numpy(pred & (labels != 1))[None], torch.from_numpy(labels)[None], px)
    out = m.compute()
    assert out["recall_small"] == 0.0
    assert out["recall_0to2p5nm"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------ activation spread


class _ScaledBNNet(nn.Module):
    """Two batch-norm ConvUnits whose conv outputs differ by a factor of ``gain``."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.a = ConvUnit(1, 4, 3, activation="leaky_relu", norm="batch")
        self.b = ConvUnit(4, 4, 3, activation="leaky_relu", norm="batch")
        with torch.no_grad():
            self.b.conv.weight.mul_(gain)
            self.b.conv.bias.mul_(gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.b(self.a(x))


def _spreads(net: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    out = []
    for prenorm in (False, True):
        layers = probed_layers(net, prenorm=prenorm)
        m = ActivationMoments(len(layers))
        hooks = [layer.register_forward_hook(lambda mod, a, o, i=i, m=m: m.update(i, o))
                 for i, layer in enumerate(layers)]
        with torch.no_grad():
            net(x)
        for h in hooks:
            h.remove()
        out.append(math.log10(spread_ratio(m.compute())))
    return out[0], out[1]


def test_prenorm_spread_sees_conv_scales_that_batch_norm_hides():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 16, 16)
    post_1, pre_1 = _spreads(_ScaledBNNet(1.0), x)
    torch.manual_seed(0)
    post_k, pre_k = _spreads(_ScaledBNNet(1000.0), x)
    assert abs(post_k) < 0.05 and abs(post_k - post_1) < 1e-3  # BN: ~1 by construction
    # the second conv's output is 1000 x larger: ~3 decades more than the first's
    assert pre_k > 2.5 and pre_k - pre_1 > 2.5 and abs(pre_1) < 0.5


def test_activation_spread_function_and_module_moments_agree():
    g = torch.Generator().manual_seed(0)
    acts = [torch.randn(6, 5, generator=g) + 3, 10 * torch.randn(6, 5, generator=g)]
    ref = activation_spread(acts)
    m = ActivationMoments(2)
    for i, a in enumerate(acts):
        m.update(i, a[:2])  # batches in pieces, as validation sees them
        m.update(i, a[2:])
    stds = m.compute().numpy()
    assert np.allclose(stds, ref["std"], rtol=1e-12)
    assert spread_ratio(stds) == pytest.approx(ref["ratio"], rel=1e-12)
    assert ref["log10"] == pytest.approx(math.log10(ref["ratio"]))


def test_output_norm_params():
    net = UNet((8,), (8,), 4, norm="batch")
    with torch.no_grad():
        net.out_norm.weight.copy_(torch.tensor([0.5, 2.0]))
        net.out_norm.bias.copy_(torch.tensor([-1.0, 3.0]))
    assert output_norm_params(net) == {"out_norm_weight_0": 0.5, "out_norm_bias_0": -1.0,
                                       "out_norm_weight_1": 2.0, "out_norm_bias_1": 3.0}
    assert output_norm_params(UNet((8,), (8,), 4, norm="none")) == {}


# ------------------------------------------------------------------ integration


class _EchoNet(nn.Module):
    """A tiny BN net whose particle logit rises with the (blurred) image: a known-good predictor."""

    def __init__(self) -> None:
        super().__init__()
        self.unit = ConvUnit(1, 2, 3, activation="leaky_relu", norm="batch")
        self.out_conv = nn.Conv2d(2, 2, 1)
        self.out_norm = nn.BatchNorm2d(2)
        with torch.no_grad():
            self.unit.conv.weight.fill_(1 / 9)  # 3 x 3 box blur, both channels
            self.unit.conv.bias.zero_()
            self.out_conv.weight.copy_(torch.tensor([[-3.0, -3.0], [3.0, 3.0]]).view(2, 2, 1, 1))
            self.out_conv.bias.copy_(torch.tensor([3.0, -3.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.out_norm(self.out_conv(self.unit(x)))


NEW_KEYS = ("particle_auroc", "particle_dead_on_true", "act_spread_prenorm_log10",
            "ramp_width_px", "edge_offset_px", "boundary_f1_1px", "boundary_f1_2px",
            "boundary_f1_3px", "particle_recall_small", "out_norm_weight_0", "out_norm_weight_1",
            "out_norm_bias_0", "out_norm_bias_1")
OLD_KEYS = ("f1_otsu", "edge_uncertainty", "dead_output_fraction", "act_spread_ratio",
            "act_spread_log10", "particle_det_f1", "particle_recall_0to2p5nm",
            "particle_boundary_f1")


def test_validation_reports_every_new_measure_as_a_finite_float():
    b, size = 2, 64
    labels = torch.zeros(b, size, size, dtype=torch.int64)
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for k, (cy, cx, r) in enumerate([(20, 20, 9), (44, 42, 4), (60, 4, 6)], 1):
        labels[:, (y - cy) ** 2 + (x - cx) ** 2 <= r * r] = k
    image = (labels > 0).float()[:, None]
    batch = {"image": image, "mask": (labels > 0).long(), "labels": labels,
             "pixel_size_nm": torch.full((b,), 0.18)}
    module = SegmentationModule(_EchoNet()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        module.on_validation_epoch_start()
        with torch.no_grad():
            module.validation_step(batch, 0)
        module.on_validation_epoch_end()
    scalars = module.results["val"]["scalars"]
    for key in NEW_KEYS + OLD_KEYS:
        assert isinstance(scalars[key], float) and math.isfinite(scalars[key]), key
    assert scalars["particle_auroc"] > 0.9  # the net does separate particles
    assert 0 < scalars["ramp_width_px"] < 4
    assert scalars["particle_n_true_small"] == 2.0  # the border particle is left out
    assert not module._hooks
