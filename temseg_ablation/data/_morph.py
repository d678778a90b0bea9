"""Fast exact grayscale morphology for the pseudo-labelling pipeline (numba kernels).

Two border-seeded reconstructions and a disk opening dominate the classical pseudo-labelling
cost. Here they are computed exactly (bit-identical to scikit-image) but in linear time:

* Reconstruction from a border seed is a flooding problem: by erosion, each pixel gets the
  minimum over paths to the image border of the maximum value along the path; by dilation,
  the maximum over such paths of the minimum. Flooding in value order with a bucket queue
  solves it in O(n) once the values are replaced by their ranks, and because the answer
  commutes with any non-decreasing map of the values, ranks give exactly the float answer.
  The second reconstruction reuses the first one's ranks, so one sort serves both.
* The order comes from one exact sort: ``np.sort`` on 64-bit keys (top value bits | pixel
  index) is SIMD-fast, and a short insertion pass repairs the rare ties in the truncated bits.
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
# exact ordering
#
# All flooding works on a copy padded by one pixel so that the 8 neighbours of any image pixel
# are at fixed flat offsets (no bounds checks, no divisions); the pad is marked as visited.


@njit(cache=True)
def _pad_and_keys(image, bits, shift):
    """Padded copy of `image` and one uint64 sort key per pixel: (top value bits) | padded index; `bits` is `image` viewed as uint64."""
    h, w = image.shape
    wp = w + 2
    padded = np.zeros((h + 2, wp), np.float64)
    keys = np.empty(h * w, np.uint64)
    sign = np.uint64(1) << np.uint64(63)
    s = np.uint64(shift)
    k = 0
    for i in range(h):
        for j in range(w):
            v = image[i, j]
            padded[i + 1, j + 1] = v
            b = bits[i, j]
            # order-preserving map of IEEE-754 bit patterns onto unsigned integers
            m = ~b if (b & sign) else (b | sign)
            keys[k] = ((m >> s) << s) | np.uint64((i + 1) * wp + j + 1)
            k += 1
    return padded, keys


@njit(cache=True)
def _order_from_keys(keys, padded_flat, shift):
    """Padded pixel indices in exact ascending value order, from sorted truncated keys."""
    n = keys.size
    lowmask = (np.uint64(1) << np.uint64(shift)) - np.uint64(1)
    order = np.empty(n, np.int32)
    for k in range(n):
        order[k] = np.int32(keys[k] & lowmask)
    # only keys whose truncated value bits tie can be out of value order: insertion-sort them
    for k in range(1, n):
        if (keys[k] >> np.uint64(shift)) != (keys[k - 1] >> np.uint64(shift)):
            continue
        p = order[k]
        v = padded_flat[p]
        j = k - 1
        while j >= 0 and padded_flat[order[j]] > v:
            order[j + 1] = order[j]
            j -= 1
        order[j + 1] = p
    return order


def _padded_order(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image padded by one zero pixel, padded flat indices of the image pixels in exact value order)."""
    h, w = image.shape
    n_padded = (h + 2) * (w + 2)
    if n_padded >= 2**31:
        raise ValueError(f"image too large ({h} x {w}); the limit is 2**31 pixels")
    shift = max(1, int(n_padded - 1).bit_length())
    image = np.ascontiguousarray(image, dtype=np.float64)
    padded, keys = _pad_and_keys(image, image.view(np.uint64), shift)
    keys.sort()  # numpy's SIMD sort: far faster than an argsort of the floats
    return padded, _order_from_keys(keys, padded.ravel(), shift)


# ---------------------------------------------------------------------------------------------
# border-seeded reconstruction by flooding

_UNSEEN = -1
_QUEUED = -2
_PAD = -3


@njit(cache=True)
def _offsets(wp):
    return np.array([-wp - 1, -wp, -wp + 1, -1, 1, wp - 1, wp, wp + 1], np.int64)


@njit(cache=True)
def _flood_maximin(padded, order):
    """Border reconstruction by dilation: each pixel gets the max over paths to the border of the path minimum.

    Returns (level, value) on the padded grid: `level` is the rank (in `order`) of the answer,
    `value` the answer itself. Levels are visited from the top; a pixel reached at a level no
    higher than its own value takes that level at once (depth-first), any other is parked and
    taken when the level sweep reaches its own rank, so each pixel is handled once.
    """
    hp, wp = padded.shape
    g = padded.ravel()
    n = order.size
    level = np.full(hp * wp, _UNSEEN, np.int32)
    value = np.zeros(hp * wp, np.float64)
    off = _offsets(wp)
    for j in range(wp):
        level[j] = _PAD
        level[(hp - 1) * wp + j] = _PAD
    for i in range(1, hp - 1):
        level[i * wp] = _PAD
        level[i * wp + wp - 1] = _PAD
        # every image border pixel is a seed at its own value
        if i == 1 or i == hp - 2:
            for j in range(1, wp - 1):
                level[i * wp + j] = _QUEUED
        else:
            level[i * wp + 1] = _QUEUED
            level[i * wp + wp - 2] = _QUEUED
    stack = np.empty(n, np.int32)
    for k in range(n - 1, -1, -1):
        p = order[k]
        if level[p] != _QUEUED:
            continue
        gl = g[p]
        level[p] = k
        value[p] = gl
        stack[0] = p
        sp = 1
        while sp > 0:
            sp -= 1
            q = stack[sp]
            for t in range(8):
                nb = q + off[t]
                if level[nb] != _UNSEEN:
                    continue
                if g[nb] >= gl:
                    level[nb] = k
                    value[nb] = gl
                    stack[sp] = nb
                    sp += 1
                else:
                    level[nb] = _QUEUED
    return level.reshape(hp, wp), value.reshape(hp, wp)


@njit(cache=True)
def _flood_minimax_depth(level, value, n_levels):
    """Border reconstruction by erosion of integer levels; returns r1 - r on the padded grid.

    `level` (padded, -3 on the pad) orders the float `value`s; a bucket queue over the levels
    floods from the border upwards, filling every basin to its spill level.
    """
    hp, wp = level.shape
    lv = level.ravel()
    val = value.ravel()
    npx = hp * wp
    depth = np.zeros(npx, np.float64)
    head = np.full(n_levels, -1, np.int32)
    nxt = np.empty(npx, np.int32)
    seen = np.zeros(npx, np.uint8)
    off = _offsets(wp)
    for p in range(npx):
        if lv[p] < 0:
            seen[p] = 1
    for i in range(1, hp - 1):
        for j in range(1, wp - 1):
            if i == 1 or i == hp - 2 or j == 1 or j == wp - 2:
                p = i * wp + j
                seen[p] = 1
                b = lv[p]
                nxt[p] = head[b]
                head[b] = p
    stack = np.empty(npx, np.int32)
    for lev in range(n_levels):
        p = head[lev]
        while p != -1:
            head[lev] = nxt[p]
            top = val[p]
            stack[0] = p
            sp = 1
            while sp > 0:
                sp -= 1
                q = stack[sp]
                for t in range(8):
                    nb = q + off[t]
                    if seen[nb]:
                        continue
                    seen[nb] = 1
                    b = lv[nb]
                    if b <= lev:
                        depth[nb] = top - val[nb]
                        stack[sp] = nb
                        sp += 1
                    else:
                        nxt[nb] = head[b]
                        head[b] = nb
            p = head[lev]
    return depth.reshape(hp, wp)


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
    sign = 1.0 if method == "dilation" else -1.0
    padded, order = _padded_order(sign * image)
    _, value = _flood_maximin(padded, order)
    return sign * value[1:-1, 1:-1]


def basin_depth(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (r, |r - r1|) for a 2-D float image: r = its border reconstruction by dilation, r1 = the border reconstruction by erosion of r."""
    image = _as_image(image)
    if not HAVE_NUMBA:
        r = _reconstruct_skimage(image, "dilation")
        return r, np.abs(r - _reconstruct_skimage(r, "erosion"))
    padded, order = _padded_order(image)
    level, value = _flood_maximin(padded, order)
    # r only takes image values, so its ranks in the image's order are a valid (tied) level
    # map for the second flood: one sort serves both reconstructions
    depth = _flood_minimax_depth(level, value, order.size)
    return value[1:-1, 1:-1], np.ascontiguousarray(depth[1:-1, 1:-1])


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
