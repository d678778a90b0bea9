"""Public entry points: frames, sequences, per-experiment configs and true coarsening curves."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pandas as pd

from .config import Frame, SyntheticConfig
from .dynamics import _advance
from .population import _box_difference, _concat, _sample_population
from .render import _make_effect_statics, _make_statics, _render

# ----------------------------------------------------------------------------------------------
# public API


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"synthetic: seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def iter_sequence(config: SyntheticConfig, n_frames: int, seed: int, frame_interval_s: float = 1 / 400,
                  ripening_rate: float = 1.0) -> Iterator[Frame]:
    """Yield n_frames consecutive frames of one experiment (shared, drifting, coarsening particles).

    ripening_rate multiplies the kinetics (ripening and rounding off) like a time-acceleration
    factor, so short test sequences can show visible coarsening; drift and jitter are not sped up.
    """
    seed = _check_seed(seed)
    if not isinstance(config, SyntheticConfig):
        raise TypeError(f"synthetic: config must be a SyntheticConfig, got {type(config).__name__}")
    if n_frames < 1:
        raise ValueError(f"synthetic: n_frames must be >= 1, got {n_frames!r}")
    if not frame_interval_s > 0:
        raise ValueError(f"synthetic: frame_interval_s must be > 0, got {frame_interval_s!r}")
    if not ripening_rate >= 0:
        raise ValueError(f"synthetic: ripening_rate must be >= 0, got {ripening_rate!r}")
    cfg = config
    rng_pop = np.random.default_rng([seed, 1])
    rng_static = np.random.default_rng([seed, 2])
    rng_dyn = np.random.default_rng([seed, 3])
    ang = rng_dyn.uniform(0, 2 * np.pi)
    velocity = cfg.drift_nm_per_s * np.array([math.sin(ang), math.cos(ang)])
    duration = (n_frames - 1) * frame_interval_s
    travel = velocity * duration
    fh, fw = cfg.height * cfg.pixel_size_nm, cfg.width * cfg.pixel_size_nm
    margin = (cfg.median_diameter_nm * max(cfg.large_factor) * 0.9 + cfg.min_gap_nm
              + 4 * cfg.jitter_nm + 1.0)
    # the particles around frame 0 come from their own stream and are placed first, so frame 0
    # depends only on (config, seed); the strip the drift uncovers later is filled around them
    base = (-margin, fh + margin, -margin, fw + margin)
    pop = _sample_population(cfg, rng_pop, [base])
    full = (min(0.0, travel[0]) - margin, max(fh, fh + travel[0]) + margin,
            min(0.0, travel[1]) - margin, max(fw, fw + travel[1]) + margin)
    extension = _box_difference(full, base)
    if extension:
        more = _sample_population(cfg, np.random.default_rng([seed, 5]), extension,
                                  first_id=int(pop.ids.max(initial=0)) + 1, avoid=pop)
        pop = _concat(pop, more)
    statics = _make_statics(cfg, rng_static)
    effects = _make_effect_statics(cfg, seed, pop)
    for i in range(n_frames):
        if i > 0:
            _advance(pop, cfg, frame_interval_s, ripening_rate, rng_dyn)
        t = i * frame_interval_s
        yield _render(pop, statics, cfg, velocity * t, np.random.default_rng([seed, 4, i]), t, i, effects)


def generate_sequence(config: SyntheticConfig, n_frames: int, seed: int, frame_interval_s: float = 1 / 400,
                      ripening_rate: float = 1.0) -> list[Frame]:
    """List of n_frames consecutive frames of one experiment; see iter_sequence."""
    return list(iter_sequence(config, n_frames, seed, frame_interval_s, ripening_rate))


def generate_frame(config: SyntheticConfig, seed: int) -> Frame:
    """One frame for (config, seed); identical to the first frame of a one-frame sequence."""
    return next(iter_sequence(config, 1, seed))


def true_coarsening_curves(frames: list[Frame], exclude_border: bool = True) -> pd.DataFrame:
    """True coarsening curves from the truth tables, one row per frame.

    count and number_density_per_um2 include every particle with a pixel in the frame;
    mean_diameter_nm averages equivalent diameters of the particles not touching the border
    (all of them when exclude_border is False). Columns: frame, time_s, count,
    number_density_per_um2, mean_diameter_nm.
    """
    rows = []
    for fr in frames:
        tab = fr.particles
        h, w = fr.labels.shape
        area_um2 = h * w * fr.pixel_size_nm**2 / 1e6
        sizes = tab.loc[~tab["touches_border"], "diameter_nm"] if exclude_border else tab["diameter_nm"]
        rows.append({
            "frame": fr.frame_index,
            "time_s": fr.time_s,
            "count": len(tab),
            "number_density_per_um2": len(tab) / area_um2,
            "mean_diameter_nm": float(sizes.mean()) if len(sizes) else float("nan"),
        })
    return pd.DataFrame(rows, columns=["frame", "time_s", "count", "number_density_per_um2", "mean_diameter_nm"])


def experiment_configs(n_experiments: int, seed: int, base: SyntheticConfig | None = None) -> list[SyntheticConfig]:
    """n_experiments configs that differ modestly in magnification, dose and particle density."""
    seed = _check_seed(seed)
    if n_experiments < 0:
        raise ValueError(f"synthetic: n_experiments must be >= 0, got {n_experiments!r}")
    base = base or SyntheticConfig()
    rng = np.random.default_rng([seed, 99])
    # the optional effects vary from their own stream, so the draws above stay as they were
    rng_fx = np.random.default_rng([seed, 98])
    out = []
    for _ in range(n_experiments):
        cfg = base.replace(
            pixel_size_nm=round(float(base.pixel_size_nm * rng.uniform(0.16 / 0.18, 0.20 / 0.18)), 4),
            dose_e_per_px=round(float(base.dose_e_per_px * math.exp(rng.uniform(-0.5, 0.5))), 3),
            coverage=round(float(min(0.45, base.coverage * rng.uniform(0.75, 1.25))), 4),
            median_diameter_nm=round(float(base.median_diameter_nm * rng.uniform(0.9, 1.1)), 3),
            illumination_amplitude=round(float(base.illumination_amplitude * rng.uniform(0.5, 1.5)), 4),
        )
        out.append(_vary_effects(cfg, rng_fx) if base.vary_effects else cfg)
    return out


def _vary_effects(cfg: SyntheticConfig, rng: np.random.Generator) -> SyntheticConfig:
    """Per-experiment strengths of the optional effects around cfg's values (vary_effects=True).

    Defocus takes either sign at 30-100 % of |defocus_nm|; support fractions, blur and fringe
    amplitude scale by 0.5-1.5 (vacuum 0-2); the readout is counting or linear with equal odds;
    JPEG quality moves by up to 20 within 10..95. Effects that are off stay off.
    """
    agg = min(0.6, cfg.aggregate_fraction * rng.uniform(0.5, 1.5))
    vac = min(0.9 - agg, cfg.vacuum_fraction * rng.uniform(0.0, 2.0))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    quality = cfg.jpeg_quality
    jq_shift = rng.uniform(-20, 20)
    if quality > 0:
        quality = int(np.clip(round(quality + jq_shift), 10, 95))
    return cfg.replace(
        aggregate_fraction=round(float(agg), 4),
        vacuum_fraction=round(float(max(vac, 0.0)), 4),
        detector_blur_px=round(float(cfg.detector_blur_px * rng.uniform(0.5, 1.5)), 3),
        defocus_nm=round(float(sign * abs(cfg.defocus_nm) * rng.uniform(0.3, 1.0)), 1),
        lattice_amplitude=round(float(cfg.lattice_amplitude * rng.uniform(0.5, 1.5)), 4),
        noise_mode="linear" if rng.random() < 0.5 else "counting",
        jpeg_quality=quality,
    )


def heldout_config(base: SyntheticConfig | None = None) -> SyntheticConfig:
    """A clearly different acquisition for generalisation tests: 0.25 nm/px at half the dose."""
    base = base or SyntheticConfig()
    return base.replace(pixel_size_nm=round(base.pixel_size_nm * 0.25 / 0.18, 4),
                        dose_e_per_px=base.dose_e_per_px / 2)
