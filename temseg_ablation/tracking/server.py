"""Deprecated location of the team tracking server: ``python -m temseg_ablation.ops.server``.

Kept so that ``python -m temseg_ablation.tracking.server ...`` from older notes still works; it
says where the command moved and runs it. (Allowed upward import: a deprecation alias only.)
"""

from __future__ import annotations

import sys
import warnings


def main(argv: list[str] | None = None) -> int:
    """Warn, then run ``temseg_ablation.ops.server``."""
    from ..ops import server  # deprecation alias: the one sanctioned upward import

    message = ("temseg_ablation.tracking.server moved to temseg_ablation.ops.server "
               "(console script temseg-server); this alias will be removed")
    warnings.warn(message, DeprecationWarning, stacklevel=2)
    print(f"note: {message}", file=sys.stderr)
    return server.main(argv)


if __name__ == "__main__":
    sys.exit(main())
