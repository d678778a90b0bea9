"""The batch segmentation pipeline as a Python API: :class:`SegmentOptions` and :func:`run_segmentation`.

``python -m temseg_ablation.segment`` only parses its arguments into ``SegmentOptions``; this
module reads the frames, segments and measures each one, writes the results into the output
folder as it goes (see :mod:`.outdir`) and ends with tracks, plots and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .infer import DEFAULT_OVERLAP, DEFAULT_TILE
from .outdir import (
    OutputError,
    OutputStore,
    check_out_dir,
    write_hspy,
    write_image,
    write_labels,
    write_rois,
)
from .results import FRAME_CSV_COLUMNS, PARTICLE_CSV_COLUMNS
from .scaling import FrameScale, check_pixel_size, frame_scale, model_particle_diameter

__all__ = ["SegmentError", "SegmentOptions", "default_tracking_uri", "run_segmentation"]

#: Test hook: end the process abruptly (``os._exit``) after this many newly finished frames.
CRASH_AFTER_ENV = "TEMSEG_SEGMENT_TEST_CRASH_AFTER"
# options that change no per-frame result: a rerun with other values continues the folder
_NOT_HASHED = ("out", "tracking_uri", "batch_size", "device", "progress", "overwrite", "track",
               "sequence", "max_disp_px", "max_disp_nm", "drift_search_px", "frame_interval_s",
               "tracker", "gap_frames")


class SegmentError(ValueError):
    """A run that cannot start (bad option, model or output folder); ``str`` is one line."""


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<$TEMSEG_ROOT or .>/mlruns/mlflow.db``
    (the store the app writes to, as ``conf/paths``)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(os.environ.get("TEMSEG_ROOT") or ".").expanduser().absolute()
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


@dataclass
class SegmentOptions:
    """Every option of ``python -m temseg_ablation.segment`` (see its ``--help``); px and nm units.

    ``pixel_size_nm``: a number (overrides every file's calibration), ``'auto'`` (estimate the
    scale of frames without calibration) or None (the files' calibrations). ``tracking_uri``
    None means :func:`default_tracking_uri`.
    """

    model: str
    out: Path
    tracking_uri: str | None = None
    particles: str = "dark"
    pixel_size_nm: float | str | None = None
    model_particle_diameter_nm: float | None = None
    rescale: bool = True
    threshold: str | float = "otsu"
    min_size_px: int = 0
    min_size_nm: float | None = None
    split_touching: bool = False
    split_min_distance_px: float | None = None
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    batch_size: int = 4
    device: str = "auto"
    classical_sigma_px: float = 2.0
    classical_opening_px: int = 5
    track: bool = False
    sequence: str = "auto"
    max_disp_px: float | None = None
    max_disp_nm: float | None = None
    drift_search_px: float | None = None
    frame_interval_s: float = 1 / 400
    tracker: str = "nearest"
    gap_frames: int = 2
    mask_format: str = "png"
    save_prob: bool = False
    rois: bool = False
    hspy: bool = False
    progress: bool = True
    overwrite: bool = False

    def validate(self) -> None:
        """Raise ``SegmentError`` (one line) for values the command line would refuse."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise SegmentError(msg)

        need(self.particles in ("dark", "bright"), f"particles must be dark or bright, got {self.particles!r}")
        if self.pixel_size_nm is not None and self.pixel_size_nm != "auto":
            try:
                check_pixel_size(float(self.pixel_size_nm))
            except (TypeError, ValueError) as err:
                raise SegmentError(str(err) if isinstance(err, ValueError) and "plausible" in str(err)
                                   else f"--pixel-size-nm: expected a number or 'auto', got "
                                        f"{self.pixel_size_nm!r}") from None
        need(self.threshold == "otsu" or (isinstance(self.threshold, int | float)
                                          and 0.0 <= float(self.threshold) <= 1.0),
             f"threshold must be 'otsu' or in [0, 1], got {self.threshold!r}")
        need(not (self.max_disp_px and self.max_disp_nm), "give --max-disp-px or --max-disp-nm, not both")
        need(self.sequence in ("auto", "file", "all"), f"sequence must be auto, file or all, got {self.sequence!r}")
        need(self.tracker in ("nearest", "laptrack"), f"tracker must be nearest or laptrack, got {self.tracker!r}")
        need(self.gap_frames >= 0, f"--gap-frames must be >= 0, got {self.gap_frames}")
        if self.track and self.tracker == "laptrack":
            from .track_laptrack import require_laptrack

            try:
                require_laptrack()  # before the folder is touched or a frame is segmented
            except ImportError as err:
                raise SegmentError(str(err)) from None
        if self.rois:
            from ..data.writers import require_roifile

            try:
                require_roifile()  # likewise: a missing extra is one line before any work
            except ImportError as err:
                raise SegmentError(str(err)) from None
        need(self.mask_format in ("png", "tif"), f"mask format must be png or tif, got {self.mask_format!r}")
        need(self.tile > 0 and self.overlap >= 0 and self.batch_size > 0 and self.min_size_px >= 0,
             "tile and batch size must be > 0, overlap and min size >= 0")
        for name in ("min_size_nm", "max_disp_px", "max_disp_nm", "model_particle_diameter_nm"):
            v = getattr(self, name)
            need(v is None or v > 0, f"--{name.replace('_', '-')} must be > 0, got {v}")

    def hash(self) -> str:
        """Hash of the options that change per-frame results (the model file by path, size, mtime)."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_HASHED}
        for name in ("rois", "hspy"):  # added later: left out when off, so older folders continue
            if not d.get(name):
                d.pop(name, None)
        model = Path(self.model).expanduser()
        if model.is_file():
            st = model.stat()
            d["model"] = [str(model.resolve()), st.st_size, st.st_mtime_ns]
        return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def settings(self) -> dict[str, Any]:
        """JSON-safe option values for the summary and manifest."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SegmentError(f"--device {name!r}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SegmentError(f"--device {name}: CUDA is not available on this machine")
    return name


def _load(o: SegmentOptions, note: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """The TrainedModel (None in classical mode) and what the summary says about it."""
    if o.model == "classical":
        return None, {"kind": "classical", "sigma_px": o.classical_sigma_px,
                      "opening_radius_px": o.classical_opening_px}
    if o.model == "blobs":
        from ..data import blobs

        return None, {"kind": "blobs", "min_contrast": blobs.MIN_CONTRAST,
                      "edge_level": blobs.EDGE_LEVEL}
    from ..data.preprocess import Preprocess
    from ..models.io import CheckpointError
    from .infer import input_multiple, receptive_field_px
    from .loading import ModelSpecError, load_model

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    o.device = _device(o.device)
    try:
        model = load_model(o.model, o.tracking_uri or default_tracking_uri())
    except (CheckpointError, ModelSpecError) as err:
        raise SegmentError(str(err)) from None
    model.net.to(o.device)
    m = input_multiple(model.net)
    if o.tile % m:
        raise SegmentError(f"--tile {o.tile} must be a multiple of {m} (the network's input multiple)")
    if o.tile - 2 * o.overlap < m:
        raise SegmentError(f"--overlap {o.overlap} is too large for --tile {o.tile}")
    rf = receptive_field_px(model.net)
    if o.overlap < rf:
        note(f"note: --overlap {o.overlap} is below the network's receptive-field radius ({rf} px); "
             f"tiles of large frames may differ slightly at their seams (use --overlap {rf} for "
             "exact stitching)")
    net_px = Preprocess.from_dict(model.preprocess).network_pixel_size_nm
    if o.pixel_size_nm == "auto" and o.rescale and not net_px:
        raise SegmentError("--pixel-size-nm auto: the checkpoint records no training pixel size, "
                           "so there is no training scale to bring frames to (use --no-rescale)")
    d_nm, d_src = model_particle_diameter(model.preprocess, o.model_particle_diameter_nm)
    info = {"kind": "network", "source": model.source, "net_config": model.net_config,
            "preprocess": model.preprocess, "model_pixel_size_nm": net_px,
            "particle_diameter_nm": d_nm, "particle_diameter_source": d_src,
            "input_multiple": m, "receptive_field_px": rf, "device": str(o.device)}
    return model, info


def _needs_calibration(o: SegmentOptions) -> list[str]:
    return [name for name, used in (("--min-size-nm", o.min_size_nm),
                                    ("--max-disp-nm", o.track and o.max_disp_nm)) if used]


def _check_calibrations(o: SegmentOptions, paths: list[Path]) -> None:
    """Fail before segmenting when nm options meet frames without a calibration."""
    names = _needs_calibration(o)
    if not names or isinstance(o.pixel_size_nm, int | float):
        return
    from ..data.readers import ReadError, read_frames

    missing = []
    for p in paths:
        try:
            if not read_frames(p, particles=o.particles).pixel_size_nm:
                missing.append(p)
        except ReadError:
            continue  # reported when the frames are read
    if missing:
        raise SegmentError(f"{' and '.join(names)} need the pixel size, but {len(missing)} input(s) "
                           f"have no calibration (first: {missing[0]}); give --pixel-size-nm or "
                           "sizes in px (--min-size-px, --max-disp-px)")


def _segment_frame(o: SegmentOptions, model: Any, image: np.ndarray, file_px: float | None,
                   model_info: dict[str, Any]) -> tuple[FrameScale, Any, np.ndarray, Any]:
    """Scale, segment and label one frame: its scale, segmentation, labels and classical params."""
    from ..data.pseudolabel import PseudoLabelParams, params_for_scale
    from .infer import blob_segmentation, classical_mask, segment_image
    from .measure import label_particles, min_area_px, remove_small
    from .scaling import check_rescaled_size

    network = model is not None
    sc = frame_scale(image, file_px, user=o.pixel_size_nm, particles=o.particles,
                     network_pixel_size_nm=model_info.get("model_pixel_size_nm"),
                     model_diameter_nm=model_info.get("particle_diameter_nm") if network else None,
                     rescale=o.rescale)
    min_area = min_area_px(o.min_size_px, o.min_size_nm, sc.pixel_size_nm)
    params = None
    if o.model == "blobs":
        # the detector works at the frame's own pixels and needs the particles' size there:
        # the scale estimate's, also when a calibration gives the nm measurements
        if not np.isfinite(sc.diameter_px):
            import dataclasses

            from ..data.scale import estimate_particle_diameter_px

            try:
                est = estimate_particle_diameter_px(np.asarray(image), o.particles)
            except ValueError as err:
                raise ValueError(f"--model blobs: {err}") from None
            sc = dataclasses.replace(sc, diameter_px=est.diameter_px, confidence=est.confidence,
                                     notes=est.notes)
        seg, parts = blob_segmentation(image, sc.diameter_px, particles=o.particles)
        return sc, seg, remove_small(parts, min_area), None
    if not network:
        params = PseudoLabelParams(sigma=float(o.classical_sigma_px),
                                   opening_radius=int(o.classical_opening_px))
        if sc.source == "estimate":
            params = params_for_scale(sc.diameter_px, params)
        seg = classical_mask(image, particles=o.particles, threshold=o.threshold,
                             sigma_px=float(params.sigma), opening_radius_px=int(params.opening_radius))
    else:
        check_rescaled_size(image.shape, sc.resize, sc.source)
        seg = segment_image(model, image, particles=o.particles, threshold=o.threshold,
                            tile=o.tile, overlap=o.overlap, batch_size=o.batch_size,
                            device=o.device, scale=sc.resize)
    if o.split_touching:
        from ..data.instances import split_touching

        parts = split_touching(seg.mask, min_distance_px=o.split_min_distance_px)
        labels = remove_small(np.asarray(parts, dtype=np.int32), min_area)
    else:
        labels = label_particles(seg.mask, min_area)
    return sc, seg, labels, params


def run_segmentation(inputs: Sequence[str | os.PathLike[str]], options: SegmentOptions, *,
                     command: Sequence[str] | None = None,
                     log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Segment and measure every frame of ``inputs`` into ``options.out``; returns the summary.

    Raises ``SegmentError`` (one line) when the run cannot start; unreadable files and frames
    that fail are listed in the summary's ``failures`` (and ``failed.txt``) and skipped.
    ``log`` receives notes and warnings (default: standard error).
    """
    from tqdm.auto import tqdm

    from ..data.readers import ReadError, expand_inputs, read_frames
    from .finish import finish_run
    from .measure import frame_summary, measure_labels

    def note(msg: str) -> None:
        (log or (lambda m: print(m, file=sys.stderr, flush=True)))(msg)

    t_start = time.perf_counter()
    o = options
    o.validate()
    try:
        o.out = check_out_dir(Path(o.out))
        store = OutputStore.open(o.out, o.hash(), o.settings(), overwrite=o.overwrite,
                                 frame_columns=FRAME_CSV_COLUMNS,
                                 particle_columns=PARTICLE_CSV_COLUMNS)
    except OutputError as err:
        raise SegmentError(str(err)) from None
    model, model_info = _load(o, note)
    paths = expand_inputs(inputs)
    _check_calibrations(o, paths)
    store.begin()
    crash_after = int(os.environ.get(CRASH_AFTER_ENV) or 0)
    failures: list[str] = []
    n_new = n_skipped = 0
    seconds = 0.0
    bar = tqdm(total=0, unit="frame", desc="segmenting", disable=not o.progress, file=sys.stderr)
    say = (lambda m: bar.write(m, file=sys.stderr)) if o.progress else note
    for path in paths:
        key = str(path.resolve()) if path.exists() else str(path)
        if store.source_done(key):
            n_skipped += int(store.sources[key]["n_frames"])
            continue
        try:
            stack = read_frames(path, particles=o.particles)
        except ReadError as err:
            failures.append(str(err))
            say(f"skipping {err}")
            continue
        stem = store.stem_for(key, stack.path.stem, stack.n_frames)
        bar.total += stack.n_frames
        bar.refresh()
        for k, image in enumerate(stack.images):
            if store.is_done(key, k):
                n_skipped += 1
                bar.update(1)
                continue
            t0 = time.perf_counter()
            try:
                sc, seg, labels, params = _segment_frame(o, model, image, stack.pixel_size_nm, model_info)
            except ValueError as err:
                failures.append(f"{stack.path} frame {k}: {err}")
                say(f"skipping {stack.path} frame {k}: {err}")
                bar.update(1)
                continue
            if sc.confidence == "low":
                why = "; ".join(sc.notes) or "few particle-like blobs"
                say(f"warning: {stack.path} frame {k}: low-confidence scale estimate "
                    f"({sc.diameter_px:.1f} px particles: {why})")
            if k == 0 and not 0.25 <= seg.scale <= 4.0:
                say(f"note: {stack.path} is rescaled by {seg.scale:.3g} to the model's pixel size "
                    f"(scale from {sc.source}); frames far from the training magnification segment poorly")
            mask = labels > 0
            table = measure_labels(labels, sc.pixel_size_nm, intensity_image=image)
            seconds += time.perf_counter() - t0
            index = store.next_frame_index()
            name = f"{stem}_f{k:04d}"
            write_image(mask, o.out / "masks" / f"{name}.{o.mask_format}")
            write_labels(labels, o.out / "labels" / f"{name}.tif", sc.pixel_size_nm)
            if o.save_prob and seg.prob is not None:
                write_image(seg.prob.astype(np.float32), o.out / "prob" / f"{name}.tif")
            if o.rois:
                write_rois(labels, o.out / "rois" / f"{name}.zip", sc.pixel_size_nm)
            if o.hspy:
                write_hspy(labels, o.out / "hspy" / f"{name}.hspy", sc.pixel_size_nm, title=name,
                           source=str(stack.path))
            for col, value in (("frame_in_source", k), ("source", str(stack.path)), ("frame", index)):
                table.insert(0, col, value)
            h, w = mask.shape
            row = {"frame": index, "source": str(stack.path), "frame_in_source": k, "height": h,
                   "width": w, "pixel_size_nm": sc.pixel_size_nm or float("nan"),
                   "scale_source": sc.source, "scale_confidence": sc.confidence,
                   "estimated_diameter_px": sc.diameter_px,
                   "implied_pixel_size_nm": sc.implied_pixel_size_nm, "scale_factor": seg.scale,
                   "classical_sigma_px": float(params.sigma) if params else float("nan"),
                   "classical_opening_px": int(params.opening_radius) if params else float("nan"),
                   "threshold": seg.threshold, **frame_summary(table, mask),
                   "mask": f"masks/{name}.{o.mask_format}", "labels": f"labels/{name}.tif"}
            store.add_frame(key, row, table)
            n_new += 1
            bar.update(1)
            if crash_after and n_new >= crash_after:
                os._exit(70)  # test hook: an abrupt end, no cleanup (as a kill or power loss)
    bar.close()
    return finish_run(o, store, model_info, failures=failures, n_new=n_new, n_skipped=n_skipped,
                      seconds_segment=seconds, seconds_total=time.perf_counter() - t_start,
                      inputs=[str(i) for i in inputs], command=command)
