"""Figure of the real-image benchmark: the worst frames with human boxes and predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["worst_figure"]


def worst_figure(df: pd.DataFrame, dets: dict[str, dict[str, Any]], data: Path, path: Path,
                 method: str = "classical", n: int = 4) -> None:
    """Save the ``n`` frames with the lowest ``method`` F1: human boxes green, predicted mask outline and boxes red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .realbench import load_frame

    sub = df[df["method"] == method].sort_values("f1").head(n)
    fig, axes = plt.subplots(1, max(len(sub), 1), figsize=(5 * max(len(sub), 1), 5.4), squeeze=False)
    for ax, (_, row) in zip(axes[0], sub.iterrows(), strict=False):
        image, true = load_frame(data, row["image"])
        det = dets[row["image"]][method]
        ax.imshow(image, cmap="gray")
        if det.mask is not None and det.mask.any():
            ax.contour(det.mask, levels=[0.5], colors="red", linewidths=0.4)
        for x0, y0, x1, y1 in true:
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="lime", lw=0.5))
        for x0, y0, x1, y1 in det.boxes:
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="red",
                                   lw=0.5, ls="--"))
        ax.set_title(f"{row['image']}: F1 {row['f1']:.2f}, est {row['est_diameter_px']:.0f} px "
                     f"vs {row['ref_diameter_px']:.0f} px", fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"{method}: worst {len(sub)} frames (green: human boxes, red: predicted)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
