"""The config space: shared values, the schema of the plain nodes, the defaults list; bad
overrides fail before training with a message naming the key (every bad value through what
train.py runs: tests/unit/test_errors.py; train.py itself: tests/e2e/test_config_cli.py and
tests/e2e/test_errors.py). Every option of every group: tests/contracts."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import open_dict

from segkit.config.checks import check_command_line, check_train_config
from segkit.errors import ConfigError
from tests.conftest import CONF, TINY, compose_train


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_shared_values_are_written_once():
    cfg = compose_train("dataset.num_classes=5", "dataset.ignore_index=255")
    assert cfg.model.num_classes == cfg.dataset.num_classes
    assert cfg.loss.ignore_index == cfg.dataset.ignore_index


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigCompositionException) as e:
        compose_train("trainer.max_epoch=3")
    assert "max_epoch" in str(e.value)


def test_unknown_option_names_the_group():
    with pytest.raises(ConfigCompositionException) as e:
        compose_train("model=unett")
    assert "model/unett" in str(e.value) or "unett" in str(e.value)


def test_each_plain_node_is_its_schema():
    """``trainer``, ``launch``, ``loader`` and ``calibrate`` hold exactly the fields of their
    dataclasses in segkit.config.schema (the one place their types are written)."""
    from segkit.config import schema
    from segkit.run import loop_options

    cfg = compose_train()
    for node, dataclass in schema.PLAIN_NODES.items():
        assert set(cfg[node]) == {f.name for f in dataclasses.fields(dataclass)}, node
        built = schema.build(dataclass, cfg[node])
        for key in cfg[node]:
            assert schema.matches(getattr(built, key), schema.field_type(f"{node}.{key}")), key
    options = loop_options(cfg, show_progress=True)
    assert options.max_epochs == cfg.trainer.max_epochs
    assert options.precision == cfg.trainer.precision
    assert not loop_options(cfg, show_progress=False).progress_bar


@pytest.mark.parametrize(
    "override, message",
    [
        ("launch.devices=two", "launch.devices='two': expected an integer or 'auto'"),
        ("launch.sync_bn=yes", "launch.sync_bn='yes': expected true or false, found str"),
        ("launch.accelerator=tpu", "launch.accelerator='tpu': expected 'auto' or 'cpu' or 'cuda'"),
        ("calibrate.enabled=1", "calibrate.enabled=1: expected true or false, found int 1"),
        ("trainer.precision=fp8", "trainer.precision='fp8': expected 'auto' or 'fp32'"),
        ("trainer.max_epochs=1.5", "trainer.max_epochs=1.5: expected an integer >= 1, found float"),
        ("calibrate.max_images=0", "calibrate.max_images=0: expected an integer >= 1 or null"),
        ("eval.slide.overlap=1", "eval.slide.overlap=1: expected a number in [0, 1)"),
        ("eval.slide.window=[64]", "eval.slide.window=[64]: expected [H, W], two positive"),
    ],
)
def test_plain_node_types_come_from_the_schema(override, message):
    with pytest.raises(ConfigError) as e:
        check_train_config(compose_train(*TINY, override))
    assert message in str(e.value)


@pytest.mark.parametrize(
    "old, new",
    [
        ("trainer.devices=2", "launch.devices"),
        ("trainer.resume=auto", "resume"),
        ("trainer.calibrate=true", "calibrate.enabled"),
        ("trainer.calibrate_images=8", "calibrate.max_images"),
        ("modes=[whole]", "eval.modes"),
        ("tta.scales=[1.0]", "eval.tta.scales"),
        ("accelerator=cpu", "launch.accelerator"),
        ("dataset.augment.class_crop=0.5", "dataset.augment.train.crop.class_balanced"),
        ("dataset.augment.scale=[0.5,2]", "dataset.augment.train.resize.scale"),
    ],
)
def test_keys_renamed_in_0_2_stop_with_their_new_name(old, new):
    with pytest.raises(ConfigError, match=f"-> {re.escape(new)}\\)"):
        check_command_line("train", [old])


def test_no_test_machinery_in_user_config():
    offenders = [p for p in CONF.rglob("*.yaml") if "fail_at_step" in p.read_text()]
    assert offenders == []


def test_old_key_in_an_experiment_file_names_its_new_key(tmp_path: Path):
    from segkit.config.checks import check_renamed
    from segkit.errors import ConfigError

    cfg = compose_train()
    with open_dict(cfg):
        cfg.data = {"batch_size": 4}
    with pytest.raises(ConfigError, match="loader.batch_size"):
        check_renamed(cfg)


def test_class_weight_methods_in_the_config_check():
    cfg = compose_train(*TINY)  # each value as the string the command line would give

    def check(method: str) -> None:
        cfg.loss.class_weights = method
        check_train_config(cfg)

    for ok in ("auto", "sqrt_median", "median**0.25", "median**2", "inverse"):
        check(ok)
    for bad in ("median**0", "median**-1", "sqrt", "median^0.5"):
        with pytest.raises(ConfigError, match=r"expected null, .*median\*\*P \(P > 0\)"):
            check(bad)


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.max_num_timeout == 3
