"""Segmentation command and its library: tiled inference, particle tables, tracking, coarsening."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from temseg_ablation.data.readers import read_mask
from temseg_ablation.data.synthetic import (
    SyntheticConfig,
    generate_sequence,
    true_coarsening_curves,
)
from temseg_ablation.models import build_model
from temseg_ablation.models.io import TrainedModel, load_checkpoint
from temseg_ablation.segment import (
    coarsening_curves,
    estimate_shift,
    link_particles,
    measure_labels,
    measure_particles,
    model_pixel_size_nm,
    predict_proba,
    prepare_image,
    receptive_field_px,
    segment_frames,
    segment_image,
)
from temseg_ablation.segment.cli import main
from temseg_ablation.segment.infer import tile_layout
from temseg_ablation.segment.measure import PARTICLE_COLUMNS, frame_summary, label_particles

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


def _unet(depth: int = 3, norm: str = "batch", seed: int = 0) -> torch.nn.Module:
    """Small random UNet in eval mode with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    enc = tuple(4 * 2**i for i in range(depth))
    net = build_model("unet", encoder_channels=enc, decoder_channels=enc[::-1], head_channels=None,
                      kernel_size=3, norm=norm)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained depth-4 Norm UNet saved the way the tests of the training code save one."""
    from temseg_ablation.app.build import build_module

    from .conftest import TINY, compose_cfg

    torch.manual_seed(0)
    module = build_module(compose_cfg([*TINY, "model=norm"]))
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


# ------------------------------------------------------------------------------ measurement


def test_measure_particles_on_hand_made_mask():
    mask = np.zeros((20, 30), bool)
    mask[5:8, 5:8] = True            # 3 x 3 interior square
    mask[0:2, 10:14] = True          # 2 x 4 rectangle on the top border
    mask[15, 25] = True              # one-pixel speck
    tab = measure_particles(mask, pixel_size_nm=0.5)
    assert list(tab.columns) == PARTICLE_COLUMNS
    assert len(tab) == 3
    sq = tab.loc[tab["area_px"] == 9].iloc[0]
    assert (sq["centroid_y_px"], sq["centroid_x_px"]) == (6.0, 6.0)
    assert sq["equivalent_diameter_px"] == pytest.approx(math.sqrt(36 / math.pi))
    assert sq["equivalent_diameter_nm"] == pytest.approx(0.5 * math.sqrt(36 / math.pi))
    assert sq["area_nm2"] == pytest.approx(9 * 0.25)
    assert not sq["touches_border"]
    assert bool(tab.loc[tab["area_px"] == 8, "touches_border"].iloc[0])
    # min size drops the speck only
    kept = measure_particles(mask, pixel_size_nm=0.5, min_size_px=2)
    assert sorted(kept["area_px"]) == [8, 9]
    # no pixel size: nm columns are NaN, px columns unchanged
    nopx = measure_particles(mask)
    assert nopx["equivalent_diameter_nm"].isna().all()
    assert np.allclose(nopx["area_px"], tab["area_px"])


def test_measure_particles_matches_scikit_image():
    from skimage.measure import label, regionprops_table

    rng = np.random.default_rng(1)
    from scipy import ndimage

    mask = ndimage.gaussian_filter(rng.random((96, 80)), 2) > 0.52
    tab = measure_particles(mask, pixel_size_nm=0.2)
    ref = pd.DataFrame(regionprops_table(label(mask, connectivity=2), properties=(
        "label", "area", "centroid", "axis_major_length", "equivalent_diameter_area")))
    assert len(tab) == len(ref) > 5
    assert np.array_equal(tab["particle_id"], ref["label"])
    assert np.array_equal(tab["area_px"], ref["area"])
    assert np.allclose(tab["centroid_y_px"], ref["centroid-0"])
    assert np.allclose(tab["centroid_x_px"], ref["centroid-1"])
    assert np.allclose(tab["major_axis_length_px"], ref["axis_major_length"])
    assert np.allclose(tab["equivalent_diameter_px"], ref["equivalent_diameter_area"])


def test_measure_labels_keeps_instance_ids_of_touching_particles():
    labels = np.zeros((10, 10), np.int32)
    labels[2:5, 2:5] = 7
    labels[2:5, 5:8] = 3             # touches particle 7: one blob as a mask, two as labels
    tab = measure_labels(labels, 1.0)
    assert list(tab["particle_id"]) == [3, 7]
    assert len(measure_particles(labels > 0)) == 1
    assert len(measure_particles(labels)) == 2


def test_frame_summary_counts_border_particles_separately():
    mask = np.zeros((20, 20), bool)
    mask[0:3, 0:3] = True
    mask[8:12, 8:12] = True
    tab = measure_particles(mask, 0.5)
    s = frame_summary(tab, mask)
    assert (s["count"], s["count_interior"]) == (2, 1)
    assert s["coverage"] == pytest.approx(25 / 400)
    assert s["mean_diameter_nm"] == pytest.approx(0.5 * math.sqrt(64 / math.pi))


# ------------------------------------------------------------------------------ inference


def test_tile_layout_covers_every_pixel_once_with_margin():
    for length, tile, stride in [(1000, 256, 128), (512, 256, 192), (300, 300, 100), (257, 64, 32)]:
        starts, spans = tile_layout(length, tile, stride)
        covered = np.zeros(length, int)
        for s, (a, b) in zip(starts, spans, strict=True):
            covered[a:b] += 1
            assert s <= a < b <= s + min(tile, length)
            if a > 0:
                assert a - s >= (tile - stride) // 2
            if b < length:
                assert s + tile - b >= (tile - stride) // 2
        assert (covered == 1).all()


def test_tiled_inference_equals_whole_frame():
    net = _unet(depth=3)
    rf = receptive_field_px(net)
    assert 16 <= rf <= 64  # the depth-3 3x3 UNet's influence reaches about 15 px
    img = np.random.default_rng(0).random((139, 157)).astype(np.float32)
    whole = predict_proba(net, img, tile=256, overlap=0)
    tiled = predict_proba(net, img, tile=64, overlap=rf, batch_size=3)
    assert whole.shape == tiled.shape == img.shape
    # exact up to summation order: BatchNorm in eval mode is a per-pixel affine map
    assert np.abs(tiled - whole).max() < 1e-5
    # the comparison is sensitive: without enough context the seams show
    assert np.abs(predict_proba(net, img, tile=64, overlap=0) - whole).max() > 1e-4


def test_predict_proba_rejects_bad_tiles():
    net = _unet(depth=3)
    img = np.zeros((64, 64), np.float32)
    with pytest.raises(ValueError, match="multiple of 8"):
        predict_proba(net, img, tile=100)
    with pytest.raises(ValueError, match="overlap"):
        predict_proba(net, img, tile=64, overlap=30)


def test_prepare_image_matches_training_preprocessing():
    rng = np.random.default_rng(0)
    bright = rng.random((40, 50)).astype(np.float32) * 100
    bright[10:20, 10:20] += 300          # bright particle
    x = prepare_image(bright, particles="bright", scale=2.0, blur_sigma=1.0)
    assert x.shape == (80, 100) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert x[30:40, 30:40].mean() < 0.2 < x[60:, 60:].mean()  # particle made dark


def test_model_pixel_size_accounts_for_downsampling():
    pre = {"pixel_size_nm": 0.18, "resolution": "downsample", "downsample_size": 512,
           "frame_shape": [1024, 2048]}
    assert model_pixel_size_nm(pre) == pytest.approx(0.18 * 3)
    assert model_pixel_size_nm({"pixel_size_nm": 0.18, "resolution": "crop"}) == 0.18
    assert model_pixel_size_nm({}) is None


def test_segment_frames_rescales_and_maps_back():
    net = build_model("one_filter", kernel_size=3).eval()
    with torch.no_grad():
        net.conv.weight.fill_(-1.0)      # dark particles give high probability
        net.conv.bias.fill_(4.0)
    model = TrainedModel(net, {"arch": "one_filter"}, {"pixel_size_nm": 0.18, "blur_sigma": 0.0})
    images = np.full((2, 40, 50), 100.0, np.float32)
    images[:, 10:20, 10:22] = 20.0       # a dark particle
    prob, masks = segment_frames(model, images, pixel_size_nm=0.36, tile=64, overlap=8)
    assert prob.shape == masks.shape == images.shape
    assert masks.dtype == bool and 0.0 <= prob.min() and prob.max() <= 1.0
    assert masks[:, 12:18, 12:20].all() and not masks[:, 30:, 30:].any()
    seg = segment_image(model, images[0], pixel_size_nm=0.36)
    assert seg.scale == pytest.approx(2.0)
    assert segment_image(model, images[0], pixel_size_nm=0.36, rescale=False).scale == 1.0


def test_full_size_frame_on_cpu():
    net = _unet(depth=3, norm="batch")
    img = np.random.default_rng(0).random((1792, 1920)).astype(np.float32)
    prob = predict_proba(net, img, tile=512, overlap=32, batch_size=8)
    assert prob.shape == img.shape and np.isfinite(prob).all()


@pytest.mark.slow
def test_4096_frame_on_cpu():
    net = _unet(depth=4, norm="batch")
    img = np.random.default_rng(0).random((4096, 4096)).astype(np.float32)
    prob = predict_proba(net, img, tile=1024, overlap=64, batch_size=4)
    assert prob.shape == img.shape and np.isfinite(prob).all()
    assert 0.0 <= prob.min() and prob.max() <= 1.0


# ------------------------------------------------------------------------------ tracking


def test_link_particles_follows_drift_births_and_deaths():
    rng = np.random.default_rng(3)
    n = 60
    pos = rng.uniform(0, 400, (n, 2))
    ids = np.arange(n)
    tables, truth = [], []
    drift = np.array([6.0, -4.0])        # larger than max_disp: needs the drift estimate
    for k in range(6):
        alive = ids % 10 != k            # a few particles vanish for good, in each frame
        if k:
            pos = pos + drift + rng.normal(0, 0.3, pos.shape)
        keep = alive & (ids % 10 >= k) | (ids % 10 >= 6)
        tables.append(pd.DataFrame({"centroid_y_px": pos[keep, 0], "centroid_x_px": pos[keep, 1]}))
        truth.append(ids[keep])
    new = pd.DataFrame({"centroid_y_px": [500.0], "centroid_x_px": [500.0]})
    tables[3] = pd.concat([tables[3], new], ignore_index=True)
    truth[3] = np.append(truth[3], 999)
    assert np.allclose(estimate_shift(tables[0].to_numpy(), tables[1].to_numpy(), 20.0),
                       drift, atol=0.5)
    linked = link_particles(tables, max_disp_px=3.0, drift_search_px=20.0)
    linked["true"] = np.concatenate(truth)
    per_true = linked.groupby("true")["track_id"].nunique()
    per_track = linked.groupby("track_id")["true"].nunique()
    assert (per_true == 1).all() and (per_track == 1).all()
    assert linked.loc[linked["true"] == 999, "frame"].tolist() == [3]
    # without the drift estimate the same particles cannot be followed
    assert link_particles(tables, max_disp_px=3.0)["track_id"].nunique() > 2 * n


def test_truth_coarsening_curves_and_persistent_tracks():
    cfg = SyntheticConfig(height=320, width=320)
    frames = generate_sequence(cfg, 8, seed=3, frame_interval_s=0.5, ripening_rate=60)
    truth = true_coarsening_curves(frames)
    assert truth["count"].iloc[-1] < truth["count"].iloc[0]   # coarsening is visible
    p = cfg.pixel_size_nm
    area_um2 = cfg.height * cfg.width * p * p / 1e6
    for source in ("mask", "labels"):
        tables = [measure_particles(getattr(f, source), p) for f in frames]
        linked = link_particles(tables, max_disp_px=1.5 / p, drift_search_px=4.0 / p)
        curves = coarsening_curves(linked, area_um2, 0.5, frames=range(len(frames)))
        assert np.abs(curves["count"] - truth["count"]).max() <= 1
        assert np.allclose(curves["time_s"], truth["time_s"])
        assert np.allclose(curves["number_density_per_um2"], truth["number_density_per_um2"],
                           rtol=0.05)
        if source == "labels":       # same definitions: exact
            assert np.array_equal(curves["count"], truth["count"])
            assert np.allclose(curves["mean_diameter_nm"], truth["mean_diameter_nm"], rtol=1e-9)
        else:
            assert np.allclose(curves["mean_diameter_nm"], truth["mean_diameter_nm"], rtol=0.05)
        # which true particle each detection is: the label under its pixels
        linked["true_id"] = np.concatenate([
            t["particle_id"].to_numpy() if source == "labels" else _owner(f.mask, f.labels, t)
            for f, t in zip(frames, tables, strict=True)])
        major = linked.groupby("track_id")["true_id"].agg(lambda s: s.value_counts().index[0])
        agree = linked["true_id"].to_numpy() == major.loc[linked["track_id"]].to_numpy()
        assert agree.mean() > 0.95
        # a true particle keeps one track: the links continue rather than restart
        assert linked.groupby("true_id")["track_id"].nunique().mean() < 1.05


def _owner(mask: np.ndarray, labels: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    """The true id covering most pixels of each particle measured from ``mask``'s components."""
    comp = label_particles(mask)
    key = comp.astype(np.int64) * (int(labels.max()) + 1) + labels
    pairs = pd.Series(key[comp > 0]).value_counts()
    best = pd.DataFrame({"comp": pairs.index // (int(labels.max()) + 1),
                         "true": pairs.index % (int(labels.max()) + 1), "n": pairs.to_numpy()})
    best = best.sort_values("n", ascending=False).drop_duplicates("comp").set_index("comp")
    return best.loc[table["particle_id"], "true"].to_numpy()


# ------------------------------------------------------------------------------ command line


def _stack(tmp_path: Path, n: int = 4, size: int = 96) -> Path:
    frames = generate_sequence(SyntheticConfig(height=size, width=size + 8), n, seed=2,
                               frame_interval_s=0.5, ripening_rate=60)
    path = tmp_path / "stack.npy"
    np.save(path, np.stack([f.image for f in frames]))
    return path


def test_checkpoint_loads(checkpoint):
    model = load_checkpoint(checkpoint)
    assert model.pixel_size_nm == pytest.approx(0.18)
    assert model.net_config["norm"] == "batch" and not model.net.training


def test_cli_on_synthetic_stack(tmp_path, checkpoint, capsys):
    stack = _stack(tmp_path)
    bad = tmp_path / "broken.npy"
    bad.write_bytes(b"not an npy file")
    out = tmp_path / "out"
    rc = main(["--model", str(checkpoint), "--out", str(out), "--pixel-size-nm", "0.18",
               "--track", "--min-size-px", "3", "--no-progress", str(stack), str(bad)])
    captured = capsys.readouterr()
    assert rc == 0
    assert "broken.npy" in captured.err and "1 input(s) failed" in captured.err
    for name in ("particles.csv", "frames.csv", "size_distribution.png", "summary.json",
                 "coarsening.csv", "coarsening.png", "failed.txt"):
        assert (out / name).is_file(), name
    particles = pd.read_csv(out / "particles.csv")
    frames = pd.read_csv(out / "frames.csv")
    curves = pd.read_csv(out / "coarsening.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert len(frames) == 4 and summary["frames_processed"] == 4
    assert len(particles) == frames["count"].sum() == summary["particles"]
    assert (particles.groupby("frame").size().reindex(frames["frame"], fill_value=0).to_numpy()
            == frames["count"].to_numpy()).all()
    assert (frames["count_interior"] == frames["count"]
            - particles.groupby("frame")["touches_border"].sum().reindex(frames["frame"],
                                                                        fill_value=0).to_numpy()).all()
    assert particles["area_px"].min() >= 3
    assert particles["track_id"].notna().all()
    assert np.allclose(particles["equivalent_diameter_nm"], 0.18 * particles["equivalent_diameter_px"])
    assert summary["failures"] and "broken.npy" in (out / "failed.txt").read_text()
    assert summary["model"]["model_pixel_size_nm"] == pytest.approx(0.18)
    assert summary["scale_factors"] == [1.0]
    assert np.allclose(curves["time_s"], np.arange(4) / 400)
    assert np.array_equal(curves["count"], frames["count"])
    for _, row in frames.iterrows():
        mask = read_mask(out / row["mask"])
        assert mask.shape == (96, 104)
        assert mask.mean() == pytest.approx(row["coverage"])


def test_cli_rescales_to_model_pixel_size(tmp_path, checkpoint):
    stack = _stack(tmp_path, n=1, size=64)
    out = tmp_path / "out"
    rc = main(["--model", str(checkpoint), "--out", str(out), "--pixel-size-nm", "0.36",
               "--mask-format", "tif", "--no-progress", str(stack)])
    assert rc == 0
    frames = pd.read_csv(out / "frames.csv")
    assert frames["scale_factor"].tolist() == [pytest.approx(2.0)]
    assert read_mask(out / frames["mask"].iloc[0]).shape == (64, 72)


def test_cli_exit_status_when_nothing_is_readable(tmp_path, checkpoint, capsys):
    bad = tmp_path / "broken.npy"
    bad.write_bytes(b"junk")
    out = tmp_path / "out"
    rc = main(["--model", str(checkpoint), "--out", str(out), "--no-progress", str(bad),
               str(tmp_path / "missing.dm4")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "no frame could be segmented" in err and "missing.dm4" in err
    assert len((out / "failed.txt").read_text().splitlines()) == 2


def test_cli_reports_bad_model(tmp_path, capsys):
    stack = _stack(tmp_path, n=1, size=32)
    for spec in (str(tmp_path / "nope.ckpt"), "not-a-model"):
        rc = main(["--model", spec, "--out", str(tmp_path / "o"), "--no-progress", str(stack)])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    rc = main(["--model", "0" * 32, "--tracking-uri", f"sqlite:///{tmp_path}/none.db",
               "--out", str(tmp_path / "o"), "--no-progress", str(stack)])
    assert rc == 2 and "tracking store not found" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_cli_split_touching(tmp_path):
    img = np.full((60, 80), 100.0, np.float32)
    yy, xx = np.mgrid[:60, :80]
    for cy, cx in ((30, 30), (30, 47)):          # disks of radius 8 the pipeline bridges
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 64] = 20.0
    path = tmp_path / "pair.npy"
    np.save(path, img)
    counts = []
    for extra in ([], ["--split-touching"]):
        out = tmp_path / f"out{len(extra)}"
        rc = main(["--model", "classical", "--classical-sigma-px", "1", "--classical-opening-px",
                   "1", "--out", str(out), "--no-progress", *extra, str(path)])
        assert rc == 0
        counts.append(int(pd.read_csv(out / "frames.csv")["count"].iloc[0]))
    assert counts == [1, 2]


@pytest.mark.realdata
@pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata is absent")
def test_cli_classical_on_real_haadf(tmp_path):
    files = [REALDATA / "JEOL HAADF Image.dm4", REALDATA / "SiO2 HAADF Image.hspy"]
    if not all(f.is_file() for f in files):
        pytest.skip("real HAADF images are absent")
    out = tmp_path / "out"
    # the particles are only 5-15 px across: the paper's 2 px blur and 5 px opening would erase them
    rc = main(["--model", "classical", "--particles", "bright", "--classical-sigma-px", "0",
               "--classical-opening-px", "0", "--min-size-px", "5", "--out", str(out),
               "--no-progress", *map(str, files)])
    assert rc == 0
    frames = pd.read_csv(out / "frames.csv")
    particles = pd.read_csv(out / "particles.csv")
    assert len(frames) == 2 and (frames["count"] > 0).all()
    assert frames["pixel_size_nm"].tolist() == [pytest.approx(1.249, abs=1e-3),
                                                 pytest.approx(8.552, abs=1e-3)]
    assert particles["equivalent_diameter_nm"].notna().all()
    assert len(particles) == frames["count"].sum()
    # SiO2 spheres: a peer method reports a median equivalent diameter of about 47 nm
    assert 25 < frames["median_diameter_nm"].iloc[1] < 90


@pytest.mark.slow
def test_cli_module_runs_as_subprocess(tmp_path, checkpoint, subprocess_env):
    stack = _stack(tmp_path, n=2, size=64)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "temseg_ablation.segment", "--model", str(checkpoint),
         "--out", str(out), "--pixel-size-nm", "0.18", "--no-progress", str(stack)],
        capture_output=True, text=True, env=subprocess_env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "segmented 2 frame(s)" in proc.stdout
    assert len(pd.read_csv(out / "frames.csv")) == 2


@pytest.mark.slow
def test_model_from_run_id_and_registry(tmp_path, checkpoint, capsys):
    from mlflow import MlflowClient

    from temseg_ablation.segment import register_model

    (tmp_path / "mlruns").mkdir()
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("seg", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(exp).info.run_id
    best = tmp_path / "best.ckpt"
    best.write_bytes(checkpoint.read_bytes())
    client.log_artifact(run_id, str(best), "checkpoints")
    stack = _stack(tmp_path, n=1, size=64)
    version = register_model(run_id, "temseg-test", uri)
    assert version == "1"
    for spec in (run_id, f"models:/temseg-test/{version}", "models:/temseg-test/latest"):
        out = tmp_path / spec.replace("/", "_").replace(":", "")
        rc = main(["--model", spec, "--tracking-uri", uri, "--out", str(out), "--no-progress",
                   str(stack)])
        assert rc == 0, capsys.readouterr().err
        summary = json.loads((out / "summary.json").read_text())
        assert run_id in summary["model"]["source"]
