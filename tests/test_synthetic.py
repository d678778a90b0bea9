"""Tests of the synthetic bright-field ETEM generator and its preview figure."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from skimage.measure import regionprops

from temseg_ablation.data.synthetic import (
    TABLE_COLUMNS,
    Frame,
    SyntheticConfig,
    experiment_configs,
    generate_frame,
    generate_sequence,
    heldout_config,
    iter_sequence,
    true_coarsening_curves,
)

SMALL = SyntheticConfig(height=128, width=128)
MEDIUM = SyntheticConfig(height=256, width=256)


@pytest.fixture(scope="module")
def big_frames() -> list[Frame]:
    """Three noise-free 384 x 384 frames, enough particles for size statistics."""
    cfg = SyntheticConfig(height=384, width=384, shot_noise=False)
    return [generate_frame(cfg, s) for s in range(3)]


@pytest.fixture(scope="module")
def sequence() -> list[Frame]:
    """Ten frames half a second apart with strongly accelerated coarsening."""
    cfg = SyntheticConfig(height=384, width=384)
    return generate_sequence(cfg, 10, seed=3, frame_interval_s=0.5, ripening_rate=60.0)


def test_frame_types_shapes_and_table() -> None:
    fr = generate_frame(SMALL, 0)
    assert fr.image.shape == fr.mask.shape == fr.labels.shape == (128, 128)
    assert fr.image.dtype == np.float32 and fr.mask.dtype == bool and fr.labels.dtype == np.int32
    assert list(fr.particles.columns) == TABLE_COLUMNS
    assert fr.particles["touches_border"].dtype == bool
    assert np.array_equal(fr.mask, fr.labels > 0)
    assert set(np.unique(fr.labels[fr.labels > 0])) == set(fr.particles["id"])
    assert fr.pixel_size_nm == pytest.approx(0.18) and fr.time_s == 0.0 and fr.frame_index == 0
    assert np.all(np.isfinite(fr.image)) and fr.image.min() >= 0


def test_odd_sizes_work() -> None:
    for h, w in [(1, 1), (37, 150), (200, 33)]:
        fr = generate_frame(SyntheticConfig(height=h, width=w), 1)
        assert fr.image.shape == fr.labels.shape == (h, w)


def test_deterministic_for_a_seed() -> None:
    a, b = generate_frame(MEDIUM, 7), generate_frame(MEDIUM, 7)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.labels, b.labels)
    pd.testing.assert_frame_equal(a.particles, b.particles)


def test_different_seeds_differ() -> None:
    a, b = generate_frame(MEDIUM, 1), generate_frame(MEDIUM, 2)
    assert not np.array_equal(a.mask, b.mask)
    assert not np.allclose(a.image, b.image)


def test_generate_frame_is_first_frame_of_any_sequence() -> None:
    fr = generate_frame(SMALL, 4)
    seq = generate_sequence(SMALL, 3, 4, frame_interval_s=1.0)
    assert np.array_equal(fr.image, seq[0].image)
    assert np.array_equal(fr.labels, seq[0].labels)


def test_particle_fraction_and_sizes_paper_like(big_frames: list[Frame]) -> None:
    frac = np.mean([f.mask.mean() for f in big_frames])
    assert 0.08 < frac < 0.25
    tab = pd.concat([f.particles for f in big_frames])
    inner = tab[~tab["touches_border"]]
    assert 3.5 < inner["diameter_nm"].median() < 6.0
    assert (inner["diameter_nm"] < 2.2).any(), "the tail of small particles is missing"
    assert (inner["diameter_nm"] > 8.0).any(), "no large coarsened particles"


def test_coverage_knob_moves_fraction() -> None:
    lo = generate_frame(MEDIUM.replace(coverage=0.05), 0).mask.mean()
    hi = generate_frame(MEDIUM.replace(coverage=0.3), 0).mask.mean()
    assert hi > 2 * lo


def test_small_particles_are_fainter(big_frames: list[Frame]) -> None:
    # measured on the image: mean darkening inside each particle relative to the median background
    small, large = [], []
    for f in big_frames:
        background = np.median(f.image[~ndimage.binary_dilation(f.mask, iterations=4)])
        means = ndimage.mean(f.image, f.labels, index=f.particles["id"].to_numpy())
        contrast = 1 - np.asarray(means) / background
        d = f.particles["diameter_nm"].to_numpy()
        inner = ~f.particles["touches_border"].to_numpy()
        small.extend(contrast[inner & (d < 2.5)])
        large.extend(contrast[inner & (d > 5.0)])
    assert len(small) >= 5 and len(large) >= 5
    assert np.mean(small) < 0.6 * np.mean(large)
    assert np.mean(small) > 0  # still darker than the support


def test_table_matches_mask_and_geometry(big_frames: list[Frame]) -> None:
    for f in big_frames:
        tab = f.particles.set_index("id")
        props = regionprops(f.labels)
        assert len(props) == len(tab)
        for r in props:
            row = tab.loc[r.label]
            assert r.area == row["area_px"]
            assert abs(r.equivalent_diameter_area - row["diameter_px"]) < 1.0
            assert abs(r.centroid[0] - row["y_px"]) < 0.5 and abs(r.centroid[1] - row["x_px"]) < 0.5
            assert row["diameter_nm"] == pytest.approx(row["diameter_px"] * f.pixel_size_nm)
            on_edge = (r.bbox[0] == 0 or r.bbox[1] == 0 or r.bbox[2] == f.labels.shape[0]
                       or r.bbox[3] == f.labels.shape[1])
            assert on_edge == row["touches_border"]
        # round, whole particles: the geometric diameter 2R agrees with the mask within a pixel
        round_ = tab[(tab["n_lobes"] == 1) & ~tab["touches_border"] & (tab["radius_nm"] > 1.5)]
        assert len(round_) > 5
        err = (round_["diameter_px"] - 2 * round_["radius_nm"] / f.pixel_size_nm).abs()
        assert err.median() < 0.6 and err.max() < 2.5


def test_distinct_particles_do_not_touch(big_frames: list[Frame]) -> None:
    for f in big_frames:
        # a 3 x 3 dilation of each particle must not reach another particle
        grown = ndimage.grey_dilation(f.labels, size=3)
        clash = (f.labels > 0) & (grown != f.labels)
        assert not clash.any()


def test_noise_off_is_smoother() -> None:
    noisy = generate_frame(MEDIUM, 5)
    clean = generate_frame(MEDIUM.replace(shot_noise=False), 5)
    rough = lambda im: float(np.std(ndimage.laplace(im.astype(np.float64))))  # noqa: E731
    assert rough(clean.image) < 0.5 * rough(noisy.image)
    assert np.array_equal(noisy.mask, clean.mask)
    # the noise is Poisson: integer counts scattered about the clean expectation
    assert np.allclose(noisy.image, np.round(noisy.image))
    assert abs(noisy.image.mean() - clean.image.mean()) < 0.05 * clean.image.mean()


def test_each_switch_changes_the_image() -> None:
    base = MEDIUM.replace(shot_noise=False)
    ref = generate_frame(base, 2).image
    for flag in ("thickness_contrast", "diffraction_contrast", "psf_blur", "fresnel_fringe",
                 "support_texture", "illumination", "fixed_pattern"):
        other = generate_frame(base.replace(**{flag: False}), 2).image
        assert not np.allclose(ref, other), flag


def test_blur_spreads_the_edge() -> None:
    base = MEDIUM.replace(shot_noise=False, support_texture=False, illumination=False,
                          fixed_pattern=False, fresnel_fringe=False, thickness_contrast=False)
    sharp = generate_frame(base.replace(psf_blur=False), 1)
    soft = generate_frame(base, 1)
    edge = sharp.mask ^ ndimage.binary_erosion(sharp.mask)
    grad = lambda im: np.hypot(*np.gradient(im.astype(np.float64)))  # noqa: E731
    assert grad(soft.image)[edge].mean() < 0.7 * grad(sharp.image)[edge].mean()


def test_dose_sets_the_counts() -> None:
    lo = generate_frame(MEDIUM.replace(dose_e_per_px=5.0), 0).image
    hi = generate_frame(MEDIUM.replace(dose_e_per_px=50.0), 0).image
    assert 7 < hi.mean() / lo.mean() < 13


def test_uint16_output() -> None:
    fr = generate_frame(SMALL.replace(output_dtype="uint16"), 0)
    assert fr.image.dtype == np.uint16 and fr.image.max() > 0


def test_bright_polarity_inverts() -> None:
    dark = generate_frame(MEDIUM, 3)
    bright = generate_frame(MEDIUM.replace(particles="bright"), 3)
    assert np.array_equal(dark.mask, bright.mask)
    assert dark.image[dark.mask].mean() < dark.image[~dark.mask].mean()
    assert bright.image[bright.mask].mean() > 1.5 * bright.image[~bright.mask].mean()


def test_sequence_ids_persist_and_move_a_little(sequence: list[Frame]) -> None:
    assert [f.frame_index for f in sequence] == list(range(10))
    assert sequence[3].time_s == pytest.approx(1.5)
    for a, b in zip(sequence[:-1], sequence[1:], strict=True):
        ta, tb = a.particles.set_index("id"), b.particles.set_index("id")
        inner = ta.index[~ta["touches_border"]].intersection(tb.index[~tb["touches_border"]])
        assert len(inner) >= 0.5 * (~ta["touches_border"]).sum()
        shift = np.hypot(ta.loc[inner, "y_px"] - tb.loc[inner, "y_px"],
                         ta.loc[inner, "x_px"] - tb.loc[inner, "x_px"])
        # stage drift of 2 nm/s x 0.5 s = 1 nm (5.6 px) per frame, plus sub-nm jitter
        assert abs(shift.median() - 1.0 / 0.18) < 1.5
        assert shift.quantile(0.9) < 10


def test_sequence_coarsens(sequence: list[Frame]) -> None:
    curves = true_coarsening_curves(sequence)
    assert list(curves.columns) == ["frame", "time_s", "count", "number_density_per_um2", "mean_diameter_nm"]
    assert len(curves) == 10
    assert curves["count"].iloc[-1] < 0.85 * curves["count"].iloc[0]
    assert curves["mean_diameter_nm"].iloc[-1] > 1.05 * curves["mean_diameter_nm"].iloc[0]
    area_um2 = 384 * 384 * 0.18**2 / 1e6
    assert curves["number_density_per_um2"].iloc[0] == pytest.approx(curves["count"].iloc[0] / area_um2)


def test_ripening_conserves_gold_and_r3_grows_linearly() -> None:
    # on the model population itself (a 250 nm square of sample), not on one small frame
    from temseg_ablation.data import synthetic as syn

    cfg = SyntheticConfig(jitter_nm=0.0, coalescence=False)
    pop = syn._sample_population(cfg, np.random.default_rng(0), [(0.0, 250.0, 0.0, 250.0)])
    gold0 = float((pop.radius**3).sum())
    n0 = pop.ids.size
    r3 = []
    rng = np.random.default_rng(1)
    for _ in range(12):
        syn._advance(pop, cfg, 1.0, 20.0, rng)
        r3.append(float((pop.radius**3).mean()))
    # total volume only loses the sub-0.3 nm remnants of dissolved particles
    assert float((pop.radius**3).sum()) == pytest.approx(gold0, rel=0.01)
    assert pop.ids.size < 0.8 * n0
    t = np.arange(len(r3))
    slope, intercept = np.polyfit(t[3:], r3[3:], 1)
    assert slope > 0
    resid = np.asarray(r3[3:]) - (slope * t[3:] + intercept)
    assert np.abs(resid).max() < 0.1 * (r3[-1] - r3[3])


def test_coalescence_merges_into_one_id() -> None:
    cfg = SyntheticConfig(height=256, width=256, coverage=0.3, jitter_nm=1.0, drift_nm_per_s=0.0,
                          min_gap_nm=0.2)
    frames = generate_sequence(cfg, 4, 2, frame_interval_s=0.5, ripening_rate=0.0)
    first, last = frames[0].particles, frames[-1].particles
    assert (last["n_lobes"] > 1).sum() > (first["n_lobes"] > 1).sum()
    # merged particles carry the surviving id; the absorbed id is gone for good
    assert last["id"].is_unique and len(last) < len(first)
    for r in regionprops(frames[-1].labels):
        assert r.area == int(last.set_index("id").loc[r.label, "area_px"])


def test_iter_sequence_matches_list() -> None:
    seq = generate_sequence(SMALL, 3, 9, frame_interval_s=0.2)
    it = list(iter_sequence(SMALL, 3, 9, frame_interval_s=0.2))
    for a, b in zip(seq, it, strict=True):
        assert np.array_equal(a.image, b.image)


def test_experiment_configs_differ() -> None:
    cfgs = experiment_configs(4, seed=0, base=MEDIUM)
    assert len(cfgs) == 4 and len({c.cache_key() for c in cfgs}) == 4
    ps = [c.pixel_size_nm for c in cfgs]
    assert all(0.16 <= p <= 0.20 for p in ps) and len(set(ps)) == 4
    assert len({c.dose_e_per_px for c in cfgs}) == 4 and len({c.coverage for c in cfgs}) == 4
    assert all((c.height, c.width) == (256, 256) for c in cfgs)
    assert experiment_configs(4, seed=0, base=MEDIUM) == cfgs
    assert experiment_configs(4, seed=1, base=MEDIUM) != cfgs


def test_heldout_differs() -> None:
    base = SyntheticConfig()
    held = heldout_config()
    assert held.pixel_size_nm == pytest.approx(0.25)
    assert held.dose_e_per_px == pytest.approx(base.dose_e_per_px / 2)
    assert held.cache_key() != base.cache_key()
    seen = [c.pixel_size_nm for c in experiment_configs(8, seed=0)]
    assert held.pixel_size_nm > max(seen)


def test_config_cache_key_and_validation() -> None:
    a = SyntheticConfig()
    assert a.cache_key() == SyntheticConfig().cache_key() and len(a.cache_key()) == 12
    assert a.replace(dose_e_per_px=10.0).cache_key() != a.cache_key()
    assert dataclasses.replace(a, height=64).height == 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.height = 3  # type: ignore[misc]
    for bad in ({"particles": "grey"}, {"pixel_size_nm": 0}, {"coverage": 0.9}, {"height": 0},
                {"output_dtype": "int8"}, {"small_fraction": 0.9, "large_fraction": 0.5}):
        with pytest.raises(ValueError, match="SyntheticConfig"):
            a.replace(**bad)
    with pytest.raises(ValueError, match="seed"):
        generate_frame(SMALL, -1)
    with pytest.raises(ValueError, match="n_frames"):
        generate_sequence(SMALL, 0, 0)


def test_zero_coverage_is_empty_support() -> None:
    fr = generate_frame(SMALL.replace(coverage=0.0), 0)
    assert not fr.mask.any() and fr.particles.empty
    assert list(fr.particles.columns) == TABLE_COLUMNS


def test_preview_writes_png(tmp_path, capsys) -> None:
    from temseg_ablation.preview import main

    out = tmp_path / "sub" / "preview.png"
    assert main(["--out", str(out), "--n", "2", "--size", "128", "--seed", "1", "--dpi", "60"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert str(out) in text and "particle pixel fraction" in text and "median diameter" in text


# ----------------------------------------------------------------------------------------------
# the default image formation is pinned: new effects must leave it bit-identical when off


def _digest(fr: Frame) -> str:
    import hashlib

    m = hashlib.sha256()
    for a in (fr.image, fr.labels):
        m.update(np.ascontiguousarray(a).tobytes())
    m.update(fr.particles.to_csv(index=False, float_format="%.6g").encode())
    return m.hexdigest()[:16]


def test_default_output_is_pinned() -> None:
    # digests recorded before the optional effects were added (x86-64, NumPy/SciPy of the venv)
    cases = {
        "7daa6a8475e53599": (SyntheticConfig(height=192, width=160), 0),
        "e5967c1803fa4f87": (SyntheticConfig(height=128, width=128, particles="bright"), 3),
        "5003c3c027dcf4ff": (SyntheticConfig(height=128, width=96, shot_noise=False, output_dtype="uint16"), 5),
    }
    for want, (cfg, seed) in cases.items():
        assert _digest(generate_frame(cfg, seed)) == want
    seq = generate_sequence(SyntheticConfig(height=128, width=128), 3, 2, frame_interval_s=0.5, ripening_rate=30.0)
    assert [_digest(f) for f in seq] == ["543260720b6ca9ae", "84ac98e0125c0783", "f129d8102759faf2"]
    assert [c.dose_e_per_px for c in experiment_configs(3, 0)] == [13.022, 29.822, 13.366]


# ----------------------------------------------------------------------------------------------
# optional effects: support aggregates, detector blur, linear readout, defocus, lattice, HAADF, JPEG

CLEAN = SyntheticConfig(height=160, width=160, shot_noise=False)

# effect -> (changes that switch it on, changes to its other knobs that must do nothing while off)
EFFECTS: dict[str, tuple[dict[str, object], dict[str, object]]] = {
    "aggregates": ({"aggregate_fraction": 0.3}, {"aggregate_thickness_nm": 90.0, "aggregate_scale_nm": 5.0}),
    "vacuum": ({"vacuum_fraction": 0.2}, {"aggregate_edge_nm": 4.0, "film_thickness_nm": 50.0}),
    "detector_blur": ({"detector_blur_px": 1.5}, {"detector_tail_px": 2.0}),
    "detector_tail": ({"detector_tail_fraction": 0.2}, {"detector_tail_px": 3.0}),
    "defocus": ({"defocus_nm": 200.0}, {"accelerating_voltage_kv": 200.0, "inner_potential_v": 10.0}),
    "lattice": ({"lattice_amplitude": 0.2, "pixel_size_nm": 0.05}, {"pixel_size_nm": 0.05, "moire_fraction": 1.0}),
    "moire": ({"lattice_amplitude": 0.2, "moire_fraction": 1.0}, {"moire_fraction": 1.0, "lattice_fraction": 1.0}),
    "haadf": ({"imaging_mode": "haadf"}, {"haadf_z_particle": 50.0, "haadf_z_exponent": 2.0}),
    "jpeg": ({"jpeg_quality": 60}, {}),
}


def test_effect_fields_default_off() -> None:
    from temseg_ablation.data.synthetic import EFFECT_FIELDS

    cfg = SyntheticConfig()
    assert EFFECT_FIELDS[0] == "imaging_mode" and "jpeg_quality" in EFFECT_FIELDS
    assert cfg.imaging_mode == "bf" and cfg.noise_mode == "counting" and not cfg.vary_effects
    for name in ("vacuum_fraction", "aggregate_fraction", "detector_blur_px", "detector_tail_fraction",
                 "defocus_nm", "lattice_amplitude", "jpeg_quality"):
        assert getattr(cfg, name) == 0, name
    # keys of configs from before the effects stay valid; a switched-on effect changes the key
    assert cfg.cache_key() == "c4c3d86cc748"
    assert cfg.replace(defocus_nm=50.0).cache_key() != cfg.cache_key()


@pytest.mark.parametrize("name", sorted(EFFECTS))
def test_effect_changes_image_only_when_on(name: str) -> None:
    on, off = EFFECTS[name]
    ref = generate_frame(CLEAN.replace(**{k: v for k, v in off.items() if k == "pixel_size_nm"}), 4)
    idle = generate_frame(CLEAN.replace(**off), 4)
    assert np.array_equal(idle.image, ref.image), "knobs of a switched-off effect changed the image"
    assert np.array_equal(idle.labels, ref.labels)
    with_fx = generate_frame(CLEAN.replace(**{**off, **on}), 4)
    assert with_fx.image.shape == ref.image.shape and with_fx.image.dtype == np.float32
    assert np.abs(with_fx.image - ref.image).mean() > 1e-3 * ref.image.mean(), name


@pytest.mark.parametrize("name", sorted(set(EFFECTS) - {"vacuum"}))
def test_effects_leave_truth_unchanged(name: str) -> None:
    on, _ = EFFECTS[name]
    geo = {k: v for k, v in on.items() if k == "pixel_size_nm"}
    ref = generate_frame(MEDIUM.replace(**geo), 6)
    fr = generate_frame(MEDIUM.replace(**on), 6)
    assert np.array_equal(fr.labels, ref.labels) and np.array_equal(fr.mask, ref.mask)
    pd.testing.assert_frame_equal(fr.particles.drop(columns="mean_contrast"),
                                  ref.particles.drop(columns="mean_contrast"))


def test_noise_mode_and_read_noise_leave_truth_unchanged() -> None:
    ref = generate_frame(MEDIUM, 6)
    fr = generate_frame(MEDIUM.replace(noise_mode="linear", read_noise_e=2.0), 6)
    assert np.array_equal(fr.labels, ref.labels)
    assert not np.array_equal(fr.image, ref.image)
    # the integrating readout is not integer counts, and keeps the mean dose
    assert not np.allclose(fr.image, np.round(fr.image))
    assert abs(fr.image.mean() - ref.image.mean()) < 0.03 * ref.image.mean()


def test_vacuum_removes_whole_particles_only() -> None:
    ref = generate_frame(MEDIUM, 6)
    fr = generate_frame(MEDIUM.replace(vacuum_fraction=0.3, aggregate_fraction=0.2), 6)
    kept = set(fr.particles["id"])
    assert 0 < len(kept) < len(ref.particles)
    # the particles left have exactly the pixels they had without support effects
    for pid in kept:
        assert np.array_equal(fr.labels == pid, ref.labels == pid)
    assert np.array_equal(fr.mask, np.isin(ref.labels, list(kept)))


def test_aggregates_darken_the_background_not_the_mask() -> None:
    base = MEDIUM.replace(shot_noise=False, illumination=False, fixed_pattern=False)
    ref = generate_frame(base, 2)
    fr = generate_frame(base.replace(aggregate_fraction=0.3, aggregate_thickness_nm=40.0), 2)
    assert np.array_equal(fr.mask, ref.mask)
    bg = ~ndimage.binary_dilation(ref.mask, iterations=3)
    ratio = fr.image[bg] / ref.image[bg]
    # about the requested fraction of the support is clearly thicker (darker); none is brighter
    dark = (ratio < np.exp(-20 / 150)).mean()
    assert 0.15 < dark < 0.5
    assert ratio.max() < 1.0 + 1e-4


def test_vacuum_is_brighter_than_film_in_bright_field() -> None:
    base = MEDIUM.replace(shot_noise=False, illumination=False, fixed_pattern=False, coverage=0.0)
    holey = {"vacuum_fraction": 0.3, "aggregate_edge_nm": 0.5}
    flat = base.replace(support_texture=False)
    ratio = generate_frame(flat.replace(**holey), 3).image / generate_frame(flat, 3).image
    # vacuum lacks the film's 20 nm of mass thickness: up to exp(20 / 150) brighter, never darker
    assert ratio.min() > 1 - 1e-5 and ratio.max() < np.exp(20 / 150) + 1e-4
    holes = ratio > 1.13
    assert 0.15 < holes.mean() < 0.4
    assert (np.abs(ratio - 1) < 1e-3).mean() > 0.4  # the film away from holes is untouched
    # and the amorphous texture is gone there
    ref = generate_frame(base, 3).image
    fr = generate_frame(base.replace(**holey), 3).image
    assert fr[holes].std() < 0.4 * ref[holes].std()


def test_detector_blur_smooths_the_whole_frame() -> None:
    base = MEDIUM.replace(shot_noise=False)
    sharp = generate_frame(base, 1).image.astype(np.float64)
    soft = generate_frame(base.replace(detector_blur_px=1.5), 1)
    bg = ~ndimage.binary_dilation(soft.mask, iterations=6)
    lap = lambda im: np.abs(ndimage.laplace(im.astype(np.float64)))  # noqa: E731
    # the support texture far from any particle gets smoother too, and the mean is kept
    assert lap(soft.image)[bg].mean() < 0.5 * lap(sharp)[bg].mean()
    assert soft.image.mean() == pytest.approx(sharp.mean(), rel=1e-3)


def _neighbour_correlation(image: np.ndarray) -> float:
    a = image.astype(np.float64) - image.mean()
    return float((a[:, 1:] * a[:, :-1]).mean() / a.var())


def test_linear_readout_noise_is_correlated_counting_is_not() -> None:
    flat = SyntheticConfig(height=128, width=128, coverage=0.0, support_texture=False, illumination=False,
                           fixed_pattern=False, dose_e_per_px=50.0)
    counting = generate_frame(flat, 0).image
    linear = generate_frame(flat.replace(noise_mode="linear", linear_spread_px=0.8), 0).image
    assert abs(_neighbour_correlation(counting)) < 0.03
    assert _neighbour_correlation(linear) > 0.3


def _ring_contrast(fr: Frame, pids: list[int]) -> float:
    """Mean intensity in a 2-px ring just outside each particle, relative to the far background."""
    bg = np.median(fr.image[~ndimage.binary_dilation(fr.mask, iterations=6)])
    vals = []
    for pid in pids:
        m = fr.labels == pid
        ring = (ndimage.binary_dilation(m, iterations=2) & ~m
                & ~ndimage.binary_dilation(fr.mask & ~m, iterations=2))
        vals.append(fr.image[ring].mean() / bg - 1)
    return float(np.mean(vals))


def test_defocus_fringe_sign_follows_defocus_sign() -> None:
    base = SyntheticConfig(height=192, width=192, shot_noise=False, support_texture=False, illumination=False,
                           fixed_pattern=False, fresnel_fringe=False)
    ref = generate_frame(base, 1)
    tab = ref.particles
    small = tab.loc[(tab["diameter_nm"] < 2.6) & ~tab["touches_border"], "id"].tolist()
    assert len(small) >= 2
    under = _ring_contrast(generate_frame(base.replace(defocus_nm=300.0), 1), small)
    over = _ring_contrast(generate_frame(base.replace(defocus_nm=-300.0), 1), small)
    focus = _ring_contrast(ref, small)
    # underfocus: bright Fresnel fringe outside the rim; overfocus: dark; in focus: in between
    assert under > 0.01 and over < -0.01
    assert over < focus < under


def test_lattice_fringes_only_where_sampled() -> None:
    from temseg_ablation.data.synthetic import effects as sfx

    base = MEDIUM.replace(shot_noise=False)
    # 0.235 nm at 0.18 nm/px is 1.3 px per period: a single lattice cannot be drawn
    coarse = generate_frame(base.replace(lattice_amplitude=0.3, lattice_fraction=1.0), 0).image
    assert np.array_equal(coarse, generate_frame(base, 0).image)
    # at 0.05 nm/px (4.7 px per period) the fringes show inside particles and nowhere else
    fine = base.replace(pixel_size_nm=0.05)
    plain = generate_frame(fine, 0)
    fringed = generate_frame(fine.replace(lattice_amplitude=0.3, lattice_fraction=1.0), 0)
    diff = np.abs(fringed.image - plain.image)
    assert diff[fringed.mask].mean() > 0.05 * plain.image.mean()
    assert diff[~ndimage.binary_dilation(fringed.mask, iterations=4)].max() < 1e-3 * plain.image.mean()
    # the pattern's spectrum peaks at the lattice period
    tab = sfx.make_lattice_table(0, 2, 1.0, 0.0)
    yy, xx = np.arange(64, dtype=np.float32)[:, None], np.arange(64, dtype=np.float32)[None, :]
    pat = sfx.lattice_pattern(tab, 1, yy, xx, 0.235 / 0.05)
    spec = np.abs(np.fft.fft2(pat))
    spec[0, 0] = 0
    ky, kx = np.unravel_index(np.argmax(spec), spec.shape)
    f = np.hypot(np.fft.fftfreq(64)[ky], np.fft.fftfreq(64)[kx])
    assert f == pytest.approx(0.05 / 0.235, rel=0.1)


def test_haadf_particles_bright_vacuum_dark() -> None:
    cfg = MEDIUM.replace(imaging_mode="haadf", shot_noise=False, vacuum_fraction=0.25, aggregate_fraction=0.2)
    fr = generate_frame(cfg, 5)
    bg = ~ndimage.binary_dilation(fr.mask, iterations=3)
    assert fr.image[fr.mask].mean() > 3 * fr.image[bg].mean()
    # vacuum gives (almost) no signal: the darkest tenth of the background is far below the film
    lo = np.quantile(fr.image[bg], 0.1)
    assert lo < 0.1 * np.median(fr.image[bg])
    noisy = generate_frame(cfg.replace(shot_noise=True), 5)
    assert noisy.image[noisy.mask].mean() > 3 * noisy.image[bg].mean()
    # Z-contrast: heavier particles scatter more, as Z^n
    heavy = generate_frame(MEDIUM.replace(imaging_mode="haadf", shot_noise=False), 5)
    light = generate_frame(MEDIUM.replace(imaging_mode="haadf", shot_noise=False, haadf_z_particle=40.0), 5)
    assert light.image[light.mask].mean() < 0.5 * heavy.image[heavy.mask].mean()


def test_jpeg_round_trip() -> None:
    from temseg_ablation.data.synthetic.effects import jpeg_roundtrip

    clean = generate_frame(MEDIUM.replace(shot_noise=False), 0).image
    good, bad = jpeg_roundtrip(clean, 95), jpeg_roundtrip(clean, 10)
    span = float(clean.max() - clean.min())
    assert good.dtype == np.float32 and good.shape == clean.shape
    err_good, err_bad = np.abs(good - clean).mean(), np.abs(bad - clean).mean()
    assert err_good < 0.01 * span and err_bad > 2 * err_good
    fr = generate_frame(MEDIUM.replace(jpeg_quality=50, output_dtype="uint16"), 0)
    ref = generate_frame(MEDIUM.replace(output_dtype="uint16"), 0)
    assert fr.image.dtype == np.uint16 and not np.array_equal(fr.image, ref.image)
    assert np.array_equal(fr.labels, ref.labels)


def test_effect_sequences_keep_ids_and_support_moves() -> None:
    cfg = SMALL.replace(aggregate_fraction=0.3, vacuum_fraction=0.1, defocus_nm=100.0, lattice_amplitude=0.2,
                        moire_fraction=1.0, shot_noise=False, drift_nm_per_s=4.0)
    seq = generate_sequence(cfg, 3, 1, frame_interval_s=0.5)
    assert np.array_equal(seq[0].image, generate_frame(cfg, 1).image)
    ids = [set(f.particles["id"]) for f in seq]
    assert len(ids[0] & ids[2]) >= 0.5 * len(ids[0])
    assert not np.allclose(seq[0].image, seq[2].image)


def test_vary_effects_per_experiment() -> None:
    plain = experiment_configs(4, 0, MEDIUM)
    broad = MEDIUM.replace(vary_effects=True, defocus_nm=200.0, aggregate_fraction=0.2, jpeg_quality=80,
                           detector_blur_px=1.0)
    varied = experiment_configs(4, 0, broad)
    # the draws of the usual per-experiment knobs are unchanged by the effect variation
    assert [c.dose_e_per_px for c in varied] == [c.dose_e_per_px for c in plain]
    assert len({c.defocus_nm for c in varied}) == 4 and all(60 <= abs(c.defocus_nm) <= 200 for c in varied)
    assert all(10 <= c.jpeg_quality <= 95 for c in varied)
    signs = {np.sign(c.defocus_nm) for c in experiment_configs(12, 1, broad)}
    assert signs == {-1.0, 1.0}
    # effects that are off in the base stay off
    assert all(c.lattice_amplitude == 0 and c.vacuum_fraction == 0 for c in varied)


def test_effect_validation() -> None:
    for bad in ({"imaging_mode": "stem"}, {"noise_mode": "poisson"}, {"jpeg_quality": 101},
                {"jpeg_quality": 50.5}, {"vacuum_fraction": 0.6, "aggregate_fraction": 0.5},
                {"detector_blur_px": -1.0}, {"lattice_spacing_nm": 0.0}, {"defocus_nm": float("nan")},
                {"imaging_mode": "haadf", "particles": "bright"}, {"moire_fraction": 1.5}):
        with pytest.raises(ValueError, match="SyntheticConfig"):
            SyntheticConfig().replace(**bad)


def test_from_mapping() -> None:
    cfg = SyntheticConfig.from_mapping({"defocus_nm": -80, "bragg_factor": [2.0, 3.0]}, height=64, width=64)
    assert cfg.defocus_nm == -80 and cfg.bragg_factor == (2.0, 3.0) and cfg.height == 64
    with pytest.raises(ValueError, match="unknown field"):
        SyntheticConfig.from_mapping({"defocus": 1.0})


# ----------------------------------------------------------------------------------------------
# Hydra: data.synthetic.* overrides reach SyntheticConfig


def test_broad_preset_override_reaches_synthetic_config() -> None:
    from omegaconf import OmegaConf

    from temseg_ablation.data.synthetic import EFFECT_FIELDS

    from .conftest import compose_cfg

    plain = compose_cfg()
    cfg = compose_cfg(["data=synthetic_broad", "data.synthetic.defocus_nm=-77.5",
                       "data.synthetic.noise_mode=linear", "data.synthetic.jpeg_quality=70"])
    # the preset is the default data config plus the effects block
    assert {k: v for k, v in cfg.data.items() if k != "synthetic"} == {
        k: v for k, v in plain.data.items() if k != "synthetic"}
    assert dict(plain.data.synthetic) == {}  # the default data set has every effect off
    block = OmegaConf.to_container(cfg.data.synthetic, resolve=True)
    assert set(EFFECT_FIELDS) <= set(block), "every effect field must be overridable without '+'"
    sc = SyntheticConfig.from_mapping(block, height=cfg.data.frame_height, width=cfg.data.frame_width,
                                      pixel_size_nm=cfg.data.pixel_size_nm)
    assert sc.defocus_nm == -77.5 and sc.noise_mode == "linear" and sc.jpeg_quality == 70
    assert sc.vary_effects and sc.aggregate_fraction > 0 and sc.imaging_mode == "bf"
    assert (sc.height, sc.width) == (cfg.data.frame_height, cfg.data.frame_width)
    varied = experiment_configs(3, 0, sc.replace(height=64, width=64))
    assert len({c.defocus_nm for c in varied}) == 3
    fr = generate_frame(varied[0], 0)
    assert fr.image.shape == (64, 64) and np.isfinite(fr.image).all()


def test_data_synthetic_reaches_the_generator_through_the_data_module(tmp_path) -> None:
    import inspect

    from temseg_ablation.data.datamodule import TEMDataModule

    if "synthetic" not in inspect.signature(TEMDataModule).parameters:
        pytest.skip("TEMDataModule does not take data.synthetic yet (pending change in datamodule/sources)")
    from temseg_ablation.app.build import build_datamodule

    from .conftest import TINY, compose_cfg

    def first_frame(extra: list[str]) -> np.ndarray:
        cfg = compose_cfg([*TINY, "data.heldout=false", *extra], tmp_path)
        dm = build_datamodule(cfg)
        dm.prepare_data()
        return np.asarray(dm._stores()[0].images[0][0])

    plain = first_frame(["data=synthetic_broad", "data.synthetic.vary_effects=false", "data.synthetic.jpeg_quality=0"])
    jpeg = first_frame(["data=synthetic_broad", "data.synthetic.vary_effects=false", "data.synthetic.jpeg_quality=20"])
    assert plain.shape == jpeg.shape and not np.allclose(plain, jpeg)
