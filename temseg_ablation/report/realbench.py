"""``python -m temseg_ablation.report.realbench``: particle detection and scale estimate on real HAADF STEM images.

Scores each detector against the human boxes of ``stem_particles`` (27 frames, 4,189 boxes):
every predicted particle becomes its bounding box and is paired one-to-one with a human box
(box IoU >= 0.5, the assignment with the most pairs; secondary: centroid inside the box), giving
precision / recall / F1 and the count error per frame; the scale estimate is compared with the
median human box size (mean of box width and height). Writes ``results.md``, ``results.csv`` and
``worst.png`` under ``--out`` and prints the medians.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.blobs import EDGE_LEVEL, MIN_CONTRAST
from ..data.readers import read_frames
from . import realbench_methods as rm
from .realbench_match import (
    IOU_THRESHOLD,
    match_by_centroid,
    match_by_iou,
    score_detection,
    yolo_boxes,
)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT.parent / "shared" / "realdata" / "stem_particles"
DEFAULT_OUT = ROOT / "experiments" / "realbench"
MACHINE = "2-core CPU"
#: Method whose worst frames ``worst.png`` shows (the best path).
WORST_METHOD = "blob_contrast"

__all__ = ["load_frame", "reference_diameter_px", "scale_error", "score_frame", "run", "main"]


def load_frame(data: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(grey float32 (H, W) frame, human boxes (N, 4) px) of one image of the data set."""
    image = np.asarray(read_frames(data / "images" / f"{name}.jpg", particles="bright").images)[0]
    rows = np.loadtxt(data / "labels" / f"{name}.txt", ndmin=2)
    return image, yolo_boxes(rows, *image.shape)


def reference_diameter_px(boxes: np.ndarray) -> float:
    """Median over the human boxes (N, 4) of the mean of box width and height (px)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return float(np.median(((b[:, 2] - b[:, 0]) + (b[:, 3] - b[:, 1])) / 2))


def scale_error(estimate_px: float | None, reference_px: float) -> float:
    """Relative error estimate / reference - 1 (NaN without an estimate)."""
    if estimate_px is None or not np.isfinite(estimate_px):
        return float("nan")
    return float(estimate_px) / float(reference_px) - 1.0


def score_frame(det: rm.Detection, true: np.ndarray) -> dict[str, float]:
    """Detection scores of one frame: tp/fp/fn, precision, recall, F1 (box IoU rule), F1 (centroid rule), count errors."""
    n_pred, n_true = len(det.boxes), len(true)
    s = score_detection(n_pred, n_true, match_by_iou(det.boxes, true, IOU_THRESHOLD))
    c = score_detection(n_pred, n_true, match_by_centroid(det.centroids, true))
    return {
        "n_true": n_true, "n_pred": n_pred, "tp": s.tp, "fp": s.fp, "fn": s.fn,
        "precision": s.precision, "recall": s.recall, "f1": s.f1, "f1_centroid": c.f1,
        "count_error": n_pred - n_true, "count_rel_error": (n_pred - n_true) / n_true,
    }


def _methods(model: Any | None) -> dict[str, Callable[..., rm.Detection]]:
    out: dict[str, Callable[..., rm.Detection]] = {
        "classical": rm.classical,
        "paper_px": rm.paper_pixels,
        "classical_split": rm.classical_split,
        "blob_log": rm.blob_log_peer,
        "blob_contrast": rm.blob_contrast,
    }
    if model is not None:
        out["network"] = lambda image, est: rm.network(image, est, model)
    return out


def run(data: Path, names: list[str], model: Any | None = None,
        progress: bool = True) -> tuple[pd.DataFrame, dict[str, dict[str, rm.Detection]]]:
    """Score every method on every named frame: one row per (image, method); also the detections per image."""
    from tqdm.auto import tqdm

    rows, dets = [], {}
    methods = _methods(model)
    for name in tqdm(names, desc="realbench", unit="image", disable=not progress):
        image, true = load_frame(data, name)
        t0 = time.perf_counter()
        est = rm.estimate_scale(image)
        t_est = time.perf_counter() - t0
        ref = reference_diameter_px(true)
        d_est = est.diameter_px if est is not None else float("nan")
        dets[name] = {}
        for method, fn in methods.items():
            t0 = time.perf_counter()
            det = fn(image, est)
            seconds = time.perf_counter() - t0 + (t_est if method != "paper_px" else 0.0)
            dets[name][method] = det
            rows.append({
                "image": name, "method": method, "height": image.shape[0], "width": image.shape[1],
                **score_frame(det, true), "est_diameter_px": d_est, "ref_diameter_px": ref,
                "scale_rel_error": scale_error(d_est, ref),
                "confidence": est.confidence if est is not None else "none", "seconds": seconds,
            })
    return pd.DataFrame(rows), dets


def medians(df: pd.DataFrame) -> pd.DataFrame:
    """Per method: median precision, recall, F1 (both rules), relative count error, total counts and time."""
    g = df.groupby("method", sort=False)
    return pd.DataFrame({
        "precision": g["precision"].median(), "recall": g["recall"].median(),
        "f1": g["f1"].median(), "f1_centroid": g["f1_centroid"].median(),
        "count_rel_error": g["count_rel_error"].median(),
        "abs_count_rel_error": g["count_rel_error"].apply(lambda s: s.abs().median()),
        "tp": g["tp"].sum(), "n_pred": g["n_pred"].sum(), "n_true": g["n_true"].sum(),
        "seconds": g["seconds"].median(),
    })


def scale_summary(df: pd.DataFrame, tolerance: float = 0.25) -> dict[str, float]:
    """Scale estimate over the frames: median |relative error| and how many frames are within ``tolerance``."""
    per = df.drop_duplicates("image")["scale_rel_error"]
    return {"median_abs_error": float(per.abs().median()),
            "within": int((per.abs() <= tolerance).sum()), "frames": int(len(per))}


def _fmt(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(
            f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values) + " |")
    return "\n".join(lines)


def write_markdown(df: pd.DataFrame, path: Path, data: Path) -> str:
    """Write ``results.md`` (matching rule, medians, per-image table) and return the medians table."""
    med = medians(df).reset_index()
    sc = scale_summary(df)
    wide = df.pivot(index="image", columns="method", values="f1")
    first = df.drop_duplicates("image").set_index("image")
    per = pd.DataFrame({
        "boxes": first["n_true"], "ref_px": first["ref_diameter_px"],
        "est_px": first["est_diameter_px"], "scale_err": first["scale_rel_error"],
        "confidence": first["confidence"],
    }).join(wide.add_prefix("F1 "))
    counts = df.pivot(index="image", columns="method", values="n_pred").add_prefix("n ")
    per = per.join(counts).reset_index()
    med_text = _fmt(med)
    text = f"""# Real-image benchmark: HAADF STEM particles vs human boxes

Data: `{data}` ({df['image'].nunique()} frames, {int(first['n_true'].sum())} human boxes).
Machine: {MACHINE}. Command: `make realbench`.

Matching rule (primary): every predicted particle (8-connected component of the mask, or blob)
becomes its bounding box; a prediction and a human box may pair when their box IoU >= {IOU_THRESHOLD};
the one-to-one assignment with the most pairs (ties: largest summed IoU, Hungarian algorithm) gives
TP, unmatched predictions FP, unmatched boxes FN. Secondary (`f1_centroid`): a prediction may pair
with a box containing its centroid, largest one-to-one matching. Count error = predictions - boxes.
Scale: the estimate (`estimate_particle_diameter_px`, bright particles) vs the median human box
size (mean of box width and height); within 25 % on {sc['within']} of {sc['frames']} frames,
median |error| {sc['median_abs_error']:.3f}.

Methods: `classical` = pseudo-labelling with `PseudoLabelParams.from_nm(particles='bright')`
scaled to the estimated diameter (same as `estimate_scale='always'`); `classical_split` = the
same mask with touching particles split (`data.instances.split_touching`, centres at least
half the estimated diameter apart); `paper_px` = the paper's fixed 2 px / 5 px;
`blob_log` = `skimage.feature.blob_log` at sigmas within 1.6x of the estimate;
`blob_contrast` = LoG maxima at sigmas within 1.6x of the estimate, kept above Yen's threshold
of the frame's candidate responses and when the disc mean exceeds the annulus (1.5-2.5 r)
median by {MIN_CONTRAST} robust sd, each boxed at the radius where its radial profile is
down to {EDGE_LEVEL} x the peak's height above the annulus median
(`data/blobs.py`; sensitivity to these settings: `sensitivity.md`, from
`experiments/realbench/sensitivity.py`); `network` (when given) = a trained network via
`segment_image`.

## Medians over frames

{med_text}

## Per frame

{_fmt(per)}

`worst.png`: the four frames with the lowest `{WORST_METHOD}` F1, human boxes green, predicted
mask outline and boxes red.
"""
    path.write_text(text)
    return med_text


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 when the data folder is absent)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--model", default=None, help="checkpoint (best.ckpt) of a trained network")
    ap.add_argument("--sweep", default=None,
                    help="score every finished network of this sweep (parent run id or 'latest') "
                         "and log final/real/* to each run, instead of the classical methods")
    ap.add_argument("--tracking-uri", default=None,
                    help="MLflow store of --sweep / run ids (default: $MLFLOW_TRACKING_URI if set, "
                         "else sqlite:///<$TEMSEG_ROOT or .>/mlruns/mlflow.db)")
    ap.add_argument("--no-log", action="store_true", help="with --sweep: do not log to the runs")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    images = args.data / "images"
    if not images.is_dir():
        print(f"realbench: no data: {images} is absent", file=sys.stderr)
        return 2
    names = sorted(p.stem for p in images.glob("*.jpg"))
    if args.limit is not None:
        names = names[: max(args.limit, 0)]
    if args.sweep:
        return _score_sweep(args, names)
    model = None
    if args.model:
        from ..segment.loading import load_model

        model = load_model(args.model)
    df, dets = run(args.data, names, model, progress=not args.no_progress)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "results.csv", index=False)
    med_text = write_markdown(df, args.out / "results.md", args.data)
    from .realbench_plots import worst_figure

    worst_figure(df, dets, args.data, args.out / "worst.png", method=WORST_METHOD)
    sc = scale_summary(df)
    print(med_text)
    print(f"scale estimate within 25 %: {sc['within']}/{sc['frames']} frames, "
          f"median |error| {sc['median_abs_error']:.3f}")
    return 0


def _score_sweep(args: argparse.Namespace, names: list[str]) -> int:
    from ..segment.pipeline import default_tracking_uri
    from . import realbench_sweep as rs

    uri = args.tracking_uri or default_tracking_uri()
    try:  # the store first: a wrong address must not wait for 27 scale estimates
        runs = rs.finished_runs(uri, args.sweep)
    except (ValueError, FileNotFoundError) as err:
        print(f"realbench: {err}", file=sys.stderr)
        return 2
    frames = rs.load_frames(args.data, names, progress=not args.no_progress)
    table = rs.score_sweep(uri, runs, frames, log=not args.no_log, progress=not args.no_progress)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "results_sweep.csv", index=False)
    print(rs.write_sweep_markdown(table, args.out / "results_sweep.md", args.data, args.sweep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
