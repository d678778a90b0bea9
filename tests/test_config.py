"""Hydra composition: the fifteen paper variants, group overrides, the entry point."""

from __future__ import annotations

import subprocess
import sys

import pytest

from temseg_ablation.app import quote_numeric_groups
from temseg_ablation.app.build import build_net, config_hash
from temseg_ablation.models import count_parameters

from .conftest import ROOT, compose_cfg

MODEL_FILES = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))

# The paper's fifteen: three blur settings x five (norm, extra conv, learning rate) models.
EXPECTED = {
    "twoconv": ("none", True, 1e-4),
    "twoconv_norm": ("batch", True, 1e-4),
    "twoconv_norm_lr1e-3": ("batch", True, 1e-3),
    "norm": ("batch", False, 1e-4),
    "norm_lr1e-3": ("batch", False, 1e-3),
}
PARAMS = {("none", True): 221_146, ("batch", True): 222_046, ("batch", False): 86_590}


def _split(name: str) -> tuple[str, float]:
    blur = 0.0
    for tag, sigma in (("_blur1", 1.0), ("_blur2", 2.0)):
        if tag in name:
            name, blur = name.replace(tag, ""), sigma
    return name, blur


def test_exactly_fifteen_variants():
    assert len(MODEL_FILES) == 15
    assert {_split(n)[0] for n in MODEL_FILES} == set(EXPECTED)
    assert sorted(_split(n)[1] for n in MODEL_FILES).count(2.0) == 5


@pytest.mark.parametrize("name", MODEL_FILES)
def test_each_variant_composes_and_builds(name):
    cfg = compose_cfg([f"model={name}"])
    base, blur = _split(name)
    norm, extra, lr = EXPECTED[base]
    assert cfg.variant == name
    assert cfg.net.norm == norm and cfg.net.extra_conv is extra
    assert cfg.optim.lr == pytest.approx(lr)
    assert cfg.data.blur_sigma == blur
    assert cfg.net.activation == "leaky_relu" and cfg.net.kernel_size == 3 and cfg.net.depth == 4
    assert count_parameters(build_net(cfg)) == PARAMS[(norm, extra)]


def test_plain_group_overrides_reach_the_model():
    cfg = compose_cfg(["model=norm", "kernel=7", "blur=sigma2", "activation=relu", "depth=3"])
    assert cfg.net.kernel_size == 7
    assert cfg.data.blur_sigma == 2.0
    assert cfg.net.activation == "relu"
    assert list(cfg.net.encoder_channels) == [8, 16, 32]
    assert cfg.net.norm == "batch"  # still the chosen model's own setting


def test_paper_512_model_from_config():
    cfg = compose_cfg(["depth=paper512", "activation=relu", "norm=none"])
    assert count_parameters(build_net(cfg)) == 16_002


def test_shallow_archs_from_config():
    wide = compose_cfg(["arch=shallow_wide"])
    assert wide.net.kernel_size == 9 and count_parameters(build_net(wide)) == 2_690
    one7 = compose_cfg(["arch=one_filter", "kernel=7"])
    assert count_parameters(build_net(one7)) == 7 * 7 + 1


def test_quote_numeric_groups():
    assert quote_numeric_groups(["kernel=7", "depth=3,4", "model=norm", "data.crop_size=64"]) == [
        'kernel="7"', 'depth="3","4"', "model=norm", "data.crop_size=64"]


def test_config_hash_ignores_paths_and_tracks_choices(tmp_path):
    a = compose_cfg(["model=norm"], tmp_path / "a")
    b = compose_cfg(["model=norm"], tmp_path / "b")
    c = compose_cfg(["model=norm", "seed=1"], tmp_path / "a")
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(c)


def test_cli_help_and_cfg():
    run = subprocess.run([sys.executable, "-m", "temseg_ablation", "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0
    for group in ("norm:", "blur:", "extra_conv:", "activation:", "kernel:", "depth:", "arch:",
                  "model:", "trainer:"):
        assert group in run.stdout
    run = subprocess.run([sys.executable, "-m", "temseg_ablation", "model=norm", "kernel=7",
                          "--cfg", "job"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "kernel_size: 7" in run.stdout


def test_mlflow_tracking_uri_from_the_environment_unless_overridden(monkeypatch, tmp_path):
    from .conftest import compose_cfg

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert compose_cfg([], tmp_path).logger.tracking_uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team-server:5000")
    assert compose_cfg([], tmp_path).logger.tracking_uri == "http://team-server:5000"
    cfg = compose_cfg(["logger.tracking_uri=http://other:5000"], tmp_path)
    assert cfg.logger.tracking_uri == "http://other:5000"
