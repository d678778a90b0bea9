"""The paper's other findings (``report.findings``): table builders on hand-made frames, plus
slow end-to-end runs of ``thresholds`` / ``generalisation`` on the tiny sweep and of
``interpretability`` with tiny training jobs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from temseg_ablation.report import findings as fd
from tests.conftest import TINY

pytest_plugins = ["tests.fixtures_sweep"]


def _runs(spec: dict[str, list[dict[str, float]]]) -> pd.DataFrame:
    """One row per (variant, seed) with ``final/val/<key>`` columns from ``spec``."""
    rows = []
    for variant, seeds in spec.items():
        for seed, metrics in enumerate(seeds):
            rows.append({"run_id": f"{variant}-{seed}", "status": "FINISHED", "variant": variant,
                         "seed": seed, **{f"final/val/{k}": v for k, v in metrics.items()}})
    return pd.DataFrame(rows)


def _point(p4: float, r4: float, p7: float, r7: float, f1o: float = 0.8,
           t: float = 0.5) -> dict[str, float]:
    f = lambda p, r: 2 * p * r / (p + r) if p + r else 0.0  # noqa: E731
    return {"precision_at_0.4": p4, "recall_at_0.4": r4, "f1_at_0.4": f(p4, r4),
            "precision_at_0.7": p7, "recall_at_0.7": r7, "f1_at_0.7": f(p7, r7),
            "precision_otsu": 0.8, "recall_otsu": 0.8, "f1_otsu": f1o, "otsu_threshold": t}


# ---------------------------------------------------------------------------------- thresholds


def test_threshold_table_means_sds_and_order():
    runs = _runs({
        "weak": [_point(0.8, 0.8, 0.8, 0.7, f1o=0.6, t=0.4), _point(0.8, 0.8, 0.8, 0.7, f1o=0.6, t=0.6)],
        "strong": [_point(0.9, 0.9, 0.9, 0.8, f1o=0.9, t=0.5)] * 3,
    })
    t = fd.threshold_table(runs)
    assert list(t["variant"]) == ["strong", "weak"]  # best F1 at Otsu first
    assert list(t["n"]) == [3, 2]
    weak = t.set_index("variant").loc["weak"]
    assert weak["otsu_threshold mean"] == pytest.approx(0.5)
    assert weak["otsu_threshold sd"] == pytest.approx(np.std([0.4, 0.6], ddof=1))
    assert weak["recall@0.7 mean"] == pytest.approx(0.7)
    assert weak["precision@0.4 sd"] == pytest.approx(0.0)
    assert t.set_index("variant").loc["strong", "f1@otsu mean"] == pytest.approx(0.9)


def test_threshold_claim_verdicts():
    rng = np.random.default_rng(0)
    holds = [_point(0.85 + e, 0.9 + 2 * e, 0.85 + e + d, 0.8 + 2 * e)
             for e, d in zip(rng.normal(0, 0.01, 4), [0.001, -0.002, 0.0, 0.002], strict=True)]
    costly = [_point(0.70 + e, 0.9, 0.85 + e, 0.8) for e in rng.normal(0, 0.005, 4)]
    runs = _runs({"holds": holds, "costly": costly, "single": [_point(0.8, 0.9, 0.8, 0.8)]})
    c = fd.threshold_claim(runs).set_index("variant")
    assert c.loc["holds", "claim"] == "holds"
    assert c.loc["holds", "recall diff mean"] == pytest.approx(0.1)
    assert c.loc["holds", "precision verdict"] == "supports"
    assert c.loc["costly", "claim"] == "does not hold"
    assert c.loc["costly", "precision diff mean"] == pytest.approx(-0.15, abs=1e-9)
    assert c.loc["single", "claim"] == "inconclusive"  # one seed: no interval
    assert c.loc[fd.POOLED_ALL, "n"] == 9 and fd.POOLED_BN not in c.index  # no net.* columns
    md = fd.thresholds_markdown(fd.threshold_table(runs), c.reset_index())
    assert "**holds**" in md and "**does not hold**" in md and "Per variant: 1 hold" in md


def test_threshold_claim_pools_the_batch_norm_unets():
    runs = _runs({"bn": [_point(0.85, 0.9 + e, 0.85 + e / 10, 0.8 + e) for e in (0, .01, .02)],
                  "plain": [_point(0.3, 0.9, 0.9, 0.5)] * 2,
                  "shallow": [_point(0.9, 0.1, 0.0, 0.0)] * 2})
    runs["net.arch"] = np.where(runs["variant"] == "shallow", "shallow_wide", "unet")
    runs["net.norm"] = np.where(runs["variant"] == "plain", "none", "batch")
    c = fd.threshold_claim(runs).set_index("variant")
    assert list(c.index[-2:]) == [fd.POOLED_BN, fd.POOLED_ALL]
    assert c.loc[fd.POOLED_BN, "n"] == 3 and c.loc[fd.POOLED_BN, "claim"] == "holds"
    assert c.loc[fd.POOLED_ALL, "n"] == 7 and c.loc[fd.POOLED_ALL, "claim"] != "holds"
    md = fd.thresholds_markdown(fd.threshold_table(runs), c.reset_index())
    assert "Pooled over batch-norm UNets (3 runs)" in md and "out of 3." in md


def test_output_norm_table_and_its_section():
    moved = {"out_norm_weight_0": 1.4, "out_norm_bias_0": 0.4, "out_norm_weight_1": 1.5,
             "out_norm_bias_1": -0.4}
    fresh = {"out_norm_weight_0": 1.0, "out_norm_bias_0": 0.0, "out_norm_weight_1": 1.0,
             "out_norm_bias_1": 0.0}
    runs = _runs({"moved": [{**_point(0.9, 0.9, 0.9, 0.8, f1o=0.9), **moved}] * 2,
                  "fresh": [{**_point(0.5, 0.9, 0.9, 0.8, f1o=0.8), **fresh}] * 2,
                  "plain": [_point(0.8, 0.8, 0.8, 0.8, f1o=0.7)]})
    runs.loc[runs["variant"] == "plain", [c for c in runs if "out_norm" in c]] = np.nan
    o = fd.output_norm_table(runs).set_index("variant")
    assert list(o.index) == ["moved", "fresh"]  # no output norm: left out
    assert o.loc["moved", "p_neutral mean"] == pytest.approx(1 / (1 + np.exp(0.8)))
    assert o.loc["fresh", "p_neutral mean"] == pytest.approx(0.5)
    assert o.loc["moved", "out_norm_weight_1 mean"] == pytest.approx(1.5)
    c = fd.threshold_claim(runs)
    md = fd.thresholds_markdown(fd.threshold_table(runs), c, out_norm=o.reset_index())
    assert "output batch norm's learned scale and shift" in md and "+0.400" in md
    assert "learned scale" not in fd.thresholds_markdown(fd.threshold_table(runs), c)
    assert fd.output_norm_table(runs.drop(columns="final/val/out_norm_bias_1")).empty


def test_threshold_claim_needs_the_fixed_threshold_metrics():
    runs = _runs({"a": [{"f1_otsu": 0.8}]})
    with pytest.raises(ValueError, match="recall_at_0.4"):
        fd.threshold_claim(runs)
    with pytest.raises(ValueError, match="no finished runs"):
        fd.threshold_table(runs.iloc[:0])


def test_curve_stats_mean_and_sd_per_threshold():
    runs = pd.DataFrame({"run_id": ["r1", "r2", "r3"], "variant": ["a", "a", "b"]})
    t = np.array([0.0, 0.5, 1.0])
    curves = pd.concat([
        pd.DataFrame({"run_id": rid, "threshold": t, "precision_mean": p, "recall_mean": 1 - t,
                      "f1_mean": 0.5})
        for rid, p in (("r1", [0.1, 0.5, 0.9]), ("r2", [0.3, 0.5, 0.7]), ("r3", [0.0, 0.0, 0.0]),
                       ("stray", [1.0, 1.0, 1.0]))])
    s = fd.curve_stats(curves, runs)
    a = s[s["variant"] == "a"].set_index("threshold")
    assert list(a["n"]) == [2, 2, 2]
    assert a.loc[0.0, "precision_mean mean"] == pytest.approx(0.2)
    assert a.loc[1.0, "precision_mean sd"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    assert s[s["variant"] == "b"]["precision_mean sd"].isna().all()  # one run: no s.d.
    assert set(s["variant"]) == {"a", "b"}  # the run outside the frame is ignored


def test_thresholds_figure_draws_a_panel_per_variant(tmp_path):
    runs = _runs({"a": [_point(0.8, 0.9, 0.8, 0.8)] * 2, "b": [_point(0.7, 0.9, 0.7, 0.8)]})
    t = np.round(np.linspace(0, 1, 5), 2)
    curves = pd.concat([pd.DataFrame({"run_id": rid, "threshold": t, "precision_mean": t,
                                      "recall_mean": 1 - t, "f1_mean": 0.4})
                        for rid in runs["run_id"]])
    fig = fd.thresholds_figure(fd.curve_stats(curves, runs), fd.threshold_table(runs),
                               tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titled == ["a (n=2)", "b (n=1)"]


# ------------------------------------------------------------------------------ generalisation


def test_generalisation_table_uses_logged_gap_or_computes_it():
    runs = pd.DataFrame({
        "variant": ["a", "a", "b"], "status": "FINISHED",
        "final/val/f1_otsu": [0.9, 0.8, 0.95], "final/heldout/f1_otsu": [0.7, 0.7, 0.9],
        "final/gap/f1_otsu": [0.2, 0.1, np.nan],
        "final/val/edge_uncertainty": [0.1, 0.2, 0.1],
        "final/heldout/edge_uncertainty": [0.3, 0.3, 0.2],
    })
    t = fd.generalisation_table(runs, names=("f1_otsu", "edge_uncertainty", "absent"))
    assert list(t["variant"]) == ["b", "a"]
    a = t.set_index("variant").loc["a"]
    assert a["val/f1_otsu mean"] == pytest.approx(0.85)
    assert a["gap/f1_otsu mean"] == pytest.approx(0.15)
    assert a["gap/f1_otsu sd"] == pytest.approx(np.std([0.2, 0.1], ddof=1))
    assert t.set_index("variant").loc["b", "gap/f1_otsu mean"] == pytest.approx(0.05)  # computed
    assert a["gap/edge_uncertainty mean"] == pytest.approx(-0.15)
    assert not any("absent" in c for c in t.columns)
    md = fd.generalisation_markdown(t)
    assert "Smallest f1_otsu gap (generalises best): `b`" in md
    assert "edge_uncertainty: val -> held-out" in md
    with pytest.raises(ValueError, match="held-out"):
        fd.generalisation_table(runs.drop(columns=[c for c in runs if "heldout" in c]))


# ---------------------------------------------------------------------------- interpretability


def test_kernel_correlation_and_symmetries():
    rng = np.random.default_rng(1)
    k9 = rng.normal(size=(9, 9))
    assert fd.kernel_correlation(k9, k9) == pytest.approx(1.0)
    assert fd.kernel_correlation(k9, -k9) == pytest.approx(-1.0)
    assert fd.kernel_correlation(k9[1:-1, 1:-1], k9, "crop") == pytest.approx(1.0)
    assert np.isnan(fd.kernel_correlation(np.ones((7, 7)), k9))  # a flat kernel has no pattern
    corr, name = fd.best_dihedral_correlation(k9, np.rot90(k9, -1))
    assert corr == pytest.approx(1.0) and name == "rot90"
    with pytest.raises(ValueError, match="crop' or 'resize"):
        fd.kernel_correlation(k9, k9[1:-1, 1:-1], "zoom")


def test_centre_surround_sign():
    y, x = np.mgrid[-4:5, -4:5]
    blob = -np.exp(-(x**2 + y**2) / 4.0)  # answers dark blobs
    assert fd.centre_surround(blob) < -1.0
    assert fd.centre_surround(-blob) > 1.0
    with pytest.raises(ValueError, match="5 x 5"):
        fd.centre_surround(np.ones((3, 3)))


def _disc_frame() -> tuple[pd.DataFrame, np.ndarray]:
    labels = np.zeros((120, 160), dtype=np.int32)
    yy, xx = np.mgrid[:120, :160]
    specs = [(1, 20, 30, 4), (2, 60, 80, 8), (3, 95, 120, 12), (4, 60, 2, 6),  # 4 at the border
             (5, 20, 60, 5), (6, 20, 72, 3)]  # 5 and 6 share a row and sit too close
    rows = []
    for pid, cy, cx, r in specs:
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        labels[inside] = pid
        area = int(inside.sum())
        rows.append({"id": pid, "y_px": float(cy), "x_px": float(cx), "area_px": area,
                     "diameter_px": float(np.sqrt(4 * area / np.pi)),
                     "diameter_nm": 0.18 * float(np.sqrt(4 * area / np.pi)), "n_lobes": 1,
                     "touches_border": bool(inside[:, 0].any())})
    return pd.DataFrame(rows), labels


def test_pick_particles_takes_isolated_particles_of_different_sizes():
    table, labels = _disc_frame()
    picks = fd.pick_particles(table, labels)
    assert list(picks["id"]) == [1, 2, 3]  # smallest first; border and crowded ones left out
    for rec in picks.to_dict("records"):
        assert set(np.unique(labels[rec["row"], rec["x0"]:rec["x1"]])) == {0, rec["id"]}
    assert fd.pick_particles(table, labels, min_diameter_px=50).empty


def test_pick_particles_on_a_synthetic_frame():
    from temseg_ablation.data.synthetic import SyntheticConfig, generate_frame

    frame = generate_frame(SyntheticConfig(height=256, width=256), 20_200)
    picks = fd.pick_particles(frame.particles, frame.labels)
    assert len(picks) == 3
    assert picks["diameter_px"].is_monotonic_increasing and picks["id"].is_unique


def test_line_profiles_and_summary():
    table, labels = _disc_frame()
    picks = fd.pick_particles(table, labels)
    truth = (labels > 0).astype(np.float32)
    soft = truth * 0.6 + 0.2  # everything between 0.1 and 0.9
    prof = fd.line_profiles(truth, {"exact": truth, "soft": soft}, labels, picks)
    assert set(prof.columns) >= {"id", "offset_px", "intensity", "inside", "exact", "soft"}
    s = fd.profile_summary(prof, ["exact", "soft"]).set_index(["id", "model"])
    assert s.loc[(2, "exact"), "true_px"] == 17  # disc of radius 8 through its centre
    assert s.loc[(2, "exact"), "wrong_px"] == 0 and s.loc[(2, "exact"), "uncertain_px"] == 0
    assert s.loc[(2, "soft"), "pred_px"] == 17
    n_line = int((prof["id"] == 2).sum())
    assert s.loc[(2, "soft"), "uncertain_px"] == n_line


# ----------------------------------------------------------------------------------- resolution


def test_native_scores_perfect_and_uncertain():
    _, labels = _disc_frame()
    truth = (labels > 0).astype(np.float32)
    perfect = fd.native_scores([truth], [labels], [0.18])
    assert perfect["f1_otsu"] == pytest.approx(1.0)
    assert perfect["edge_uncertainty"] == pytest.approx(0.0)
    assert perfect["particle_det_f1"] == pytest.approx(1.0)
    half = np.where(truth > 0, 0.6, 0.4).astype(np.float32)
    unsure = fd.native_scores([half, truth], [labels, labels], [0.18, 0.18])
    assert unsure["f1_otsu"] == pytest.approx(1.0)  # Otsu still splits 0.4 from 0.6
    assert unsure["edge_uncertainty"] == pytest.approx(0.5)  # one of two images is all unsure
    with pytest.raises(ValueError, match="as many"):
        fd.native_scores([truth], [labels, labels], [0.18])


def test_resolution_summary_pairs_seeds():
    per_run = pd.DataFrame({
        "mode": ["crop", "crop", "crop", "downsample", "downsample", "downsample"],
        "seed": [0, 1, 2, 0, 1, 2],
        "native/f1_otsu": [0.80, 0.70, 0.90, 0.75, 0.66, 0.83],
        "native/edge_uncertainty": [0.2, 0.3, 0.1, 0.3, 0.4, 0.2],
    })
    s = fd.resolution_summary(per_run).set_index("row")
    assert list(s.index) == ["crop", "downsample", "downsample - crop"]
    d = s.loc["downsample - crop"]
    assert d["native/f1_otsu mean"] == pytest.approx(np.mean([-0.05, -0.04, -0.07]))
    assert d["native/edge_uncertainty mean"] == pytest.approx(0.1)
    assert d["native/f1_otsu ci_high"] < 0  # consistently worse in every pair
    assert s.loc["crop", "native/f1_otsu sd"] == pytest.approx(0.1)
    md = fd.resolution_markdown(s.reset_index(), per_run, factor=2, frame_px=256, downsample_px=128)
    assert "256 -> 128 px" in md and "downsample - crop" in md


# ---------------------------------------------------------------------------------------- CLI


def test_md_table_and_fmt():
    assert fd.fmt_pm(0.5, 0.01) == "0.500 ± 0.010"
    assert fd.fmt_pm(0.5) == "0.500" and fd.fmt_pm(np.nan) == "n/a"
    assert fd.fmt_pm(0.25, np.nan, sign=True) == "+0.250"
    md = fd.md_table(pd.DataFrame({"a": ["x|y"], "b": [np.nan]}))
    assert md.splitlines() == ["| a | b |", "| --- | --- |", "| x/y | n/a |"]


def test_cli_reports_a_missing_store_in_one_line(tmp_path, capsys):
    code = fd.main(["thresholds", "--tracking-uri", f"sqlite:///{tmp_path}/none.db",
                    "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "none.db" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_thresholds_and_generalisation_on_the_tiny_sweep(tiny_sweep, tmp_path, capsys):
    out = tmp_path / "findings"
    for cmd in ("thresholds", "generalisation"):
        assert fd.main([cmd, "--tracking-uri", tiny_sweep.tracking_uri, "--out", str(out),
                        "--sweep", tiny_sweep.parent_run_id]) == 0
    printed = capsys.readouterr().out
    assert "0.4 gives better recall" in printed and "Generalisation" in printed
    table = pd.read_csv(out / "thresholds.csv")
    assert sorted(table["variant"]) == ["norm", "twoconv_norm"]
    assert table["recall@0.4 mean"].between(0, 1).all()
    claim = pd.read_csv(out / "thresholds_claim.csv")
    assert claim["variant"].iloc[-1] == fd.POOLED_ALL and claim["n"].iloc[-1] == 2
    curves = pd.read_csv(out / "thresholds_curves.csv")
    assert len(curves) == 2 * 21 and curves["precision_mean mean"].notna().any()
    gen = pd.read_csv(out / "generalisation.csv")
    assert sorted(gen["variant"]) == ["norm", "twoconv_norm"]
    assert np.allclose(gen["gap/f1_otsu mean"],
                       gen["val/f1_otsu mean"] - gen["heldout/f1_otsu mean"], atol=1e-9)
    for name in ("thresholds.png", "thresholds_f1.png", "generalisation.png", "thresholds.md",
                 "generalisation.md"):
        assert (out / name).stat().st_size > 500, name
    # "latest" finds the same (only) sweep
    assert fd.main(["generalisation", "--tracking-uri", tiny_sweep.tracking_uri,
                    "--out", str(tmp_path / "again")]) == 0
    assert pd.read_csv(tmp_path / "again" / "generalisation.csv").equals(gen)


@pytest.mark.slow
def test_interpretability_with_tiny_jobs(tmp_path, in_process_env, capsys):
    tiny = [*TINY, "data.samples_per_epoch=8",
            "eval.figures=false", "eval.particle_metrics=false"]
    out = tmp_path / "findings"
    assert fd.main(["interpretability", "--out", str(out), "--frame-size", "256",
                    "--jobs", "2", *tiny]) == 0
    printed = capsys.readouterr().out
    assert "Learned kernels" in printed
    k = np.load(out / "interpretability_kernels.npz")
    assert k["one_filter_9x9"].shape == (1, 9, 9) and k["one_filter_7x7"].shape == (1, 7, 7)
    assert k["shallow_wide"].shape == (32, 9, 9)
    summary = pd.read_csv(out / "interpretability.csv")
    assert list(summary["model"]) == list(fd.INTERPRETABILITY_JOBS)
    assert summary.set_index("model").loc["shallow_wide", "parameters"] == 2690
    prof = pd.read_csv(out / "interpretability_profiles.csv")
    assert prof["id"].nunique() == 3 and prof[["norm", "twoconv_norm"]].stack().between(0, 1).all()
    for name in ("interpretability_kernel_9x9.png", "interpretability_kernel_7x7.png",
                 "interpretability_kernels.png",
                 "interpretability_shallow_wide.png", "interpretability_profiles.png",
                 "interpretability_segmentation.png", "interpretability.md"):
        assert (out / name).stat().st_size > 500, name
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()  # the default store under TEMSEG_ROOT
    assert set(summary["job"]) == {"finished"}
    # a second call finds every configuration finished (same hash as the app) and trains nothing
    assert fd.main(["interpretability", "--out", str(tmp_path / "again"), "--frame-size", "256",
                    *tiny]) == 0
    again = pd.read_csv(tmp_path / "again" / "interpretability.csv")
    assert set(again["job"]) == {"skipped"} and list(again["run"]) == list(summary["run"])


def test_sweep_argument_accepts_a_sweep_folder(tmp_path):
    """--sweep takes a sweep folder (its recorded parent run id), a run id or 'latest'."""
    from temseg_ablation.app.sweep import PARENT_FILE
    from temseg_ablation.report.findings import sweep_parent_id

    (tmp_path / PARENT_FILE).write_text("abc123\n")
    assert sweep_parent_id(str(tmp_path)) == "abc123"
    assert sweep_parent_id("latest") == "latest" and sweep_parent_id("abc123") == "abc123"
    with pytest.raises(FileNotFoundError, match="not a sweep folder"):
        sweep_parent_id(str(tmp_path / ".."))
