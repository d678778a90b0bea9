"""Pseudo-labelling seconds per full frame: the fast labeller vs the scikit-image reference.

Calls into ``experiments/bench_pseudolabel.py`` (its frame maker and the two labellers it
compares) and times both on the same frames in this run.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np
from bench_common import REPO, Row

if str(REPO / "experiments") not in sys.path:
    sys.path.insert(0, str(REPO / "experiments"))


def measure(frames: int = 2, height: int = 1792, width: int = 1920, seed: int = 0,
            log=print) -> dict[str, Any]:
    """Seconds per frame of both labellers on ``frames`` synthetic frames, and whether they agree."""
    import bench_pseudolabel as bp

    params = bp.PseudoLabelParams()
    t0 = time.perf_counter()
    bp._morph.warmup()  # kernel compile / cache load: a one-off, kept out of the per-frame time
    bp.pseudo_label(np.random.default_rng(0).random((32, 32)), params)
    first_call_s = time.perf_counter() - t0
    fast, ref, identical = [], [], []
    for i in range(frames):
        frame = bp.make_frame(height, width, seed + i)
        t0 = time.perf_counter()
        a = bp.pseudo_label(frame.image, params)
        fast.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = bp.pseudo_label_reference(frame.image, params)
        ref.append(time.perf_counter() - t0)
        identical.append(bool(np.array_equal(a, b)))
        log(f"  frame {i}: fast {fast[-1]:.2f} s, scikit-image {ref[-1]:.2f} s, "
            f"identical {identical[-1]}")
    return {"fast_s": fast, "ref_s": ref, "identical": identical, "first_call_s": first_call_s,
            "shape": (height, width), "source": frame.source}


def rows_from(result: dict[str, Any]) -> list[Row]:
    """One row: fast seconds per frame against the reference's."""
    fast, ref = float(np.mean(result["fast_s"])), float(np.mean(result["ref_s"]))
    h, w = result["shape"]
    threads = os.environ.get("NUMBA_NUM_THREADS", "default")
    return [Row(
        group="pseudolabel", item=f"pseudo-label one {h}x{w} frame (fast, numba)", value=fast,
        unit="s/frame", base_name="scikit-image reference", base_value=ref,
        derived=f"{ref / fast:.1f}x faster; masks identical on {sum(result['identical'])}/"
                f"{len(result['identical'])} frames",
        verdict="pass" if all(result["identical"]) else "outputs differ",
        note=(f"{len(result['fast_s'])} frame(s) from {result['source']}; one-off first call "
              f"{result['first_call_s']:.2f} s excluded; NUMBA_NUM_THREADS={threads}"),
        raw={k: v for k, v in result.items() if k != "shape"},
    )]


def run(frames: int = 2, height: int = 1792, width: int = 1920, log=print) -> list[Row]:
    """Measure and return the pseudo-labelling row."""
    return rows_from(measure(frames, height, width, log=log))
