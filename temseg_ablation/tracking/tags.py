"""Every MLflow tag key the project writes or queries, declared once."""

from __future__ import annotations

TAG_HASH = "temseg.config_hash"
TAG_KIND = "temseg.kind"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_SWEEP = "temseg.sweep_dir"
TAG_CHECKPOINT = "temseg.checkpoint_dir"
TAG_PROCESS = "temseg.process"
TAG_VARIANT = "temseg.variant"
TAG_PROFILE = "temseg.profile"
TAG_ARCH = "temseg.arch"
TAG_JOB_DIR = "temseg.job_dir"
TAG_RESUMED_FROM = "temseg.resumed_from"
TAG_OVERRIDES = "temseg.overrides"
TAG_TABLE1 = "temseg.table1"  # on a sweep parent run: its sweep is a Table 1 sweep
TAG_CONVERGENCE = "temseg.convergence"  # the plateau rule's judgement of the run, in words
#: Parent-run tag naming the finished runs a sweep reused instead of retraining: they stay
#: children of the sweep that trained them, so the UI would not otherwise show them there.
TAG_REUSED = "temseg.reused_runs"
TAG_GIT_COMMIT = "git_commit"
TAG_HOST = "host"
TAG_ERROR = "error"
