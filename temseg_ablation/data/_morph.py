"""Fast exact grayscale morphology for the pseudo-labelling pipeline (numba kernels).

Two border-seeded reconstructions and a disk opening dominate the classical pseudo-labelling
cost. Here they are computed exactly (bit-identical to scikit-image), only faster:

* Reconstruction from a border seed: by dilation, each pixel gets the maximum over paths to
  the image border of the minimum value along the path (by erosion, the dual). A forward and a
  backward raster pass settle every pixel reachable along monotone paths (sequential, so
  cheap); they repeat while they still change many pixels, and a FIFO of the pixels that can
  still raise a neighbour finishes the rest (the hybrid scheme of L. Vincent, 1993). Values
  are only ever copied, never computed, so the result is bit-identical to scikit-image.
  Reconstruction by erosion is the dilation of the negated image (negation is exact).
* A disk is a stack of centred horizontal runs, so erosion/dilation with it is a per-row
  running min/max for each distinct run width followed by a min/max over rows.

Without numba everything falls back to scipy/scikit-image (same results, slower).
"""

from __future__ import annotations

import numpy as np

try:  # numba is optional: the scikit-image fallback gives identical results, just slower
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is absent
    HAVE_NUMBA = False

    def njit(*args, **kwargs):  # type: ignore[no-redef]
        """Stand-in decorator when numba is missing (the kernels are then never called)."""
        if args and callable(args[0]):
            return args[0]
        return lambda f: f


__all__ = [
    "HAVE_NUMBA",
    "reconstruct_from_border",
    "basin_depth",
    "disk_opening",
    "warmup",
]


# ---------------------------------------------------------------------------------------------
# border-seeded reconstruction: raster scans, then a FIFO for what they leave
#
# Everything works on copies padded by one pixel of -inf, so the 8 neighbours of an image pixel
# sit at fixed flat offsets (no bounds checks) and the pad never rises or propagates.


@njit(cache=True)
def _scan_forward(j, m, wp):
    """One raster pass of J = min(max(J, J over the 4 earlier neighbours), M); returns pixels changed."""
    n = j.size
    changed = 0
    for p in range(wp + 1, n - wp - 1):
        v = j[p]
        old = v
        a = j[p - wp - 1]
        if a > v:
            v = a
        a = j[p - wp]
        if a > v:
            v = a
        a = j[p - wp + 1]
        if a > v:
            v = a
        a = j[p - 1]
        if a > v:
            v = a
        if m[p] < v:
            v = m[p]
        if v != old:
            j[p] = v
            changed += 1
    return changed


@njit(cache=True)
def _scan_backward(j, m, wp, queue, queued):
    """The same pass in anti-raster order over the 4 later neighbours; returns pixels changed.

    With a non-empty ``queue`` it also queues every pixel that can still raise one of those
    neighbours (Vincent's seeding of the FIFO) and returns how many it queued instead.
    """
    n = j.size
    seed = queue.size > 0
    changed = 0
    for p in range(n - wp - 2, wp, -1):
        v = j[p]
        old = v
        a = j[p + wp + 1]
        if a > v:
            v = a
        a = j[p + wp]
        if a > v:
            v = a
        a = j[p + wp - 1]
        if a > v:
            v = a
        a = j[p + 1]
        if a > v:
            v = a
        if m[p] < v:
            v = m[p]
        if seed:
            for q in (p + 1, p + wp - 1, p + wp, p + wp + 1):
                if j[q] < v and j[q] < m[q]:
                    queue[changed] = p
                    queued[p] = 1
                    changed += 1
                    break
            j[p] = v
        elif v != old:
            j[p] = v
            changed += 1
    return changed


@njit(cache=True)
def _propagate(j, m, wp, queue, queued, count):
    """Finish the reconstruction by dilation from the ``count`` pixels queued by the last scan."""
    n = j.size
    off = np.array([-wp - 1, -wp, -wp + 1, -1, 1, wp - 1, wp, wp + 1], np.int64)
    head = 0
    tail = count % n
    # a queued pixel is never queued twice: when it is taken it spreads its value at that time
    while count > 0:
        p = queue[head]
        head += 1
        if head == n:
            head = 0
        count -= 1
        queued[p] = 0
        v = j[p]
        for t in range(8):
            q = p + off[t]
            jq = j[q]
            if jq < v and jq != m[q]:
                j[q] = v if v < m[q] else m[q]
                if queued[q] == 0:
                    queue[tail] = q
                    tail += 1
                    if tail == n:
                        tail = 0
                    queued[q] = 1
                    count += 1


# Scan pairs stop once a backward pass changes under 1/_SCAN_STOP of the pixels; on 1792 x 1920
# frames 4-8 were fastest (2 to 4 pairs, then a short FIFO), 1024 and "scans only" slowest.
_SCAN_STOP = 8


def _dilate_from_border(image: np.ndarray) -> np.ndarray:
    """Reconstruction by dilation of ``image`` from its border (numba path); a new array."""
    h, w = image.shape
    if (h + 2) * (w + 2) >= 2**31:
        raise ValueError(f"image too large ({h} x {w}); the limit is 2**31 pixels")
    mask = np.pad(image, 1, constant_values=-np.inf)
    marker = mask.copy()
    marker[2:-2, 2:-2] = image.min()  # the image border keeps its values: the seed
    j, m, wp = marker.ravel(), mask.ravel(), w + 2
    none = np.empty(0, np.int32)
    # Scans are sequential and cheap but only follow monotone paths; repeat them while a pass
    # still changes over 1/_SCAN_STOP of the pixels, then one last seeding pass and the FIFO.
    for _ in range(16):
        _scan_forward(j, m, wp)
        if _scan_backward(j, m, wp, none, none.view(np.uint8)) * _SCAN_STOP < h * w:
            break
    _scan_forward(j, m, wp)
    # int32 indices: half the memory traffic of int64 (hence the size limit above)
    queue, queued = np.empty(j.size, np.int32), np.zeros(j.size, np.uint8)
    _propagate(j, m, wp, queue, queued, _scan_backward(j, m, wp, queue, queued))
    return np.ascontiguousarray(marker[1:-1, 1:-1])


def _reconstruct_skimage(image: np.ndarray, method: str) -> np.ndarray:
    from skimage.morphology import reconstruction

    seed = image.copy()
    seed[1:-1, 1:-1] = image.min() if method == "dilation" else image.max()
    return reconstruction(seed, image, method=method)


def _as_image(image: np.ndarray) -> np.ndarray:
    image = np.ascontiguousarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    if image.size == 0:
        raise ValueError("expected a non-empty image")
    return image


def reconstruct_from_border(image: np.ndarray, method: str) -> np.ndarray:
    """Reconstruct a 2-D float image from its 1-px border (8-connected), as skimage.morphology.reconstruction with seed = image on the border and min (dilation) / max (erosion) inside."""
    if method not in ("dilation", "erosion"):
        raise ValueError(f"method must be 'dilation' or 'erosion', got {method!r}")
    image = _as_image(image)
    if not HAVE_NUMBA:
        return _reconstruct_skimage(image, method)
    # erosion is the dilation of the negated image (negation is exact in floating point)
    if method == "dilation":
        return _dilate_from_border(image)
    return -_dilate_from_border(-image)


def basin_depth(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (r, |r - r1|) for a 2-D float image: r = its border reconstruction by dilation, r1 = the border reconstruction by erosion of r."""
    image = _as_image(image)
    if not HAVE_NUMBA:
        r = _reconstruct_skimage(image, "dilation")
        return r, np.abs(r - _reconstruct_skimage(r, "erosion"))
    r = _dilate_from_border(image)
    r1 = -_dilate_from_border(-r)
    return r, np.abs(r - r1)


# ---------------------------------------------------------------------------------------------
# opening with a disk


def _disk_half_widths(radius: int) -> np.ndarray:
    """Half-width of skimage.morphology.disk(radius) on each row offset -radius..radius."""
    from skimage.morphology import disk

    fp = disk(radius).astype(bool)
    widths = np.empty(fp.shape[0], np.int64)
    for i, row in enumerate(fp):
        cols = np.flatnonzero(row)
        half = radius - cols[0]
        # the run decomposition below needs centred contiguous rows
        if cols[-1] - radius != half or cols.size != 2 * half + 1:
            raise ValueError(f"disk({radius}) rows are not centred runs")
        widths[i] = half
    return widths


@njit(cache=True)
def _row_runs(row, runs, max_w, is_max):
    """runs[k, x] = extremum of row over [x-k, x+k] (valid for k <= x < len-k), k = 0..max_w."""
    wp = row.size
    for j in range(wp):
        runs[0, j] = row[j]
    for k in range(1, max_w + 1):
        for j in range(wp):
            runs[k, j] = runs[k - 1, j]
        if k == 1:
            for j in range(1, wp - 1):
                a = runs[0, j - 1]
                b = runs[0, j + 1]
                c = runs[0, j]
                if is_max:
                    runs[1, j] = max(c, max(a, b))
                else:
                    runs[1, j] = min(c, min(a, b))
        else:
            # [x-k, x+k] = [x-1-(k-1), x-1+(k-1)] U [x+1-(k-1), x+1+(k-1)] for k >= 2
            for j in range(k, wp - k):
                a = runs[k - 1, j - 1]
                b = runs[k - 1, j + 1]
                runs[k, j] = max(a, b) if is_max else min(a, b)


@njit(cache=True)
def _rank_filter_disk(padded, widths, radius, is_max):
    """Min/max over a disk of row half-widths `widths` on an image padded by `radius`."""
    hp, wp = padded.shape
    h = hp - 2 * radius
    w = wp - 2 * radius
    span = 2 * radius + 1
    max_w = 0
    for v in widths:
        if v > max_w:
            max_w = v
    # ring buffer of per-row running extrema: only 2r+1 padded rows are live at a time
    ring = np.empty((span, max_w + 1, wp), padded.dtype)
    for r in range(span - 1):
        _row_runs(padded[r], ring[r % span], max_w, is_max)
    out = np.empty((h, w), padded.dtype)
    for i in range(h):
        _row_runs(padded[i + span - 1], ring[(i + span - 1) % span], max_w, is_max)
        src = ring[i % span, widths[0]]
        for j in range(w):
            out[i, j] = src[j + radius]
        for dy in range(1, span):
            src = ring[(i + dy) % span, widths[dy]]
            for j in range(w):
                v = src[j + radius]
                if is_max:
                    if v > out[i, j]:
                        out[i, j] = v
                else:
                    if v < out[i, j]:
                        out[i, j] = v
    return out


def _pad_reflect(image: np.ndarray, radius: int) -> np.ndarray:
    # numpy 'symmetric' repeats the edge sample, as scipy.ndimage mode='reflect' does
    return np.pad(image, radius, mode="symmetric")


def disk_opening(image: np.ndarray, radius: int) -> np.ndarray:
    """Grayscale opening of a 2-D float image with skimage.morphology.disk(radius), identical to skimage.morphology.opening (mode='reflect')."""
    image = np.ascontiguousarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    radius = int(radius)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if radius == 0:
        return image.copy()
    if not HAVE_NUMBA:
        from skimage.morphology import disk, opening

        return opening(image, disk(radius))
    widths = _disk_half_widths(radius)
    eroded = _rank_filter_disk(_pad_reflect(image, radius), widths, radius, False)
    return _rank_filter_disk(_pad_reflect(eroded, radius), widths, radius, True)


def warmup() -> float:
    """Compile (or load from the on-disk cache) every numba kernel; returns the seconds it took."""
    import time

    t0 = time.perf_counter()
    if HAVE_NUMBA:
        rng = np.random.default_rng(0)
        img = rng.random((8, 9))
        basin_depth(img)
        reconstruct_from_border(img, "erosion")
        disk_opening(img, 2)
    return time.perf_counter() - t0
