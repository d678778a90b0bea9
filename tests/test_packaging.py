"""A non-editable install (``pip install .``) finds its config and runs a job, outside the repo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import app_environ

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_installed_package_ships_its_config_and_trains(tmp_path):
    target = tmp_path / "site"
    # --no-deps/--no-build-isolation: only this package is copied; the venv's setuptools builds it
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT)],
        capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    assert (target / "temseg_ablation" / "conf" / "config.yaml").is_file()

    work = tmp_path / "elsewhere"  # no conf/ here and the repository is not on the path
    work.mkdir()
    env = app_environ(tmp_path / "out", PYTHONPATH=str(target))
    probe = subprocess.run(
        [sys.executable, "-c", "import json, temseg_ablation.app as a; "
         "print(json.dumps([a.__file__, a.CONFIG_DIR]))"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    module_file, config_dir = json.loads(probe.stdout)
    assert module_file.startswith(str(target)) and config_dir.startswith(str(target))

    from .conftest import TINY

    run = subprocess.run(
        [sys.executable, "-m", "temseg_ablation", *TINY, "model=norm", "eval.figures=false"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert list((tmp_path / "out").rglob("result.json")), "the installed app wrote no result"


def test_every_console_script_points_at_a_callable_main():
    import importlib
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"temseg", "temseg-segment", "temseg-server", "temseg-upload", "temseg-findings"} <= set(scripts)
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), name


def test_optional_extras_stay_out_of_the_core_install():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    # segmenting frames must not pull the PostgreSQL driver, the SLURM launcher or numba
    optional = (("psycopg2", "server"), ("hydra-submitit-launcher", "slurm"), ("numba", "fast"),
                ("laptrack", "tracking"), ("roifile", "imagej"),
                ("onnxruntime", "export"))
    for package, extra in optional:
        assert package not in core
        assert any(d.startswith(package) for d in extras[extra])
    every = sorted({extra for _, extra in optional})
    (all_extra,) = extras["all"]
    assert sorted(all_extra.removeprefix("temseg-ablation[").rstrip("]").split(",")) == every
    assert "temseg-ablation[all]" in extras["dev"]  # the tests exercise every extra


def test_a_launcher_from_a_missing_extra_is_one_line():
    from temseg_ablation.app.main import missing_launcher

    message = missing_launcher(["-m", "hydra/launcher=slurm", "seed=0,1"], have=lambda m: False)
    assert message == ("hydra/launcher=slurm needs an optional extra: "
                       "pip install 'temseg-ablation[slurm]'")
    assert missing_launcher(["hydra/launcher=slurm"]) is None  # installed here ([dev])
    assert missing_launcher(["hydra/launcher=parallel"], have=lambda m: False) is None
    assert missing_launcher(["model=norm"], have=lambda m: False) is None
