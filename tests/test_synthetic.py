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
