"""Run the benchmark suite and write ``results.md`` / ``results.csv`` next to this script.

    python experiments/bench/run_all.py            # default profile (~5 min on 2 idle CPU cores)
    python experiments/bench/run_all.py --quick    # smaller sizes, fewer steps, no compile
    python experiments/bench/run_all.py --only sweep --sweep   # time the quick model=glob(*) sweep

Groups: training (framework vs bare loop), paper_loop (framework vs the paper's style of loop),
validation (a full validation pass vs a training epoch), inference (frames/s per option, each
checked against eager), pseudolabel (fast vs scikit-image), sweep (last measured wall time).
Every ratio is computed from two numbers measured side by side in the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_common import (  # noqa: E402
    BENCH_DIR,
    GROUPS,
    Row,
    machine_info,
    markdown_table,
    pick_device,
    write_results,
)


@dataclass
class Profile:
    """Sizes and step counts of one benchmark run."""

    name: str
    # (variant, crop, batch, warm-up, timed steps[, config overrides of the framework run])
    train: list[tuple]
    train_frame: int = 1024
    paper_variants: tuple[str, ...] = ("norm",)
    val_epochs: int = 3
    val_overrides: list[str] = field(default_factory=list)
    infer_shapes: list[tuple[int, int]] = field(default_factory=lambda: [(1024, 1024), (1792, 1920)])
    infer_warmup: int = 1
    infer_iters: int = 3
    compile: bool = True
    cuda_batch: int = 16
    cuda_large_batch: int = 128
    pseudo_frames: int = 2
    pseudo_shape: tuple[int, int] = (1792, 1920)


PROFILES = {
    "default": Profile(
        "default",
        # timed steps per size: enough that a rerun agrees within the stated spread (3 steps
        # at 1024 px gave +11 % in one run and +4.8 % in another)
        train=[("norm", 256, 4, 3, 24), ("norm", 512, 4, 2, 12), ("norm", 1024, 4, 1, 10),
               ("twoconv_norm", 256, 4, 3, 12), ("twoconv_norm", 512, 4, 1, 8),
               ("twoconv_norm", 1024, 4, 1, 6)],
    ),
    "quick": Profile(
        "quick",
        train=[("norm", 256, 4, 1, 4), ("norm", 512, 4, 1, 2), ("twoconv_norm", 256, 4, 1, 2)],
        train_frame=512, infer_shapes=[(1024, 1024)], infer_iters=2, compile=False,
        pseudo_frames=1,
    ),
}


def tiny_profile() -> Profile:
    """Smallest sizes that still run every code path (for the smoke test)."""
    return Profile(
        "tiny", train=[("norm", 32, 2, 1, 2), ("twoconv_norm", 32, 2, 1, 2)], train_frame=64,
        val_epochs=2,
        val_overrides=["data.n_experiments=3", "data.frames_per_experiment=3",
                       "data.frame_height=64", "data.frame_width=64", "data.crop_size=32",
                       "data.batch_size=2"],
        infer_shapes=[(32, 32), (40, 56)], infer_iters=1, compile=False, cuda_batch=2,
        cuda_large_batch=4, pseudo_frames=1, pseudo_shape=(64, 64),
    )


def run_suite(profile: Profile, groups: Sequence[str], root: Path, device: torch.device, *,
              sweep_now: bool = False, sweep_file: Path | None = None,
              log=print) -> list[Row]:
    """Run the chosen groups under ``root`` (data caches, MLflow store) and return their rows."""
    import bench_inference
    import bench_pseudo
    import bench_sweep
    import bench_training
    import bench_validation

    rows: list[Row] = []
    timings: dict[str, float] = {}
    if "training" in groups or "paper_loop" in groups:
        t0 = time.perf_counter()
        log(f"[training] {len(profile.train)} measurements")
        specs = [bench_training.TrainSpec(*t) for t in profile.train]
        paper = profile.paper_variants if "paper_loop" in groups else ()
        got = bench_training.run(specs, root, device, frame_size=profile.train_frame,
                                 paper_variants=paper, log=log)
        rows += [r for r in got if r.group in groups]
        timings["training"] = time.perf_counter() - t0
    if "validation" in groups:
        t0 = time.perf_counter()
        log("[validation]")
        rows += bench_validation.run(root, device, epochs=profile.val_epochs,
                                     overrides=profile.val_overrides, log=log)
        timings["validation"] = time.perf_counter() - t0
    if "inference" in groups:
        t0 = time.perf_counter()
        log("[inference]")
        rows += bench_inference.run(root, device, profile.infer_shapes,
                                    warmup=profile.infer_warmup, iters=profile.infer_iters,
                                    compile=profile.compile, cuda_batch=profile.cuda_batch,
                                    cuda_large_batch=profile.cuda_large_batch, log=log)
        timings["inference"] = time.perf_counter() - t0
    if "pseudolabel" in groups:
        t0 = time.perf_counter()
        log("[pseudolabel]")
        rows += bench_pseudo.run(profile.pseudo_frames, *profile.pseudo_shape, log=log)
        timings["pseudolabel"] = time.perf_counter() - t0
    if "sweep" in groups:
        log("[sweep]" + (" measuring (takes long)" if sweep_now else " last measurement"))
        kw = {"out_file": sweep_file} if sweep_file is not None else {}
        rows += bench_sweep.run(sweep_now, log=log, **kw)
    log("group seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer steps")
    ap.add_argument("--profile", choices=["default", "quick", "tiny"], default=None,
                    help="size profile (--quick is --profile quick; tiny is for smoke tests)")
    ap.add_argument("--sweep", action="store_true",
                    help="run and time the quick model=glob(*) sweep (long) instead of reading "
                         "the last measurement")
    ap.add_argument("--only", default=",".join(GROUPS),
                    help=f"comma-separated groups to run (default all): {','.join(GROUPS)}")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--out", type=Path, default=BENCH_DIR, help="folder for results.md / .csv")
    ap.add_argument("--sweep-file", type=Path, default=None,
                    help="where the sweep measurement is kept (default: sweep.json here)")
    ap.add_argument("--root", type=Path, default=None,
                    help="work folder for data caches and the MLflow store (default: a temporary "
                         "folder, removed afterwards)")
    args = ap.parse_args(argv)

    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        ap.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    name = args.profile or ("quick" if args.quick else "default")
    profile = tiny_profile() if name == "tiny" else PROFILES[name]
    device = pick_device(args.device)
    root = args.root or Path(tempfile.mkdtemp(prefix="temseg-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    info.update(profile=profile.name, device=str(device))
    print(f"benchmark profile {profile.name} on {device}; groups {', '.join(groups)}; "
          f"work folder {root}", flush=True)
    load, cores = info.get("loadavg_1min_at_start"), info.get("cpu_count") or 1
    if load is not None and load > 0.5 * cores:
        print(f"warning: load average {load} on {cores} cores: other processes will distort "
              "the figures (see the noise notes in the table)", flush=True)
    t0 = time.perf_counter()
    try:
        rows = run_suite(profile, groups, root, device, sweep_now=args.sweep,
                         sweep_file=args.sweep_file, log=lambda s: print(s, flush=True))
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    info["suite_seconds"] = round(time.perf_counter() - t0, 1)
    info["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    write_results(rows, info, args.out, groups_run=groups,
                  title=f"temseg-ablation benchmark ({profile.name} profile)")
    print()
    print(markdown_table(rows))
    print(f"\nwritten: {args.out / 'results.md'}, {args.out / 'results.csv'} "
          f"({info['suite_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
