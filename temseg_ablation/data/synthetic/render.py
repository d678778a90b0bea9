"""Static fields of an experiment (support, camera, optional effects) and frame rendering."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import fft as sfft
from scipy import ndimage

from . import effects as _sfx
from .config import _Z_GOLD, TABLE_COLUMNS, Frame, SyntheticConfig
from .population import _current_lobes, _extent, _Population

# ----------------------------------------------------------------------------------------------
# static fields of one experiment (support, illumination, camera)


@dataclass
class _Statics:
    support_spec: np.ndarray | None  # rfft2 spectrum of (support transmission - 1)
    illumination: np.ndarray | None  # (H, W) float32 relative beam intensity
    fixed_pattern: np.ndarray | None  # (H, W) float32 camera gain


def _make_statics(cfg: SyntheticConfig, rng: np.random.Generator) -> _Statics:
    """Support texture spectrum, illumination and fixed pattern, shared by a sequence's frames."""
    h, w = cfg.height, cfg.width
    spec = None
    if cfg.support_texture and (cfg.speckle_amplitude > 0 or cfg.support_thickness_amplitude > 0):
        ky = sfft.fftfreq(h).astype(np.float32)[:, None]
        kx = sfft.rfftfreq(w).astype(np.float32)[None, :]
        k = np.sqrt(ky * ky + kx * kx)
        # amorphous phase contrast: a ring in the power spectrum near 1/speckle_scale
        k0 = cfg.pixel_size_nm / cfg.speckle_scale_nm
        speckle = np.exp(np.float32(-0.5) * ((k - np.float32(k0)) / np.float32(0.45 * k0)) ** 2)
        sig_l = cfg.support_thickness_scale_nm / cfg.pixel_size_nm
        thick = np.exp(np.float32(-2 * (np.pi * sig_l) ** 2) * (k * k))
        noise = (rng.standard_normal((h, kx.size), dtype=np.float32)
                 + 1j * rng.standard_normal((h, kx.size), dtype=np.float32)).astype(np.complex64)
        noise[0, 0] = 0  # keep the mean support transmission at exactly one
        # rms of the filtered field on an unbounded frame, (2 / HW) * integral of W^2 over k, so
        # the texture amplitude does not depend on the frame size (small frames lack long waves)
        kf = np.linspace(-0.5, 0.5, 256, endpoint=False, dtype=np.float32)
        kf = np.sqrt(kf[:, None] ** 2 + kf[None, :] ** 2)
        ring_int = float(np.mean(np.exp(-(((kf - k0) / (0.45 * k0)) ** 2))))
        low_int = 1 / (4 * np.pi * sig_l**2)
        spec = np.zeros_like(noise)
        for filt, amp, integral in ((speckle, cfg.speckle_amplitude, ring_int),
                                    (thick, cfg.support_thickness_amplitude, low_int)):
            if amp > 0:
                spec += noise * (filt * np.float32(amp / math.sqrt(2 * integral / (h * w))))
    illum = None
    if cfg.illumination and cfg.illumination_amplitude > 0:
        order = 3
        yy = np.linspace(0, 1, h)[:, None]
        xx = np.linspace(0, 1, w)[:, None]
        by = np.cos(np.pi * np.arange(order)[None, :] * (yy + rng.uniform(0, 1, order)[None, :]))
        bx = np.cos(np.pi * np.arange(order)[None, :] * (xx + rng.uniform(0, 1, order)[None, :]))
        coef = rng.standard_normal((order, order)) / (1 + np.add.outer(np.arange(order), np.arange(order)))
        coef[0, 0] = 0
        # a smooth separable field: (H, 3) @ (3, 3) @ (3, W), cheap at any frame size
        left = (by @ coef).astype(np.float32)
        fld = left @ bx.T.astype(np.float32)
        scale = float(np.abs(fld).max())
        fld *= np.float32(cfg.illumination_amplitude / (scale if scale > 0 else 1))
        fld += np.float32(1)
        illum = fld
    fp = None
    if cfg.fixed_pattern and cfg.fixed_pattern_amplitude > 0:
        a = cfg.fixed_pattern_amplitude
        fp = (1 + a * rng.standard_normal((h, 1)) + a * rng.standard_normal((1, w))).astype(np.float32)
    return _Statics(spec, illum, fp)


def _support_field(st: _Statics, shape: tuple[int, int], shift_px: np.ndarray) -> np.ndarray | None:
    """Support transmission minus one, shifted by shift_px (y, x) with a Fourier phase ramp."""
    if st.support_spec is None:
        return None
    h, w = shape
    spec = st.support_spec
    if np.any(shift_px != 0):
        ry = np.exp(-2j * np.pi * sfft.fftfreq(h) * shift_px[0]).astype(np.complex64)
        rx = np.exp(-2j * np.pi * sfft.rfftfreq(w) * shift_px[1]).astype(np.complex64)
        spec = spec * ry[:, None] * rx[None, :]
    return sfft.irfft2(spec, s=(h, w), workers=1).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------
# optional effects (see effects)


@dataclass
class _EffectStatics:
    support: _sfx.SupportStatics | None  # film / vacuum / aggregate fields
    lattice: _sfx.LatticeTable | None  # per-id lattice orientations


def _make_effect_statics(cfg: SyntheticConfig, seed: int, pop: _Population) -> _EffectStatics:
    """Support fields and lattice table from their own streams; drops particles over vacuum."""
    support = None
    if cfg.vacuum_fraction > 0 or cfg.aggregate_fraction > 0:
        support = _sfx.make_support(np.random.default_rng([seed, 6]), (cfg.height, cfg.width),
                                    cfg.pixel_size_nm, cfg.vacuum_fraction, cfg.aggregate_fraction,
                                    cfg.aggregate_scale_nm, cfg.aggregate_edge_nm)
        # gold sits on the membrane: a particle whose centre is over a hole is not made
        on = _sfx.particles_on_support(support, (cfg.height, cfg.width), (pop.pos + pop.disp) / cfg.pixel_size_nm)
        pop.keep(on)
    lattice = None
    if cfg.lattice_amplitude > 0 and cfg.imaging_mode == "bf" and cfg.particles == "dark":
        lattice = _sfx.make_lattice_table(seed, int(pop.ids.max(initial=0)) + 1, cfg.lattice_fraction,
                                          cfg.moire_fraction)
    return _EffectStatics(support, lattice)


def _haadf_signal(cfg: SyntheticConfig, thick: np.ndarray, s_map: np.ndarray | None,
                  support: np.ndarray | None) -> np.ndarray:
    """Incoherent Z-contrast, thickness x Z^n; a median-size Au particle's centre gives about one."""
    n = cfg.haadf_z_exponent
    t = thick
    if cfg.psf_blur and cfg.psf_sigma_nm > 0:
        t = ndimage.gaussian_filter(thick, cfg.psf_sigma_nm / cfg.pixel_size_nm, mode="nearest", truncate=3.5)
    sup = s_map if s_map is not None else np.float32(cfg.film_thickness_nm)
    if support is not None:
        # the amorphous texture is a thickness fluctuation of the support here (no phase contrast)
        sup = sup * (1 + support)
    ref = cfg.median_diameter_nm * _Z_GOLD**n
    out = (t * np.float32(cfg.haadf_z_particle**n) + sup * np.float32(cfg.haadf_z_support**n)) / np.float32(ref)
    return np.broadcast_to(out, thick.shape).astype(np.float32)


def _defocus_factor(cfg: SyntheticConfig, thick: np.ndarray, s_map: np.ndarray | None) -> np.ndarray:
    """Relative intensity of the particles' (and aggregates') phase at defocus_nm, mean about one."""
    sigma = _sfx.interaction_constant(cfg.accelerating_voltage_kv)
    phase = thick * np.float32(sigma * cfg.inner_potential_v)
    if s_map is not None:
        phase = phase + (s_map - np.float32(cfg.film_thickness_nm)) * np.float32(sigma * _sfx.SUPPORT_INNER_POTENTIAL_V)
    inten = _sfx.defocus_intensity(phase, cfg.pixel_size_nm, cfg.defocus_nm, cfg.accelerating_voltage_kv)
    if cfg.psf_blur and cfg.psf_sigma_nm > 0:
        inten = ndimage.gaussian_filter(inten, cfg.psf_sigma_nm / cfg.pixel_size_nm, mode="nearest", truncate=3.5)
    return inten


# ----------------------------------------------------------------------------------------------
# rendering


def _render(pop: _Population, st: _Statics, cfg: SyntheticConfig, offset_nm: np.ndarray,
            noise_rng: np.random.Generator, time_s: float, index: int,
            fx: _EffectStatics | None = None) -> Frame:
    """Render the population seen through a frame whose origin sits at offset_nm on the sample."""
    h, w = cfg.height, cfg.width
    ps = cfg.pixel_size_nm
    fx = fx or _EffectStatics(None, None)
    haadf = cfg.imaging_mode == "haadf"
    defocus = cfg.defocus_nm != 0 and not haadf
    lattice = fx.lattice is not None and not haadf
    # pure projected thickness (nm, no orientation factor) for Z-contrast, phase and fringe weight
    thick = np.zeros((h, w), dtype=np.float32) if (haadf or defocus or lattice) else None
    fringes = np.zeros((h, w), dtype=np.float32) if lattice else None
    dark = np.zeros((h, w), dtype=np.float32)
    labels = np.zeros((h, w), dtype=np.int32)
    centre_px = (pop.pos + pop.disp - offset_nm) / ps
    rendered: list[tuple[int, int, int, int, int, float, float, float, int]] = []
    for i in np.argsort(-pop.radius, kind="stable").tolist():
        r_nm = float(pop.radius[i])
        lob = _current_lobes(pop.lobes[i], float(pop.relax[i]))
        r_px = r_nm / ps
        cy, cx = centre_px[i]
        reach = _extent(lob) * r_px + 1
        y0, y1 = max(int(math.floor(cy - reach)), 0), min(int(math.ceil(cy + reach)) + 1, h)
        x0, x1 = max(int(math.floor(cx - reach)), 0), min(int(math.ceil(cx + reach)) + 1, w)
        if y0 >= y1 or x0 >= x1:
            continue
        yy = np.arange(y0, y1, dtype=np.float32)[:, None]
        xx = np.arange(x0, x1, dtype=np.float32)[None, :]
        # path = orientation factor x projected thickness (nm), the exponent of the darkening
        path = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
        inside = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        t_geo = np.zeros_like(path) if thick is not None else None
        k = float(pop.kfac[i]) if cfg.diffraction_contrast else 1.0
        for oy, ox, rho, la, th, km in lob.tolist():
            a = rho * r_px * math.exp(la / 2)
            b = rho * r_px * math.exp(-la / 2)
            dy, dx = yy - (cy + oy * r_px), xx - (cx + ox * r_px)
            cs, sn = math.cos(th), math.sin(th)
            q = ((dy * cs + dx * sn) / a) ** 2 + ((dx * cs - dy * sn) / b) ** 2
            ins = q <= 1
            inside |= ins
            kl = k * km if cfg.diffraction_contrast else 1.0
            # ellipsoid with out-of-plane semi-axis rho * R * height_ratio; a flat disc of the
            # sphere's mean projected thickness 4/3 rho R when thickness contrast is off
            if cfg.thickness_contrast:
                t = (2 * rho * r_nm * cfg.height_ratio * kl) * np.sqrt(np.clip(1 - q, 0, None))
            else:
                t = ins * np.float32(4 / 3 * rho * r_nm * cfg.height_ratio * kl)
            np.maximum(path, t, out=path)
            if t_geo is not None:
                np.maximum(t_geo, (2 * rho * r_nm * cfg.height_ratio) * np.sqrt(np.clip(1 - q, 0, None)), out=t_geo)
        if not inside.any():
            continue
        if t_geo is not None:
            t_geo[~inside] = 0
            np.maximum(thick[y0:y1, x0:x1], t_geo, out=thick[y0:y1, x0:x1])
            if fringes is not None:
                pat = _sfx.lattice_pattern(fx.lattice, int(pop.ids[i]), yy - np.float32(cy), xx - np.float32(cx),
                                           cfg.lattice_spacing_nm / ps)
                if pat is not None:
                    # fringe contrast builds up over the first few nm of crystal
                    wgt = np.float32(cfg.lattice_amplitude) * np.clip(t_geo / np.float32(3.0), 0, 1)
                    fr_box = fringes[y0:y1, x0:x1]
                    fr_box[inside] = (pat * wgt)[inside]
        ratio, tang, toff = pop.twin[i]
        if cfg.diffraction_contrast and ratio != 1.0:
            # second twin domain beyond a straight boundary, blended over about one pixel
            side = (yy - cy) * math.sin(tang) + (xx - cx) * math.cos(tang) - toff * r_px
            path *= 1 + (ratio - 1) * np.clip(side + 0.5, 0, 1)
        tau = path / np.float32(cfg.mean_free_path_nm)
        peak = 1 - math.exp(-float(tau.max()))
        d_box = (1 - np.exp(-tau)).astype(np.float32)
        d_box[~inside] = 0
        np.maximum(dark[y0:y1, x0:x1], d_box, out=dark[y0:y1, x0:x1])
        lab = labels[y0:y1, x0:x1]
        lab[inside & (lab == 0)] = pop.ids[i]
        rendered.append((int(pop.ids[i]), y0, y1, x0, x1, r_nm, peak, k, lob.shape[0]))

    blurred = dark
    fringe = None
    if cfg.psf_blur and cfg.psf_sigma_nm > 0:
        blurred = ndimage.gaussian_filter(dark, cfg.psf_sigma_nm / ps, mode="nearest", truncate=3.5)
    if cfg.fresnel_fringe and cfg.particles == "dark" and cfg.fresnel_amplitude > 0 and cfg.fresnel_width_nm > 0:
        sig_wide = (cfg.psf_sigma_nm if cfg.psf_blur else 0) / ps + cfg.fresnel_width_nm / ps
        wide = ndimage.gaussian_filter(dark, sig_wide, mode="nearest", truncate=3.0)
        fringe = cfg.fresnel_amplitude * (wide - blurred)

    mask = labels > 0
    rows = []
    for pid, y0, y1, x0, x1, r_nm, peak, k, nl in rendered:
        region = labels[y0:y1, x0:x1] == pid
        area = int(region.sum())
        if area == 0:
            continue
        ry, rx = np.nonzero(region)
        touches = bool((y0 == 0 and ry.min() == 0) or (y1 == h and ry.max() == y1 - y0 - 1)
                       or (x0 == 0 and rx.min() == 0) or (x1 == w and rx.max() == x1 - x0 - 1))
        d_px = math.sqrt(4 * area / math.pi)
        rows.append((pid, y0 + ry.mean(), x0 + rx.mean(), area, d_px, d_px * ps, r_nm, peak,
                     float(blurred[y0:y1, x0:x1][region].mean()), k, nl, touches))
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table = table.astype({"id": "int64", "area_px": "int64", "n_lobes": "int64", "touches_border": "bool"})
    table = table.sort_values("id", ignore_index=True)

    support = _support_field(st, (h, w), -offset_nm / ps)
    s_map = None
    if fx.support is not None:
        s_map = _sfx.support_thickness(fx.support, (h, w), -offset_nm / ps, cfg.film_thickness_nm,
                                       cfg.aggregate_thickness_nm, cfg.aggregate_texture)
    if haadf:
        signal = _haadf_signal(cfg, thick, s_map, support)
    elif cfg.particles == "dark":
        signal = 1 - blurred
        if fringes is not None:
            signal = signal * (1 + fringes)
        if support is not None:
            if s_map is not None and cfg.film_thickness_nm > 0:
                # amorphous texture scales with the square root of the support's thickness
                support = support * np.sqrt(s_map / np.float32(cfg.film_thickness_nm))
            signal = signal * (1 + support)
        if s_map is not None:
            # mass-thickness relative to the nominal film: vacuum brighter, aggregates darker
            signal = signal * np.exp((np.float32(cfg.film_thickness_nm) - s_map)
                                     / np.float32(cfg.support_mean_free_path_nm))
        if fringe is not None:
            signal = signal + fringe
        if defocus:
            signal = signal * _defocus_factor(cfg, thick, s_map)
    else:
        # HAADF-like: signal grows with scattering; no phase contrast, so weaker texture, no fringe
        bg = np.float32(cfg.bright_background)
        signal = bg * (1 + 0.5 * support) if support is not None else np.full((h, w), bg, np.float32)
        signal = signal + blurred
    expected = signal.astype(np.float32, copy=False)
    if st.illumination is not None:
        expected = expected * st.illumination
    if st.fixed_pattern is not None:
        expected = expected * st.fixed_pattern
    dose = cfg.dose_e_per_px if cfg.dose_e_per_px > 0 else 1.0
    expected = np.clip(expected * np.float32(dose), 0, None)
    if cfg.detector_blur_px > 0 or cfg.detector_tail_fraction > 0:
        expected = _sfx.detector_blur(expected, cfg.detector_blur_px, cfg.detector_tail_fraction,
                                      cfg.detector_tail_px)
    if cfg.shot_noise and cfg.noise_mode == "linear":
        image = _sfx.linear_readout(noise_rng, expected, cfg.linear_spread_px, cfg.read_noise_e)
    elif cfg.shot_noise:
        image = noise_rng.poisson(expected).astype(np.float32)
    else:
        image = expected.astype(np.float32, copy=False)
    if cfg.jpeg_quality > 0:
        image = _sfx.jpeg_roundtrip(image, cfg.jpeg_quality)
    if cfg.output_dtype == "uint16":
        image = np.clip(np.rint(image), 0, 65535).astype(np.uint16)
    return Frame(image=image, mask=mask, labels=labels, particles=table, pixel_size_nm=ps,
                 time_s=float(time_s), frame_index=int(index),
                 metadata={"config_key": cfg.cache_key(), "offset_nm": tuple(float(v) for v in offset_nm)})
