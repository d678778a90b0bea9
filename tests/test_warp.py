"""The batched on-device affine warp reproduces the loader's scipy augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from scipy import ndimage

from temseg_ablation.data.transforms import augment_pair, augment_pair_deferred
from temseg_ablation.data.warp import affine_warp_batch


def _scene(h: int = 70, w: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with blobs and its instance labels (ids up to 9)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros((h, w), np.int32)
    for i in range(1, 10):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 9)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    image = (labels > 0) * 0.6 + 0.2 * rng.standard_normal((h, w))
    return image.astype(np.float32), labels


@pytest.mark.parametrize("seed", range(6))
def test_warp_matches_scipy_affine_transform(seed):
    image, labels = _scene(seed=seed)
    rng = np.random.default_rng(100 + seed)
    _, _, params = augment_pair_deferred(image, labels, rng, flip=False, rotate90=False,
                                         affine=True, max_shift_px=12, max_rotate_deg=30)
    m, o = params[:4].reshape(2, 2), params[4:]
    want_img = ndimage.affine_transform(image, m, o, order=1, mode="reflect")
    want_lab = ndimage.affine_transform(labels, m, o, order=0, mode="reflect")
    got_img, got_lab = affine_warp_batch(torch.from_numpy(image)[None, None],
                                         torch.from_numpy(labels)[None],
                                         torch.from_numpy(params)[None])
    assert got_img.dtype == torch.float32 and got_lab.dtype == torch.int32
    np.testing.assert_allclose(got_img[0, 0].numpy(), want_img, atol=2e-5)  # borders included
    agree = (got_lab[0].numpy() == want_lab).mean()
    assert agree > 0.998, agree  # only halfway-between-pixel ties may differ


def test_identity_and_batches_of_different_maps():
    a, la = _scene(seed=1)
    b, lb = _scene(seed=2)
    ident = np.array([1.0, 0, 0, 1.0, 0, 0])
    _, _, p = augment_pair_deferred(b, lb, np.random.default_rng(3), affine=True)
    img, lab = affine_warp_batch(torch.from_numpy(np.stack([a, b]))[:, None],
                                 torch.from_numpy(np.stack([la, lb])),
                                 torch.from_numpy(np.stack([ident, p])))
    np.testing.assert_allclose(img[0, 0].numpy(), a, atol=1e-5)  # float32 grid coordinates
    assert (lab[0].numpy() == la).all()
    m, o = p[:4].reshape(2, 2), p[4:]
    np.testing.assert_allclose(img[1, 0].numpy(),
                               ndimage.affine_transform(b, m, o, order=1, mode="reflect"), atol=2e-5)
    with pytest.raises(ValueError, match="params"):
        affine_warp_batch(img, lab, torch.zeros(3, 6))


def test_deferred_draws_are_those_of_augment_pair():
    image, labels = _scene()
    kw = {"flip": True, "rotate90": True, "affine": True, "max_shift_px": 8, "max_rotate_deg": 15}
    for seed in range(5):
        want_img, want_lab = augment_pair(image, labels, np.random.default_rng(seed), **kw)
        img, lab, p = augment_pair_deferred(image, labels, np.random.default_rng(seed), **kw)
        got_img, got_lab = affine_warp_batch(torch.from_numpy(np.ascontiguousarray(img))[None, None],
                                             torch.from_numpy(np.ascontiguousarray(lab))[None],
                                             torch.from_numpy(p)[None])
        np.testing.assert_allclose(got_img[0, 0].numpy(), want_img, atol=2e-5)
        assert (got_lab[0].numpy() == want_lab).mean() > 0.998


def test_training_with_the_warp_on_the_batch(tiny_cfg, tmp_path):
    """affine_device: items carry their maps, the module warps the batch, training runs."""
    from temseg_ablation.app.build import build_datamodule, build_module
    from temseg_ablation.app.job import run_job

    with open_dict(tiny_cfg):
        tiny_cfg.data.augment.affine = True
        tiny_cfg.data.augment.affine_device = True
    dm = build_datamodule(tiny_cfg)
    dm.prepare_data()
    dm.setup("fit")
    item = dm.train_set[0]
    assert item["affine"].shape == (6,) and item["affine"].dtype == torch.float64
    # the module's hook turns the deferred batch into what the loader's warp would have given
    module = build_module(tiny_cfg)
    batch = next(iter(dm.train_dataloader()))
    warped = module.on_after_batch_transfer(batch, 0)
    assert "affine" not in warped and ((warped["labels"] > 0).long() == warped["mask"]).all()
    with open_dict(tiny_cfg):
        tiny_cfg.data.augment.affine_device = False
    plain = build_datamodule(tiny_cfg)
    plain.prepare_data()
    plain.setup("fit")
    ref = next(iter(plain.train_dataloader()))
    np.testing.assert_allclose(warped["image"].numpy(), ref["image"].numpy(), atol=2e-5)
    assert (warped["labels"] == ref["labels"]).float().mean() > 0.998
    with open_dict(tiny_cfg):
        tiny_cfg.data.augment.affine_device = True
    result = run_job(tiny_cfg, tmp_path / "job", job_name="device-warp")
    assert result["status"] == "finished"
