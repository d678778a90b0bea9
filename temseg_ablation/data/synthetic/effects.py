"""Optional image-formation effects of the synthetic ETEM generator (all off by default).

Each function is pure NumPy on plain arguments, so :mod:`temseg_ablation.data.synthetic` stays the
one place that knows the configuration. Effects, in the order the renderer applies them:

- support: a thin amorphous film with holes (vacuum) and thick, irregular aggregates, as a
  mass-thickness map in nm that moves with the sample;
- lattice: {111}-type fringes (and moire beats of two overlapping lattices) inside particles,
  drawn only where the fringe period exceeds two pixels;
- defocus: Fresnel propagation of the object's phase (paraxial, exact for a thin object), which
  gives fringes whose sign follows the sign of the defocus;
- HAADF: incoherent Z-contrast, signal proportional to thickness x Z^n;
- detector: a blur of the whole image (core + tail), integrating (linear) readout with charge
  spreading and read noise, and a JPEG round trip as an output degradation.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

# rest energy of the electron (eV); the inner potential of amorphous SiN (V), for the phase of
# support aggregates under defocus
_MC2_EV = 510998.95
SUPPORT_INNER_POTENTIAL_V = 15.0
# fringe terms with a period below this many pixels are not drawn (they cannot be sampled)
_MIN_PERIOD_PX = 2.0


def electron_wavelength_nm(kv: float) -> float:
    """Relativistic electron wavelength (nm) at an accelerating voltage of kv kilovolts."""
    v = kv * 1e3
    return 1.226426 / math.sqrt(v * (1 + v / (2 * _MC2_EV)))


def interaction_constant(kv: float) -> float:
    """Relativistic interaction constant sigma (rad per V per nm): phase = sigma x V0 x t."""
    v = kv * 1e3
    return 2 * math.pi / (electron_wavelength_nm(kv) * v) * (_MC2_EV + v) / (2 * _MC2_EV + v)


# ----------------------------------------------------------------------------------------------
# support: film, vacuum and aggregates


@dataclass
class SupportStatics:
    """Random fields of one experiment's support (rfft2 spectra) and their frame-0 statistics."""

    spec_vac: np.ndarray | None  # smooth field whose low values are vacuum
    spec_agg: np.ndarray | None  # smooth field whose high values are aggregates
    spec_tex: np.ndarray | None  # lumpy texture inside aggregates
    stats: dict[str, float]


def _gauss_spec(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float,
                second: float = 0.35) -> np.ndarray:
    """Spectrum of a random field: Gaussian correlation sigma_px plus a finer one (irregular edges)."""
    h, w = shape
    ky = sfft.fftfreq(h).astype(np.float32)[:, None]
    kx = sfft.rfftfreq(w).astype(np.float32)[None, :]
    k2 = ky * ky + kx * kx
    filt = np.exp(np.float32(-2 * math.pi**2 * sigma_px**2) * k2)
    filt += np.float32(second) * np.exp(np.float32(-2 * math.pi**2 * (sigma_px / 3) ** 2) * k2)
    noise = (rng.standard_normal((h, kx.size), dtype=np.float32)
             + 1j * rng.standard_normal((h, kx.size), dtype=np.float32)).astype(np.complex64)
    noise[0, 0] = 0
    return noise * filt


def shifted_field(spec: np.ndarray, shape: tuple[int, int], shift_px: np.ndarray) -> np.ndarray:
    """Real field of an rfft2 spectrum, shifted by shift_px (y, x) with a Fourier phase ramp."""
    h, w = shape
    if np.any(shift_px != 0):
        ry = np.exp(-2j * np.pi * sfft.fftfreq(h) * shift_px[0]).astype(np.complex64)
        rx = np.exp(-2j * np.pi * sfft.rfftfreq(w) * shift_px[1]).astype(np.complex64)
        spec = spec * ry[:, None] * rx[None, :]
    return sfft.irfft2(spec, s=(h, w), workers=1).astype(np.float32, copy=False)


def make_support(rng: np.random.Generator, shape: tuple[int, int], pixel_size_nm: float,
                 vacuum_fraction: float, aggregate_fraction: float, scale_nm: float,
                 edge_nm: float) -> SupportStatics:
    """Draw the support fields of one experiment; thresholds follow the requested area fractions."""
    sig = scale_nm / pixel_size_nm
    stats: dict[str, float] = {}
    specs: list[np.ndarray | None] = []
    for name, frac in (("vac", vacuum_fraction), ("agg", aggregate_fraction)):
        if frac <= 0:
            specs.append(None)
            continue
        spec = _gauss_spec(rng, shape, sig)
        f = shifted_field(spec, shape, np.zeros(2))
        std = float(f.std()) or 1.0
        gy, gx = np.gradient(f / std)
        # the soft edge rises 10-90 % over edge_nm: a logistic's 10-90 % width is 2 ln 9 scale
        # units, converted to field units with the field's typical slope per pixel
        slope = float(np.sqrt(np.mean(gy * gy + gx * gx))) or 1.0
        # vacuum is the low tail, aggregates the high tail, of the field's marginal distribution
        thr = float(np.quantile(f / std, frac if name == "vac" else 1 - frac))
        stats.update({f"{name}_std": std, f"{name}_thr": thr,
                      f"{name}_edge": max(edge_nm / pixel_size_nm, 0.5) / (2 * math.log(9)) * slope})
        specs.append(spec)
    tex = None
    if specs[1] is not None:
        # amorphous lumps of about 1.5 nm inside the aggregates
        tex = _gauss_spec(rng, shape, 1.5 / pixel_size_nm, second=0.0)
        stats["tex_std"] = float(shifted_field(tex, shape, np.zeros(2)).std()) or 1.0
    return SupportStatics(specs[0], specs[1], tex, stats)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1 + np.tanh(0.5 * x))).astype(np.float32)


def film_fraction(st: SupportStatics, shape: tuple[int, int], shift_px: np.ndarray) -> np.ndarray:
    """(H, W) float32 in [0, 1]: 1 on the film, 0 in vacuum, soft in between."""
    if st.spec_vac is None:
        return np.ones(shape, np.float32)
    s = st.stats
    f = shifted_field(st.spec_vac, shape, shift_px) / np.float32(s["vac_std"])
    return _sigmoid((f - s["vac_thr"]) / s["vac_edge"])


def support_thickness(st: SupportStatics, shape: tuple[int, int], shift_px: np.ndarray,
                      film_nm: float, aggregate_nm: float, texture: float) -> np.ndarray:
    """(H, W) float32 mass thickness of the support in nm: film + aggregates, zero in vacuum.

    Aggregates thicken towards their interior (the field keeps rising past the threshold) and
    carry a lumpy amorphous texture of relative rms ``texture``.
    """
    film = film_fraction(st, shape, shift_px)
    total = np.full(shape, np.float32(film_nm))
    if st.spec_agg is not None:
        s = st.stats
        f = shifted_field(st.spec_agg, shape, shift_px) / np.float32(s["agg_std"])
        m = _sigmoid((f - s["agg_thr"]) / s["agg_edge"])
        lump = 1 + np.float32(texture) * shifted_field(st.spec_tex, shape, shift_px) / np.float32(s["tex_std"])
        agg = np.float32(aggregate_nm) * m * (1 + 0.5 * np.clip(f - s["agg_thr"], 0, None)) * np.clip(lump, 0, None)
        total = total + agg
    return (total * film).astype(np.float32, copy=False)


def particles_on_support(st: SupportStatics, shape: tuple[int, int], centres_px: np.ndarray) -> np.ndarray:
    """(N,) bool: whether each particle centre (frame-0 px, any position) lies on the film."""
    if st.spec_vac is None or centres_px.size == 0:
        return np.ones(centres_px.shape[0], dtype=bool)
    film = film_fraction(st, shape, np.zeros(2))
    # the support fields are periodic in the frame, like the texture, so positions wrap
    val = ndimage.map_coordinates(film, centres_px.T, order=1, mode="grid-wrap")
    return val >= 0.5


# ----------------------------------------------------------------------------------------------
# lattice fringes and moire


@dataclass
class LatticeTable:
    """Per particle id: whether it shows fringes, lattice angle and phases, moire partner."""

    shows: np.ndarray  # (M,) bool
    theta: np.ndarray  # (M,) rad
    phase: np.ndarray  # (M, 2) rad
    moire: np.ndarray  # (M,) bool
    dtheta: np.ndarray  # (M,) rad, rotation of the second lattice
    dscale: np.ndarray  # (M,) spacing ratio of the second lattice


def make_lattice_table(seed: int, n_ids: int, fraction: float, moire_fraction: float) -> LatticeTable:
    """Draw lattice orientations for particle ids 0..n_ids-1.

    Ids come in blocks of 1024, each from its own stream ``[seed, 7, block]``, so a particle's
    lattice does not depend on how many ids a sequence happens to have.
    """
    parts = []
    for b in range((max(n_ids, 1) + 1023) // 1024):
        rng = np.random.default_rng([seed, 7, b])
        u = rng.random((1024, 8))
        parts.append(u)
    u = np.concatenate(parts)[:n_ids]
    shows = u[:, 0] < fraction
    theta = u[:, 1] * np.pi
    phase = u[:, 2:4] * 2 * np.pi
    moire = shows & (u[:, 4] < moire_fraction)
    # small rotations (1-5 deg, either way) and misfits (0-4 %) give beats a few nm across
    dtheta = np.deg2rad(1.0 + 4.0 * u[:, 5]) * np.where(u[:, 6] < 0.5, -1.0, 1.0)
    dscale = 1 + 0.04 * u[:, 7]
    return LatticeTable(shows, theta, phase, moire, dtheta, dscale)


def lattice_pattern(tab: LatticeTable, pid: int, yy: np.ndarray, xx: np.ndarray, spacing_px: float
                    ) -> np.ndarray | None:
    """Fringe pattern (zero mean, at most 1 in size) of particle pid at offsets yy, xx (px).

    A single lattice gives cos(g.r + p); two overlapping lattices add their own fringes and the
    double-diffraction beat at g1 - g2. Terms whose period is 2 px or less are left out.
    """
    if pid >= tab.shows.size or not tab.shows[pid]:
        return None
    th = float(tab.theta[pid])
    g1 = np.array([math.sin(th), math.cos(th)]) / spacing_px
    terms = [(g1, float(tab.phase[pid, 0]))]
    if tab.moire[pid]:
        th2 = th + float(tab.dtheta[pid])
        g2 = np.array([math.sin(th2), math.cos(th2)]) / (spacing_px * float(tab.dscale[pid]))
        terms += [(g2, float(tab.phase[pid, 1])), (g1 - g2, float(tab.phase[pid, 0] - tab.phase[pid, 1]))]
    keep = [(g, p) for g, p in terms if 1 / max(float(np.hypot(*g)), 1e-12) > _MIN_PERIOD_PX]
    if not keep:
        return None
    out = np.zeros(np.broadcast_shapes(yy.shape, xx.shape), np.float32)
    for g, p in keep:
        out += np.cos(np.float32(2 * np.pi * g[0]) * yy + np.float32(2 * np.pi * g[1]) * xx + np.float32(p))
    return out / np.float32(len(keep))


# ----------------------------------------------------------------------------------------------
# defocus phase contrast


def defocus_intensity(phase: np.ndarray, pixel_size_nm: float, defocus_nm: float, kv: float) -> np.ndarray:
    """Intensity |P * exp(i phase)|^2 of a thin phase object seen at a defocus (nm).

    phase: (H, W) rad. Positive defocus is underfocus (Kirkland's sign), P(k) = exp(i pi lambda
    df k^2); it puts a bright fringe just outside an object of raised potential, overfocus a dark
    one. The frame is padded by reflection so the periodic FFT does not fold fringes across edges.
    """
    lam = electron_wavelength_nm(kv)
    pad = int(min(64, math.ceil(6 * math.sqrt(lam * abs(defocus_nm)) / pixel_size_nm) + 4))
    h, w = phase.shape
    ph = np.pad(phase, pad, mode="reflect") if min(h, w) > pad else np.pad(phase, pad, mode="edge")
    psi = np.exp(1j * ph.astype(np.float64))
    ky = sfft.fftfreq(ph.shape[0], d=pixel_size_nm)[:, None]
    kx = sfft.fftfreq(ph.shape[1], d=pixel_size_nm)[None, :]
    prop = np.exp(1j * np.pi * lam * defocus_nm * (ky * ky + kx * kx))
    out = sfft.ifft2(sfft.fft2(psi, workers=1) * prop, workers=1)
    return (np.abs(out[pad:pad + h, pad:pad + w]) ** 2).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# detector and output


def detector_blur(image: np.ndarray, sigma_px: float, tail_fraction: float, tail_px: float) -> np.ndarray:
    """Blur the whole image with a Gaussian core (sigma_px) plus a broad Gaussian tail."""
    out = image
    if sigma_px > 0:
        out = ndimage.gaussian_filter(image, sigma_px, mode="nearest", truncate=3.5)
    if tail_fraction > 0 and tail_px > 0:
        tail = ndimage.gaussian_filter(image, tail_px, mode="nearest", truncate=3.0)
        out = (1 - tail_fraction) * out + tail_fraction * tail
    return out.astype(np.float32, copy=False)


def linear_readout(rng: np.random.Generator, expected: np.ndarray, spread_px: float,
                   read_noise_e: float) -> np.ndarray:
    """Integrating detector: Poisson electrons, charge spread (sigma spread_px), Gaussian read noise.

    The spreading kernel sums to one, so the mean is kept; it correlates neighbouring pixels'
    noise (and softens the signal the same way, as on a real integrating camera).
    """
    counts = rng.poisson(expected).astype(np.float32)
    if spread_px > 0:
        counts = ndimage.gaussian_filter(counts, spread_px, mode="nearest", truncate=3.5)
    if read_noise_e > 0:
        counts += np.float32(read_noise_e) * rng.standard_normal(counts.shape, dtype=np.float32)
    return np.clip(counts, 0, None)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode the image as an 8-bit greyscale JPEG (its own min-max window) and decode it again."""
    from PIL import Image

    arr = np.asarray(image, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    span = hi - lo if hi > lo else 1.0
    u8 = np.clip(np.rint((arr - lo) / span * 255), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8, mode="L").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        back = np.asarray(im.convert("L"), dtype=np.float32)
    return (back / np.float32(255) * np.float32(span) + np.float32(lo)).astype(np.float32)

