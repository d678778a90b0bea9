"""Sensitivity of ``blob_contrast`` to its three settings on the real HAADF benchmark.

Run: ``.venv/bin/python experiments/realbench/sensitivity.py`` (writes ``sensitivity.md`` next to
this file). Each setting is varied alone around the default (Yen bins 256, annulus contrast 0.5
robust sd, edge level 0.3); the candidates are computed once per frame and every variant applies
the same steps as ``data.blobs.contrast_blobs``. Medians over the 27 frames, plus the
medians over the even-indexed (sorted names) and odd-indexed frames, as a check that a value is
not carried by one half of the set.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from skimage.filters import threshold_yen

from temseg_ablation.data import blobs as rc
from temseg_ablation.report import realbench as rb
from temseg_ablation.report import realbench_methods as rm

DEFAULT = {"nbins": 256, "min_contrast": rc.MIN_CONTRAST, "level": rc.EDGE_LEVEL}
VARIANTS = {"nbins": (128, 256, 512), "min_contrast": (0.0, 0.5, 1.0), "level": (0.2, 0.3, 0.4, 0.5)}


def _frame_state(image: np.ndarray, diameter: float) -> dict:
    s = diameter / (2 * math.sqrt(2))
    sm = max(0.5, diameter / 8)
    cand = rc.log_candidates(image, s)
    return {"image": image, "cand": cand, "sm": sm,
            "score": rc.blob_contrast_scores(image, cand, smooth=sm)}


def _detect(st: dict, nbins: int, min_contrast: float, level: float) -> np.ndarray:
    cand, score = st["cand"], st["score"]
    ok = (cand[:, 3] >= threshold_yen(cand[:, 3], nbins=nbins)) & np.isfinite(score)
    ok &= score >= min_contrast
    c = cand[ok]
    r = rc.refine_radii(st["image"], c, smooth=st["sm"], level=level)
    keep = rc.suppress_overlaps(c[:, 0], c[:, 1], r, c[:, 3])
    y, x, r = c[keep, 0] + 0.5, c[keep, 1] + 0.5, r[keep]
    return np.column_stack([x - r, y - r, x + r, y + r])


def main() -> int:
    """Score every variant on every frame and write ``sensitivity.md``."""
    data = rb.DEFAULT_DATA
    if not (data / "images").is_dir():
        print(f"no data: {data}", file=sys.stderr)
        return 2
    names = sorted(p.stem for p in (data / "images").glob("*.jpg"))
    runs = [(k, v) for k, vals in VARIANTS.items() for v in vals]
    f1 = {run: [] for run in runs}
    for name in names:
        image, true = rb.load_frame(data, name)
        est = rm.estimate_scale(image)
        st = _frame_state(image, est.diameter_px) if est is not None else None
        for key, value in runs:
            boxes = _detect(st, **{**DEFAULT, key: value}) if st is not None else np.zeros((0, 4))
            f1[(key, value)].append(rb.score_frame(rm.Detection(boxes, boxes[:, :2], None), true)["f1"])
        print(name, flush=True)
    lines = ["# blob_contrast: sensitivity of the median detection F1 (box IoU >= 0.5)", "",
             "One setting varied at a time, the others at their defaults "
             f"({', '.join(f'{k}={v}' for k, v in DEFAULT.items())}).", "",
             "| setting | value | median F1 (27 frames) | even-indexed frames | odd-indexed frames |",
             "|---|---|---|---|---|"]
    for key, value in runs:
        a = np.asarray(f1[(key, value)])
        lines.append(f"| {key} | {value} | {np.median(a):.3f} | {np.median(a[0::2]):.3f} | "
                     f"{np.median(a[1::2]):.3f} |")
    text = "\n".join(lines) + "\n"
    (Path(__file__).resolve().parent / "sensitivity.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
