"""``python -m temseg_ablation.report.reproduce_table1``: run the Table 1 sweep, then measure it.

The sweep goes through the same Hydra app users run (``python -m temseg_ablation -m
+table1=glob(*) seed=...``), so finished jobs already in the tracking store are skipped and an
interrupted table resumes. The table, its CSV and the effects chart are written to
``experiments/table1/`` and logged to the sweep's MLflow parent run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from ..build import absolute_uri
from ..sweep import collect_statuses, parent_run_id
from . import table1

PROFILES = {
    # quick: the default CPU profile; two jobs at a time, one core each
    "quick": ["experiment=quick", "hydra/launcher=parallel"],
    "paper": ["experiment=paper"],
}


def run_sweep(profile: str, seeds: int, sweep_dir: Path, extra: list[str],
              arms: list[str] | None = None) -> int:
    """Run the sweep of the Table 1 arms x seeds through the Hydra app; returns its exit code."""
    choice = ",".join(arms) if arms else "glob(*)"
    args = [sys.executable, "-m", "temseg_ablation", "-m", f"+table1={choice}",
            "seed=" + ",".join(str(s) for s in range(seeds)), *PROFILES[profile],
            f"hydra.sweep.dir={sweep_dir}", *extra]
    print("running:", " ".join(args), flush=True)
    return subprocess.run(args, check=False).returncode


def collect_runs(sweep_dir: Path) -> tuple[pd.DataFrame, str, str | None]:
    """Finished (or skipped-as-finished) runs of a sweep: arm, seed and final metrics."""
    status = collect_statuses(sweep_dir)
    if not len(status):
        raise SystemExit(f"{sweep_dir}: no job status files; did the sweep start?")
    sweep_cfg = sweep_dir / "multirun.yaml"
    if not sweep_cfg.exists():
        raise SystemExit(f"{sweep_dir}: no multirun.yaml; did the sweep start?")
    uri = absolute_uri(str(OmegaConf.load(sweep_cfg).logger.tracking_uri))
    client = MlflowClient(uri)
    rows = []
    for rec in status.to_dict("records"):
        if rec.get("status") not in ("finished", "skipped") or not isinstance(rec.get("run_id"), str):
            continue
        run = client.get_run(rec["run_id"])
        rows.append({"arm": run.data.params.get("variant"), "seed": int(run.data.params["seed"]),
                     "run_id": rec["run_id"],
                     **{k: v for k, v in run.data.metrics.items() if k.startswith("final/")}})
    return pd.DataFrame(rows), uri, parent_run_id(sweep_dir)


def arm_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and s.d. over seeds of the headline metrics for every arm."""
    cols = [c for c in ("final/val/f1_otsu", "final/val/particle_det_f1",
                        "final/val/edge_uncertainty", "final/heldout/f1_otsu") if c in runs]
    g = runs.groupby("arm")[cols]
    out = g.mean().add_suffix(" mean").join(g.std().add_suffix(" sd")).join(g.size().rename("n"))
    return out.sort_index()


def main(argv: list[str] | None = None) -> int:
    """Run (or reuse) the sweep and write the measured Table 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=os.environ.get("PROFILE", "quick"), choices=PROFILES)
    parser.add_argument("--seeds", type=int, default=int(os.environ.get("SEEDS", 5)))
    parser.add_argument("--out", type=Path, default=Path("experiments/table1"))
    parser.add_argument("--sweep-dir", type=Path, default=None,
                        help="reuse this sweep folder (skips running the sweep with --no-run)")
    parser.add_argument("--no-run", action="store_true", help="only analyse --sweep-dir")
    parser.add_argument("--arms", default=None,
                        help="comma-separated subset of conf/table1 arms (default: all)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    args = parser.parse_args(argv)

    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    sweep_dir = (args.sweep_dir or Path("outputs/table1") / f"{args.profile}_{stamp}").resolve()
    code = 0
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
    table = table1.measure_table(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    note = (f"Sweep `{sweep_dir.name}`; {len(runs)} finished runs in {uri.split('://')[0]} store; "
            f"generated {stamp} by `make reproduce-table1 PROFILE={args.profile}`.\n\n"
            "Per-arm means over seeds:\n\n```\n" + arm_summary(runs).round(3).to_string() + "\n```")
    md = table1.to_markdown(table, args.profile, args.seeds, note)
    (args.out / "table1.md").write_text(md)
    table.to_csv(args.out / "table1.csv", index=False)
    runs.to_csv(args.out / "runs.csv", index=False)
    png = table1.effects_figure(table, args.out / "table1_effects.png",
                                title=f"Table 1 effects ({args.profile} profile, {args.seeds} seeds)")
    if parent:
        client = MlflowClient(uri)
        for path in (args.out / "table1.md", args.out / "table1.csv", png):
            client.log_artifact(parent, str(path), "table1")
        client.set_tag(parent, "temseg.table1", "yes")
    print(md)
    print(f"wrote {args.out}/table1.md, table1.csv, table1_effects.png"
          + (f"; logged to MLflow run {parent}" if parent else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
