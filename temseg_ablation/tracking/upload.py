"""Deliver outboxes left by jobs whose tracking server was unreachable.

``python -m temseg_ablation.tracking.upload FOLDER [FOLDER ...] [--tracking-uri URI]``

FOLDER is one outbox (it holds ``records.jsonl``) or any folder above some, e.g.
``outputs/checkpoints``; every outbox found below it is delivered in order, and removed once
everything in it has arrived.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .mlflow_store import DEFAULT_RETRY_TIMEOUT_S, Tracker, one_line
from .outbox import META, RECORDS, Outbox, OutboxError, read_records

log = logging.getLogger(__name__)


def find_outboxes(folder: str | Path) -> list[Path]:
    """Outbox folders at or below ``folder`` (a folder holding ``records.jsonl``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OutboxError(f"{folder}: no such folder")
    if (folder / RECORDS).exists():
        return [folder]
    return sorted(p.parent for p in folder.rglob(RECORDS))


def upload_outbox(folder: str | Path, tracking_uri: str | None = None,
                  timeout_s: float = DEFAULT_RETRY_TIMEOUT_S) -> tuple[int, int]:
    """Deliver one outbox; returns ``(delivered, still_waiting)``.

    ``tracking_uri`` overrides the URI the job used (e.g. the server moved).
    """
    folder = Path(folder)
    meta, _, _ = read_records(folder)
    uri = tracking_uri or meta.get("tracking_uri")
    run_id, experiment = meta.get("run_id"), meta.get("experiment_name")
    if not (isinstance(uri, str) and isinstance(run_id, str) and isinstance(experiment, str)):
        raise OutboxError(f"{folder / META}: needs tracking_uri, experiment_name and run_id")
    tracker = Tracker(uri, experiment, retry_timeout_s=timeout_s)
    box = Outbox(folder, tracker, run_id, retry_timeout_s=timeout_s)
    box.close(timeout_s)
    return box.delivered, box.pending


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; exit status 1 when something could not be delivered."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--tracking-uri", default=None,
                        help="send to this store instead of the one each outbox names")
    parser.add_argument("--timeout", type=float, default=DEFAULT_RETRY_TIMEOUT_S,
                        help="seconds to keep retrying an unreachable store (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    failed = 0
    for top in args.folders:
        try:
            boxes = find_outboxes(top)
        except OutboxError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        if not boxes:
            print(f"{top}: no outbox found (nothing waits)")
        for box in boxes:
            try:
                sent, left = upload_outbox(box, args.tracking_uri, args.timeout)
            except OutboxError as err:  # already names the file
                print(f"error: {err}", file=sys.stderr)
                failed += 1
                continue
            except Exception as err:  # noqa: BLE001 - report every outbox, then fail
                print(f"error: {box}: {one_line(err)}", file=sys.stderr)
                failed += 1
                continue
            print(f"{box}: {sent} records delivered" + (f", {left} still waiting" if left else ""))
            failed += bool(left)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
