"""Lightning data module: cached frame stores -> splits -> crops and augmentation -> batches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .sources import folder_store, preprocess_store, synthetic_store
from .splits import Splits, split_frames, split_indices
from .store import FrameStore, stable_hash
from .transforms import augment_pair, augment_pair_deferred, random_crop_box

__all__ = ["FrameDataset", "ShardSampler", "Splits", "TEMDataModule", "split_frames",
           "split_indices"]


#: ``affine`` of a training item that has no affine map (the identity, scipy's convention).
IDENTITY_AFFINE = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])


class FrameDataset(Dataset):
    """Samples of a frame store: random crops with augmentation (train) or fixed views (eval).

    Each item is a dict with ``image`` (1, H, W) float32 in [0, 1], ``mask`` (H, W) int64 class
    ids, ``labels`` (H, W) int32 instance ids and ``pixel_size_nm`` (float). With
    ``augment["affine_device"]`` a training item's affine map is not applied but returned as
    ``affine`` (6,) float64, for :func:`.warp.affine_warp_batch` on the whole batch.
    """

    def __init__(
        self,
        store: FrameStore,
        indices: Sequence[int],
        *,
        crop_size: int | None,
        train: bool,
        multiple: int = 16,
        augment: dict[str, Any] | None = None,
        samples: int | None = None,
        seed: int = 0,
    ) -> None:
        self.store = store
        self.indices = list(indices)
        self.crop_size = crop_size
        self.train = train
        self.multiple = multiple
        self.augment = augment or {}
        # affine_device is where the map is applied, not an argument of the augmentation itself
        self._defer_affine = bool(self.augment.get("affine_device"))
        self._augment_kw = {k: v for k, v in self.augment.items() if k != "affine_device"}
        self.samples = samples if samples is not None else len(self.indices)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.samples if self.train else len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """Make training crops differ between epochs yet stay reproducible."""
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict[str, Any]:
        frame_index = self.indices[i % len(self.indices)]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        window = None
        if self.crop_size is not None:
            shape = self.store.frame_shape(frame_index)
            window = random_crop_box(shape, self.crop_size, rng) if self.train else (
                _centre_box(shape, self.crop_size)
            )
        image, labels, pixel_size = self.store.frame(frame_index, window)
        # Largest window the network's pooling accepts; the remainder is cut off the far edges.
        h = image.shape[0] // self.multiple * self.multiple
        w = image.shape[1] // self.multiple * self.multiple
        if h == 0 or w == 0:
            raise ValueError(
                f"frame {frame_index} of {self.store.root} is {image.shape}, smaller than the "
                f"network's input multiple {self.multiple}"
            )
        image, labels = image[:h, :w], labels[:h, :w]
        params = None
        if self.train and self.augment:
            if self._defer_affine:
                # the map is drawn here (same draws) and applied to the batch where it is trained
                image, labels, params = augment_pair_deferred(image, labels, rng, **self._augment_kw)
            else:
                image, labels = augment_pair(image, labels, rng, **self._augment_kw)
        item = {
            # np.array copies: store frames are read-only memory maps, tensors must own memory
            "image": torch.from_numpy(np.array(image, dtype=np.float32))[None],
            "mask": torch.from_numpy((labels > 0).astype(np.int64)),
            "labels": torch.from_numpy(np.array(labels, dtype=np.int32)),
            "pixel_size_nm": pixel_size,
        }
        if self.train and self._defer_affine:
            # identity where no map was drawn, so every item of a batch has the key
            item["affine"] = torch.from_numpy(IDENTITY_AFFINE if params is None else params)
        return item


def _centre_box(shape: tuple[int, int], size: int) -> tuple[slice, slice]:
    h, w = shape
    top, left = max((h - size) // 2, 0), max((w - size) // 2, 0)
    return slice(top, top + min(size, h)), slice(left, left + min(size, w))


class EpochShuffleSampler(Sampler[int]):
    """Training order for one process: a permutation of ``range(n)`` drawn from (seed, epoch).

    Unlike ``shuffle=True`` with a generator seeded once per loader, the order of an epoch does
    not depend on how many epochs this process has run, so a job resumed from a checkpoint sees
    exactly the batches an uninterrupted one would (Lightning calls ``set_epoch``).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = epoch

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


class ShardSampler(Sampler[int]):
    """Evaluation sampler for DDP: contiguous, disjoint shards without padding.

    Lightning's default distributed sampler repeats samples to even out ranks, which changes
    summed metrics; here every sample is seen exactly once over all ranks, so DDP metrics equal
    single-process ones.
    """

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        if n < world_size:
            raise ValueError(
                f"an evaluation set of {n} frame(s) cannot be split over {world_size} DDP ranks "
                "without repeating frames: use at least as many frames as ranks"
            )
        self.items = list(range(rank * n // world_size, (rank + 1) * n // world_size))

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class TEMDataModule(pl.LightningDataModule):
    """Synthetic or folder frames, cached once, split, cropped, augmented and batched.

    Splits: ``train_set`` (random crops, augmented), ``val_set`` (checkpoint selection and early
    stopping), ``test_set`` (what the results report; ``None`` without test experiments) and
    ``heldout_set`` (a synthetic experiment at another magnification and dose). With
    ``split='experiment'`` the three first are different experiments (``n_experiments`` counts
    all of them). ``blur_eval=False`` trains on ``blur_sigma``-blurred frames but evaluates
    val / test / held-out on the unblurred ones (the paper's protocol); ``blur_val`` (``None``:
    follow ``blur_eval``) decides for the validation frames alone, so checkpoint selection and
    stopping can stay in the training domain while the test set is unblurred.
    """

    def __init__(
        self,
        *,
        source: str = "synthetic",
        cache_dir: str | Path = ".cache/temseg",
        labels: str = "truth",
        n_experiments: int = 3,
        frames_per_experiment: int = 8,
        frame_height: int = 256,
        frame_width: int = 256,
        pixel_size_nm: float = 0.18,
        dose_scale: float = 1.0,
        synthetic: dict[str, Any] | None = None,
        images: Any = None,
        masks: Any = None,
        particles: str = "dark",
        frame_pixel_size_nm: float | str | None = None,
        resolution: str = "crop",
        crop_size: int | None = 128,
        val_crop_size: int | None = None,
        downsample_size: int = 512,
        blur_sigma: float = 0.0,
        blur_eval: bool = True,
        blur_val: bool | None = None,
        split: str = "experiment",
        val_fraction: float = 0.3,
        n_val_experiments: int = 1,
        n_test_experiments: int = 1,
        heldout: bool = True,
        heldout_frames: int = 4,
        batch_size: int = 4,
        num_workers: int = 0,
        samples_per_epoch: int | None = None,
        augment: dict[str, Any] | None = None,
        pseudo: dict[str, Any] | None = None,
        input_multiple: int = 16,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.kw = dict(locals())
        for key in ("self", "__class__"):
            self.kw.pop(key, None)
        self.cache_dir = Path(cache_dir)
        self.train_set: FrameDataset | None = None
        self.val_set: FrameDataset | None = None
        self.test_set: FrameDataset | None = None
        self.splits: Splits | None = None
        self.heldout_set: FrameDataset | None = None

    def prepare_data(self) -> None:
        """Generate / read and cache every store (runs on one process per node)."""
        self._stores()

    def _stores(self) -> tuple[FrameStore, FrameStore, FrameStore, FrameStore | None]:
        """(training, validation, test and held-out store or None), each built once."""
        k = self.kw
        common = dict(labels=k["labels"], pseudo=k["pseudo"], progress=k["progress"])
        if k["source"] == "synthetic":
            gen = dict(n_experiments=k["n_experiments"], frames_per_experiment=k["frames_per_experiment"],
                       height=k["frame_height"], width=k["frame_width"],
                       pixel_size_nm=k["pixel_size_nm"], seed=k["seed"], dose_scale=k["dose_scale"],
                       synthetic=k["synthetic"])
            main = synthetic_store(self.cache_dir, **gen, **common)
            held = None
            if k["heldout"]:
                held = synthetic_store(
                    self.cache_dir, **{**gen, "frames_per_experiment": k["heldout_frames"]},
                    heldout=True, **common,
                )
        elif k["source"] == "folder":
            main = folder_store(self.cache_dir, k["images"], masks=k["masks"],
                                particles=k["particles"],
                                frame_pixel_size_nm=k["frame_pixel_size_nm"],
                                pixel_size_nm=k["pixel_size_nm"], **common)
            held = None
        else:
            raise ValueError(f"unknown data source {k['source']!r}; use 'synthetic' or 'folder'")
        prep = dict(resolution=k["resolution"], downsample_size=k["downsample_size"],
                    blur_sigma=k["blur_sigma"])
        # Evaluation frames get the training blur unless blur_eval is off (the paper's protocol:
        # models trained on blurred frames, all evaluated on unblurred ones). Each variant is
        # its own cached store, keyed by its blur sigma.
        blur_val = k["blur_eval"] if k["blur_val"] is None else k["blur_val"]
        built: dict[Any, FrameStore] = {}

        def view(blurred: bool) -> FrameStore:
            sigma = prep["blur_sigma"] if blurred else 0.0
            if sigma not in built:  # built only when some split uses it
                built[sigma] = preprocess_store(main, self.cache_dir, **{**prep, "blur_sigma": sigma})
            return built[sigma]

        if held is not None:
            held_sigma = prep["blur_sigma"] if k["blur_eval"] else 0.0
            held = preprocess_store(held, self.cache_dir, **{**prep, "blur_sigma": held_sigma})
        return view(True), view(blur_val), view(k["blur_eval"]), held

    def setup(self, stage: str | None = None) -> None:
        """Open the cached stores and build the train / val / test / held-out datasets."""
        if self.train_set is not None:
            return
        k = self.kw
        main, validate, evaluate, held = self._stores()
        self.splits = split_frames(main.meta, k["split"], seed=k["seed"],
                                   val_fraction=k["val_fraction"],
                                   n_val_experiments=k["n_val_experiments"],
                                   n_test_experiments=k["n_test_experiments"])
        if not self.splits.train:
            raise ValueError("the split left no training frames: add frames or experiments")
        crop = k["crop_size"] if k["resolution"] == "crop" else None
        view = dict(multiple=k["input_multiple"], seed=k["seed"])
        self.train_set = FrameDataset(main, self.splits.train, crop_size=crop, train=True,
                                      augment=k["augment"], samples=k["samples_per_epoch"], **view)
        self.val_set = FrameDataset(validate, self.splits.val, crop_size=k["val_crop_size"],
                                    train=False, **view)
        if self.splits.test:
            self.test_set = FrameDataset(evaluate, self.splits.test, crop_size=k["val_crop_size"],
                                         train=False, **view)
        if held is not None:
            self.heldout_set = FrameDataset(held, range(held.n_frames), crop_size=k["val_crop_size"],
                                            train=False, **view)

    def dataset_records(self) -> list[dict[str, Any]]:
        """One record per split in use (after :meth:`setup`), for an experiment tracker.

        ``digest`` is a hash of the frame store's own hash (its folder name: every parameter
        that made the frames) and the split's frame indices, so two runs with the same digest
        saw the same frames; ``context`` is ``training`` / ``validation`` / ``test`` /
        ``heldout``.
        """
        if self.train_set is None:
            raise RuntimeError("dataset_records() needs setup() first")
        sets = [("training", self.train_set), ("validation", self.val_set),
                ("test", self.test_set), ("heldout", self.heldout_set)]
        records = []
        for context, ds in sets:
            if ds is None:
                continue
            frames = [int(i) for i in ds.indices]
            meta = ds.store.meta.iloc[frames]
            store = ds.store.root.name
            records.append({
                "name": f"{store}:{context}", "context": context, "source_type": "local",
                "digest": stable_hash({"store": store, "frames": frames}, length=16),
                "source": str(ds.store.root),
                "schema": {"image": "float32 (H, W), normalised", "labels": "int instance ids (H, W)",
                           "pixel_size_nm": "float"},
                "profile": {"frames": len(frames),
                            "experiments": sorted({int(e) for e in meta["experiment"]}),
                            "store_hash": store.rsplit("-", 1)[-1],
                            "pixel_size_nm_median": float(meta["pixel_size_nm"].median())},
            })
        return records

    def _loader(self, dataset: FrameDataset, train: bool) -> DataLoader:
        sampler = None
        trainer = self.trainer if self._trainer_attached() else None
        if trainer is not None and trainer.world_size > 1:
            sampler = (
                DistributedSampler(dataset, trainer.world_size, trainer.global_rank, shuffle=True,
                                   seed=self.kw["seed"])
                if train else ShardSampler(len(dataset), trainer.global_rank, trainer.world_size)
            )
        elif train:
            sampler = EpochShuffleSampler(len(dataset), self.kw["seed"])
            if trainer is not None:
                sampler.set_epoch(trainer.current_epoch)
        return DataLoader(
            dataset,
            batch_size=self.kw["batch_size"] if train else 1,
            sampler=sampler,
            num_workers=self.kw["num_workers"],
            # Fresh workers each epoch pick up the epoch counter set in the main process.
            persistent_workers=False,
            drop_last=False,
        )

    def _trainer_attached(self) -> bool:
        try:
            return self.trainer is not None
        except RuntimeError:
            return False

    def train_dataloader(self) -> DataLoader:  # noqa: D102
        assert self.train_set is not None
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:  # noqa: D102
        assert self.val_set is not None
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader | None:
        """Loader over the test experiments (what results report), or None without any.

        Sharded exactly over DDP ranks like validation (every frame once, no padding).
        """
        return None if self.test_set is None else self._loader(self.test_set, train=False)

    def heldout_dataloader(self) -> DataLoader | None:
        """Loader over the held-out experiment (other magnification and dose), if any."""
        return None if self.heldout_set is None else self._loader(self.heldout_set, train=False)
