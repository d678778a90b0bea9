"""On-disk, memory-mapped frame stores: a data set is generated or labelled once per parameter set.

A store is a folder holding, per experiment ``e``, ``images_e.npy`` (N, H, W) float16 in [0, 1]
and ``labels_e.npy`` (N, H, W) int32 instance labels (0 = background), plus ``meta.csv`` with one
row per frame. Folders are named by a hash of every parameter that shaped them, written to a
temporary folder and renamed into place, and guarded by a file lock, so that parallel sweep
jobs build a store once and a crash never leaves a half-written one behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FORMAT_VERSION = 1


def stable_hash(obj: Any, length: int = 12) -> str:
    """Short sha1 of a JSON-serialisable object with sorted keys (a cache key)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:length]


@dataclass
class FrameStore:
    """Frames of one or more experiments, memory-mapped from a store folder."""

    root: Path
    images: list[np.ndarray]
    labels: list[np.ndarray]
    meta: pd.DataFrame

    @property
    def n_frames(self) -> int:
        """Total number of frames over all experiments."""
        return len(self.meta)

    def _where(self, index: int) -> tuple[int, int]:
        # column lookups: a crop asks twice per item (shape, then pixels), and iloc's row Series
        # costs more than both
        return int(self.meta["experiment"].iat[index]), int(self.meta["frame"].iat[index])

    def frame_shape(self, index: int) -> tuple[int, int]:
        """(H, W) of global frame ``index``, read from the memory map without loading it."""
        e, _ = self._where(index)
        return tuple(self.images[e].shape[1:3])

    def frame(self, index: int, window: tuple[slice, slice] | None = None
              ) -> tuple[np.ndarray, np.ndarray, float]:
        """Image (float32), instance labels and pixel size (nm) of global frame ``index``.

        ``window`` (rows, cols) reads only that part: a training crop then converts its own
        pixels from the stored float16, not the whole frame's.
        """
        e, f = self._where(index)
        rows, cols = window if window is not None else (slice(None), slice(None))
        return (
            np.asarray(self.images[e][f, rows, cols], dtype=np.float32),
            np.asarray(self.labels[e][f, rows, cols]),
            float(self.meta["pixel_size_nm"].iat[index]),
        )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_store(root: Path) -> FrameStore:
    """Open a finished store folder read-only (memory-mapped)."""
    meta = pd.read_csv(root / "meta.csv")
    n_exp = int(meta["experiment"].max()) + 1 if len(meta) else 0
    images = [np.load(root / f"images_{e}.npy", mmap_mode="r") for e in range(n_exp)]
    labels = [np.load(root / f"labels_{e}.npy", mmap_mode="r") for e in range(n_exp)]
    return FrameStore(root, images, labels, meta)


ExperimentWriter = Callable[[Path], pd.DataFrame]


def cached_store(
    cache_dir: Path, kind: str, params: dict[str, Any], build: Callable[[Path], pd.DataFrame]
) -> FrameStore:
    """Return the store for ``params``, calling ``build(tmp_folder) -> meta`` only on a miss.

    ``build`` writes ``images_e.npy`` / ``labels_e.npy`` into the folder it is given and returns
    the per-frame table (columns at least ``experiment``, ``frame``, ``pixel_size_nm``).
    """
    key = stable_hash({"kind": kind, "format": FORMAT_VERSION, **params})
    root = Path(cache_dir) / f"{kind}-{key}"
    if (root / "meta.csv").exists():
        return open_store(root)
    with _locked(Path(cache_dir) / f".{kind}-{key}.lock"):
        if (root / "meta.csv").exists():  # built by another process while we waited
            return open_store(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-{key}-", dir=cache_dir))
        try:
            meta = build(tmp)
            (tmp / "params.json").write_text(json.dumps(params, indent=1, sort_keys=True, default=str))
            meta.to_csv(tmp / "meta.csv", index=False)  # written last: marks the store complete
            os.replace(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return open_store(root)


def save_experiment(folder: Path, index: int, images: np.ndarray, labels: np.ndarray) -> None:
    """Write one experiment's (N, H, W) images (as float16) and int32 labels into ``folder``."""
    np.save(folder / f"images_{index}.npy", images.astype(np.float16))
    np.save(folder / f"labels_{index}.npy", labels.astype(np.int32))
