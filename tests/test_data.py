"""Data module: cached stores, splits, crops, augmentation, resolution modes, blur."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from scipy import ndimage

from temseg_ablation.data.datamodule import (
    FrameDataset,
    ShardSampler,
    TEMDataModule,
    split_frames,
    split_indices,
)
from temseg_ablation.data.sources import preprocess_store, synthetic_store
from temseg_ablation.data.store import cached_store, stable_hash
from temseg_ablation.data.transforms import augment_pair, normalise, random_crop_box, resize_labels

CONF = Path(__file__).resolve().parents[1] / "conf"

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
    meta = pd.DataFrame({"experiment": [0] * 10 + [1] * 10 + [2] * 10})
    tr, va = split_indices(meta, "random", 0.3, seed=0)
    assert len(va) == 9 and not set(tr) & set(va) and len(tr) + len(va) == 30
    tr, va = split_indices(meta, "experiment", 0.3, seed=0)
    assert not set(meta.loc[tr, "experiment"]) & set(meta.loc[va, "experiment"])
    with pytest.raises(ValueError, match="unknown split"):
        split_indices(meta, "bogus", 0.3, 0)


def test_augmentation_moves_image_and_labels_together():
    labels = np.zeros((48, 48), np.int32)
    labels[10:20, 5:15] = 7
    image = np.where(labels > 0, 0.2, 0.9).astype(np.float32)
    for seed in range(10):
        img2, lab2 = augment_pair(image, labels, np.random.default_rng(seed), affine=True,
                                  max_shift_px=4, max_rotate_deg=20)
        assert set(np.unique(lab2)) <= {0, 7}  # nearest neighbour keeps ids
        inside = img2[lab2 == 7]
        outside = img2[lab2 == 0]
        assert inside.mean() < 0.35 and outside.mean() > 0.75


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
    dm = TEMDataModule(cache_dir=tmp_path, n_experiments=3, frames_per_experiment=3,
                       frame_height=64, frame_width=64, crop_size=32, batch_size=2,
                       heldout=True, heldout_frames=2, progress=False, blur_sigma=1.0)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 32, 32)
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (1, 1, 64, 64)
    assert len(dm.test_set) == 3 and next(iter(dm.test_dataloader()))["image"].shape == (1, 1, 64, 64)
    assert dm.heldout_dataloader() is not None and len(dm.heldout_set) == 2
    none = TEMDataModule(cache_dir=tmp_path, n_experiments=2, frames_per_experiment=3,
                         frame_height=64, frame_width=64, n_test_experiments=0, heldout=False,
                         progress=False)
    none.setup("fit")
    assert none.test_set is None and none.test_dataloader() is None


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


# ---- clean splits ---------------------------------------------------------------------------

def test_split_frames_modes_and_determinism():
    meta = pd.DataFrame({"experiment": np.repeat(np.arange(5), 4)})
    s = split_frames(meta, "experiment", seed=0, n_val_experiments=1, n_test_experiments=2)
    exps = [set(meta.loc[idx, "experiment"]) for idx in (s.train, s.val, s.test)]
    assert [len(e) for e in exps] == [2, 1, 2]
    assert not (exps[0] & exps[1]) and not (exps[0] & exps[2]) and not (exps[1] & exps[2])
    assert sorted(s.train + s.val + s.test) == list(range(20))
    assert split_frames(meta, "experiment", seed=0, n_test_experiments=2) == s  # deterministic
    other = [split_frames(meta, "experiment", seed=k, n_test_experiments=2) for k in range(1, 6)]
    assert any(o != s for o in other)  # the seed does choose the experiments
    # random: the test experiment is held out whole, the rest split 70/30 frame by frame
    r = split_frames(meta, "random", seed=0, val_fraction=0.3, n_test_experiments=1)
    assert len(set(meta.loc[r.test, "experiment"])) == 1 and len(r.test) == 4
    assert not set(meta.loc[r.train + r.val, "experiment"]) & set(meta.loc[r.test, "experiment"])
    assert len(r.val) == round(16 * 0.3)
    # without test experiments it is exactly the former random split
    legacy = split_frames(meta, "random", seed=3, val_fraction=0.3, n_test_experiments=0)
    assert (legacy.train, legacy.val) == split_indices(meta, "random", 0.3, seed=3)
    assert legacy.test == []
    with pytest.raises(ValueError, match="needs at least 4 experiments"):
        split_frames(meta.iloc[:12], "experiment", seed=0, n_test_experiments=2)
    with pytest.raises(ValueError, match="n_val_experiments >= 1"):
        split_frames(meta, "experiment", seed=0, n_val_experiments=0)


def _max_mask_iou(store_a, idx_a, store_b, idx_b) -> float:
    masks_b = [np.asarray(store_b.frame(j)[1]) > 0 for j in idx_b]
    best = 0.0
    for i in idx_a:
        a = np.asarray(store_a.frame(i)[1]) > 0
        for b in masks_b:
            best = max(best, float((a & b).sum() / max((a | b).sum(), 1)))
    return best


def _dm(tmp_path, **kw) -> TEMDataModule:
    args = dict(cache_dir=tmp_path, n_experiments=4, frames_per_experiment=4, frame_height=96,
                frame_width=96, crop_size=32, batch_size=2, heldout=True, heldout_frames=2,
                progress=False, seed=5)
    dm = TEMDataModule(**{**args, **kw})
    dm.setup("fit")
    return dm


def test_val_and_test_frames_share_no_particle_field_with_training(tmp_path):
    dm = _dm(tmp_path)
    tr, va, te = dm.splits.train, dm.splits.val, dm.splits.test
    assert len(tr) == 8 and len(va) == 4 and len(te) == 4
    store = dm.train_set.store
    # Independent fields at coverage p overlap at IoU ~p / (2 - p) (0.1-0.25 on these small,
    # dense 96 px frames; the max over 48 pairs reaches ~0.26); frames of one burst at ~0.97.
    assert _max_mask_iou(store, va + te, store, tr) < 0.5
    assert _max_mask_iou(store, va, store, te) < 0.5
    # the check can fail: the paper's random split validates on burst neighbours of train frames
    leaky = _dm(tmp_path, split="random", n_test_experiments=0)
    assert _max_mask_iou(store, leaky.splits.val, store, leaky.splits.train) > 0.9
    # deterministic for a seed (same frames in each split, same store); another seed differs
    again = _dm(tmp_path)
    assert again.splits == dm.splits and again.train_set.store.root == store.root
    assert _dm(tmp_path, seed=6).train_set.store.root != store.root


def test_test_loader_is_sharded_exactly_over_ddp_ranks(tmp_path):
    dm = _dm(tmp_path, n_experiments=3, frames_per_experiment=5, heldout=False)
    seen = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        loader = dm.test_dataloader()
        assert isinstance(loader.sampler, ShardSampler)
        seen += list(loader.sampler)
    assert sorted(seen) == list(range(len(dm.test_set))) == list(range(5))  # once each, no padding


# ---- lossless augmentation ------------------------------------------------------------------

def _abs_steps(x: np.ndarray) -> np.ndarray:
    """All |neighbour differences| of an image: a noise measure unchanged by flips / 90-degree turns."""
    return np.sort(np.concatenate([np.abs(np.diff(x, axis=0)).ravel(),
                                   np.abs(np.diff(x, axis=1)).ravel()]))


def test_default_augmentation_is_a_lossless_permutation_of_a_frame_crop(tmp_path):
    defaults = OmegaConf.to_container(OmegaConf.load(CONF / "data" / "synthetic.yaml").augment)
    assert defaults["affine"] is False
    store = synthetic_store(tmp_path, **{**GEN, "n_experiments": 1, "frames_per_experiment": 1})
    frame = store.frame(0)[0]
    size = 32
    windows = np.lib.stride_tricks.sliding_window_view(frame, (size, size))
    sorted_windows = np.sort(windows.reshape(*windows.shape[:2], -1), axis=-1)
    ds = FrameDataset(store, [0], crop_size=size, train=True, augment=defaults, samples=12, seed=1)
    moved = 0
    for i in range(len(ds)):
        image = ds[i]["image"][0].numpy()
        hits = np.argwhere((sorted_windows == np.sort(image.ravel())).all(axis=-1))
        assert len(hits), f"sample {i} is not a pixel permutation of any {size}x{size} crop"
        top, left = hits[0]
        crop = frame[top:top + size, left:left + size]
        assert image.std() == pytest.approx(crop.std(), rel=1e-6)
        # pixels are only permuted by flips / turns, so the neighbour differences (noise) survive
        np.testing.assert_array_equal(_abs_steps(image), _abs_steps(crop))
        moved += not np.array_equal(image, crop)
    assert moved > 0  # flips / turns really happen
    # the interpolating option smooths the crop's noise: the confound this default removes
    affine = FrameDataset(store, [0], crop_size=size, train=True,
                          augment={**defaults, "affine": True}, samples=12, seed=1)
    ratios = []
    for i in range(len(affine)):
        rng = np.random.default_rng([1, 0, i])
        rows, cols = random_crop_box(frame.shape, size, rng)
        ratios.append(np.diff(affine[i]["image"][0].numpy(), axis=1).std()
                      / np.diff(frame[rows, cols], axis=1).std())
    assert np.mean(ratios) < 0.85


def _former_augment_pair(image, labels, rng, *, flip=True, rotate90=True, affine=True,
                         max_shift_px=8.0, max_rotate_deg=15.0):
    """The augmentation as it was before the affine map became optional (frozen reference)."""
    if flip and rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    if rotate90:
        k = int(rng.integers(0, 4))
        image, labels = np.rot90(image, k), np.rot90(labels, k)
    if affine and (max_shift_px > 0 or max_rotate_deg > 0):
        angle = np.deg2rad(rng.uniform(-max_rotate_deg, max_rotate_deg))
        shift = rng.uniform(-max_shift_px, max_shift_px, size=2)
        c, s = np.cos(angle), np.sin(angle)
        matrix = np.array([[c, -s], [s, c]])
        centre = (np.array(image.shape) - 1) / 2.0
        offset = centre - matrix @ centre + shift
        image = ndimage.affine_transform(image, matrix, offset, order=1, mode="reflect")
        labels = ndimage.affine_transform(labels, matrix, offset, order=0, mode="reflect")
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def test_affine_option_reproduces_the_former_augmentation():
    rng = np.random.default_rng(0)
    image = rng.random((40, 40)).astype(np.float32)
    labels = (rng.random((40, 40)) > 0.8).astype(np.int32)
    opts = dict(flip=True, rotate90=True, max_shift_px=8, max_rotate_deg=15.0)
    for seed in range(6):
        new = augment_pair(image, labels, np.random.default_rng(seed), affine=True, **opts)
        old = _former_augment_pair(image, labels, np.random.default_rng(seed), affine=True, **opts)
        np.testing.assert_array_equal(new[0], old[0])
        np.testing.assert_array_equal(new[1], old[1])
    lossless = augment_pair(image, labels, np.random.default_rng(0), **opts)  # affine off by default
    np.testing.assert_array_equal(np.sort(lossless[0].ravel()), np.sort(image.ravel()))


# ---- the paper's blur protocol --------------------------------------------------------------

def test_blur_eval_false_evaluates_on_unblurred_frames(tmp_path):
    kw = dict(n_experiments=3, frames_per_experiment=2, frame_height=64, frame_width=64,
              blur_sigma=2.0, heldout_frames=2)
    dm = _dm(tmp_path, blur_eval=False, **kw)
    raw = synthetic_store(tmp_path, n_experiments=3, frames_per_experiment=2, height=64, width=64,
                          pixel_size_nm=0.18, seed=5, progress=False)
    raw_held = synthetic_store(tmp_path, n_experiments=3, frames_per_experiment=2, height=64,
                               width=64, pixel_size_nm=0.18, seed=5, heldout=True, progress=False)
    blurred = preprocess_store(raw, tmp_path, blur_sigma=2.0)
    for ds, source in ((dm.val_set, raw), (dm.test_set, raw), (dm.heldout_set, raw_held)):
        for i, g in enumerate(ds.indices):
            np.testing.assert_array_equal(ds[i]["image"][0].numpy(), source.frame(g)[0])
    assert dm.train_set.store.root == blurred.root != raw.root  # training frames are blurred
    g = dm.splits.train[0]
    np.testing.assert_array_equal(dm.train_set.store.frame(g)[0], blurred.frame(g)[0])
    assert not np.array_equal(blurred.frame(g)[0], raw.frame(g)[0])
    # default (blur_eval=True): evaluation frames are blurred like the training ones
    both = _dm(tmp_path, **kw)
    v = both.splits.val[0]
    np.testing.assert_array_equal(both.val_set[0]["image"][0].numpy(), blurred.frame(v)[0])
    assert both.heldout_set.store.root != raw_held.root


def test_blur_val_keeps_validation_in_the_training_domain(tmp_path):
    """blur_eval=False with blur_val=True: validation blurred like training, test unblurred."""
    kw = dict(n_experiments=3, frames_per_experiment=2, frame_height=64, frame_width=64,
              blur_sigma=2.0, heldout_frames=2)
    dm = _dm(tmp_path, blur_eval=False, blur_val=True, **kw)
    raw = synthetic_store(tmp_path, n_experiments=3, frames_per_experiment=2, height=64, width=64,
                          pixel_size_nm=0.18, seed=5, progress=False)
    blurred = preprocess_store(raw, tmp_path, blur_sigma=2.0)
    v, t = dm.splits.val[0], dm.splits.test[0]
    np.testing.assert_array_equal(dm.val_set[0]["image"][0].numpy(), blurred.frame(v)[0])
    np.testing.assert_array_equal(dm.test_set[0]["image"][0].numpy(), raw.frame(t)[0])
    assert not np.array_equal(blurred.frame(v)[0], raw.frame(v)[0])
    # and the reverse: blurred test frames, unblurred validation
    rev = _dm(tmp_path, blur_val=False, **kw)
    np.testing.assert_array_equal(rev.val_set[0]["image"][0].numpy(), raw.frame(v)[0])
    np.testing.assert_array_equal(rev.test_set[0]["image"][0].numpy(), blurred.frame(t)[0])


def test_a_store_window_reads_exactly_that_part_of_the_frame(tmp_path):
    g = np.random.default_rng(3)

    def build(folder: Path) -> pd.DataFrame:
        np.save(folder / "images_0.npy", g.random((2, 40, 56)).astype(np.float16))
        np.save(folder / "labels_0.npy", g.integers(0, 5, (2, 40, 56)).astype(np.int32))
        return pd.DataFrame({"experiment": [0, 0], "frame": [0, 1], "pixel_size_nm": [0.2, 0.3]})

    store = cached_store(tmp_path, "t", {"n": 1}, build)
    assert store.frame_shape(1) == (40, 56)
    image, labels, px = store.frame(1)
    win = (slice(5, 37), slice(20, 52))
    wimage, wlabels, wpx = store.frame(1, win)
    assert wimage.dtype == np.float32 and wimage.shape == (32, 32) and wpx == px == 0.3
    np.testing.assert_array_equal(wimage, image[win])
    np.testing.assert_array_equal(wlabels, labels[win])
