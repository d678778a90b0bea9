"""The application layer: the only package that reads Hydra config.

``main`` (the Hydra app), ``config`` (where config lives, composing and loading it), ``build``
(config -> objects), ``job`` (skip / resume / train one job), ``preflight``, ``ddp``,
``finalize`` (end-of-job logging), ``sweep`` (parent run, statuses, summary) and ``runner``
(launching app jobs as subprocesses).
"""

from .config import CONFIG_DIR, compose_config, quote_numeric_groups

__all__ = ["CONFIG_DIR", "compose_config", "quote_numeric_groups"]
