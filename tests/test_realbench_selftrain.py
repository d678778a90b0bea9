"""Self-training on real frames: folds, the training jobs' overrides, the paired comparison with
the teacher, and (slow, real data) the whole command with tiny training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from temseg_ablation.report import realbench_selftrain as st

ROOT = Path(__file__).resolve().parents[1]
STEM = ROOT.parent / "shared" / "realdata" / "stem_particles"


def test_folds_deal_sorted_names_and_need_enough_frames():
    names = ["e", "a", "d", "b", "c", "f", "g"]
    assert st.fold_names(names, 2) == [["a", "c", "e", "g"], ["b", "d", "f"]]
    with pytest.raises(ValueError, match="too few"):
        st.fold_names(names[:5], 2)
    with pytest.raises(ValueError, match="2 folds"):
        st.fold_names(names, 1)


def test_each_job_trains_on_the_other_folds_only(tmp_path):
    folds = [["a", "c", "e"], ["b", "d", "f"]]
    plan = st.selftrain_jobs(tmp_path, folds, [0, 3], tmp_path / "jobs", ("trainer.max_epochs=1",))
    assert [(k, s) for k, s, _ in plan] == [(0, 0), (0, 3), (1, 0), (1, 3)]
    for k, seed, job in plan:
        images = next(o for o in job.overrides if o.startswith("data.images="))
        held, other = folds[k], folds[1 - k]
        assert all(f"/{n}.jpg'" in images for n in other)
        assert not any(f"/{n}.jpg'" in images for n in held)
        assert "experiment=selftrain" in job.overrides and f"seed={seed}" in job.overrides
        assert job.overrides[-1] == "trainer.max_epochs=1"
        assert job.job_dir == tmp_path / "jobs" / f"fold{k}_seed{seed}"


def test_paired_summary_averages_seeds_then_compares_per_frame():
    rows = []
    for seed, bump in ((0, 0.1), (1, 0.3)):
        for i, teacher in enumerate((0.5, 0.6, 0.4, 0.7)):
            rows += [{"image": f"im{i}", "seed": seed, "method": "blob_contrast", "f1": teacher},
                     {"image": f"im{i}", "seed": seed, "method": "network", "f1": teacher + bump},
                     {"image": f"im{i}", "seed": seed, "method": "network_split",
                      "f1": teacher - 0.1}]
    p = st.paired_summary(pd.DataFrame(rows)).set_index("method")
    assert p.loc["network", "mean diff"] == pytest.approx(0.2)
    assert p.loc["network", "better"] == 4 and p.loc["network", "worse"] == 0
    assert p.loc["network", "p (sign-flip)"] == pytest.approx(2 / 2**4)  # all four the same sign
    assert p.loc["network_split", "mean diff"] == pytest.approx(-0.1)
    assert p.loc["network", "teacher median"] == pytest.approx(np.median([0.5, 0.6, 0.4, 0.7]))


def test_cli_exits_2_without_data(tmp_path, capsys):
    assert st.main(["--data", str(tmp_path / "absent"), "--out", str(tmp_path)]) == 2
    assert "absent" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not STEM.is_dir(), reason="../shared/realdata is absent")
def test_selftrain_end_to_end_on_six_real_frames(tmp_path, monkeypatch):
    monkeypatch.setenv("TEMSEG_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "out"
    args = ["--data", str(STEM), "--out", str(out), "--seeds", "0", "--limit", "6",
            "--jobs-dir", str(tmp_path / "jobs"), "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlruns.db'}",
            "trainer.max_epochs=1", "data.samples_per_epoch=16", "trainer.early_stopping=null",
            "trainer.enable_progress_bar=false", "data.n_val_experiments=1",
            f"paths.root_dir={tmp_path}"]
    assert st.main(args) == 0
    df = pd.read_csv(out / "results_selftrain.csv")
    names = sorted(p.stem for p in (STEM / "images").glob("*.jpg"))[:6]
    assert sorted(df["image"].unique()) == names  # every frame scored once, by the fold without it
    assert set(df["method"]) == set(st.METHODS) and df["f1"].between(0, 1).all()
    assert df.groupby("image")["fold"].nunique().eq(1).all()
    text = (out / "results_selftrain.md").read_text()
    assert "Network minus teacher" in text and "fold0_seed0" in text and "fold1_seed0" in text
