"""``python -m temseg_ablation.segment``: segment frames, measure particles, track coarsening."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .infer import DEFAULT_OVERLAP, DEFAULT_TILE
from .loading import DEFAULT_TRACKING_URI
from .measure import FRAME_COLUMNS, PARTICLE_COLUMNS

EXIT_OK, EXIT_NOTHING = 0, 2
_EPILOG = """\
MODEL is a checkpoint file, an MLflow run id (its checkpoints/best.ckpt artifact is used),
models:/NAME/VERSION from the model registry, or 'classical' (the pseudo-labelling pipeline,
no network). FRAMES are files, glob patterns or folders (DM3/DM4/EMD/TIA/TIFF/PNG/NPY/HSPY);
unreadable files are reported and skipped.

examples:
  python -m temseg_ablation.segment --model outputs/ckpt/best.ckpt --out seg run42/*.dm4
  python -m temseg_ablation.segment --model classical --particles bright --out seg img.dm4
  python -m temseg_ablation.segment --model 0123...cdef --track --out seg stack.npy
"""


def _threshold(text: str) -> str | float:
    if text == "otsu":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'otsu' or a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"threshold must be in [0, 1], got {value}")
    return value


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="python -m temseg_ablation.segment",
        description="Segment TEM frames with a trained network (or the classical pipeline), "
                    "measure every particle and optionally track coarsening through a sequence.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("frames", nargs="+", metavar="FRAMES", help="files, glob patterns or folders")
    p.add_argument("--model", required=True, help="checkpoint, run id, models:/NAME/VERSION or 'classical'")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI,
                   help=f"MLflow store for run ids and registered models (default {DEFAULT_TRACKING_URI}, "
                        "relative paths against the current folder)")
    g = p.add_argument_group("input")
    g.add_argument("--particles", choices=("dark", "bright"), default="dark",
                   help="particle polarity of the frames: dark (bright-field TEM) or bright (HAADF)")
    g.add_argument("--pixel-size-nm", type=_positive(float), default=None,
                   help="pixel size (nm); overrides the file's calibration")
    g.add_argument("--no-rescale", action="store_true",
                   help="do not resize frames to the model's training pixel size")
    g = p.add_argument_group("segmentation")
    g.add_argument("--threshold", type=_threshold, default="otsu",
                   help="'otsu' (per frame, default) or a fixed probability in [0, 1] (classical "
                        "mode: a level of the pipeline's normalised output)")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--min-size-px", type=_non_negative_int, default=0,
                      help="drop particles smaller than this area (px)")
    size.add_argument("--min-size-nm", type=_positive(float), default=None,
                      help="drop particles whose equivalent diameter is below this (nm)")
    g.add_argument("--split-touching", action="store_true",
                   help="split touching particles (temseg_ablation.data.instances.split_touching)")
    g.add_argument("--split-min-distance-px", type=_positive(float), default=None,
                   help="minimum distance between particle centres when splitting (px; default: "
                        "half the median inscribed radius)")
    g.add_argument("--tile", type=_positive(int), default=DEFAULT_TILE,
                   help=f"tile size (px) for large frames, a multiple of the network's input multiple (default {DEFAULT_TILE})")
    g.add_argument("--overlap", type=_non_negative_int, default=DEFAULT_OVERLAP,
                   help=f"context (px) kept around each tile's kept region (default {DEFAULT_OVERLAP})")
    g.add_argument("--batch-size", type=_positive(int), default=4, help="tiles per forward pass")
    g.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    g.add_argument("--classical-sigma-px", type=float, default=2.0,
                   help="classical mode: Gaussian sigma (px, default 2)")
    g.add_argument("--classical-opening-px", type=_non_negative_int, default=5,
                   help="classical mode: opening disk radius (px, default 5); keep it below the "
                        "particle radius")
    g = p.add_argument_group("tracking")
    g.add_argument("--track", action="store_true",
                   help="link particles through each sequence; write coarsening.csv/.png")
    g.add_argument("--sequence", choices=("auto", "file", "all"), default="auto",
                   help="what forms a sequence: each file's frames (file), all frames in input "
                        "order (all); auto = file when some file holds several frames, else all")
    disp = g.add_mutually_exclusive_group()
    disp.add_argument("--max-disp-px", type=_positive(float), default=None,
                      help="largest centroid move between frames (px)")
    disp.add_argument("--max-disp-nm", type=_positive(float), default=None,
                      help="largest centroid move between frames (nm; default 1 nm, or 5 px "
                           "without a pixel size)")
    g.add_argument("--drift-search-px", type=float, default=None,
                   help="search radius (px) for a global drift between frames; 0 = off "
                        "(default 4 x the max displacement)")
    g.add_argument("--frame-interval-s", type=_positive(float), default=1 / 400,
                   help="time between frames (s, default 1/400)")
    g = p.add_argument_group("output")
    g.add_argument("--mask-format", choices=("png", "tif"), default="png")
    g.add_argument("--save-prob", action="store_true",
                   help="also write probability maps (float32 TIFF) under prob/")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@dataclass
class _Run:
    """Everything one invocation collects."""

    out: Path
    tables: list[pd.DataFrame] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds_segment: float = 0.0
    stems: dict[str, int] = field(default_factory=dict)

    def stem(self, path: Path) -> str:
        """File stem, made unique when two inputs share one."""
        n = self.stems.get(path.stem, 0)
        self.stems[path.stem] = n + 1
        return path.stem if n == 0 else f"{path.stem}-{n + 1}"


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return name


def _save_mask(mask: np.ndarray, path: Path, fmt: str) -> None:
    data = mask.astype(np.uint8) * 255
    if fmt == "png":
        from PIL import Image

        Image.fromarray(data).save(path, optimize=False)
    else:
        import tifffile

        tifffile.imwrite(path, data, compression="zlib")


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _segment_all(args: argparse.Namespace, run: _Run, model, paths: list[Path]) -> None:
    """Read, segment and measure every frame, filling ``run``."""
    from tqdm.auto import tqdm

    from ..data.readers import ReadError, read_frames
    from .infer import classical_mask, segment_image
    from .measure import frame_summary, label_particles, measure_labels, min_area_px, remove_small

    split = None
    if args.split_touching:
        from ..data.instances import split_touching as split

    masks_dir = run.out / "masks"
    masks_dir.mkdir(parents=True, exist_ok=True)
    if args.save_prob:
        (run.out / "prob").mkdir(exist_ok=True)
    bar = tqdm(total=0, unit="frame", desc="segmenting", disable=args.no_progress, file=sys.stderr)
    for path in paths:
        try:
            stack = read_frames(path, particles=args.particles)
        except ReadError as err:
            run.failures.append(str(err))
            bar.write(f"skipping {err}", file=sys.stderr)
            continue
        px = args.pixel_size_nm or stack.pixel_size_nm
        stem = run.stem(stack.path)
        bar.total += stack.n_frames
        bar.refresh()
        for k, image in enumerate(stack.images):
            t0 = time.perf_counter()
            try:
                min_area = min_area_px(args.min_size_px, args.min_size_nm, px)
                if model is None:
                    seg = classical_mask(image, particles=args.particles, threshold=args.threshold,
                                         sigma_px=args.classical_sigma_px,
                                         opening_radius_px=args.classical_opening_px)
                else:
                    seg = segment_image(model, image, particles=args.particles, pixel_size_nm=px,
                                        rescale=not args.no_rescale, threshold=args.threshold,
                                        tile=args.tile, overlap=args.overlap,
                                        batch_size=args.batch_size, device=args.device)
                if split is not None:
                    parts = split(seg.mask, min_distance_px=args.split_min_distance_px)
                    labels = remove_small(np.asarray(parts, dtype=np.int32), min_area)
                else:
                    labels = label_particles(seg.mask, min_area)
            except ValueError as err:
                run.failures.append(f"{stack.path} frame {k}: {err}")
                bar.write(f"skipping {stack.path} frame {k}: {err}", file=sys.stderr)
                bar.update(1)
                continue
            if k == 0 and not 0.25 <= seg.scale <= 4.0:
                bar.write(f"note: {stack.path} is rescaled by {seg.scale:.3g} to the model's pixel "
                          "size; frames far from the training magnification segment poorly",
                          file=sys.stderr)
            mask = labels > 0
            table = measure_labels(labels, px)
            run.seconds_segment += time.perf_counter() - t0
            index = len(run.frames)
            name = f"{stem}_f{k:04d}.{args.mask_format}"
            _save_mask(mask, masks_dir / name, args.mask_format)
            if args.save_prob and seg.prob is not None:
                import tifffile

                tifffile.imwrite(run.out / "prob" / f"{stem}_f{k:04d}.tif", seg.prob)
            table.insert(0, "frame_in_source", k)
            table.insert(0, "source", str(stack.path))
            table.insert(0, "frame", index)
            run.tables.append(table)
            h, w = mask.shape
            run.frames.append({
                "frame": index, "source": str(stack.path), "frame_in_source": k,
                "height": h, "width": w, "pixel_size_nm": px if px else float("nan"),
                "scale_factor": seg.scale, "threshold": seg.threshold,
                **frame_summary(table, mask), "mask": f"masks/{name}",
            })
            bar.update(1)
    bar.close()


def _max_disp_px(args: argparse.Namespace, px: float | None) -> float:
    if args.max_disp_px:
        return float(args.max_disp_px)
    if px:
        return float(args.max_disp_nm or 1.0) / px
    if args.max_disp_nm:
        raise ValueError("--max-disp-nm needs the pixel size (from the file or --pixel-size-nm)")
    return 5.0


def _track(args: argparse.Namespace, run: _Run) -> pd.DataFrame:
    """Link particles per sequence; returns the coarsening curves and sets track ids on ``run``."""
    from .track import coarsening_curves, link_particles

    frames = pd.DataFrame(run.frames)
    mode = args.sequence
    if mode == "auto":
        mode = "file" if frames.groupby("source").size().max() > 1 else "all"
    keys = frames["source"] if mode == "file" else pd.Series("all", index=frames.index)
    curves, next_id = [], 1
    for key, sub in frames.groupby(keys, sort=False):
        sub = sub.sort_values("frame")
        px = float(sub["pixel_size_nm"].median())
        disp = _max_disp_px(args, px if np.isfinite(px) else None)
        search = disp * 4 if args.drift_search_px is None else float(args.drift_search_px)
        # time runs with the frame number in the file, so a failed frame leaves a gap
        seq_index = (sub["frame_in_source"].to_numpy() if mode == "file"
                     else np.arange(len(sub)))
        tables = [run.tables[int(f)].assign(frame_in_sequence=int(j))
                  for j, f in zip(seq_index, sub["frame"], strict=True)]
        linked = link_particles(tables, disp, drift_search_px=search or None,
                                first_track_id=next_id)
        for f, g in linked.groupby("frame", sort=False):
            run.tables[int(f)]["track_id"] = g["track_id"].to_numpy()
        if len(linked):
            next_id = int(linked["track_id"].max()) + 1
        seq_table = linked.drop(columns=["frame"]).rename(columns={"frame_in_sequence": "frame"})
        c = coarsening_curves(seq_table, 1.0, args.frame_interval_s, frames=seq_index)
        # frames of one sequence may differ in size or calibration: each gets its own area
        area_um2 = (sub["height"] * sub["width"] * sub["pixel_size_nm"] ** 2 / 1e6).to_numpy()
        c["number_density_per_um2"] = c["count"].to_numpy() / area_um2
        c = c.rename(columns={"frame": "frame_in_sequence"})
        c.insert(0, "frame", sub["frame"].to_numpy())
        c.insert(0, "sequence", key if mode == "file" else "all")
        curves.append(c)
    return pd.concat(curves, ignore_index=True)


def _write_outputs(args: argparse.Namespace, run: _Run, model_info: dict[str, Any],
                   seconds_total: float) -> dict[str, Any]:
    from .plots import plot_coarsening, plot_size_distribution

    out = run.out
    written = ["frames.csv", "particles.csv", "size_distribution.png"]
    curves = None
    if args.track and run.frames:
        curves = _track(args, run)
    columns = ["frame", "source", "frame_in_source", *PARTICLE_COLUMNS]
    if args.track:
        columns.append("track_id")
    particles = (pd.concat(run.tables, ignore_index=True)[columns] if run.tables
                 else pd.DataFrame(columns=columns))
    particles.to_csv(out / "particles.csv", index=False)
    frame_cols = ["frame", "source", "frame_in_source", "height", "width", "pixel_size_nm",
                  "scale_factor", "threshold", *FRAME_COLUMNS, "mask"]
    frames = pd.DataFrame(run.frames, columns=frame_cols)
    frames.to_csv(out / "frames.csv", index=False)

    interior = particles.loc[~particles["touches_border"].astype(bool)] if len(particles) else particles
    diam_nm = interior["equivalent_diameter_nm"].to_numpy(np.float64) if len(interior) else np.zeros(0)
    unit = "nm"
    if len(interior) and not np.isfinite(diam_nm).any():
        diam_nm, unit = interior["equivalent_diameter_px"].to_numpy(np.float64), "px"
    plot_size_distribution(diam_nm, out / "size_distribution.png", unit=unit,
                           title=f"equivalent diameters of {len(interior)} particles not touching "
                                 f"the frame border, {len(run.frames)} frame(s)")
    if curves is not None:
        curves.to_csv(out / "coarsening.csv", index=False)
        plot_coarsening(curves, out / "coarsening.png")
        written += ["coarsening.csv", "coarsening.png"]
    if run.failures:
        (out / "failed.txt").write_text("\n".join(run.failures) + "\n")
        written.append("failed.txt")
    n = len(run.frames)
    finite = diam_nm[np.isfinite(diam_nm)]
    summary = {
        "command": ["python", "-m", "temseg_ablation.segment", *args.argv],
        "model": model_info,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("frames", "out", "argv")},
        "inputs": [str(f) for f in args.frames],
        "frames_processed": n,
        "files_processed": int(frames["source"].nunique()) if n else 0,
        "failures": run.failures,
        "particles": int(len(particles)),
        "particles_not_touching_border": int(len(interior)),
        "median_diameter": float(np.median(finite)) if finite.size else None,
        "diameter_unit": unit,
        "scale_factors": sorted({round(float(s), 6) for s in frames["scale_factor"]}) if n else [],
        "pixel_sizes_nm": sorted({round(float(s), 6) for s in frames["pixel_size_nm"]
                                  if np.isfinite(s)}) if n else [],
        "thresholds": {"min": float(frames["threshold"].min()), "max": float(frames["threshold"].max()),
                       "mean": float(frames["threshold"].mean())} if n else None,
        "seconds_segmentation": round(run.seconds_segment, 3),
        "seconds_total": round(seconds_total, 3),
        "frames_per_s": round(n / run.seconds_segment, 4) if run.seconds_segment > 0 else None,
        "outputs": [*written, "masks/"] + (["prob/"] if args.save_prob else []),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The TrainedModel (None in classical mode) and what the summary says about it."""
    if args.model == "classical":
        info = {"kind": "classical", "sigma_px": args.classical_sigma_px,
                "opening_radius_px": args.classical_opening_px}
        return None, info
    from .infer import input_multiple, model_pixel_size_nm, receptive_field_px
    from .loading import load_model

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    args.device = _device(args.device)
    model = load_model(args.model, args.tracking_uri)
    model.net.to(args.device)
    m = input_multiple(model.net)
    if args.tile % m:
        raise ValueError(f"--tile {args.tile} must be a multiple of {m} (the network's input multiple)")
    if args.tile - 2 * args.overlap < m:
        raise ValueError(f"--overlap {args.overlap} is too large for --tile {args.tile}")
    rf = receptive_field_px(model.net)
    if args.overlap < rf:
        _err(f"note: --overlap {args.overlap} is below the network's receptive-field radius "
             f"({rf} px); tiles of large frames may differ slightly at their seams (use "
             f"--overlap {rf} for exact stitching)")
    info = {"kind": "network", "source": model.source, "net_config": model.net_config,
            "preprocess": model.preprocess, "model_pixel_size_nm": model_pixel_size_nm(model.preprocess),
            "input_multiple": m, "receptive_field_px": rf, "device": str(args.device)}
    return model, info


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0: some frames processed, 2: none)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    t_start = time.perf_counter()
    from ..data.readers import expand_inputs
    from ..models.io import CheckpointError
    from .loading import ModelSpecError

    try:
        model, model_info = _load(args)
    except (CheckpointError, ModelSpecError, ValueError) as err:
        _err(f"error: {err}")
        return EXIT_NOTHING
    if args.split_touching:
        try:
            import temseg_ablation.data.instances  # noqa: F401
        except ImportError:
            _err("error: --split-touching needs temseg_ablation.data.instances, which is not installed")
            return EXIT_NOTHING
    run = _Run(out=args.out)
    run.out.mkdir(parents=True, exist_ok=True)
    paths = expand_inputs(args.frames)
    _segment_all(args, run, model, paths)
    try:
        summary = _write_outputs(args, run, model_info, time.perf_counter() - t_start)
    except ValueError as err:
        _err(f"error: {err}")
        return EXIT_NOTHING
    if run.failures:
        _err(f"{len(run.failures)} input(s) failed (listed in {run.out / 'failed.txt'}):")
        for line in run.failures:
            _err(f"  {line}")
    if not run.frames:
        _err("error: no frame could be segmented")
        return EXIT_NOTHING
    fps = summary["frames_per_s"]
    med = summary["median_diameter"]
    med_text = "" if med is None else f", median diameter {med:.3g} {summary['diameter_unit']}"
    print(f"segmented {summary['frames_processed']} frame(s) from {summary['files_processed']} "
          f"file(s): {summary['particles']} particles ({summary['particles_not_touching_border']} "
          f"not touching the border{med_text}); {fps} frames/s; outputs in {run.out}")
    return EXIT_OK
