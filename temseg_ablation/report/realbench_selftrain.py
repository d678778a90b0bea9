"""Self-training on the real benchmark frames, scored on frames the network never saw.

``python -m temseg_ablation.report.realbench_selftrain`` (``make realbench-selftrain``): the
benchmark's frames, sorted by name, are dealt into ``folds`` folds (frame i into fold
i mod folds). For each fold and seed a network is trained through the app
(``experiment=selftrain``: the blob detector's labels of the *other* folds' frames, no human
box involved) and scored against the human boxes on the fold it did not train on, beside its
teacher (``blob_contrast``) on the same frames. Every frame is thus scored once per seed by a
network that never saw it. Outputs: ``results_selftrain.csv`` (one row per frame, method and
seed) and ``results_selftrain.md`` (medians, and the paired per-frame difference network -
teacher with a t interval and an exact sign-flip p-value).

The boxes never reach training; the detector's settings were chosen on all 27 frames (see the
realbench README section), so the teacher's own score is a fit, and the network inherits that.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from ..app.runner import AppJob, quote, run_jobs
from ..tracking import queries
from . import realbench_methods as rm
from .realbench_sweep import RealFrame, load_frames

__all__ = ["fold_names", "selftrain_jobs", "score_fold", "paired_summary", "write_markdown",
           "main"]

#: The MLflow experiment the self-training runs are logged to.
EXPERIMENT = "realbench-selftrain"
#: Detection methods scored on each held-out frame.
METHODS = ("blob_contrast", "network", "network_split")


def fold_names(names: list[str], folds: int = 2) -> list[list[str]]:
    """``names`` sorted and dealt into ``folds`` folds (the i-th name into fold i mod folds)."""
    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    ordered = sorted(names)
    if len(ordered) < 3 * folds:
        raise ValueError(f"{len(ordered)} frames are too few for {folds} folds (3 per fold at least)")
    return [ordered[i::folds] for i in range(folds)]


def selftrain_jobs(data: Path, folds: list[list[str]], seeds: list[int], jobs_dir: Path,
                   extra: tuple[str, ...] = ()) -> list[tuple[int, int, AppJob]]:
    """``(fold, seed, job)``: each job trains on every fold's frames but ``fold``'s."""
    out = []
    for k in range(len(folds)):
        train = [n for j, f in enumerate(folds) if j != k for n in f]
        paths = ",".join(quote(str((data / "images" / f"{n}.jpg").resolve())) for n in train)
        for seed in seeds:
            ov = ("experiment=selftrain", f"data.images=[{paths}]", f"seed={seed}",
                  f"logger.experiment_name={quote(EXPERIMENT)}", *extra)
            out.append((k, seed, AppJob(f"fold{k}_seed{seed}", ov, jobs_dir / f"fold{k}_seed{seed}")))
    return out


def _split(det: rm.Detection, est: rm.ScaleEstimate | None) -> rm.Detection:
    """A network's mask with touching particles cut apart (as ``classical_split``)."""
    from ..data.instances import split_touching
    from .realbench_match import boxes_from_labels

    if est is None or det.mask is None or not det.mask.any():
        return det
    boxes, cent = boxes_from_labels(split_touching(det.mask, est.diameter_px / 2))
    return rm.Detection(boxes, cent, det.mask)


def score_fold(model: object, frames: list[RealFrame]) -> pd.DataFrame:
    """Per held-out frame: the teacher, the network and the network with touching particles split."""
    from .realbench import score_frame

    rows = []
    for f in frames:
        net = rm.network(f.image, f.estimate, model)
        dets = {"blob_contrast": rm.blob_contrast(f.image, f.estimate), "network": net,
                "network_split": _split(net, f.estimate)}
        for method in METHODS:
            rows.append({"image": f.name, "method": method, **score_frame(dets[method], f.boxes)})
    return pd.DataFrame(rows)


def paired_summary(df: pd.DataFrame, metric: str = "f1") -> pd.DataFrame:
    """Per network method: the per-frame difference to the teacher, mean over seeds first.

    Columns method, frames, teacher / method median, mean difference, 95 % t interval, exact
    sign-flip p (two-sided), frames better / worse.
    """
    from .table1 import paired_interval, sign_flip_pvalue

    per = df.groupby(["image", "method"])[metric].mean().unstack("method")
    rows = []
    for method in METHODS[1:]:
        if method not in per:
            continue
        d = (per[method] - per["blob_contrast"]).dropna().to_numpy(float)
        mean, lo, hi = paired_interval(d)
        rows.append({"method": method, "frames": len(d),
                     "teacher median": float(per["blob_contrast"].median()),
                     "method median": float(per[method].median()), "mean diff": mean,
                     "ci_low": lo, "ci_high": hi, "p (sign-flip)": sign_flip_pvalue(d),
                     "better": int((d > 0).sum()), "worse": int((d < 0).sum())})
    return pd.DataFrame(rows)


def write_markdown(df: pd.DataFrame, runs: pd.DataFrame, path: Path, data: Path,
                   seconds: float) -> str:
    """``results_selftrain.md``: medians per method and seed, the paired comparison, per frame."""
    from .findings.markdown import md_table

    med = (df.groupby(["method", "seed"])[["precision", "recall", "f1", "f1_centroid"]]
           .median().reset_index())
    pair = paired_summary(df)
    per = df.groupby(["image", "method"])["f1"].mean().unstack("method").reset_index()
    lines = [
        "# Self-training on real frames: a network taught by the blob detector, scored on unseen frames",
        "",
        f"Data: `{data}` ({df['image'].nunique()} frames). Each network trained through the app "
        "(`experiment=selftrain`: `data.labels=blobs` on the other folds' frames, each file brought "
        "to 0.36 nm/px from its scale estimate) and was scored against the human boxes on its "
        "held-out fold, beside its teacher `blob_contrast` on the same frames (box IoU >= 0.5, "
        "one-to-one, as `results.md`). `network_split` cuts the network's touching particles "
        "apart (centres at least half the estimated diameter apart).",
        "",
        "## Median over frames, per seed",
        "",
        md_table(med.round(3)),
        "",
        "## Network minus teacher, per frame (F1 averaged over seeds first)",
        "",
        md_table(pair.round(4)),
        "",
        "## Training runs",
        "",
        md_table(runs),
        "",
        "## Per frame (F1, mean over seeds)",
        "",
        md_table(per.round(3)),
        "",
        f"_Generated by `python -m temseg_ablation.report.realbench_selftrain` in {seconds / 60:.0f} "
        "min on this machine (training included; finished runs are reused)._",
    ]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    from ..segment.loading import load_model
    from .findings.context import default_tracking_uri
    from .realbench import DEFAULT_DATA, DEFAULT_OUT

    ap = argparse.ArgumentParser(prog="python -m temseg_ablation.report.realbench_selftrain",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="first N frames only (by name)")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--jobs-dir", type=Path, default=Path("outputs/realbench_selftrain"))
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every training job")
    args = ap.parse_args(argv)
    if not (args.data / "images").is_dir():
        print(f"{args.data}: no images/ folder (the real benchmark data is not on this machine)",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    uri = args.tracking_uri or default_tracking_uri()
    names = sorted(p.stem for p in (args.data / "images").glob("*.jpg"))[: args.limit]
    folds = fold_names(names, args.folds)
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    plan = selftrain_jobs(args.data, folds, seeds, args.jobs_dir, tuple(args.overrides))
    outcomes = run_jobs([job for _, _, job in plan], uri)
    frames = {n: f for f in load_frames(args.data, names) for n in [f.name]}
    rows, runs = [], []
    for (k, seed, job), res in zip(plan, outcomes, strict=True):
        model = load_model(res.run_id, uri)
        part = score_fold(model, [frames[n] for n in folds[k]])
        part["fold"], part["seed"], part["run_id"] = k, seed, res.run_id
        rows.append(part)
        run = queries.open_client(uri).get_run(res.run_id)
        m = run.data.metrics
        runs.append({"job": job.name, "run_id": res.run_id, "train frames": sum(
            len(f) for j, f in enumerate(folds) if j != k),
            "steps": m.get("final/steps"), "converged": m.get("final/converged"),
            "val F1 vs teacher": m.get("final/val/f1_otsu")})
    df = pd.concat(rows, ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "results_selftrain.csv", index=False)
    text = write_markdown(df, pd.DataFrame(runs), args.out / "results_selftrain.md", args.data,
                          time.perf_counter() - t0)
    print(text)
    print(f"wrote {args.out / 'results_selftrain.md'} (+ .csv)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
