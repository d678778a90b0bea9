"""``temseg-register RUN_ID NAME [--alias champion]``: a trained run into the model registry."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..models.io import CheckpointError
from .loading import ModelSpecError, register_model
from .pipeline import default_tracking_uri


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(
        prog="temseg-register",
        description="Register a training run's best checkpoint as a new version of a model: a "
                    "pyfunc model is logged into the run (model/) and becomes the version, so "
                    "mlflow.pyfunc.load_model('models:/NAME@ALIAS') segments frames and "
                    "temseg-segment --model models:/NAME@ALIAS uses it.")
    p.add_argument("run_id", help="the MLflow run id of a finished training job")
    p.add_argument("name", help="registered model name (created if new)")
    p.add_argument("--alias", help="alias to point at the new version, e.g. champion")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Register; 0 on success, 2 with one ``error:`` line when the run or store is unusable."""
    args = build_parser().parse_args(argv)
    uri = args.tracking_uri or default_tracking_uri()
    try:
        version = register_model(args.run_id, args.name, uri, alias=args.alias)
    except (ModelSpecError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ref = f"models:/{args.name}@{args.alias}" if args.alias else f"models:/{args.name}/{version}"
    print(f"registered {args.name} version {version} from run {args.run_id}"
          + (f" (alias {args.alias})" if args.alias else "")
          + f"; use it with temseg-segment --model {ref} or mlflow.pyfunc.load_model('{ref}')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
