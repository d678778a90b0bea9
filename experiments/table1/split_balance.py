"""Particle sizes of the train / validation / test splits per seed, for two Table 1 layouts.

Measures whether a split's validation or test experiments hold systematically smaller or larger
particles than training (the cause of seed 5's noisy curves in the first measured Table 1).
Run: python experiments/table1/split_balance.py [--seeds 10] [--cache .cache/temseg]
"""

from __future__ import annotations

import argparse

import numpy as np
from skimage.measure import regionprops

from temseg_ablation.data.datamodule import TEMDataModule

LAYOUTS = {
    # the first measured Table 1: 5 experiments of 8 frames, 1 validates, 1 tests
    "5x8 (1 val, 1 test)": dict(n_experiments=5, frames_per_experiment=8,
                                n_val_experiments=1, n_test_experiments=1),
    # more, shorter bursts: the same 24 / 8 / 8 frames from 12 / 4 / 4 independent fields
    "20x2 (4 val, 4 test)": dict(n_experiments=20, frames_per_experiment=2,
                                 n_val_experiments=4, n_test_experiments=4),
    # one frame per field: 24 / 8 / 8 independent fields (the second measured Table 1)
    "40x1 (8 val, 8 test)": dict(n_experiments=40, frames_per_experiment=1,
                                 n_val_experiments=8, n_test_experiments=8),
}


def split_stats(dm: TEMDataModule, idx: list[int]) -> tuple[int, float]:
    """(distinct whole particles, median equivalent diameter in nm) over the frames ``idx``.

    Frames of one burst show the same particles, so only each experiment's first frame counts.
    """
    main = dm._stores()[0]
    diam = []
    first = main.meta.iloc[idx].drop_duplicates("experiment").index
    for i in first:
        _, lab, px = main.frame(i)
        h, w = lab.shape
        for r in regionprops(lab):
            r0, c0, r1, c1 = r.bbox
            if r0 == 0 or c0 == 0 or r1 == h or c1 == w:
                continue
            diam.append(np.sqrt(4 * r.area / np.pi) * px)
    return len(diam), float(np.median(diam)) if diam else float("nan")


def main() -> None:
    """Print, per layout and seed, the validation / test to training median-size ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--cache", default=".cache/temseg")
    args = ap.parse_args()
    for name, layout in LAYOUTS.items():
        rows = []
        for seed in range(args.seeds):
            dm = TEMDataModule(cache_dir=args.cache, seed=seed, heldout=False, progress=False,
                               frame_height=256, frame_width=256, **layout)
            dm.setup()
            s = dm.splits
            (nt, mt), (nv, mv), (ns, ms) = (split_stats(dm, s.train), split_stats(dm, s.val),
                                            split_stats(dm, s.test))
            rows.append((seed, nt, mt, nv, mv / mt, ns, ms / mt))
        print(f"\n{name}: seed, train particles, train median nm, val particles, val/train, "
              "test particles, test/train")
        for r in rows:
            print("  {:2d} {:5d} {:5.2f} {:5d} {:5.2f} {:5d} {:5.2f}".format(*r))
        vr = np.array([r[4] for r in rows])
        tr = np.array([r[6] for r in rows])
        print(f"  val/train median-size ratio: range {vr.min():.2f}-{vr.max():.2f}, "
              f"max |log| {np.abs(np.log(vr)).max():.2f}; test/train {tr.min():.2f}-{tr.max():.2f}")


if __name__ == "__main__":
    main()
