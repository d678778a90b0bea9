"""Benchmark the fast pseudo-labeller against the scikit-image reference on full-size frames.

Times both on the same synthetic 1792 x 1920 frames in the same run, and scores both against
the exact synthetic truth. Pin to one core for the per-core figure, e.g.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 taskset -c 0 python experiments/bench_pseudolabel.py

Writes experiments/bench/pseudolabel.md and .csv next to this script.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from temseg_ablation.data import _morph  # noqa: E402
from temseg_ablation.data.pseudolabel import (  # noqa: E402
    PseudoLabelParams,
    pseudo_label,
    pseudo_label_reference,
    score_against_truth,
)


@dataclass
class _Frame:
    image: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    source: str


def _fallback_frame(height: int, width: int, seed: int) -> _Frame:
    """Dark soft-edged discs (mass-thickness contrast) on a noisy, unevenly lit support."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    thickness = np.zeros((height, width))
    labels = np.zeros((height, width), np.int32)
    n = int(0.15 * height * width / (np.pi * 14.0**2))
    k = 0
    for _ in range(n * 3):
        if k >= n:
            break
        rad = float(np.clip(rng.lognormal(np.log(13.0), 0.35), 4.0, 40.0))
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        y0, y1 = int(max(cy - rad - 1, 0)), int(min(cy + rad + 2, height))
        x0, x1 = int(max(cx - rad - 1, 0)), int(min(cx + rad + 2, width))
        if y0 >= y1 or x0 >= x1:
            continue
        r2 = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2
        inside = r2 <= rad**2
        if np.any(labels[y0:y1, x0:x1][inside]):
            continue  # keep particles separate so the truth count is unambiguous
        k += 1
        labels[y0:y1, x0:x1][inside] = k
        dark = rng.uniform(0.6, 1.4)  # diffraction makes some particles darker than others
        thickness[y0:y1, x0:x1] += dark * 2.0 * np.sqrt(np.clip(rad**2 - r2, 0.0, None)) / 20.0
    illum = 1.0 + 0.15 * np.sin(2 * np.pi * yy / height) * np.cos(np.pi * xx / width)
    support = 1.0 + 0.08 * ndi.gaussian_filter(rng.standard_normal((height, width)), 1.5) * 3
    clean = illum * support * np.exp(-thickness)
    clean = ndi.gaussian_filter(clean, 1.0)
    image = rng.poisson(clean * 40.0).astype(np.float32)
    return _Frame(image, labels > 0, labels, "fallback generator (bench script)")


def make_frame(height: int, width: int, seed: int, generator: str = "auto") -> _Frame:
    """Synthetic frame from temseg_ablation.data.synthetic ('synthetic'), the local fallback ('fallback'), or the first that works ('auto')."""
    if generator == "fallback":
        return _fallback_frame(height, width, seed)
    try:
        from temseg_ablation.data.synthetic import SyntheticConfig, generate_frame

        f = generate_frame(SyntheticConfig(height=height, width=width), seed)
    except Exception as exc:
        if generator == "synthetic":
            raise
        print(f"warning: synthetic.generate_frame unusable ({type(exc).__name__}: {exc}); "
              "using the fallback generator", file=sys.stderr)
        return _fallback_frame(height, width, seed)
    return _Frame(
        np.asarray(f.image), np.asarray(f.mask, bool), np.asarray(f.labels), "synthetic.generate_frame"
    )


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write the markdown/CSV tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--height", type=int, default=1792)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generator", choices=["auto", "synthetic", "fallback"], default="auto")
    ap.add_argument("--skip-reference", action="store_true", help="time the fast path only")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "bench")
    args = ap.parse_args(argv)

    params = PseudoLabelParams()
    jit_s = _morph.warmup()
    # first call of the whole pipeline on a tiny image: imports, numba cache load
    t = time.perf_counter()
    pseudo_label(np.random.default_rng(0).random((32, 32)), params)
    first_call_s = jit_s + time.perf_counter() - t

    rows = []
    for i in range(args.frames):
        frame = make_frame(args.height, args.width, args.seed + i, args.generator)
        t = time.perf_counter()
        fast = pseudo_label(frame.image, params)
        fast_s = time.perf_counter() - t
        s_fast = score_against_truth(fast, frame.mask, frame.labels)
        row = {
            "frame": i,
            "source": frame.source,
            "fast_s": fast_s,
            "fast_f1": s_fast["pixel_f1"],
            "fast_count_err": s_fast["count_error"],
            "count_true": s_fast["count_true"],
        }
        if not args.skip_reference:
            t = time.perf_counter()
            ref = pseudo_label_reference(frame.image, params)
            ref_s = time.perf_counter() - t
            s_ref = score_against_truth(ref, frame.mask, frame.labels)
            row.update(
                ref_s=ref_s,
                speedup=ref_s / fast_s,
                iou_vs_ref=_iou(fast, ref),
                identical=bool(np.array_equal(fast, ref)),
                ref_f1=s_ref["pixel_f1"],
                ref_count_err=s_ref["count_error"],
            )
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)

    cols = ["frame", "ref_s", "fast_s", "speedup", "iou_vs_ref", "identical", "ref_f1", "fast_f1",
            "ref_count_err", "fast_count_err", "count_true"]
    cols = [c for c in cols if c in rows[0]]
    mean = {c: float(np.mean([r[c] for r in rows])) for c in cols if c not in ("frame", "identical")}

    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [
        f"# Pseudo-label benchmark ({args.height} x {args.width}, {args.frames} frames)",
        "",
        f"- frames: {rows[0]['source']}",
        f"- CPU: {platform.processor() or platform.machine()}, affinity {len(os.sched_getaffinity(0))} core(s), "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'unset')}",
        f"- numba available: {_morph.HAVE_NUMBA}; first-call cost (kernel compile or cache load + "
        f"imports), not in per-frame times: {first_call_s:.2f} s",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r[c]) for c in cols) + " |")
    lines.append("| mean | " + " | ".join(fmt(mean[c]) if c in mean else "" for c in cols[1:]) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pseudolabel.md").write_text(text)
    with open(args.out / "pseudolabel.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
