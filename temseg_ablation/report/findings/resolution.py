"""``findings resolution``: one model trained on downsampled whole frames versus native-pixel-size
crops, both scored at the native pixel size (the paper's Figs. 1 and 2)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...app.config import compose_config
from ...app.runner import AppJob, quote, run_jobs
from ..table1 import paired_interval
from .context import Context
from .markdown import NAN, fmt_pm, md_table, mean_sd, save_figure

#: Scores of the resolution comparison, all measured on the native-pixel-size validation frames.
NATIVE_NAMES = ("f1_otsu", "precision_otsu", "recall_otsu", "edge_uncertainty",
                "particle_det_f1", "particle_recall_0to2p5nm")


def native_scores(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                  pixel_sizes_nm: Sequence[float], band_px: int = 3, min_particle_px: int = 10,
                  iou_threshold: float = 0.5) -> dict[str, float]:
    """Scores of probability maps against truth on one pixel grid, as the training evaluation
    computes them: F1 / precision / recall at each image's Otsu threshold (mean over images),
    edge uncertainty (pooled band pixels), particle detection F1 and 0-2.5 nm recall."""
    from ...metrics.particle import ParticleMetrics
    from ...metrics.pixel import (
        confusion_by_threshold,
        otsu_threshold,
        prf,
    )
    from ...metrics.uncertainty import edge_uncertainty_counts

    if not len(probs) == len(labels) == len(pixel_sizes_nm) or not len(probs):
        raise ValueError(f"native_scores: need as many probability maps ({len(probs)}) as label "
                         f"images ({len(labels)}) and pixel sizes ({len(pixel_sizes_nm)}), >= 1")
    f1, prec, rec = [], [], []
    unc = band = 0
    part = ParticleMetrics(iou_threshold=iou_threshold, min_size_px=min_particle_px)
    for p, lab, px in zip(probs, labels, pixel_sizes_nm, strict=True):
        p = np.asarray(p, dtype=np.float32)
        lab = np.asarray(lab)
        if p.shape != lab.shape:
            raise ValueError(f"native_scores: probability {p.shape} and labels {lab.shape} differ")
        truth = lab > 0
        t = otsu_threshold(p)
        counts = confusion_by_threshold(p, truth, [t])
        s = prf(counts["tp"], counts["fp"], counts["fn"])
        f1.append(float(s["f1"][0]))
        prec.append(float(s["precision"][0]))
        rec.append(float(s["recall"][0]))
        u, b = edge_uncertainty_counts(p, truth, band_px)
        unc, band = unc + u, band + b
        part.update(p >= np.float32(t), lab, float(px))
    pm = part.compute()
    return {"f1_otsu": float(np.mean(f1)), "precision_otsu": float(np.mean(prec)),
            "recall_otsu": float(np.mean(rec)),
            "edge_uncertainty": unc / band if band else NAN,
            "particle_det_f1": float(pm["det_f1"]),
            "particle_recall_0to2p5nm": float(pm.get("recall_0to2p5nm", NAN)),
            "n_images": float(len(probs))}


def resolution_summary(per_run: pd.DataFrame, names: Sequence[str] = NATIVE_NAMES,
                       base: str = "crop", treated: str = "downsample") -> pd.DataFrame:
    """Per mode mean ± s.d. over seeds of ``native/<name>`` (and ``own/<name>`` where present),
    plus a ``treated - base`` row of seed-paired differences with its 95 % t-interval.

    ``per_run``: one row per run with ``mode``, ``seed`` and the score columns. Returns rows
    (``row`` = base, treated, difference) x columns ``<col> mean`` / ``sd`` / ``n`` (and
    ``<col> ci_low`` / ``ci_high`` on the difference row).
    """
    for col in ("mode", "seed"):
        if col not in per_run.columns:
            raise ValueError(f"resolution_summary: per-run frame has no column {col!r}")
    cols = [c for n in names for c in (f"native/{n}", f"own/{n}") if c in per_run.columns]
    if not cols:
        raise ValueError(f"resolution_summary: per-run frame has none of native/{list(names)}")
    out = []
    for mode in (base, treated):
        sub = per_run[per_run["mode"] == mode]
        row: dict[str, Any] = {"row": mode, "n": len(sub)}
        for c in cols:
            row[f"{c} mean"], row[f"{c} sd"], _ = mean_sd(sub[c])
        out.append(row)
    a = per_run[per_run["mode"] == base].drop_duplicates("seed").set_index("seed")
    b = per_run[per_run["mode"] == treated].drop_duplicates("seed").set_index("seed")
    seeds = sorted(set(a.index) & set(b.index))
    row = {"row": f"{treated} - {base}", "n": len(seeds)}
    for c in cols:
        diff = (b.loc[seeds, c].to_numpy(float) - a.loc[seeds, c].to_numpy(float)) if seeds \
            else np.array([])
        mean, lo, hi = paired_interval(diff)
        row[f"{c} mean"], row[f"{c} sd"] = mean, mean_sd(diff)[1]
        row[f"{c} ci_low"], row[f"{c} ci_high"] = lo, hi
    out.append(row)
    return pd.DataFrame(out)


def resolution_markdown(summary: pd.DataFrame, per_run: pd.DataFrame, *, factor: float,
                        frame_px: int, downsample_px: int, note: str = "") -> str:
    """The ``resolution`` report: both modes at the native pixel size, the paired difference,
    and each model's own validation scores at the pixel size it was trained on."""
    native = [c[:-len(" mean")] for c in summary.columns
              if c.startswith("native/") and c.endswith(" mean")]
    own = [c[:-len(" mean")] for c in summary.columns
           if c.startswith("own/") and c.endswith(" mean")]

    def block(cols: list[str]) -> pd.DataFrame:
        t = pd.DataFrame({"": summary["row"], "n": summary["n"]})
        for c in cols:
            diff = summary["row"].str.contains(" - ")
            t[c.split("/", 1)[1]] = [
                fmt_pm(m, s, sign=bool(d)) + (f" [{lo:+.3f}, {hi:+.3f}]"
                                              if d and np.isfinite(lo) else "")
                for m, s, d, lo, hi in zip(summary[f"{c} mean"], summary[f"{c} sd"], diff,
                                           summary.get(f"{c} ci_low", pd.Series([NAN] * len(summary))),
                                           summary.get(f"{c} ci_high", pd.Series([NAN] * len(summary))),
                                           strict=True)]
        return t

    lines = [
        "# Resolution: downsampled whole frames versus native-pixel-size crops",
        "",
        f"The same model (`model=norm`) trained on whole frames downsampled {frame_px} -> "
        f"{downsample_px} px (factor {factor:g}; the paper's 1792 x 1920 -> 512 is about 3.6) "
        "and on crops at the native pixel size (`data.resolution=crop`). Both are run on the "
        "native-resolution validation frames with training-matched inference "
        "(`segment.infer.segment_image`: the downsample model sees the frame shrunk by the "
        "training factor and its probability is mapped back to the native grid) and scored "
        "against the native truth. Mean ± s.d. over seeds; the difference row pairs the two "
        "modes by seed [95 % t-interval].",
        "",
        "## At the native pixel size",
        "",
        md_table(block(native)),
    ]
    if own:
        lines += ["", "## Each model's own validation (`final/val/*`, at its training pixel size)",
                  "", md_table(block(own))]
    show = ["mode", "seed", "run_id", "job", *[c for c in per_run.columns if c.startswith("native/")]]
    lines += ["", "## Per run", "", md_table(per_run[[c for c in show if c in per_run.columns]])]
    lines += ["", "Figure: `resolution.png` (scores per seed at the native pixel size, and a "
              "validation frame with both models' probabilities)."]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def native_validation_frames(data: Mapping[str, Any]) -> tuple[list[np.ndarray], list[np.ndarray],
                                                                 list[float]]:
    """Validation frames of a synthetic-data run at the native pixel size, from its data config.

    ``data``: the run's resolved ``data`` config (plain mapping, see ``Context.job_config``).
    Rebuilds (or reopens, it is cached by its parameters) the source store the run was trained
    from, before any downsampling or blur, and takes the validation split exactly as the
    training data module does. Returns the images, the instance labels and the frames' pixel
    sizes (nm).
    """
    from ...data.datamodule import split_frames
    from ...data.sources import synthetic_store
    from ...tracking.uri import absolute

    if data.get("source") != "synthetic":
        raise ValueError(f"native_validation_frames: only synthetic-data runs are supported "
                         f"(this run used data.source={data.get('source')!r})")
    store = synthetic_store(absolute(str(data["cache_dir"])),
                            n_experiments=int(data["n_experiments"]),
                            frames_per_experiment=int(data["frames_per_experiment"]),
                            height=int(data["frame_height"]), width=int(data["frame_width"]),
                            pixel_size_nm=float(data["pixel_size_nm"]), seed=int(data["seed"]),
                            labels=str(data.get("labels", "truth")),
                            pseudo=dict(data.get("pseudo") or {}),
                            dose_scale=float(data.get("dose_scale", 1.0)), progress=False)
    splits = split_frames(store.meta, str(data.get("split", "experiment")), seed=int(data["seed"]),
                          val_fraction=float(data.get("val_fraction", 0.3)),
                          n_val_experiments=int(data.get("n_val_experiments", 1)),
                          n_test_experiments=int(data.get("n_test_experiments", 0)))
    images, labels, sizes = [], [], []
    for i in splits.val:
        img, lab, px = store.frame(i)
        images.append(img)
        labels.append(np.asarray(lab))
        sizes.append(px)
    return images, labels, sizes


def cmd_resolution(ctx: Context, jobs_dir: Path, profile: str = "quick",
                   overrides: Sequence[str] = (), parallel: int = 1, seeds: int = 2,
                   factor: float = 2.0) -> str:
    """Train ``norm`` on downsampled frames and on native crops, score both at the native size."""
    from ...models.io import load_checkpoint
    from ...segment.infer import model_pixel_size_nm, segment_image

    if factor <= 1:
        raise ValueError(f"--factor must be > 1 (downsampling), got {factor}")
    base = ["model=norm", f"experiment={profile}", f"logger.experiment_name={quote(ctx.experiment)}"]
    cfg = compose_config([*base, *overrides])
    h, w = int(cfg.data.frame_height), int(cfg.data.frame_width)
    size = max(16, int(round(min(h, w) / factor)))
    jobs = []
    for s in range(seeds):
        for mode, extra in (("crop", ("data.resolution=crop",)),
                            ("downsample", ("data.resolution=downsample",
                                            f"data.downsample_size={size}"))):
            jobs.append(AppJob(f"{mode}_seed{s}", (*base, *extra, f"seed={s}", *overrides),
                               jobs_dir / "resolution" / f"{mode}_seed{s}"))
    outcomes = run_jobs(jobs, ctx.tracking_uri, parallel)
    rows, example = [], {}
    for job, res in zip(jobs, outcomes, strict=True):
        mode, seed = res.name.rsplit("_seed", 1)
        metrics = ctx.metrics(res.run_id)
        with tempfile.TemporaryDirectory(prefix="findings_ckpt_") as tmp:  # downloads, if any
            model = load_checkpoint(ctx.checkpoint(res.run_id, Path(tmp)))
        data = ctx.job_config(res.run_id, job.overrides)["data"]
        images, labels, _sizes = native_validation_frames(data)
        # the frames as training saw them: at the model's recorded native pixel size, so the
        # crop model runs unscaled and the downsample model at exactly its training factor
        native_px = float(model.preprocess.get("pixel_size_nm") or 0) or None
        probs = [segment_image(model, img, pixel_size_nm=native_px).prob for img in images]
        scores = native_scores(probs, labels, _sizes)
        row = {"mode": mode, "seed": int(seed), "run_id": res.run_id, "job": res.status,
               "model_px_nm": model_pixel_size_nm(model.preprocess),
               **{f"native/{k}": v for k, v in scores.items() if k != "n_images"},
               "n_val_frames": int(scores["n_images"])}
        for n in NATIVE_NAMES:
            if f"final/val/{n}" in metrics:
                row[f"own/{n}"] = metrics[f"final/val/{n}"]
        rows.append(row)
        if int(seed) == 0:
            example[mode] = (images[0], labels[0], probs[0])
    per_run = pd.DataFrame(rows).sort_values(["mode", "seed"]).reset_index(drop=True)
    summary = resolution_summary(per_run)
    ctx.out.mkdir(parents=True, exist_ok=True)
    per_run.to_csv(ctx.out / "resolution_runs.csv", index=False)
    summary.to_csv(ctx.out / "resolution.csv", index=False)
    resolution_figure(per_run, example, ctx.out / "resolution.png", h, size)
    md = resolution_markdown(summary, per_run, factor=min(h, w) / size, frame_px=min(h, w),
                             downsample_px=size,
                             note=f"Profile `{profile}`, {seeds} seeds"
                                  + (f", extra overrides `{' '.join(overrides)}`" if overrides else "")
                                  + f"; store `{ctx.tracking_uri}`.")
    (ctx.out / "resolution.md").write_text(md)
    return md


def resolution_figure(per_run: pd.DataFrame, example: Mapping[str, tuple], path: Path,
                      frame_px: int, ds_px: int) -> Figure:
    """Scores per seed of both modes at the native pixel size, and a validation frame with both
    models' probabilities (``example``: mode -> (image, labels, probability), each (H, W))."""
    fig = Figure(figsize=(13, 6.6), dpi=110, layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.15])
    axes = top.subplots(1, 3)
    modes = ["crop", "downsample"]
    for ax, col, label in zip(axes, ("native/f1_otsu", "native/edge_uncertainty",
                                     "native/particle_det_f1"),
                              ("pixel F1 at Otsu", "edge uncertainty (lower is sharper)",
                               "particle detection F1"), strict=True):
        for i, mode in enumerate(modes):
            v = per_run.loc[per_run["mode"] == mode, col].to_numpy(float)
            if len(v):
                ax.bar(i, np.nanmean(v), color=("tab:blue", "tab:orange")[i], alpha=0.6)
                ax.plot(np.full(len(v), i) + np.linspace(-0.1, 0.1, len(v)), v, "ko", ms=3)
        ax.set_xticks([0, 1], [f"crop (native {frame_px} px)", f"downsample ({ds_px} px)"],
                      fontsize=8)
        ax.set_title(label + ", native pixel size", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    if example:
        img, lab, _ = next(iter(example.values()))
        # a central window at most 128 px wide, so that edges stay visible at print size
        win = tuple(slice(max(0, (n - 128) // 2), max(0, (n - 128) // 2) + min(n, 128))
                    for n in img.shape)
        truth = (lab[win] > 0).astype(float)
        bx = np.atleast_1d(bottom.subplots(1, 1 + len(example)))
        bx[0].imshow(img[win], cmap="gray")
        bx[0].contour(truth, levels=[0.5], colors="cyan", linewidths=0.5)
        bx[0].set_title("native validation frame (seed 0, centre), truth", fontsize=9)
        for ax, mode in zip(bx[1:], [m for m in modes if m in example], strict=True):
            ax.imshow(example[mode][2][win], cmap="magma", vmin=0, vmax=1)
            ax.contour(truth, levels=[0.5], colors="cyan", linewidths=0.5)
            ax.set_title(f"{mode} model: particle probability", fontsize=9)
        for ax in bx:
            ax.set_axis_off()
    return save_figure(fig, path)
