"""The ``findings`` command line: one subcommand per finding, each writing ``<name>.md`` (+ CSV,
PNG) under ``--out`` and printing the Markdown."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ...app.runner import experiment_profiles
from ...tracking.uri import absolute_uri
from ..table1 import EQUIVALENCE_MARGIN
from .context import Context, default_tracking_uri
from .generalisation import cmd_generalisation
from .interpretability import cmd_interpretability
from .resolution import cmd_resolution
from .thresholds import cmd_thresholds

SUBCOMMANDS = ("thresholds", "generalisation", "interpretability", "resolution")
#: Subcommands that train models through the app (and so take a ``--profile``).
TRAINING = ("interpretability", "resolution")


def build_parser() -> argparse.ArgumentParser:
    """The ``findings`` command line (one subcommand per finding)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, default=Path("experiments/findings"),
                        help="report folder (default: experiments/findings)")
    common.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: sqlite:///<$TEMSEG_ROOT or cwd>/mlruns/mlflow.db)")
    common.add_argument("--experiment-name", default="temseg-ablation")
    swept = argparse.ArgumentParser(add_help=False)
    swept.add_argument("--sweep", default="latest",
                       help="'latest' (newest sweep in the store), a sweep folder or a sweep's "
                            "parent run id")
    swept.add_argument("--profile", default=None, help=argparse.SUPPRESS)  # accepted, unused
    trains = argparse.ArgumentParser(add_help=False)
    trains.add_argument("--profile", default=os.environ.get("PROFILE", "quick"),
                        help="a conf/experiment profile: " + ", ".join(experiment_profiles()))
    trains.add_argument("--jobs", type=int, default=1,
                        help="app jobs at a time (each gets cpu_count / jobs threads)")
    trains.add_argument("--jobs-dir", type=Path, default=None,
                        help="run folders of the training jobs (default: <root>/outputs/findings)")
    trains.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")

    parser = argparse.ArgumentParser(prog="python -m temseg_ablation.report.findings",
                                     description="The paper's findings beyond Table 1, one "
                                                 "command (and report) each.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("thresholds", parents=[common, swept],
                       help="P/R/F1 versus threshold, Otsu, 0.4 vs 0.7")
    p.add_argument("--low", type=float, default=0.4)
    p.add_argument("--high", type=float, default=0.7)
    p.add_argument("--margin", type=float, default=EQUIVALENCE_MARGIN,
                   help="precision differences within +-margin count as 'the same'")
    p = sub.add_parser("generalisation", parents=[common, swept],
                       help="validation versus held-out experiment")
    p.add_argument("--metric", default="f1_otsu")
    p = sub.add_parser("interpretability", parents=[common, trains],
                       help="learned kernels and particle line profiles")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frame-seed", type=int, default=20_200)
    p.add_argument("--frame-size", type=int, default=256)
    p.add_argument("--shallow-override", action="append", default=[], metavar="OVERRIDE",
                   help="Hydra override for the one-filter and shallow-wide jobs only "
                        "(repeatable), e.g. optim.lr=1e-2")
    p = sub.add_parser("resolution", parents=[common, trains],
                       help="downsampled frames versus native crops, at the native pixel size")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--factor", type=float, default=2.0,
                   help="downsampling factor of whole frames (the paper's is about 3.6)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand, write its report and print the Markdown."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in TRAINING and args.profile not in experiment_profiles():
        parser.error(f"--profile {args.profile!r}: no conf/experiment/{args.profile}.yaml "
                     f"(profiles: {', '.join(experiment_profiles())})")
    uri = absolute_uri(args.tracking_uri) if args.tracking_uri else default_tracking_uri()
    ctx = Context(out=args.out, tracking_uri=uri, experiment=args.experiment_name)
    t0, c0 = time.perf_counter(), os.times()
    try:
        if args.command == "thresholds":
            md = cmd_thresholds(ctx, args.sweep, args.low, args.high, args.margin)
        elif args.command == "generalisation":
            md = cmd_generalisation(ctx, args.sweep, args.metric)
        else:
            root = Path(os.environ.get("TEMSEG_ROOT") or ".").resolve()
            jobs_dir = (args.jobs_dir or root / "outputs" / "findings").resolve()
            common = dict(jobs_dir=jobs_dir, profile=args.profile, overrides=args.overrides,
                          parallel=args.jobs)
            if args.command == "interpretability":
                md = cmd_interpretability(ctx, **common, frame_seed=args.frame_seed,
                                          frame_size=args.frame_size, seed=args.seed,
                                          shallow_overrides=args.shallow_override)
            else:
                md = cmd_resolution(ctx, **common, seeds=args.seeds, factor=args.factor)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"findings {args.command}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    c1 = os.times()
    cpu = (c1.user + c1.system + c1.children_user + c1.children_system
           - c0.user - c0.system - c0.children_user - c0.children_system)
    timing = (f"\n_Generated by `python -m temseg_ablation.report.findings {args.command}` in "
              f"{wall:.0f} s wall and {cpu:.0f} s CPU after Python start-up (this process and its "
              "training jobs)._\n")
    path = ctx.out / f"{args.command}.md"
    path.write_text(path.read_text() + timing)
    print(md + timing)
    print(f"wrote {path} (+ .csv, .png) in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
