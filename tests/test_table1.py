"""Measured Table 1: the statistics and verdict rule, and a tiny end-to-end run of the driver."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from temseg_ablation.report import table1

from .conftest import ROOT, TINY


def test_paired_interval_matches_t_interval():
    d = np.array([0.1, 0.2, 0.3])
    mean, low, high = table1.paired_interval(d)
    assert mean == pytest.approx(0.2)
    half = 4.302652729911275 * 0.1 / np.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (low, high) == pytest.approx((0.2 - half, 0.2 + half))
    assert np.isnan(table1.paired_interval(np.array([0.5]))[1])


@pytest.mark.parametrize(("expect", "low", "high", "verdict"), [
    (+1, 0.01, 0.2, "supports"), (+1, -0.2, -0.01, "contradicts"), (+1, -0.1, 0.1, "inconclusive"),
    (-1, -0.2, -0.01, "supports"), (-1, 0.01, 0.2, "contradicts"),
    (0, -0.01, 0.015, "supports"), (0, 0.05, 0.1, "contradicts"), (0, -0.05, 0.01, "inconclusive"),
    (+1, float("nan"), float("nan"), "inconclusive"),
])
def test_verdict_rule(expect, low, high, verdict):
    assert table1.verdict(expect, low, high) == verdict


def test_measure_table_pairs_by_seed():
    rows = []
    for seed in range(4):
        rows.append({"arm": "norm", "seed": seed, "final/val/f1_otsu": 0.5 + 0.01 * seed})
        rows.append({"arm": "norm_k7", "seed": seed, "final/val/f1_otsu": 0.6 + 0.01 * seed})
    t = table1.measure_table(pd.DataFrame(rows))
    k7 = t[(t["treated"] == "norm_k7")].iloc[0]
    # the seed effect cancels in the pairing: a constant +0.1 with a zero-width interval
    assert k7["diff"] == pytest.approx(0.1) and k7["ci_low"] == pytest.approx(0.1)
    assert k7["verdict"] == "supports" and k7["n_seeds"] == 4
    missing = t[t["treated"] == "twoconv_norm"]
    assert (missing["verdict"] == "inconclusive").all()


def test_every_arm_has_a_config():
    names = {p.stem for p in (ROOT / "conf" / "table1").glob("*.yaml")}
    assert set(table1.arms()) == names


@pytest.mark.slow
def test_reproduce_table1_end_to_end(tmp_path, subprocess_env):
    out = tmp_path / "table"
    cmd = [sys.executable, "-m", "temseg_ablation.report.reproduce_table1", "--seeds", "2",
           "--arms", "norm,norm_depth3", "--out", str(out), *TINY, "data.heldout_frames=2",
           "hydra/launcher=basic"]
    run = subprocess.run(cmd, env=subprocess_env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = pd.read_csv(out / "table1.csv")
    assert set(table["row"].astype(str)) >= {"1", "2a", "2b", "3", "4", "5", "6", "7", "8"}
    depth = table[table["row"].astype(str) == "6"].iloc[0]
    assert depth["n_seeds"] == 2 and np.isfinite(depth["ci_low"])  # measured from both seeds
    assert (table.loc[table["row"].astype(str) != "6", "n_seeds"] == 0).all()  # arms not run
    assert set(table["verdict"]) <= {"supports", "contradicts", "inconclusive"}
    assert (out / "table1_effects.png").stat().st_size > 10_000
    assert "Table 1, measured" in (out / "table1.md").read_text()
    # a second run reuses every finished job from the tracking store
    again = subprocess.run(cmd, env=subprocess_env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0
    summaries = sorted((tmp_path / "outputs" / "table1").glob("*/summary.csv"))
    assert len(summaries) == 2
    assert set(pd.read_csv(summaries[-1])["status"]) == {"skipped"}
