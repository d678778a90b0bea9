"""Data module: cached stores, splits, crops, augmentation, resolution modes, blur."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from temseg_ablation.data.datamodule import FrameDataset, ShardSampler, TEMDataModule, split_indices
from temseg_ablation.data.sources import preprocess_store, synthetic_store
from temseg_ablation.data.store import stable_hash
from temseg_ablation.data.transforms import augment_pair, normalise, resize_labels

GEN = dict(n_experiments=2, frames_per_experiment=3, height=64, width=80, pixel_size_nm=0.18,
           seed=3, progress=False)


def test_store_is_built_once_and_memory_mapped(tmp_path):
    a = synthetic_store(tmp_path, **GEN)
    stamp = (a.root / "images_0.npy").stat().st_mtime_ns
    b = synthetic_store(tmp_path, **GEN)
    assert b.root == a.root
    assert (b.root / "images_0.npy").stat().st_mtime_ns == stamp  # not regenerated
    assert isinstance(b.images[0], np.memmap)
    assert a.n_frames == 6 and b.images[0].shape == (3, 64, 80)
    image, labels, px = b.frame(4)
    assert image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
    assert labels.max() > 0 and px > 0
    # every parameter is in the key: another seed is another store
    c = synthetic_store(tmp_path, **{**GEN, "seed": 4})
    assert c.root != a.root
    assert not list(tmp_path.glob(".synthetic-*-*"))  # no half-written temporary folders


def test_heldout_store_differs_in_pixel_size(tmp_path):
    main = synthetic_store(tmp_path, **GEN)
    held = synthetic_store(tmp_path, **GEN, heldout=True)
    assert held.root != main.root
    assert held.meta["pixel_size_nm"].iloc[0] != pytest.approx(main.meta["pixel_size_nm"].iloc[0])


def test_pseudo_labels_mode(tmp_path):
    big = {**GEN, "height": 256, "width": 256, "n_experiments": 1, "frames_per_experiment": 1}
    truth = synthetic_store(tmp_path, **big)
    pseudo = synthetic_store(tmp_path, **big, labels="pseudo")
    assert pseudo.root != truth.root
    t = np.asarray(truth.labels[0]) > 0
    p = np.asarray(pseudo.labels[0]) > 0
    f1 = 2 * (t & p).sum() / (t.sum() + p.sum())
    assert 0.5 < f1 < 1.0  # real pseudo-labels: close to, but not equal to, the truth


def test_downsample_and_blur(tmp_path):
    store = synthetic_store(tmp_path, **GEN)
    down = preprocess_store(store, tmp_path, resolution="downsample", downsample_size=32)
    assert down.images[0].shape == (3, 32, 32)
    assert down.meta["pixel_size_nm"].iloc[0] == pytest.approx(
        store.meta["pixel_size_nm"].iloc[0] * 0.5 * (64 / 32 + 80 / 32))
    assert set(np.unique(down.labels[0])) <= set(np.unique(store.labels[0]))
    blurred = preprocess_store(store, tmp_path, blur_sigma=2.0)
    raw = np.asarray(store.images[0][0], dtype=np.float32)
    smooth = np.asarray(blurred.images[0][0], dtype=np.float32)
    assert np.abs(np.diff(smooth, axis=1)).mean() < 0.5 * np.abs(np.diff(raw, axis=1)).mean()
    assert preprocess_store(store, tmp_path) is store  # nothing to do: the same store


def test_splits():
    import pandas as pd

    meta = pd.DataFrame({"experiment": [0] * 10 + [1] * 10 + [2] * 10})
    tr, va = split_indices(meta, "random", 0.3, seed=0)
    assert len(va) == 9 and not set(tr) & set(va) and len(tr) + len(va) == 30
    tr, va = split_indices(meta, "experiment", 0.3, seed=0)
    assert not set(meta.loc[tr, "experiment"]) & set(meta.loc[va, "experiment"])
    with pytest.raises(ValueError, match="unknown split"):
        split_indices(meta, "bogus", 0.3, 0)


def test_augmentation_moves_image_and_labels_together():
    rng = np.random.default_rng(0)
    labels = np.zeros((48, 48), np.int32)
    labels[10:20, 5:15] = 7
    image = np.where(labels > 0, 0.2, 0.9).astype(np.float32)
    for seed in range(10):
        img2, lab2 = augment_pair(image, labels, np.random.default_rng(seed), max_shift_px=4,
                                  max_rotate_deg=20)
        assert set(np.unique(lab2)) <= {0, 7}  # nearest neighbour keeps ids
        inside = img2[lab2 == 7]
        outside = img2[lab2 == 0]
        assert inside.mean() < 0.35 and outside.mean() > 0.75
    assert rng is not None


def test_frame_dataset_crops_and_multiple(tmp_path):
    store = synthetic_store(tmp_path, **GEN)
    ds = FrameDataset(store, [0, 1, 2], crop_size=32, train=True, multiple=16,
                      augment={"flip": True}, samples=5, seed=0)
    assert len(ds) == 5
    item = ds[0]
    assert item["image"].shape == (1, 32, 32) and item["mask"].dtype == torch.int64
    assert torch.equal(item["mask"], (item["labels"] > 0).long())
    again = ds[0]
    assert torch.equal(item["image"], again["image"])  # reproducible within an epoch
    ds.set_epoch(1)
    assert not torch.equal(item["image"], ds[0]["image"])  # new crops each epoch
    full = FrameDataset(store, [0], crop_size=None, train=False, multiple=16)
    assert full[0]["image"].shape == (1, 64, 80)  # already multiples of 16


def test_shard_sampler_is_exact():
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(7))
    with pytest.raises(ValueError, match="cannot be split"):
        ShardSampler(1, 0, 2)


def test_datamodule_end_to_end(tmp_path):
    dm = TEMDataModule(cache_dir=tmp_path, n_experiments=2, frames_per_experiment=3,
                       frame_height=64, frame_width=64, crop_size=32, batch_size=2,
                       heldout=True, heldout_frames=2, progress=False, blur_sigma=1.0)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 32, 32)
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (1, 1, 64, 64)
    assert dm.heldout_dataloader() is not None and len(dm.heldout_set) == 2


def test_normalise_and_resize_helpers():
    x = np.linspace(-5, 5, 100, dtype=np.float32).reshape(10, 10)
    y = normalise(x)
    assert y.min() == 0 and y.max() == 1
    assert not normalise(np.ones((4, 4))).any()
    with pytest.raises(ValueError, match="NaN"):
        normalise(np.array([[np.nan, 1.0]]))
    lab = np.arange(16).reshape(4, 4)
    assert resize_labels(lab, (2, 2)).tolist() == [[5, 7], [13, 15]]  # block centres
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
