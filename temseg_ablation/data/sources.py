"""Build frame stores from the synthetic generator or from a user's files, then preprocess them."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from skimage.measure import label as connected_components
from tqdm.auto import tqdm

from .store import FrameStore, cached_store, save_experiment
from .transforms import gaussian_blur, normalise, resize_image, resize_labels

log = logging.getLogger(__name__)


#: ``data.labels`` modes: exact masks, the classical pipeline, or contrast-filtered LoG blobs.
LABEL_MODES = ("truth", "pseudo", "blobs")


def _labels_from(
    image: np.ndarray, truth: np.ndarray | None, mode: str, pseudo: dict[str, Any], particles: str,
    pixel_size_nm: float | None = None, diameter_px: float | None = None,
) -> np.ndarray:
    """Instance labels for one frame: the exact truth, the classical pseudo-labels, or blobs.

    Pseudo-label lengths may be given in nm (``sigma: 0.36nm``); they are converted with the
    frame's pixel size, or with an estimate of the particle scale when the frame has none.
    ``blobs`` labels each particle found by :func:`data.blobs.contrast_blobs` as a disc (the
    detector that scores best on the real HAADF benchmark), at ``diameter_px`` when the
    typical particle size is known, else at the frame's scale estimate.
    """
    if mode == "truth":
        if truth is None:
            raise ValueError("labels=truth needs masks (data.masks) for folder data")
        return truth.astype(np.int32)
    if mode == "blobs":
        from .blobs import blob_labels, contrast_blobs
        from .scale import estimate_particle_diameter_px

        d = diameter_px if diameter_px and np.isfinite(diameter_px) else (
            estimate_particle_diameter_px(image, particles).diameter_px)
        bright = -image if particles == "dark" else image
        return blob_labels(image.shape, contrast_blobs(bright, float(d)))
    if mode != "pseudo":
        raise ValueError(f"unknown labels mode {mode!r}; use one of {', '.join(LABEL_MODES)}")
    from .pseudolabel import PseudoLabelParams, pseudo_label_instances

    px = pixel_size_nm if pixel_size_nm and np.isfinite(pixel_size_nm) else None
    return pseudo_label_instances(image, PseudoLabelParams(particles=particles, **pseudo), px,
                                  estimate_scale="if_missing")


def synthetic_store(
    cache_dir: Path,
    *,
    n_experiments: int,
    frames_per_experiment: int,
    height: int,
    width: int,
    pixel_size_nm: float,
    seed: int,
    labels: str = "truth",
    pseudo: dict[str, Any] | None = None,
    heldout: bool = False,
    dose_scale: float = 1.0,
    synthetic: dict[str, Any] | None = None,
    progress: bool = True,
) -> FrameStore:
    """Generate (once) synthetic experiments, or the held-out one when ``heldout`` is true.

    ``synthetic`` holds extra ``SyntheticConfig`` fields (the optional image-formation effects);
    HAADF frames (bright particles) are stored flipped to dark particles like every input.
    """
    from . import synthetic as syn
    from .readers import to_dark_particles

    pseudo = dict(pseudo or {})
    base = syn.SyntheticConfig.from_mapping(synthetic, height=height, width=width,
                                            pixel_size_nm=pixel_size_nm)
    if dose_scale != 1.0:
        base = dataclasses.replace(base, dose_e_per_px=base.dose_e_per_px * dose_scale)
    if heldout:
        configs = [syn.heldout_config(base)]
        seeds = [seed + 10_007]
    else:
        configs = syn.experiment_configs(n_experiments, seed, base)
        seeds = [seed * 1000 + e for e in range(n_experiments)]
    params = {
        "configs": [dataclasses.asdict(c) for c in configs],
        "seeds": seeds,
        "frames": frames_per_experiment,
        "labels": labels,
        "pseudo": pseudo if labels == "pseudo" else None,
    }

    def build(folder: Path) -> pd.DataFrame:
        rows = []
        total = len(configs) * frames_per_experiment
        bar = tqdm(total=total, desc="generating frames", disable=not progress, leave=False)
        for e, (config, s) in enumerate(zip(configs, seeds, strict=True)):
            frames = syn.generate_sequence(config, frames_per_experiment, seed=s)
            polarity = "bright" if config.imaging_mode == "haadf" else "dark"
            images = np.stack([normalise(to_dark_particles(f.image, polarity)) for f in frames])
            labs = np.stack([_labels_from(f.image, f.labels, labels, pseudo, "dark",
                                          f.pixel_size_nm) for f in frames])
            save_experiment(folder, e, images, labs)
            for f in frames:
                rows.append(
                    {"experiment": e, "frame": f.frame_index, "time_s": f.time_s,
                     "pixel_size_nm": f.pixel_size_nm, "source": f"synthetic:{e}"}
                )
            bar.update(len(frames))
        bar.close()
        return pd.DataFrame(rows)

    return cached_store(cache_dir, "heldout" if heldout else "synthetic", params, build)


def folder_store(
    cache_dir: Path,
    images: Sequence[str | Path] | str,
    *,
    masks: Sequence[str | Path] | str | None = None,
    labels: str = "pseudo",
    pseudo: dict[str, Any] | None = None,
    particles: str = "dark",
    frame_pixel_size_nm: float | str | None = None,
    pixel_size_nm: float = 0.18,
    progress: bool = True,
) -> FrameStore:
    """Read (once) a user's frames, one experiment per file; bad files are reported and skipped.

    With ``frame_pixel_size_nm`` (nm/px, or ``'auto'`` for a per-file scale estimate) every
    file is resized to ``pixel_size_nm`` first (:mod:`.folder_scale`); without it frames keep
    their own pixels. The scale's source and the estimate's confidence go to the store's meta
    (``scale_source``, ``scale_confidence``, ``native_pixel_size_nm``); a low-confidence
    estimate is logged as a warning naming the file.
    """
    from .folder_scale import folder_scale, rescale_frames, rescale_labels
    from .readers import ReadError, expand_inputs, read_frames, read_mask, to_dark_particles

    image_paths = expand_inputs(images if isinstance(images, list | tuple) else [images])
    mask_paths = (
        expand_inputs(masks if isinstance(masks, list | tuple) else [masks]) if masks else None
    )
    if not image_paths:
        raise FileNotFoundError(f"no supported image files found in {images!r}")
    if mask_paths is not None and len(mask_paths) != len(image_paths):
        raise ValueError(
            f"{len(image_paths)} image files but {len(mask_paths)} mask files: they must pair up"
        )
    pseudo = dict(pseudo or {})
    fingerprint = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in image_paths]
    if mask_paths:
        fingerprint += [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in mask_paths]
    params = {"files": fingerprint, "labels": labels, "particles": particles,
              "pseudo": pseudo if labels == "pseudo" else None}
    if frame_pixel_size_nm is not None:  # absent from older stores' keys, so they stay valid
        params["scale"] = {"frame_pixel_size_nm": frame_pixel_size_nm,
                           "pixel_size_nm": float(pixel_size_nm)}

    def build(folder: Path) -> pd.DataFrame:
        rows, failed, e = [], [], 0
        for i, path in enumerate(tqdm(image_paths, desc="reading frames", disable=not progress)):
            try:
                stack = read_frames(path)
                dark = to_dark_particles(stack.images, particles)
                truth = read_mask(mask_paths[i], allow_labels=True) if mask_paths else None
                if truth is not None:
                    truth = truth.reshape(dark.shape) if truth.size == dark.size else None
                    if truth is None:
                        raise ReadError(mask_paths[i], f"mask shape does not match {path.name}")
                    truth = np.stack([connected_components(t > 0, connectivity=2) if t.max() <= 1
                                      else t for t in truth])
                try:
                    sc = folder_scale(dark[0], stack.pixel_size_nm, frame_pixel_size_nm,
                                      pixel_size_nm, particles="dark")
                except ValueError as err:
                    raise ReadError(path, str(err)) from None
            except ReadError as err:
                failed.append(str(err))
                log.warning("skipping %s", err)
                continue
            if sc.source == "estimate" and sc.confidence == "low":
                log.warning("%s: particle scale estimated with low confidence (%.1f px); "
                            "give data.frame_pixel_size_nm if it looks wrong", path, sc.diameter_px)
            dark = rescale_frames(np.asarray(dark, dtype=np.float32), sc.zoom)
            if truth is not None:
                truth = rescale_labels(truth, sc.zoom)
            pixel = pixel_size_nm if sc.zoom != 1.0 or sc.source in ("user", "estimate") else (
                sc.pixel_size_nm)
            diameter = sc.diameter_px * sc.zoom if sc.source == "estimate" else None
            norm = np.stack([normalise(im) for im in dark])
            labs = np.stack([
                _labels_from(norm[k], None if truth is None else truth[k], labels, pseudo, "dark",
                             pixel, diameter)
                for k in range(len(norm))
            ])
            save_experiment(folder, e, norm, labs)
            for k in range(len(norm)):
                rows.append({"experiment": e, "frame": k, "time_s": float(k),
                             "pixel_size_nm": pixel if pixel and np.isfinite(pixel)
                             else float("nan"),
                             "source": str(path), "scale_source": sc.source,
                             "scale_confidence": sc.confidence,
                             "native_pixel_size_nm": sc.pixel_size_nm})
            e += 1
        if failed:
            (folder / "failed.txt").write_text("\n".join(failed) + "\n")
        if not rows:
            raise ValueError("no readable frames: " + "; ".join(failed))
        return pd.DataFrame(rows)

    return cached_store(cache_dir, "folder", params, build)


def preprocess_store(
    store: FrameStore,
    cache_dir: Path,
    *,
    resolution: str = "crop",
    downsample_size: int = 512,
    blur_sigma: float = 0.0,
) -> FrameStore:
    """Resize (``resolution='downsample'``) and/or blur every frame once; cached like the source.

    ``crop`` keeps the native pixel size (the paper's 1024 x 1024 crops); ``downsample`` resizes
    whole frames to ``downsample_size`` squared (the paper's 512 x 512 set), so the pixel size
    grows by the mean of the two axis factors. The blur is the paper's preprocessing axis.
    """
    if resolution not in ("crop", "downsample"):
        raise ValueError(f"unknown resolution mode {resolution!r}; use 'crop' or 'downsample'")
    if resolution == "crop" and blur_sigma <= 0:
        return store
    params = {"source": store.root.name, "resolution": resolution,
              "size": downsample_size if resolution == "downsample" else None,
              "blur_sigma": float(blur_sigma)}

    def build(folder: Path) -> pd.DataFrame:
        meta = store.meta.copy()
        for e, (images, labels) in enumerate(zip(store.images, store.labels, strict=True)):
            out_i, out_l = [], []
            for image, lab in zip(images, labels, strict=True):
                image = np.asarray(image, dtype=np.float32)
                lab = np.asarray(lab)
                if resolution == "downsample":
                    shape = (downsample_size, downsample_size)
                    factor = 0.5 * (image.shape[0] / shape[0] + image.shape[1] / shape[1])
                    image, lab = resize_image(image, shape), resize_labels(lab, shape)
                    meta.loc[meta["experiment"] == e, "pixel_size_nm"] = (
                        store.meta.loc[store.meta["experiment"] == e, "pixel_size_nm"] * factor
                    )
                out_i.append(gaussian_blur(image, blur_sigma))
                out_l.append(lab)
            save_experiment(folder, e, np.stack(out_i), np.stack(out_l))
        return meta

    return cached_store(cache_dir, "prep", params, build)
