"""``python -m temseg_ablation.report.findings``: the paper's findings beyond Table 1, one command each.

Subcommands (module each); each writes ``<name>.md`` (+ ``.csv``, ``.png``) under ``--out`` and
prints the Markdown:

* ``thresholds`` (:mod:`.thresholds`): precision, recall and F1 versus softmax threshold per
  variant of a sweep, the Otsu threshold's position, and the paper's choice of 0.4 over 0.7
  (Supplementary Fig. 5, Fig. 7a);
* ``generalisation`` (:mod:`.generalisation`): every variant on the held-out experiment (other
  magnification and dose) beside its validation scores, and the gap;
* ``interpretability`` (:mod:`.interpretability`, with :mod:`.kernels` and :mod:`.profiles`):
  the learned kernels of the one-filter (9 x 9, 7 x 7) and shallow-wide CNNs (Fig. 6,
  Supplementary Figs. 7 and 8) and line profiles across particles (Fig. 5);
* ``resolution`` (:mod:`.resolution`): one model trained on downsampled whole frames versus
  native-pixel-size crops, both scored at the native pixel size (Figs. 1 and 2).

Training goes through the Hydra app in subprocesses (``app.runner``), as single runs rather than
a sweep so that "the latest sweep" of the store stays the user's; configurations that already
finished are not trained again, so a second call only redoes the analysis.
"""

from ...app.runner import AppJob, JobOutcome, app_command
from .cli import SUBCOMMANDS, build_parser, main
from .context import Context, default_tracking_uri, sweep_parent_id, sweep_runs
from .generalisation import (
    GEN_NAMES,
    cmd_generalisation,
    generalisation_markdown,
    generalisation_table,
)
from .interpretability import INTERPRETABILITY_JOBS, cmd_interpretability
from .kernels import (
    DIHEDRAL,
    best_dihedral_correlation,
    centre_surround,
    initial_kernels,
    kernel_correlation,
    kernel_stats,
    kernels_figure,
)
from .markdown import finished_runs, fmt_pm, md_table, mean_sd
from .profiles import line_profiles, pick_particles, profile_summary, profiles_figure
from .resolution import (
    NATIVE_NAMES,
    cmd_resolution,
    native_scores,
    native_validation_frames,
    resolution_markdown,
    resolution_summary,
)
from .thresholds import (
    CURVE_VALUES,
    OUT_NORM_KEYS,
    POOLED_ALL,
    POOLED_BN,
    cmd_thresholds,
    curve_stats,
    output_norm_table,
    point_column,
    threshold_claim,
    threshold_table,
    thresholds_figure,
    thresholds_markdown,
)

__all__ = [
    "CURVE_VALUES", "DIHEDRAL", "GEN_NAMES", "INTERPRETABILITY_JOBS", "NATIVE_NAMES",
    "OUT_NORM_KEYS", "POOLED_ALL", "POOLED_BN", "SUBCOMMANDS", "AppJob", "Context", "JobOutcome", "app_command",
    "best_dihedral_correlation", "build_parser", "centre_surround", "cmd_generalisation",
    "cmd_interpretability", "cmd_resolution", "cmd_thresholds", "curve_stats",
    "default_tracking_uri", "finished_runs", "fmt_pm", "generalisation_markdown",
    "generalisation_table", "initial_kernels", "kernel_correlation", "kernel_stats",
    "kernels_figure", "line_profiles", "main", "md_table", "mean_sd", "native_scores",
    "output_norm_table",
    "native_validation_frames", "pick_particles", "point_column", "profile_summary",
    "profiles_figure", "resolution_markdown", "resolution_summary", "sweep_parent_id",
    "sweep_runs", "threshold_claim", "threshold_table", "thresholds_figure",
    "thresholds_markdown",
]
