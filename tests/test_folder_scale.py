"""Training on a user's frames at one scale: ``data.frame_pixel_size_nm`` (a number or ``auto``)
resizes each file to ``data.pixel_size_nm``, and ``data.labels=blobs`` labels them with the blob
detector; checked on synthetic frames of known particle size and truth."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from temseg_ablation.data.folder_scale import folder_scale, rescale_frames, rescale_labels
from temseg_ablation.data.sources import folder_store
from temseg_ablation.data.synthetic import SyntheticConfig, generate_frame
from temseg_ablation.data.transforms import resize_labels


def _frames(tmp_path, n=3, size=256):
    """``n`` synthetic bright-field frames at 0.18 nm/px saved as .npy (no calibration)."""
    out, frames = [], []
    for i in range(n):
        f = generate_frame(SyntheticConfig(height=size, width=size, pixel_size_nm=0.18), i)
        path = tmp_path / f"frame{i}.npy"
        np.save(path, f.image.astype(np.float32))
        out.append(str(path))
        frames.append(f)
    return out, frames


def test_scale_sources_and_zoom():
    img = generate_frame(SyntheticConfig(height=256, width=256, pixel_size_nm=0.18), 0).image
    assert folder_scale(img, 0.2, None, 0.36).source == "file"
    none = folder_scale(img, None, None, 0.36)
    assert none.source == "none" and none.zoom == 1.0 and np.isnan(none.pixel_size_nm)
    user = folder_scale(img, None, 0.72, 0.36)
    assert user.source == "user" and user.zoom == pytest.approx(2.0)
    est = folder_scale(img, None, "auto", 0.36)
    assert est.source == "estimate" and est.confidence in ("high", "medium", "low")
    # the generator's particles are ~5 nm, so the implied pixel size is near the true 0.18
    assert est.pixel_size_nm == pytest.approx(0.18, rel=0.25)
    assert est.zoom == pytest.approx(est.pixel_size_nm / 0.36)


def test_scale_errors_are_one_line():
    img = np.random.default_rng(0).random((1000, 1000))
    with pytest.raises(ValueError, match="MP") as err:
        folder_scale(img, None, 50.0, 0.36)  # 139x upsampling: surely a wrong pixel size
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="'auto'"):
        folder_scale(img, None, "automatic", 0.36)
    with pytest.raises(ValueError, match="> 0"):
        folder_scale(img, None, -1.0, 0.36)
    with pytest.raises(ValueError, match="scale estimate failed"):
        folder_scale(np.zeros((64, 64)), None, "auto", 0.36)


def test_rescale_frames_and_labels_keep_ids():
    frames = np.random.default_rng(1).random((2, 40, 60)).astype(np.float32)
    labels = np.zeros((2, 40, 60), np.int32)
    labels[:, 10:20, 10:30] = 7
    assert rescale_frames(frames, 1.0) is frames
    assert rescale_frames(frames, 0.5).shape == (2, 20, 30)
    small = rescale_labels(labels, 0.5)
    assert small.shape == (2, 20, 30) and set(np.unique(small)) == {0, 7}


def test_auto_scale_and_blob_labels_on_synthetic_files(tmp_path):
    paths, frames = _frames(tmp_path)
    store = folder_store(tmp_path / "cache", paths, labels="blobs", frame_pixel_size_nm="auto",
                         pixel_size_nm=0.36, progress=False)
    meta = store.meta
    assert list(meta["scale_source"]) == ["estimate"] * 3
    assert np.allclose(meta["pixel_size_nm"], 0.36)
    assert np.allclose(meta["native_pixel_size_nm"], 0.18, rtol=0.25)
    for e, f in enumerate(frames):
        zoom = meta["native_pixel_size_nm"].iloc[e] / 0.36
        image, lab, px = store.frame(e)
        assert px == pytest.approx(0.36)
        assert image.shape == (round(256 * zoom),) * 2
        truth = resize_labels(f.labels, image.shape) > 0
        found = lab > 0
        # blob discs sit on the particles: most of each side overlaps the other
        assert (found & truth).sum() / found.sum() > 0.6
        assert (found & truth).sum() / truth.sum() > 0.5
    # without frame_pixel_size_nm the files keep their own pixels (and no calibration)
    same = folder_store(tmp_path / "cache", paths, labels="blobs", progress=False)
    assert same.frame(0)[0].shape == (256, 256)
    assert list(same.meta["scale_source"]) == ["none"] * 3


def test_a_file_without_a_scale_is_skipped_with_its_name(tmp_path, caplog):
    paths, _ = _frames(tmp_path, n=2)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.ones((128, 128), np.float32))
    with caplog.at_level(logging.WARNING):
        store = folder_store(tmp_path / "cache", [*paths, str(flat)], labels="blobs",
                             frame_pixel_size_nm="auto", pixel_size_nm=0.36, progress=False)
    assert store.meta["experiment"].nunique() == 2
    assert any("flat.npy" in r.getMessage() and "scale" in r.getMessage() for r in caplog.records)
