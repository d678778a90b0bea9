"""``python -m temseg_ablation.report.findings SUBCOMMAND ...``."""

import sys

from .cli import main

sys.exit(main())
