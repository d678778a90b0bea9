"""``python -m temseg_ablation.segment``: parse arguments into ``SegmentOptions`` and run them.

The work is done by :func:`temseg_ablation.segment.pipeline.run_segmentation`; this module maps
its errors to one-line messages and exit codes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from .infer import DEFAULT_OVERLAP, DEFAULT_TILE
from .pipeline import SegmentError, SegmentOptions, run_segmentation

EXIT_OK, EXIT_NOTHING = 0, 2  # 2: nothing segmented, or a bad option / model / output folder
_EPILOG = """\
MODEL is a checkpoint file, an MLflow run id (its checkpoints/best.ckpt artifact is used),
models:/NAME/VERSION or models:/NAME@ALIAS from the model registry (temseg-register puts a
run there), 'classical' (the pseudo-labelling pipeline, no network) or 'blobs' (contrast-
filtered LoG particles at the frame's estimated particle size, no network; the best path on
the real HAADF benchmark, `make realbench`). FRAMES are files, glob patterns or folders (DM3/DM4/EMD/TIA/TIFF/PNG/NPY/HSPY);
unreadable files are reported and skipped. Results are written frame by frame; a rerun into
the same --out with the same options continues where the last one stopped.

examples:
  python -m temseg_ablation.segment --model outputs/ckpt/best.ckpt --out seg run42/*.dm4
  python -m temseg_ablation.segment --model classical --particles bright --out seg img.dm4
  python -m temseg_ablation.segment --model blobs --particles bright --out seg stem/*.png
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


def _pixel_size(text: str) -> str | float:
    # the plausible range is checked by SegmentOptions.validate, as one line without the usage
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number (nm/px) or 'auto', got {text!r}") from None


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
    p.add_argument("--model", required=True, help="checkpoint, run id, models:/NAME/VERSION, models:/NAME@ALIAS, "
                        "'classical' or 'blobs'")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store for run ids and registered models (default: $MLFLOW_TRACKING_URI "
                        "if set, else sqlite:///<$TEMSEG_ROOT or .>/mlruns/mlflow.db; relative "
                        "paths against the current folder)")
    g = p.add_argument_group("input")
    g.add_argument("--particles", choices=("dark", "bright"), default="dark",
                   help="particle polarity of the frames: dark (bright-field TEM) or bright (HAADF)")
    g.add_argument("--pixel-size-nm", type=_pixel_size, default=None,
                   help="pixel size (nm/px, 0.001-100) that overrides every file's calibration, or "
                        "'auto': frames without a calibration are brought to the model's training "
                        "scale from their typical particle diameter (estimated; see frames.csv "
                        "scale_source / scale_confidence)")
    g.add_argument("--model-particle-diameter-nm", type=_positive(float), default=None,
                   help="with --pixel-size-nm auto: typical particle diameter (nm) of the model's "
                        "training frames (default: the checkpoint's record, else the synthetic "
                        "generator's 5 nm)")
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
                   help="split touching particles (temseg_ablation.data.instances.split_touching; "
                        "--model blobs keeps every blob its own particle anyway)")
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
                   help="link particles through each sequence; write coarsening.csv/.png and "
                        "events.csv")
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
    g.add_argument("--tracker", choices=("nearest", "laptrack"), default="nearest",
                   help="nearest: frame-to-frame assignment (default); laptrack: also closes gaps "
                        "and finds merges (coalescence) and splits within the max displacement, "
                        "written to events.csv (needs laptrack: the [tracking] extra)")
    g.add_argument("--gap-frames", type=_non_negative_int, default=2,
                   help="with --tracker laptrack: most consecutive frames a particle may be "
                        "missing and keep its track (default 2; 0 = no gap closing)")
    g = p.add_argument_group("output")
    g.add_argument("--mask-format", choices=("png", "tif"), default="png")
    g.add_argument("--save-prob", action="store_true",
                   help="also write probability maps (float32 TIFF) under prob/")
    g.add_argument("--rois", action="store_true",
                   help="also write ImageJ ROI sets under rois/ (one outline per particle, "
                        "named by its particle_id; needs roifile: the [imagej] extra)")
    g.add_argument("--hspy", action="store_true",
                   help="also write the instance labels as HyperSpy signals (.hspy, axes in nm "
                        "when calibrated) under hspy/")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the results in --out made with other options (default: continue "
                        "a folder made with the same options, skipping frames already done; refuse "
                        "one made with other options)")
    return p


def options_from_args(args: argparse.Namespace) -> SegmentOptions:
    """The parsed command line as ``SegmentOptions``."""
    names = {f.name for f in dataclasses.fields(SegmentOptions)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return SegmentOptions(**values, rescale=not args.no_rescale, progress=not args.no_progress)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0: some frames processed, 2: none or a setup error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    options = options_from_args(args)
    try:
        summary = run_segmentation(args.frames, options, command=argv, log=_err)
    except (SegmentError, OSError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        _err(f"error: {text}")
        return EXIT_NOTHING
    out = options.out
    if summary["failures"]:
        _err(f"{len(summary['failures'])} input(s) failed (listed in {out / 'failed.txt'}):")
        for line in summary["failures"]:
            _err(f"  {line}")
    if not summary["frames_processed"]:
        _err("error: no frame could be segmented")
        return EXIT_NOTHING
    n_none = summary["frames_without_calibration"]
    if n_none and n_none < summary["frames_processed"]:
        _err(f"note: {n_none} of {summary['frames_processed']} frame(s) had no calibration; nm "
             "statistics cover the calibrated frames, per pixel size in summary.json")
    fps = summary["frames_per_s"]
    med = summary["median_diameter"]
    med_text = "" if med is None else f", median diameter {med:.3g} {summary['diameter_unit']}"
    done = (f" ({summary['frames_already_done']} already done, skipped)"
            if summary["frames_already_done"] else "")
    print(f"segmented {summary['frames_processed']} frame(s){done} from {summary['files_processed']} "
          f"file(s): {summary['particles']} particles ({summary['particles_not_touching_border']} "
          f"not touching the border{med_text}); {fps} frames/s; outputs in {out}")
    return EXIT_OK
