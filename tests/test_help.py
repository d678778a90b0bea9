"""``temseg --help`` is the project's own page: groups, main settings and examples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from temseg_ablation.app import CONFIG_DIR


def test_help_lists_the_groups_and_examples(tmp_path):
    run = subprocess.run([sys.executable, "-m", "temseg_ablation", "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    text = run.stdout
    assert text.startswith("== temseg: train and compare")
    assert "Powered by Hydra" not in text  # not the stock banner
    # every group of conf/ with its options, read from the config folder itself
    for group in ("norm", "blur", "extra_conv", "activation", "kernel", "depth", "model"):
        options = sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in text
    assert "temseg -m 'model=glob(*)'" in text and "--hydra-help" in text
    assert 'eval "$(temseg -sc install=bash)"' in text
    assert list(tmp_path.iterdir()) == []  # --help writes nothing
