"""Entry point of one DDP rank: ``torch.distributed.run ... -m temseg_ablation.training.worker CFG``.

Ranks train from the job's saved, fully resolved config, never from the sweep command line.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from omegaconf import OmegaConf

from .job import train_and_evaluate


def main(argv: list[str] | None = None) -> None:
    """Parse the job arguments and train this rank."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", type=Path)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--ckpt-dir", type=Path, required=True)
    parser.add_argument("--job-dir", type=Path, required=True)
    parser.add_argument("--resume", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][rank][%(levelname)s] %(message)s")
    cfg = OmegaConf.load(args.config)
    train_and_evaluate(cfg, run_id=args.run_id, ckpt_dir=args.ckpt_dir, resume=args.resume,
                       job_dir=args.job_dir)


if __name__ == "__main__":
    main()
