"""Preview figure of the synthetic bright-field ETEM data with the true particle outlines.

Usage: ``python -m temseg_ablation.preview --out PATH.png [--n 4] [--size 512] [--seed 0]``.
Each row is one simulated experiment (its own magnification, dose and density): frames from
early and late in a coarsening sequence, a crop at native pixel size, and an intensity profile
through one particle that shows how the soft edge relates to the exact geometric mask. Below, a
grid shows the default frame and one frame per optional effect (``EFFECT_PANELS``).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from temseg_ablation.data.synthetic import (  # noqa: E402
    Frame,
    SyntheticConfig,
    experiment_configs,
    generate_frame,
    generate_sequence,
)

_OUTLINE = "#ffb000"


def _display_range(image: np.ndarray) -> tuple[float, float]:
    """Robust grey-level window (0.5 and 99.5 percentiles) of an image."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def _scale_bar(ax: plt.Axes, shape: tuple[int, int], pixel_size_nm: float, length_nm: float) -> None:
    """Draw a white scale bar of length_nm in the lower left corner of an image axis."""
    h, w = shape
    bar = length_nm / pixel_size_nm
    x0, y0, thick = 0.05 * w, 0.93 * h, max(0.012 * h, 1.0)
    ax.add_patch(Rectangle((x0, y0 - thick), bar, thick, color="white", lw=0))
    ax.text(x0 + bar / 2, y0 - 1.8 * thick, f"{length_nm:g} nm", color="white", ha="center",
            va="bottom", fontsize=7, fontweight="bold")


def _pick_particle(frame: Frame, crop: int) -> tuple[int, int, int]:
    """A clearly visible, typical particle whose crop fits the frame: (centre row, crop y0, x0)."""
    h, w = frame.labels.shape
    tab = frame.particles
    half = crop / 2
    fits = ((tab["y_px"] >= half) & (tab["y_px"] <= h - half)
            & (tab["x_px"] >= half) & (tab["x_px"] <= w - half) & ~tab["touches_border"])
    tab = tab[fits] if fits.any() else tab
    if tab.empty:
        return h // 2, max(0, h // 2 - crop // 2), max(0, w // 2 - crop // 2)
    med = tab["diameter_px"].median()
    typical = tab[(tab["diameter_px"] >= med) & (tab["diameter_px"] <= 1.6 * med)]
    tab = typical if not typical.empty else tab
    # upper-quartile contrast: plainly visible, but not one of the saturated Bragg-dark ones
    target = tab["mean_contrast"].quantile(0.75)
    row = tab.loc[(tab["mean_contrast"] - target).abs().idxmin()]
    cy, cx = int(round(row["y_px"])), int(round(row["x_px"]))
    y0 = int(np.clip(cy - crop // 2, 0, max(h - crop, 0)))
    x0 = int(np.clip(cx - crop // 2, 0, max(w - crop, 0)))
    return cy, y0, x0


# one panel per optional effect, at strengths that make it plain to see; (title, config changes)
EFFECT_PANELS: list[tuple[str, dict[str, object]]] = [
    ("default (effects off)", {}),
    ("support: aggregates + vacuum", {"aggregate_fraction": 0.3, "vacuum_fraction": 0.25,
                                      "aggregate_scale_nm": 6.0, "aggregate_thickness_nm": 60.0}),
    ("detector blur (2 px + tail)", {"detector_blur_px": 2.0, "detector_tail_fraction": 0.15}),
    ("linear readout, correlated noise", {"noise_mode": "linear", "linear_spread_px": 1.2, "read_noise_e": 1.0}),
    ("underfocus 500 nm", {"defocus_nm": 500.0, "fresnel_fringe": False}),
    ("overfocus 500 nm", {"defocus_nm": -500.0, "fresnel_fringe": False}),
    ("lattice fringes at 0.05 nm/px", {"lattice_amplitude": 0.2, "pixel_size_nm": 0.05, "median_diameter_nm": 3.0}),
    ("moire of overlapping lattices", {"lattice_amplitude": 0.25, "moire_fraction": 1.0, "lattice_fraction": 0.8}),
    ("HAADF Z-contrast (+ support)", {"imaging_mode": "haadf", "aggregate_fraction": 0.3, "vacuum_fraction": 0.25,
                                      "aggregate_scale_nm": 6.0, "aggregate_thickness_nm": 60.0}),
    ("JPEG quality 15", {"jpeg_quality": 15}),
]


def _effects_grid(fig: plt.Figure, size: int, seed: int) -> None:
    """Fill fig with a 2 x 5 grid: the default frame, then one frame per optional effect."""
    axes = fig.subplots(2, 5, gridspec_kw={"wspace": 0.05, "hspace": 0.2})
    base = SyntheticConfig(height=size, width=size)
    for ax, (title, changes) in zip(axes.ravel(), EFFECT_PANELS, strict=True):
        fr = generate_frame(base.replace(**changes), seed + 7)
        lo, hi = _display_range(fr.image)
        ax.imshow(fr.image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        if not changes:
            ax.contour(fr.mask, [0.5], colors=_OUTLINE, linewidths=0.4, alpha=0.8)
        _scale_bar(ax, fr.image.shape, fr.pixel_size_nm, 5 if fr.pixel_size_nm > 0.1 else 2)
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Optional effects (SyntheticConfig fields, data.synthetic.* overrides), same seed; "
                 "truth outlined on the default", fontsize=8)


def make_preview(out: Path, n: int = 4, size: int = 512, seed: int = 0, dpi: int = 130) -> dict[str, float]:
    """Write the preview PNG to out and return summary numbers over the frames shown."""
    if n < 2:
        raise ValueError(f"preview: --n must be >= 2 (frames from two experiments), got {n}")
    if size < 32:
        raise ValueError(f"preview: --size must be >= 32 px, got {size}")
    per_exp = (n + 1) // 2
    configs = experiment_configs(2, seed, SyntheticConfig(height=size, width=size))
    crop = min(size, 112)
    ncol = per_exp + 2
    fig = plt.figure(figsize=(max(2.6 * ncol, 2.2 * 5), 5.6 + 4.9))
    top, bottom = fig.subfigures(2, 1, height_ratios=[5.6, 4.9], hspace=0.02)
    axes = top.subplots(2, ncol, gridspec_kw={"wspace": 0.06, "hspace": 0.28})
    fractions, counts, diameters = [], [], []
    for row, cfg in enumerate(configs):
        # a strongly accelerated clock, so that early and late frames show visible coarsening
        frames = generate_sequence(cfg, per_exp, seed + 101 * row, frame_interval_s=2.0,
                                   ripening_rate=60.0)
        for col, fr in enumerate(frames):
            ax = axes[row, col]
            lo, hi = _display_range(fr.image)
            ax.imshow(fr.image, cmap="gray", vmin=lo, vmax=hi, interpolation="antialiased")
            ax.contour(fr.mask, [0.5], colors=_OUTLINE, linewidths=0.3, alpha=0.75)
            _scale_bar(ax, fr.image.shape, fr.pixel_size_nm, 10)
            ax.set_title(f"experiment {row + 1}, t = {fr.time_s:.0f} s", fontsize=7)
            if col == 0:
                ax.set_ylabel(f"{cfg.pixel_size_nm:.3f} nm/px, {cfg.dose_e_per_px:.0f} e$^-$/px",
                              fontsize=7)
            fractions.append(float(fr.mask.mean()))
            counts.append(len(fr.particles))
            diameters.extend(fr.particles.loc[~fr.particles["touches_border"], "diameter_nm"].tolist())
        first = frames[0]
        clean = generate_sequence(cfg.replace(shot_noise=False), 1, seed + 101 * row)[0]
        cy, y0, x0 = _pick_particle(first, crop)
        sl = (slice(y0, y0 + crop), slice(x0, x0 + crop))
        ax = axes[row, per_exp]
        lo, hi = _display_range(first.image)
        ax.imshow(first.image[sl], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.contour(first.mask[sl], [0.5], colors=_OUTLINE, linewidths=0.9)
        ax.axhline(cy - y0, color="#3fa9f5", lw=0.6, ls="--")
        _scale_bar(ax, first.image[sl].shape, first.pixel_size_nm, 2)
        ax.set_title(f"native pixels, {crop} x {crop} crop", fontsize=7)
        ax = axes[row, per_exp + 1]
        xs = np.arange(x0, x0 + crop)
        inside = first.mask[cy, x0:x0 + crop]
        ax.fill_between(xs, 0, 1, where=inside, transform=ax.get_xaxis_transform(), color=_OUTLINE,
                        alpha=0.25, lw=0, step="mid", label="true mask")
        ax.plot(xs, first.image[cy, x0:x0 + crop], color="0.6", lw=0.6, label="frame (shot noise)")
        ax.plot(xs, clean.image[cy, x0:x0 + crop], color="k", lw=1.0, label="noise-free")
        ax.set_title("profile along the dashed line", fontsize=7)
        ax.set_xlabel("x (px)", fontsize=7)
        ax.set_ylabel("electrons / px", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.yaxis.set_label_position("right")
        ax.yaxis.tick_right()
        if row == 0:
            ax.legend(fontsize=6, loc="best", framealpha=0.8)
    for ax in axes[:, : per_exp + 1].ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[:, per_exp:].ravel():
        ax.set_box_aspect(1)
    top.suptitle("Synthetic bright-field ETEM frames: Au particles on amorphous SiN, exact truth outlined",
                 fontsize=9, y=0.995)
    _effects_grid(bottom, min(size, 256), seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    _write_compact_png(buf.getvalue(), out)
    return {
        "particle_fraction": float(np.mean(fractions)),
        "particles_per_frame": float(np.mean(counts)),
        "median_diameter_nm": float(np.median(diameters)) if diameters else float("nan"),
    }


def _write_compact_png(data: bytes, out: Path) -> None:
    """Save PNG bytes, re-encoded with a 256-colour palette when Pillow is present (noisy frames
    otherwise compress poorly)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        out.write_bytes(data)
        return
    with Image.open(io.BytesIO(data)) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m temseg_ablation.preview", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--n", type=int, default=4, help="frames in total, split over 2 experiments")
    parser.add_argument("--size", type=int, default=512, help="frame height and width in px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dpi", type=int, default=130)
    args = parser.parse_args(argv)
    if args.out.suffix.lower() != ".png":
        parser.error(f"{args.out}: --out must end in .png")
    try:
        summary = make_preview(args.out, n=args.n, size=args.size, seed=args.seed, dpi=args.dpi)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    print(f"particle pixel fraction {summary['particle_fraction']:.3f}, "
          f"particles per frame {summary['particles_per_frame']:.1f}, "
          f"median diameter {summary['median_diameter_nm']:.2f} nm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
