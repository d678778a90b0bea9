"""README figure: a real micrograph and the segment command's instance labels over it.

Runs the segment pipeline (classical model, as ``notebooks/segment_your_frames.ipynb`` does) on
the JEOL HAADF DM4 in ``../shared/realdata`` and draws the frame beside its labels, read back
from ``labels/*.tif`` with their calibration::

    python experiments/labels_figure.py --out docs/img/labels_overlay.png
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tifffile  # noqa: E402
from skimage.color import label2rgb  # noqa: E402

from temseg_ablation.data.readers import read_frames  # noqa: E402
from temseg_ablation.segment.pipeline import SegmentOptions, run_segmentation  # noqa: E402

DEFAULT_FRAME = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "JEOL HAADF Image.dm4"


def _scale_bar(ax: plt.Axes, width_px: int, px_nm: float | None) -> None:
    """A white bar of a round length (nm when calibrated) in the lower left corner."""
    if not px_nm:
        return
    target = 0.2 * width_px * px_nm
    nm = max(n for n in (1, 2, 5, 10, 20, 50, 100, 200, 500) if n <= max(target, 1))
    length = nm / px_nm
    y = 0.94
    ax.plot([0.04 * width_px, 0.04 * width_px + length], [y, y], color="w", lw=4,
            transform=ax.get_xaxis_transform())
    ax.text(0.04 * width_px + length / 2, y - 0.03, f"{nm} nm", color="w", ha="center",
            va="bottom", transform=ax.get_xaxis_transform(), fontsize=10)


def main(argv: list[str] | None = None) -> int:
    """Segment ``--frame`` and write the two-panel figure to ``--out``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frame", type=Path, default=DEFAULT_FRAME)
    p.add_argument("--particles", choices=("bright", "dark"), default="bright")
    p.add_argument("--split-min-distance-px", type=float, default=None)
    p.add_argument("--out", type=Path, default=Path("docs/img/labels_overlay.png"))
    a = p.parse_args(argv)
    if not a.frame.is_file():
        p.error(f"{a.frame}: no such file (the real frames live in ../shared/realdata)")
    with tempfile.TemporaryDirectory(prefix="temseg_fig_") as tmp:
        out = Path(tmp) / "seg"
        # the DM4's particles are ~10 px across: the paper's sigma 2 / opening 5 would erase them
        options = SegmentOptions(model="classical", out=out, particles=a.particles,
                                 split_touching=True, min_size_px=5, classical_sigma_px=1.0,
                                 classical_opening_px=1,
                                 split_min_distance_px=a.split_min_distance_px, progress=False, overwrite=True)
        summary = run_segmentation([str(a.frame)], options, log=lambda *_: None)
        label_file = sorted((out / "labels").glob("*.tif"))[0]
        labels = tifffile.imread(label_file)
        particles = pd.read_csv(out / "particles.csv")
    stack = read_frames(str(a.frame), particles=a.particles)
    image = stack.images[0].astype(float)
    shown = (image - image.min()) / max(float(np.ptp(image)), 1e-12)
    inside = particles[~particles["touches_border"].astype(bool)]
    unit = summary["diameter_unit"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6), constrained_layout=True)
    axes[0].imshow(shown, cmap="gray")
    axes[0].set_title(f"{a.frame.name}\n{image.shape[1]} x {image.shape[0]} px, "
                      f"{stack.pixel_size_nm:.3g} nm/px" if stack.pixel_size_nm else a.frame.name,
                      fontsize=10)
    axes[1].imshow(label2rgb(labels, image=shown, alpha=0.4, bg_label=0))
    axes[1].set_title(f"labels/{label_file.name}\n{int(labels.max())} particles, median "
                      f"{np.median(inside[f'equivalent_diameter_{unit}']):.1f} {unit} "
                      "(not touching the border)", fontsize=10)
    for ax in axes:
        ax.axis("off")
        _scale_bar(ax, image.shape[1], stack.pixel_size_nm)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(f"{a.out}: {int(labels.max())} particles, {summary['seconds_total']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
