"""Config -> objects: the hash follows the built network, Trainer arguments pass through or
are refused, and the Trainer really receives what the config says."""

from __future__ import annotations

import pytest
from omegaconf import open_dict

from temseg_ablation.app.build import (
    ConfigError,
    build_callbacks,
    build_net,
    build_trainer,
    config_hash,
    trainer_kwargs,
)
from temseg_ablation.models import count_parameters

from .conftest import TINY, compose_cfg


def test_hash_follows_the_network_that_is_built(tmp_path):
    plain = compose_cfg(["arch=one_filter"], tmp_path)
    ignored = compose_cfg(["arch=one_filter", "norm=batch"], tmp_path)
    # one_filter has no norm layers: the two configs build the same network, so one job
    assert repr(build_net(plain)) == repr(build_net(ignored))
    assert config_hash(plain) == config_hash(ignored)
    base = compose_cfg(["model=norm"], tmp_path)
    deeper = compose_cfg(["model=norm", "depth=5"], tmp_path)
    assert count_parameters(build_net(deeper)) != count_parameters(build_net(base))
    assert config_hash(deeper) != config_hash(base)
    # a data or optimiser change is still a different job
    assert config_hash(compose_cfg(["model=norm", "optim.lr=0.001"], tmp_path)) != config_hash(base)


def test_trainer_arguments_pass_through_and_reach_the_trainer(tmp_path):
    cfg = compose_cfg([*TINY, "+trainer.gradient_clip_val=0.5",
                       "+trainer.accumulate_grad_batches=2"], tmp_path)
    with open_dict(cfg):
        cfg.trainer.accelerator = "cpu"
    kwargs = trainer_kwargs(cfg)
    assert kwargs["gradient_clip_val"] == 0.5 and kwargs["accumulate_grad_batches"] == 2
    assert "num_threads" not in kwargs and "early_stopping" not in kwargs
    _, callbacks = build_callbacks(cfg, tmp_path / "ckpt")
    trainer = build_trainer(cfg, logger=False, callbacks=callbacks, job_dir=tmp_path)
    assert trainer.gradient_clip_val == 0.5 and trainer.accumulate_grad_batches == 2


def test_unknown_trainer_argument_is_refused_with_a_hint(tmp_path):
    cfg = compose_cfg([*TINY, "+trainer.gradient_clip_vall=0.5"], tmp_path)
    with pytest.raises(ConfigError, match=r"trainer.gradient_clip_vall: .*did you mean "
                                          r"trainer.gradient_clip_val\?"):
        trainer_kwargs(cfg)
    cfg = compose_cfg([*TINY, "+trainer.callbacks=[]"], tmp_path)
    with pytest.raises(ConfigError, match="trainer.callbacks: set by the job itself"):
        trainer_kwargs(cfg)


def test_unknown_model_argument_is_refused(tmp_path):
    cfg = compose_cfg(["+net.kernal_size=7"], tmp_path)
    with pytest.raises(TypeError, match="kernal_size"):
        build_net(cfg)
