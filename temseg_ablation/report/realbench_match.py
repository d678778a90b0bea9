"""One-to-one matching of predicted particles to human boxes, and the detection scores of a frame.

Boxes are ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive (a box of one pixel is
``(x, y, x + 1, y + 1)``). Primary rule: a prediction and a human box may pair when their box
IoU is >= 0.5; among those pairs the one-to-one assignment with the most pairs, ties broken by
the largest summed IoU, is taken (Hungarian algorithm). Secondary rule: a prediction may pair
with a box that contains its centroid; again the largest one-to-one matching is taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment

__all__ = [
    "IOU_THRESHOLD",
    "DetectionScore",
    "boxes_from_labels",
    "yolo_boxes",
    "box_iou",
    "match_by_iou",
    "match_by_centroid",
    "score_detection",
]

IOU_THRESHOLD = 0.5


@dataclass(frozen=True)
class DetectionScore:
    """Matched pairs (tp), unmatched predictions (fp), unmatched boxes (fn) and the scores from them."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        """tp / predictions (1 when nothing was predicted and nothing was there)."""
        n = self.tp + self.fp
        return self.tp / n if n else (1.0 if self.fn == 0 else 0.0)

    @property
    def recall(self) -> float:
        """tp / human boxes."""
        n = self.tp + self.fn
        return self.tp / n if n else (1.0 if self.fp == 0 else 0.0)

    @property
    def f1(self) -> float:
        """2 tp / (predictions + boxes)."""
        n = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / n if n else 1.0


def yolo_boxes(rows: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel boxes (N, 4) ``x0, y0, x1, y1`` from YOLO rows (N, 5) ``class cx cy w h`` (fractions of the frame)."""
    r = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    cx, cy = r[:, 1] * width, r[:, 2] * height
    w, h = r[:, 3] * width, r[:, 4] * height
    return np.column_stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def boxes_from_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding boxes (N, 4) ``x0, y0, x1, y1`` (px, exclusive ends) and centroids (N, 2) ``x, y`` of labels 1..N of an int (H, W) image."""
    lab = np.asarray(labels)
    n = int(lab.max()) if lab.size else 0
    if n == 0:
        return np.zeros((0, 4)), np.zeros((0, 2))
    boxes = np.zeros((n, 4))
    present = np.zeros(n, bool)
    for i, sl in enumerate(ndi.find_objects(lab.astype(np.int32, copy=False))):
        if sl is None:
            continue
        present[i] = True
        boxes[i] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    ids = np.arange(1, n + 1)
    cy, cx = (np.asarray(v) for v in zip(*ndi.center_of_mass(lab > 0, lab, ids), strict=True))
    cent = np.column_stack([cx + 0.5, cy + 0.5])  # pixel centres, in the boxes' coordinates
    return boxes[present], cent[present]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of boxes ``x0, y0, x1, y1``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _max_matching(allowed: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Pairs (K, 2) of a one-to-one matching over ``allowed`` with the most pairs, then the largest weight (weights in [0, 1])."""
    if allowed.size == 0 or not allowed.any():
        return np.zeros((0, 2), int)
    # each allowed pair is worth 1 + weight/2 (> any gain from trading pairs for weight), others 0
    gain = np.where(allowed, 1.0 + 0.5 * np.clip(weight, 0.0, 1.0), 0.0)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    ok = allowed[rows, cols]
    return np.column_stack([rows[ok], cols[ok]])


def match_by_iou(pred: np.ndarray, true: np.ndarray, threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """One-to-one pairs (K, 2) of (prediction index, box index) with box IoU >= ``threshold``."""
    iou = box_iou(pred, true)
    return _max_matching(iou >= threshold, iou)


def match_by_centroid(centroids: np.ndarray, true: np.ndarray) -> np.ndarray:
    """One-to-one pairs (K, 2) of (prediction index, box index) where the box contains the prediction's centroid ``x, y``."""
    c = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(true, dtype=np.float64).reshape(-1, 4)
    inside = (
        (c[:, None, 0] >= b[None, :, 0]) & (c[:, None, 0] <= b[None, :, 2])
        & (c[:, None, 1] >= b[None, :, 1]) & (c[:, None, 1] <= b[None, :, 3])
    )
    # prefer the box whose centre is nearest (weight in [0, 1])
    bc = np.column_stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2])
    size = np.maximum(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]), 1e-9)
    dist = np.hypot(c[:, None, 0] - bc[None, :, 0], c[:, None, 1] - bc[None, :, 1]) / size[None, :]
    return _max_matching(inside, 1.0 - np.clip(dist, 0.0, 1.0))


def score_detection(n_pred: int, n_true: int, pairs: np.ndarray) -> DetectionScore:
    """tp/fp/fn of a frame from the numbers of predictions and boxes and the matched pairs."""
    tp = int(len(pairs))
    return DetectionScore(tp=tp, fp=int(n_pred) - tp, fn=int(n_true) - tp)
