"""Data-parallel training of one job: the launcher, and the entry point of each rank.

``python -m torch.distributed.run ... -m temseg_ablation.app.ddp JOB_CONFIG ...`` runs one rank.
Ranks train from the job's saved, fully resolved config, never from the sweep command line, so
they cannot re-run a sweep; the environment they inherit is stripped of stale DDP variables.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from .config import load_config

log = logging.getLogger(__name__)

_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
             "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID", "NODE_RANK")


def launch_ranks(job_dir: Path, run_id: str, ckpt_dir: Path, resume: str | None) -> dict:
    """Train one job over ``trainer.devices`` ranks started by ``torch.distributed.run``;
    returns the final metrics rank 0 wrote to ``result.json``."""
    cfg = load_config(job_dir / "job_config.yaml")
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={int(cfg.trainer.devices)}",
           "-m", "temseg_ablation.app.ddp", str(job_dir / "job_config.yaml"),
           "--run-id", run_id, "--ckpt-dir", str(ckpt_dir), "--job-dir", str(job_dir)]
    if resume:
        cmd += ["--resume", resume]
    result_file = job_dir / "result.json"
    result_file.unlink(missing_ok=True)
    log.info("launching %d DDP ranks: %s", int(cfg.trainer.devices), " ".join(cmd))
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"DDP ranks exited with status {proc.returncode} (see {job_dir})")
    return json.loads(result_file.read_text())


def main(argv: list[str] | None = None) -> None:
    """Entry point of one rank: parse the job arguments and train."""
    from .job import train_and_evaluate  # the job module launches ranks through this one

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", type=Path)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--ckpt-dir", type=Path, required=True)
    parser.add_argument("--job-dir", type=Path, required=True)
    parser.add_argument("--resume", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][rank][%(levelname)s] %(message)s")
    cfg = load_config(args.config)
    train_and_evaluate(cfg, run_id=args.run_id, ckpt_dir=args.ckpt_dir, resume=args.resume,
                       job_dir=args.job_dir)


if __name__ == "__main__":
    main()
