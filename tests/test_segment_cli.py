"""``python -m temseg_ablation.segment`` as a real process: scale estimate, output folder, reruns.

The classical pipeline needs no training; frames are synthetic (known pixel size), written as
PNG / NPY / ImageJ TIFF into tmp folders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from temseg_ablation.data.readers import read_mask
from temseg_ablation.data.synthetic import SyntheticConfig, generate_sequence
from temseg_ablation.segment.cli import main
from temseg_ablation.segment.pipeline import CRASH_AFTER_ENV, default_tracking_uri

from .conftest import app_environ

ROOT = Path(__file__).resolve().parents[1]


def _frames(n: int, px: float = 0.36, size: int = 160, seed: int = 1) -> list[np.ndarray]:
    cfg = SyntheticConfig(height=size, width=size, pixel_size_nm=px)
    return [f.image for f in generate_sequence(cfg, n, seed=seed, frame_interval_s=0.5,
                                               ripening_rate=60)]


def _png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    lo, hi = float(image.min()), float(image.max())
    Image.fromarray(((image - lo) / (hi - lo) * 255).astype(np.uint8)).save(path)
    return path


def _calibrated_tif(path: Path, image: np.ndarray, px_nm: float) -> Path:
    import tifffile

    tifffile.imwrite(path, image.astype(np.float32), imagej=True,
                     resolution=(1 / px_nm, 1 / px_nm), metadata={"unit": "nm"})
    return path


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return app_environ(tmp_path, PYTHONPATH=str(ROOT))


def _run(args: list[str], env: dict[str, str], cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "temseg_ablation.segment", "--no-progress", *args],
                          capture_output=True, text=True, env={**env, **extra}, cwd=cwd, timeout=120)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# ------------------------------------------------------------------------------ scale


def test_auto_scale_on_uncalibrated_png(tmp_path, env):
    png = _png(tmp_path / "frame.png", _frames(1, px=0.36)[0])
    proc = _run(["--model", "classical", "--pixel-size-nm", "auto", "--out", "auto", str(png)],
                env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = pd.read_csv(tmp_path / "auto" / "frames.csv").iloc[0]
    assert row["scale_source"] == "estimate" and row["scale_confidence"] in ("high", "medium")
    # the estimate implies the true 0.36 nm/px within 20 %: particles are 5 nm, as the paper's
    assert row["implied_pixel_size_nm"] == pytest.approx(0.36, rel=0.2)
    # the classical lengths (tuned at 28 px particles) follow the estimated diameter
    assert row["classical_sigma_px"] == pytest.approx(2.0 * row["estimated_diameter_px"] / 28, rel=1e-3)
    assert row["classical_sigma_px"] < 1.3 and row["count"] > 5
    assert np.isnan(row["pixel_size_nm"]) and np.isnan(row["median_diameter_nm"])  # not a calibration
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert summary["scale"]["sources"] == {"estimate": 1}
    assert summary["frames_without_calibration"] == 1
    # without auto the same frame keeps the given pixel parameters
    proc = _run(["--model", "classical", "--out", "plain", str(png)], env, tmp_path)
    row = pd.read_csv(tmp_path / "plain" / "frames.csv").iloc[0]
    assert row["scale_source"] == "none" and row["classical_sigma_px"] == 2.0


def test_blobs_mode_counts_haadf_particles_with_and_without_calibration(tmp_path, env):
    """--model blobs: the real-image benchmark's best path, on synthetic HAADF frames with truth."""
    cfg = SyntheticConfig(height=192, width=192, pixel_size_nm=0.3, imaging_mode="haadf")
    frame = generate_sequence(cfg, 1, seed=3)[0]
    true_n = int((~frame.particles["touches_border"]).sum())
    png = _png(tmp_path / "haadf.png", frame.image)
    tif = _calibrated_tif(tmp_path / "haadf_cal.tif", frame.image, 0.3)
    proc = _run(["--model", "blobs", "--particles", "bright", "--pixel-size-nm", "auto",
                 "--out", "o", str(png), str(tif)], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(tmp_path / "o" / "frames.csv").set_index("source")
    png_row = rows.loc[rows.index.str.endswith("haadf.png")].iloc[0]
    cal_row = rows.loc[rows.index.str.endswith("haadf_cal.tif")].iloc[0]
    assert png_row["scale_source"] == "estimate" and cal_row["scale_source"] == "file"
    for row in (png_row, cal_row):
        assert 0.7 * true_n <= row["count_interior"] <= 1.3 * true_n, (row["count_interior"], true_n)
        assert np.isnan(row["classical_sigma_px"]) and row["estimated_diameter_px"] > 0
    assert np.isnan(png_row["median_diameter_nm"])  # an estimate is not a calibration
    # 5 nm particles (the generator's median) measured in nm from the file's calibration
    assert 3.0 < cal_row["median_diameter_nm"] < 7.0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["model"]["kind"] == "blobs"


def test_low_confidence_estimate_warns_once_per_frame(tmp_path, env):
    img = np.full((2, 96, 96), 200.0, np.float32)
    yy, xx = np.mgrid[:96, :96]
    img[:, (yy - 40) ** 2 + (xx - 50) ** 2 <= 49] = 40.0     # one particle: too few to trust
    img += np.random.default_rng(0).normal(0, 3, img.shape).astype(np.float32)
    np.save(tmp_path / "sparse.npy", img)
    proc = _run(["--model", "classical", "--pixel-size-nm", "auto", "--out", "o", "sparse.npy"],
                env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 2 and all("low-confidence" in w for w in warnings)
    assert (pd.read_csv(tmp_path / "o" / "frames.csv")["scale_confidence"] == "low").all()


def test_network_auto_scale_resizes_to_training_scale(tmp_path, env):
    from temseg_ablation.app.build import build_module

    from .conftest import TINY, compose_cfg

    torch.manual_seed(0)
    ckpt = tmp_path / "model.ckpt"
    module = build_module(compose_cfg([*TINY, "model=norm"]))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    png = _png(tmp_path / "frame.png", _frames(1, px=0.36)[0])
    proc = _run(["--model", str(ckpt), "--pixel-size-nm", "auto", "--out", "o", str(png)],
                env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = pd.read_csv(tmp_path / "o" / "frames.csv").iloc[0]
    # model particles: 5 nm at 0.18 nm/px = 27.8 px; frame particles about 12.5 px -> about 2x
    assert row["scale_source"] == "estimate"
    assert row["scale_factor"] == pytest.approx(2.0, rel=0.2)
    assert read_mask(tmp_path / "o" / row["mask"]).shape == (160, 160)
    model = json.loads((tmp_path / "o" / "summary.json").read_text())["model"]
    assert model["particle_diameter_nm"] == 5.0 and "synthetic" in model["particle_diameter_source"]


def test_absurd_pixel_size_and_oversized_rescale(tmp_path, env, capsys):
    np.save(tmp_path / "f.npy", _frames(1, size=64)[0])
    line = _one_error_line(_run(["--model", "classical", "--pixel-size-nm", "1e-9", "--out", "o",
                                 "f.npy"], env, tmp_path))
    assert "plausible range" in line
    assert not (tmp_path / "o").exists()
    # a pixel size 550x the model's would make a 64 px frame 35000 px wide: refused, bound named
    from temseg_ablation.models import build_model
    from temseg_ablation.models.io import TrainedModel  # noqa: F401  (checkpoint format below)

    net = build_model("one_filter", kernel_size=3)
    ckpt = tmp_path / "one.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"net_config": {"arch": "one_filter", "kernel_size": 3},
                                     "preprocess": {"pixel_size_nm": 0.18}}}, ckpt)
    rc = main(["--model", str(ckpt), "--pixel-size-nm", "100", "--out", str(tmp_path / "big"),
               "--no-progress", str(tmp_path / "f.npy")])
    err = capsys.readouterr().err
    assert rc == 2 and "MAX_RESCALED_PIXELS" in err and "64,000,000" in err


# ------------------------------------------------------------------------------ output folder


def test_output_folder_errors_are_one_line(tmp_path, env):
    np.save(tmp_path / "f.npy", _frames(1, size=64)[0])
    (tmp_path / "afile").write_text("x")
    assert "not a folder" in _one_error_line(
        _run(["--model", "classical", "--out", "afile", "f.npy"], env, tmp_path))
    assert "is a file" in _one_error_line(
        _run(["--model", "classical", "--out", "afile/sub/out", "f.npy"], env, tmp_path))
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = locked / "out"
    else:  # root writes anywhere chmod allows; sysfs refuses new entries even to root
        target = Path("/sys/temseg-segment-test-out")
        if target.exists():
            pytest.skip("unexpected /sys entry")
    assert "cannot write" in _one_error_line(
        _run(["--model", "classical", "--out", str(target), "f.npy"], env, tmp_path))


def test_max_disp_nm_on_uncalibrated_frames_fails_before_segmenting(tmp_path, env):
    np.save(tmp_path / "stack.npy", np.stack(_frames(2, size=64)))
    line = _one_error_line(_run(["--model", "classical", "--track", "--max-disp-nm", "2",
                                 "--out", "o", "stack.npy"], env, tmp_path))
    assert "--max-disp-nm" in line and "no calibration" in line
    assert not (tmp_path / "o" / "frames.csv").exists()
    assert not list((tmp_path / "o").glob("masks/*"))


# ------------------------------------------------------------------------------ crash, rerun


def _write_inputs(tmp_path: Path, n: int = 4) -> list[str]:
    names = []
    for i, img in enumerate(_frames(n, px=0.18, size=96, seed=3)):
        np.save(tmp_path / f"f{i}.npy", img)
        names.append(f"f{i}.npy")
    return names


def test_crash_keeps_finished_frames_and_rerun_continues(tmp_path, env):
    names = _write_inputs(tmp_path)
    args = ["--model", "classical", "--pixel-size-nm", "0.18", "--track", "--min-size-px", "4"]
    proc = _run([*args, "--out", "crash", *names], env, tmp_path, **{CRASH_AFTER_ENV: "2"})
    assert proc.returncode == 70, proc.stderr
    out = tmp_path / "crash"
    frames = pd.read_csv(out / "frames.csv")
    particles = pd.read_csv(out / "particles.csv")
    assert frames["source"].tolist() == names[:2]
    assert (particles.groupby("frame").size().to_numpy() == frames["count"].to_numpy()).all()
    for _, row in frames.iterrows():
        assert read_mask(out / row["mask"]).mean() == pytest.approx(row["coverage"])
    assert not (out / "summary.json").exists()
    # an orphan of an unfinished frame (written before the crash reached the manifest)
    (out / "masks" / "f2_f0000.png").write_bytes((out / "masks" / "f0_f0000.png").read_bytes())

    proc = _run([*args, "--out", "crash", *names], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 already done, skipped" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["frames_processed"], summary["frames_new"], summary["frames_already_done"]) == (4, 2, 2)
    # the continued folder equals an uninterrupted run
    assert _run([*args, "--out", "whole", *names], env, tmp_path).returncode == 0
    for name in ("frames.csv", "particles.csv", "coarsening.csv"):
        a, b = pd.read_csv(out / name), pd.read_csv(tmp_path / "whole" / name)
        pd.testing.assert_frame_equal(a, b)
    assert sorted(p.name for p in (out / "masks").iterdir()) == \
           sorted(p.name for p in (tmp_path / "whole" / "masks").iterdir())


def test_rerun_refuses_other_options_and_overwrite_leaves_nothing_stale(tmp_path, env):
    names = _write_inputs(tmp_path, n=2)
    (tmp_path / "bad.npy").write_bytes(b"junk")
    out = tmp_path / "o"
    assert _run(["--model", "classical", "--out", "o", *names, "bad.npy"], env, tmp_path).returncode == 0
    assert (out / "failed.txt").is_file()
    before = (out / "frames.csv").read_bytes()
    line = _one_error_line(_run(["--model", "classical", "--min-size-px", "40", "--out", "o",
                                 *names], env, tmp_path))
    assert "other options" in line and "--overwrite" in line
    assert (out / "frames.csv").read_bytes() == before and (out / "failed.txt").is_file()
    # the same options continue; the fixed input is retried and failed.txt disappears
    np.save(tmp_path / "bad.npy", _frames(1, px=0.18, size=96, seed=5)[0])
    proc = _run(["--model", "classical", "--out", "o", *names, "bad.npy"], env, tmp_path)
    assert proc.returncode == 0 and "2 already done" in proc.stdout
    assert not (out / "failed.txt").exists()
    assert json.loads((out / "summary.json").read_text())["failures"] == []
    assert len(pd.read_csv(out / "frames.csv")) == 3
    # --overwrite starts over with the new options: only their frames and masks remain
    proc = _run(["--model", "classical", "--min-size-px", "40", "--overwrite", "--out", "o",
                 names[0]], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    frames = pd.read_csv(out / "frames.csv")
    assert frames["source"].tolist() == [names[0]]
    assert pd.read_csv(out / "particles.csv")["area_px"].min() >= 40
    assert [p.name for p in (out / "masks").iterdir()] == ["f0_f0000.png"]


def test_folder_with_foreign_results_is_refused(tmp_path, env):
    names = _write_inputs(tmp_path, n=1)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "summary.json").write_text("{}")
    assert "manifest" in _one_error_line(_run(["--model", "classical", "--out", "o", *names],
                                              env, tmp_path))


# ------------------------------------------------------------------------------ calibration


def test_mixed_calibration_summary(tmp_path, env):
    a, b = _frames(2, px=0.18, size=128, seed=4)
    _calibrated_tif(tmp_path / "cal.tif", a, 0.18)
    np.save(tmp_path / "raw.npy", b)
    proc = _run(["--model", "classical", "--out", "o", "cal.tif", "raw.npy"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 of 2 frame(s) had no calibration" in proc.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    frames = pd.read_csv(tmp_path / "o" / "frames.csv")
    particles = pd.read_csv(tmp_path / "o" / "particles.csv")
    assert frames["scale_source"].tolist() == ["file", "none"]
    assert summary["frames_without_calibration"] == 1
    (group,) = summary["calibrated"]
    assert group["pixel_size_nm"] == pytest.approx(0.18) and group["source"] == "file"
    cal = particles.loc[(particles["frame"] == 0) & ~particles["touches_border"]]
    assert group["particles_not_touching_border"] == len(cal) > 0
    assert group["median_diameter_nm"] == pytest.approx(cal["equivalent_diameter_nm"].median())
    # the overall nm median covers the calibrated frame only
    assert summary["diameter_unit"] == "nm" and summary["median_diameter"] == pytest.approx(
        group["median_diameter_nm"])
    raw = particles.loc[(particles["frame"] == 1) & ~particles["touches_border"]]
    assert summary["without_calibration"]["median_diameter_px"] == pytest.approx(
        raw["equivalent_diameter_px"].median())


# ------------------------------------------------------------------------------ tracking store


def test_default_tracking_uri_order(tmp_path, env, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TEMSEG_ROOT", str(tmp_path / "root"))
    assert default_tracking_uri() == f"sqlite:///{tmp_path / 'root' / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env.db")
    assert default_tracking_uri() == f"sqlite:///{tmp_path}/env.db"
    np.save(tmp_path / "f.npy", _frames(1, size=64)[0])
    run_id = ["--model", "0" * 32, "--out", "o", "f.npy"]
    # the environment variable wins over TEMSEG_ROOT, an explicit flag over both
    line = _one_error_line(_run(run_id, env, tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/env.db"))
    assert f"{tmp_path}/env.db: tracking store not found" in line
    line = _one_error_line(_run(run_id, env, tmp_path))
    assert f"{tmp_path}/mlruns/mlflow.db: tracking store not found" in line
    line = _one_error_line(_run([*run_id, "--tracking-uri", f"sqlite:///{tmp_path}/flag.db"], env,
                                tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/env.db"))
    assert f"{tmp_path}/flag.db: tracking store not found" in line
