"""Train / validation / test frame indices of a store: leakage-free by experiment, or the paper's 70/30.

Frames of one synthetic experiment are a burst 1/400 s apart (masks of its first and last frame
overlap at IoU ~0.97), so a frame-level random split validates on near-copies of training frames.
``experiment`` mode therefore gives whole experiments to validation and test; ``random`` keeps
the paper's leaky 70/30 frame split for the train / validation part (test experiments, if any,
are still held out whole).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Splits:
    """Sorted global frame indices of the three splits (``test`` may be empty)."""

    train: list[int]
    val: list[int]
    test: list[int]


def split_frames(
    meta: pd.DataFrame,
    mode: str,
    *,
    seed: int,
    val_fraction: float = 0.3,
    n_val_experiments: int = 1,
    n_test_experiments: int = 1,
) -> Splits:
    """Split the frames of ``meta`` (one row per frame, column ``experiment``) deterministically.

    Parameters
    ----------
    meta : DataFrame
        Per-frame table of a frame store; row ``i`` is global frame ``i``.
    mode : {"experiment", "random"}
        ``experiment``: ``n_val_experiments`` whole experiments validate (checkpoint selection,
        early stopping), the next ``n_test_experiments`` are the test set, the rest train.
        ``random``: ``n_test_experiments`` whole experiments are the test set; the frames of the
        other experiments are split at random, ``val_fraction`` of them to validation (the
        paper's 70/30; with ``n_test_experiments=0`` exactly the old random split).
    seed : int
        Fixes which experiments / frames go where.
    """
    exp = meta["experiment"].to_numpy()
    experiments = np.unique(exp)
    n_val_e, n_test_e = int(n_val_experiments), int(n_test_experiments)
    if n_test_e < 0:
        raise ValueError(f"n_test_experiments must be >= 0, got {n_test_e}")
    if mode == "experiment":
        if n_val_e < 1:
            raise ValueError(f"split=experiment needs n_val_experiments >= 1, got {n_val_e}")
        need = n_val_e + n_test_e + 1
        if len(experiments) < need:
            raise ValueError(
                f"split=experiment with n_val_experiments={n_val_e} and n_test_experiments="
                f"{n_test_e} needs at least {need} experiments (one or more to train on), but the "
                f"data have {len(experiments)}: add experiments (data.n_experiments counts all of "
                "them) or lower data.n_val_experiments / data.n_test_experiments"
            )
        # The same draw as the former experiment split, so its validation choice is unchanged.
        order = np.random.default_rng(seed).permutation(experiments)
        val_e, test_e = order[:n_val_e], order[n_val_e:n_val_e + n_test_e]
        is_val, is_test = np.isin(exp, val_e), np.isin(exp, test_e)
        return Splits(np.flatnonzero(~is_val & ~is_test).tolist(), np.flatnonzero(is_val).tolist(),
                      np.flatnonzero(is_test).tolist())
    if mode == "random":
        if n_test_e >= len(experiments):
            raise ValueError(
                f"split=random with n_test_experiments={n_test_e} leaves no experiment to train "
                f"on ({len(experiments)} in the data)"
            )
        # Own stream for the test choice: with no test experiments the frame permutation below
        # is exactly the paper-style split this project always used.
        test_e = np.random.default_rng([seed, 1]).permutation(experiments)[:n_test_e]
        is_test = np.isin(exp, test_e)
        pool = np.flatnonzero(~is_test)
        order = np.random.default_rng(seed).permutation(len(pool))
        n_val = max(1, round(len(pool) * val_fraction))
        return Splits(sorted(pool[order[n_val:]].tolist()), sorted(pool[order[:n_val]].tolist()),
                      np.flatnonzero(is_test).tolist())
    raise ValueError(f"unknown split {mode!r}; use 'experiment' or 'random'")


def split_indices(
    meta: pd.DataFrame, mode: str, val_fraction: float, seed: int, *,
    n_val_experiments: int | None = None, n_test_experiments: int = 0,
) -> tuple[list[int], list[int]]:
    """(train, validation) indices; the former API, kept for runs recorded before the test split.

    With ``n_val_experiments=None`` the experiment split gives ``val_fraction`` of the
    experiments (at least one) to validation, as it used to.
    """
    if n_val_experiments is None:
        n_exp = len(np.unique(meta["experiment"].to_numpy()))
        n_val_experiments = max(1, round(n_exp * val_fraction))
    s = split_frames(meta, mode, seed=seed, val_fraction=val_fraction,
                     n_val_experiments=n_val_experiments, n_test_experiments=n_test_experiments)
    return s.train, s.val
