"""``python -m temseg_ablation.report.reproduce_table1``: run the Table 1 sweep, then measure it.

The sweep goes through the same Hydra app users run (``python -m temseg_ablation -m
+table1=glob(*) seed=...``, launched by ``app.runner``), so finished jobs already in the
tracking store are skipped by their config hash and rerunning the same command continues an
interrupted table. The table (on the test split, ``table1.SPLIT``), its CSV, the effects chart
and every arm's learning curves are written to ``experiments/table1/`` and logged to the sweep's
MLflow parent run. A preview profile (``table1.PREVIEW_PROFILES``) gives the table without
verdicts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..app.config import load_config
from ..app.runner import experiment_profiles
from ..app.runner import run_sweep as launch_sweep
from ..app.sweep import collect_statuses, parent_run_id
from ..tracking import queries
from ..tracking.tags import TAG_TABLE1
from ..tracking.uri import absolute_uri
from . import table1, table1_render

#: Launch overrides some profiles want on top of ``experiment=<profile>``.
LAUNCH = {
    # the CPU profiles: two jobs at a time, one core each
    "quick": ["hydra/launcher=parallel"],
    "preview": ["hydra/launcher=parallel"],
    "table1": ["hydra/launcher=parallel"],
}
#: The validation metric whose history the learning-curve figure shows (checkpoint monitor).
CURVE_KEY = "val/f1_otsu"
#: Metric a job logs for its convergence check (0 or 1).
CONVERGED_KEY = "final/converged"


def sweep_overrides(profile: str, seeds: int, arms: Sequence[str] | None,
                    extra: Sequence[str] = ()) -> list[str]:
    """Hydra overrides of the Table 1 sweep: the arms x ``seeds`` seeds on ``profile``."""
    choice = ",".join(arms) if arms else "glob(*)"
    # seed first: Hydra varies the last sweep axis fastest, so every arm of seed 0 runs before
    # seed 1; a sweep cut short still holds complete, paired seeds
    return ["seed=" + ",".join(str(s) for s in range(seeds)), f"+table1={choice}",
            f"experiment={profile}", *LAUNCH.get(profile, []), *extra]


def run_sweep(profile: str, seeds: int, sweep_dir: Path, extra: list[str],
              arms: list[str] | None = None) -> int:
    """Run the sweep of the Table 1 arms x seeds through the app; returns its exit code."""
    return launch_sweep(sweep_overrides(profile, seeds, arms, extra), sweep_dir)


def _flag(value: float | None) -> bool:
    return value is not None and np.isfinite(value) and value >= 0.5


def collect_runs(sweep_dir: Path) -> tuple[pd.DataFrame, str, str | None]:
    """Finished (or skipped-as-finished) runs of a sweep, one row each.

    Columns: arm, seed, run_id, converged (bool: metric ``final/converged`` is 1; a run without
    it counts as not converged), ``final/test/<key>`` for every key of ``table1.METRIC_KEYS``
    (NaN where a run lacks it) and the run's other ``final/*`` metrics.
    """
    status = collect_statuses(sweep_dir)
    if not len(status):
        raise SystemExit(f"{sweep_dir}: no job status files; did the sweep start?")
    sweep_cfg = sweep_dir / "multirun.yaml"
    if not sweep_cfg.exists():
        raise SystemExit(f"{sweep_dir}: no multirun.yaml; did the sweep start?")
    uri = absolute_uri(str(load_config(sweep_cfg).logger.tracking_uri))
    client = queries.open_client(uri)
    rows = []
    for rec in status.to_dict("records"):
        if rec.get("status") not in ("finished", "skipped") or not isinstance(rec.get("run_id"), str):
            continue
        run = client.get_run(rec["run_id"])
        final = {k: float(v) for k, v in run.data.metrics.items() if k.startswith("final/")}
        row = {"arm": run.data.params.get("variant"), "seed": int(run.data.params["seed"]),
               "run_id": rec["run_id"], "converged": _flag(final.get(CONVERGED_KEY))}
        row |= {f"final/{table1.SPLIT}/{k}": final.get(f"final/{table1.SPLIT}/{k}", np.nan)
                for k in table1.METRIC_KEYS}
        rows.append({**row, **{k: v for k, v in final.items() if k not in row}})
    return pd.DataFrame(rows), uri, parent_run_id(sweep_dir)


def arm_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per arm: runs, converged runs, and mean / s.d. over seeds of the headline test metrics."""
    keys = (table1.F1_OTSU, table1.PARTICLE_DET_F1, table1.EDGE_OFFSET, table1.RAMP_WIDTH)
    cols = [c for c in (f"final/{table1.SPLIT}/{k}" for k in keys) if c in runs]
    g = runs.groupby("arm")
    out = g[cols].mean().add_suffix(" mean").join(g[cols].std().add_suffix(" sd"))
    out = out.join(g.size().rename("n"))
    if "converged" in runs:
        out = out.join(g["converged"].sum().astype(int).rename("converged"))
    return out.sort_index()


def learning_curves(client, runs: pd.DataFrame, key: str = CURVE_KEY) -> pd.DataFrame:
    """History of ``key`` for every run: long frame arm, seed, run_id, step, value."""
    hist = queries.histories(client, runs["run_id"], key)
    if not len(hist):
        return pd.DataFrame(columns=["arm", "seed", "run_id", "step", "value"])
    return runs[["run_id", "arm", "seed"]].merge(hist, on="run_id")[
        ["arm", "seed", "run_id", "step", "value"]]


def learning_curves_figure(curves: pd.DataFrame, path: str | Path, key: str = CURVE_KEY,
                           title: str = "") -> Path:
    """One panel per arm: ``key`` against the training step, one line per seed."""
    arms = sorted(curves["arm"].astype(str).unique())
    if not arms:
        raise ValueError("learning_curves_figure: no run has a history of " + key)
    cols = min(4, len(arms))
    rows = int(np.ceil(len(arms) / cols))
    fig = Figure(figsize=(3.2 * cols, 2.5 * rows + 0.6), dpi=110, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, sharey=True)).ravel()
    for ax, arm in zip(axes, arms, strict=False):
        sub = curves[curves["arm"].astype(str) == arm]
        for seed, one in sub.groupby("seed"):
            one = one.sort_values("step")
            # markers: a short run has only a few evaluations
            ax.plot(one["step"], one["value"], lw=1, marker="o", ms=2, label=f"seed {seed}")
        ax.set_title(f"{arm} ({sub['seed'].nunique()} seeds)", fontsize=9)
        ax.grid(alpha=0.3)
    if curves["seed"].nunique() <= 10:
        axes[0].legend(fontsize=6, frameon=False)
    for ax in axes[len(arms):]:
        ax.set_axis_off()
    fig.supxlabel("training step", fontsize=9)
    fig.supylabel(key, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return Path(path)


def write_table(runs: pd.DataFrame, out: Path, profile: str, seeds: int,
                note: str = "") -> tuple[pd.DataFrame, str, list[Path]]:
    """Measure Table 1 from ``runs`` (a preview ``profile`` gives no verdicts) and write
    ``table1.md``, ``table1.csv`` (best checkpoint), ``table1_last_checkpoint.csv`` (newest
    checkpoint, when the runs logged it), ``runs.csv`` and ``table1_effects.png`` under ``out``.

    Returns the table, its Markdown and the files to log to the sweep run.
    """
    table = table1.measure_table(runs, split=table1.SPLIT, profile=profile)
    out.mkdir(parents=True, exist_ok=True)
    note = (note + "\n\n" if note else "") + ("Per-arm means over seeds (test split):\n\n```\n"
                                              + arm_summary(runs).round(3).to_string() + "\n```")
    md = table1_render.to_markdown(table, profile, seeds, note)
    (out / "table1.md").write_text(md)
    table.to_csv(out / "table1.csv", index=False)
    written = [out / "table1.md", out / "table1.csv"]
    if any(str(c).startswith("final/test_last/") for c in runs.columns):
        # the same table for each run's newest checkpoint (the paper scored its last epoch)
        last = table1.measure_table(runs, split="test_last", profile=profile)
        last.to_csv(out / "table1_last_checkpoint.csv", index=False)
        written.append(out / "table1_last_checkpoint.csv")
    runs.to_csv(out / "runs.csv", index=False)
    png = table1_render.effects_figure(table, out / "table1_effects.png",
                                title=f"Table 1 effects ({profile} profile, {seeds} seeds)")
    return table, md, [*written, png]


def main(argv: list[str] | None = None) -> int:
    """Run (or continue) the sweep and write the measured Table 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=os.environ.get("PROFILE", "table1"),
                        help="a conf/experiment profile: " + ", ".join(experiment_profiles()))
    # 10 seeds: the smallest two-sided sign-flip p is 2/2^10 = 0.002, which survives a Holm
    # correction over the table's ten primary measures (8 seeds: 0.0078 x 10 > 0.05 never does)
    parser.add_argument("--seeds", type=int, default=int(os.environ.get("SEEDS", 10)))
    parser.add_argument("--out", type=Path, default=Path("experiments/table1"))
    parser.add_argument("--sweep-dir", type=Path, default=None,
                        help="reuse this sweep folder (skips running the sweep with --no-run)")
    parser.add_argument("--no-run", action="store_true", help="only analyse --sweep-dir")
    parser.add_argument("--arms", default=None,
                        help="comma-separated subset of conf/table1 arms (default: all)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    args = parser.parse_args(argv)
    if args.profile not in experiment_profiles():
        parser.error(f"--profile {args.profile!r}: no conf/experiment/{args.profile}.yaml "
                     f"(profiles: {', '.join(experiment_profiles())})")
    if args.no_run and args.sweep_dir is None:
        parser.error("--no-run needs --sweep-dir")

    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    sweep_dir = (args.sweep_dir or Path("outputs/table1") / f"{args.profile}_{stamp}").resolve()
    if not args.no_run:
        arms = args.arms.split(",") if args.arms else None
        unknown = sorted(set(arms or []) - set(table1.arms()))
        if unknown:
            parser.error(f"unknown arms {unknown}; choose from {table1.arms()}")
        code = run_sweep(args.profile, args.seeds, sweep_dir, args.overrides, arms)
        if code:
            print(f"note: some sweep jobs failed (exit {code}); the table uses the finished ones")
    runs, uri, parent = collect_runs(sweep_dir)
    if runs.empty:
        print("no finished runs to measure", file=sys.stderr)
        return 2
    note = (f"Sweep `{sweep_dir.name}`; {len(runs)} finished runs "
            f"({int(runs['converged'].sum())} converged) in {uri.split('://')[0]} store; "
            f"generated {stamp} by `make reproduce-table1 PROFILE={args.profile}`.")
    _, md, files = write_table(runs, args.out, args.profile, args.seeds, note)
    client = queries.open_client(uri)
    curves = learning_curves(client, runs)
    if len(curves):
        files.append(learning_curves_figure(
            curves, args.out / "learning_curves.png",
            title=f"validation F1 (Otsu) while training ({args.profile} profile)"))
        curves.to_csv(args.out / "learning_curves.csv", index=False)
    if parent:
        for path in files:
            client.log_artifact(parent, str(path), "table1")
        client.set_tag(parent, TAG_TABLE1, "yes")
    print(md)
    print(f"wrote {', '.join(p.name for p in files)} to {args.out}"
          + (f"; logged to MLflow run {parent}" if parent else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
