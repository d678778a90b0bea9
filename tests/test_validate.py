"""The composed config is checked before any run exists: one line naming the key, or a warning."""

from __future__ import annotations

import logging

import pytest

from temseg_ablation.app.build import ConfigError
from temseg_ablation.app.validate import validate_config

from .conftest import TINY, compose_cfg


def test_the_default_and_tiny_configs_pass(tmp_path):
    validate_config(compose_cfg([], tmp_path))
    validate_config(compose_cfg(TINY, tmp_path))


@pytest.mark.parametrize("override, message", [
    ("optim.lr=abc", "optim.lr='abc': must be a number"),
    ("optim.lr=0", "optim.lr=0: must be > 0"),
    ("optim.lr=nan", "optim.lr=nan: must be finite"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1: must be >= 0"),
    ("seed=1.5", "seed=1.5: must be an integer"),
    ("data.batch_size=true", "data.batch_size=True: must be an integer"),
    ("data.num_workers=-1", "data.num_workers=-1: must be >= 0"),
    ("trainer.max_steps=0", "trainer.max_steps=0: must be >= 1 (or -1)"),
    ("data.crop_size=4096", "data.crop_size=4096: larger than the"),
    ("data.source=hdf5", "data.source='hdf5': must be 'synthetic' or 'folder'"),
])
def test_a_bad_value_is_one_line_naming_the_key(override, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        validate_config(compose_cfg([*TINY, override], tmp_path))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_training_that_would_never_end_is_refused(tmp_path):
    cfg = compose_cfg([*TINY, "trainer.max_epochs=-1", "trainer.max_steps=-1"], tmp_path)
    with pytest.raises(ConfigError, match="training would never end"):
        validate_config(cfg)


def test_a_folder_data_set_without_images_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="data.images: required"):
        validate_config(compose_cfg(["data=folder"], tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no supported image files found there"):
        validate_config(compose_cfg(["data=folder", f"data.images={empty}"], tmp_path))


def test_zero_epochs_is_allowed_but_never_silent(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="temseg_ablation"):
        validate_config(compose_cfg([*TINY, "trainer.max_epochs=0"], tmp_path))
    assert "trainer.max_epochs=0: this job trains nothing" in caplog.text
