"""``findings interpretability``: train the one-filter (9 x 9, 7 x 7) and shallow-wide CNNs and
two UNets through the app, then show their learned kernels (Fig. 6, Supplementary Figs. 7 and
8) and line profiles across particles (Fig. 5)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...app.runner import AppJob, quote, run_jobs
from .context import Context
from .kernels import (
    best_dihedral_correlation,
    initial_kernels,
    kernel_correlation,
    kernel_stats,
    kernels_figure,
)
from .markdown import NAN, md_table, save_figure
from .profiles import line_profiles, pick_particles, profile_summary, profiles_figure
from .resolution import native_scores

#: The models ``interpretability`` trains: name -> app overrides.
INTERPRETABILITY_JOBS = {
    "one_filter_9x9": ("arch=one_filter",),
    "one_filter_7x7": ("arch=one_filter", "kernel=7"),
    "shallow_wide": ("arch=shallow_wide",),
    "norm": ("model=norm",),
    "twoconv_norm": ("model=twoconv_norm",),
}


def cmd_interpretability(ctx: Context, jobs_dir: Path, profile: str = "quick",
                         overrides: Sequence[str] = (), parallel: int = 1, frame_seed: int = 20_200,
                         frame_size: int = 256, seed: int = 0,
                         shallow_overrides: Sequence[str] = ()) -> str:
    """Train the shallow CNNs and two UNets, draw their kernels and particle line profiles.

    ``overrides`` go to every job, ``shallow_overrides`` only to the one-filter and
    shallow-wide CNNs (e.g. a higher learning rate)."""
    from ...data.synthetic import SyntheticConfig, generate_frame
    from ...data.transforms import normalise
    from ...models import count_parameters
    from ...models.io import load_checkpoint
    from ...segment.infer import segment_image
    from ...training.figures import kernel_images

    shallow = ("one_filter_9x9", "one_filter_7x7", "shallow_wide")
    jobs = [AppJob(name, (*ov, f"experiment={profile}", f"seed={seed}",
                          f"logger.experiment_name={quote(ctx.experiment)}", *overrides,
                          *(shallow_overrides if name in shallow else ())),
                   jobs_dir / "interpretability" / name)
            for name, ov in INTERPRETABILITY_JOBS.items()]
    done = {r.name: r for r in run_jobs(jobs, ctx.tracking_uri, parallel)}
    # the seed each run trained with, from its own config (a user override may change it)
    done_seed = {job.name: int(ctx.job_config(done[job.name].run_id, job.overrides)["seed"])
                 for job in jobs}
    with tempfile.TemporaryDirectory(prefix="findings_ckpt_") as tmp:  # downloads, if any
        models = {name: load_checkpoint(ctx.checkpoint(r.run_id, Path(tmp) / name))
                  for name, r in done.items()}
    ctx.out.mkdir(parents=True, exist_ok=True)

    k9 = models["one_filter_9x9"].net.kernels().numpy()
    k7 = models["one_filter_7x7"].net.kernels().numpy()
    kw = models["shallow_wide"].net.kernels().numpy()
    # short titles: kernel_images makes a one-kernel figure only 1.4 inches wide
    kernel_images(k9, ctx.out / "interpretability_kernel_9x9.png", title="9 x 9 kernel")
    kernel_images(k7, ctx.out / "interpretability_kernel_7x7.png", title="7 x 7 kernel")
    kernel_images(kw, ctx.out / "interpretability_shallow_wide.png",
                  title=f"shallow-wide CNN: {len(kw)} learned 9 x 9 filters and their mean")
    np.savez(ctx.out / "interpretability_kernels.npz", one_filter_9x9=k9, one_filter_7x7=k7,
             shallow_wide=kw)
    mean_w = kw.mean(0)
    # the kernels each job started from, to tell what training added from the random start
    start = {name: initial_kernels(models[name].net_config, done_seed[name])
             for name in ("one_filter_9x9", "one_filter_7x7", "shallow_wide")}
    d9, d7 = k9[0] - start["one_filter_9x9"][0], k7[0] - start["one_filter_7x7"][0]
    dw = mean_w - start["shallow_wide"].mean(0)
    kernels_figure({"one-filter 9 x 9": k9[0], "one-filter 7 x 7": k7[0],
                    f"shallow-wide: mean of {len(kw)}": mean_w,
                    "9 x 9: learned - initial": d9, "7 x 7: learned - initial": d7,
                    "mean: learned - initial": dw},
                   ctx.out / "interpretability_kernels.png", ncols=3,
                   title="learned kernels (top) and what training changed (bottom)")
    kstats = pd.DataFrame([
        {"kernel": "one-filter 9 x 9", **kernel_stats(k9[0], start["one_filter_9x9"][0])},
        {"kernel": "one-filter 7 x 7", **kernel_stats(k7[0], start["one_filter_7x7"][0])},
        {"kernel": f"shallow-wide mean of {len(kw)}",
         **kernel_stats(mean_w, start["shallow_wide"].mean(0))},
        *[{"kernel": f"shallow-wide filter {i}", **kernel_stats(kw[i], start["shallow_wide"][i])}
          for i in range(min(3, len(kw)))],
    ])
    best, how = best_dihedral_correlation(k9[0], mean_w)
    sims = pd.DataFrame([
        {"pair": "7 x 7 vs centre 7 x 7 of 9 x 9",
         "learned": kernel_correlation(k7[0], k9[0], "crop"),
         "update (learned - initial)": kernel_correlation(d7, d9, "crop")},
        {"pair": "7 x 7 vs 9 x 9 resized to 7 x 7",
         "learned": kernel_correlation(k7[0], k9[0], "resize"),
         "update (learned - initial)": kernel_correlation(d7, d9, "resize")},
        {"pair": "shallow-wide mean vs 9 x 9", "learned": kernel_correlation(mean_w, k9[0]),
         "update (learned - initial)": kernel_correlation(dw, d9)},
        {"pair": f"shallow-wide mean ({how}) vs 9 x 9, best of 8 symmetries", "learned": best,
         "update (learned - initial)": best_dihedral_correlation(d9, dw)[0]},
    ])

    # Fig. 5 and Fig. 6b on a frame none of the models trained on
    frame = generate_frame(SyntheticConfig(height=frame_size, width=frame_size), frame_seed)
    image = normalise(frame.image)
    probs = {name: segment_image(m, frame.image, pixel_size_nm=frame.pixel_size_nm).prob
             for name, m in models.items()}
    picks = pick_particles(frame.particles, frame.labels)
    if picks.empty:
        raise ValueError(f"synthetic frame seed {frame_seed} ({frame_size} px) has no particle "
                         "suited to a line profile; try another --frame-seed or a larger --frame-size")
    prof_models = ["norm", "twoconv_norm"]
    profiles = line_profiles(image, {m: probs[m] for m in prof_models}, frame.labels, picks)
    profiles.to_csv(ctx.out / "interpretability_profiles.csv", index=False)
    psum = profile_summary(profiles, prof_models)
    profiles_figure(profiles, picks, prof_models, image=image, pixel_size_nm=frame.pixel_size_nm,
                    path=ctx.out / "interpretability_profiles.png",
                    title=f"line profiles across particles (synthetic frame, seed {frame_seed})")
    seg_scores = {name: native_scores([p], [frame.labels], [frame.pixel_size_nm])
                  for name, p in probs.items()}
    segmentation_figure(image, frame.labels > 0, probs, ctx.out / "interpretability_segmentation.png")

    rows = []
    for name, r in done.items():
        metrics = ctx.metrics(r.run_id)
        rows.append({"model": name, "run": r.run_id[:12], "job": r.status,
                     "parameters": count_parameters(models[name].net),
                     "val F1 (Otsu)": metrics.get("final/val/f1_otsu", NAN),
                     "held-out F1 (Otsu)": metrics.get("final/heldout/f1_otsu", NAN),
                     "F1 (Otsu) on profile frame": seg_scores[name]["f1_otsu"],
                     "edge uncertainty on profile frame": seg_scores[name]["edge_uncertainty"]})
    summary = pd.DataFrame(rows)
    summary.to_csv(ctx.out / "interpretability.csv", index=False)
    pick_show = picks[["id", "diameter_nm", "diameter_px", "row", "x0", "x1"]].copy()
    psum = psum.merge(pick_show[["id", "diameter_nm"]], on="id")
    md = "\n".join([
        "# Interpretability: learned kernels and line profiles",
        "",
        f"Models trained through the app (`experiment={profile}`, seed {seed}"
        + (f", extra overrides `{' '.join(overrides)}`" if overrides else "")
        + (f", for the shallow CNNs also `{' '.join(shallow_overrides)}`"
           if shallow_overrides else "") + "):",
        "",
        md_table(summary),
        "",
        "## Learned kernels (Fig. 6a, Supplementary Figs. 7 and 8)",
        "",
        "`interpretability_kernel_9x9.png` and `interpretability_kernel_7x7.png`: the single filter "
        "of the one-filter CNN (its response is the particle logit, so a dark particle on a "
        "brighter support needs negative weights at the centre); "
        "`interpretability_shallow_wide.png`: the 32 first-layer filters of the shallow-wide CNN "
        "and their mean; `interpretability_kernels.png`: the two single filters and the mean on "
        "a signed colour scale (red positive, blue negative), above what training changed "
        "(learned minus the seeded initial weights, which the job's seed rebuilds exactly). "
        "Weights: `interpretability_kernels.npz`.",
        "",
        md_table(kstats),
        "",
        "A correlation with the initial weights near 1 and an update that is mostly uniform mean "
        "that training added little more than a constant to the random start (a box filter: "
        "darker means particle); the spatial pattern is then the initialisation, not a learned "
        "feature. Longer or faster training of the shallow models (`--shallow-override "
        "optim.lr=1e-2`, more epochs) lets a pattern form.",
        "",
        "Similarity (Pearson correlation of the weights; the paper: the 7 x 7 filter is similar "
        "to the 9 x 9 one, and the mean of the 32 filters resembles it with a slight rotation):",
        "",
        md_table(sims),
        "",
        "## Line profiles across particles (Fig. 5)",
        "",
        f"Synthetic frame (seed {frame_seed}, {frame_size} x {frame_size} px at "
        f"{frame.pixel_size_nm} nm/px, not a training frame), normalised like training; "
        "horizontal lines through the centres of three particles of different sizes. "
        "`interpretability_profiles.png`: intensity (solid), `norm` (dotted) and `twoconv_norm` "
        "(dashed) particle probability, true mask extent shaded; values in "
        "`interpretability_profiles.csv`. Along each line (px): true extent, predicted extent "
        "at 0.5, wrongly classified pixels, and uncertain pixels (0.1 < p < 0.9, the edge ramp):",
        "",
        md_table(psum[["id", "diameter_nm", "model", "true_px", "pred_px", "wrong_px",
                       "uncertain_px"]]),
        "",
        "`interpretability_segmentation.png` (Fig. 6b): the frame with the true (cyan) and Otsu "
        "(red) contours of each model.",
    ]) + "\n"
    (ctx.out / "interpretability.md").write_text(md)
    return md


def segmentation_figure(image: np.ndarray, truth: np.ndarray, probs: Mapping[str, np.ndarray],
                        path: Path) -> Figure:
    """The frame (H, W) with true contours, then each model's probability (H, W) with its Otsu
    contour (Fig. 6b)."""
    from ...metrics.pixel import otsu_threshold

    n = len(probs) + 1
    # modest size: Otsu contours of noisy probability maps make large PNGs
    fig = Figure(figsize=(2.8 * n, 3.0), dpi=80, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    axes[0].imshow(image, cmap="gray")
    axes[0].contour(truth.astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
    axes[0].set_title("frame, true contours", fontsize=9)
    for ax, (name, p) in zip(axes[1:], probs.items(), strict=True):
        t = otsu_threshold(p)
        ax.imshow(p, cmap="magma", vmin=0, vmax=1)
        ax.contour(truth.astype(float), levels=[0.5], colors="cyan", linewidths=0.5)
        ax.contour((p >= t).astype(float), levels=[0.5], colors="red", linewidths=0.5)
        ax.set_title(f"{name} (Otsu {t:.2f})", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    return save_figure(fig, path)
