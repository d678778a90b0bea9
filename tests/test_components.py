"""The shared connected-components helper."""

from __future__ import annotations

import numpy as np
import pytest

from temseg_ablation.data.components import label_components


def _mask() -> np.ndarray:
    m = np.zeros((8, 10), bool)
    m[0:3, 0:3] = True  # 9 px
    m[3, 3] = True  # touches the square diagonally only
    m[6, 8] = True  # 1 px, isolated
    m[5:8, 0:2] = True  # 6 px
    return m


def test_connectivity_and_size_filter():
    m = _mask()
    lab8, n8 = label_components(m, 0, 2)
    lab4, n4 = label_components(m, 0, 1)
    assert (n8, n4) == (3, 4)
    assert lab8[3, 3] == lab8[0, 0] and lab4[3, 3] != lab4[0, 0]
    lab, n = label_components(m, 7, 2)  # keeps the 10 px (square + diagonal) only
    assert n == 1 and lab.max() == 1 and np.count_nonzero(lab) == 10
    lab, n = label_components(m, 2, 1)  # drops both single pixels, renumbers 1..2
    assert n == 2 and set(np.unique(lab)) == {0, 1, 2} and np.count_nonzero(lab) == 15
    assert lab.dtype == np.int32


def test_empty_and_bad_input():
    lab, n = label_components(np.zeros((4, 4), bool), 5)
    assert n == 0 and not lab.any()
    with pytest.raises(ValueError):
        label_components(np.zeros((2, 2, 2)), 0)
    with pytest.raises(ValueError):
        label_components(np.zeros((2, 2)), 0, connectivity=3)
    with pytest.raises(ValueError):
        label_components(np.zeros((2, 2)), -1)
