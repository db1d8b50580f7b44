"""The config space: every option of every group composes, builds and runs a step; bad
overrides fail before training with a message naming the key (every bad value through what
train.py runs: tests/unit/test_errors.py; train.py itself: tests/e2e/test_config_cli.py and
tests/e2e/test_errors.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import open_dict

from segkit.config.checks import check_train_config
from segkit.dist import DistInfo
from segkit.errors import ConfigError
from segkit.optim import param_groups
from segkit.run import build_loss, build_model, dataset_factory
from tests.conftest import CONF, TINY, compose_train


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("loss", _options("loss"))
@pytest.mark.parametrize("optimizer", _options("optimizer"))
def test_every_loss_and_optimizer_takes_a_step(loss, optimizer):
    cfg = compose_train(*TINY, f"loss={loss}", f"optimizer={optimizer}")
    train_ds = dataset_factory(cfg.dataset)(split="train", train=True)
    model = build_model(cfg, DistInfo())
    loss_fn = build_loss(cfg, train_ds)
    opt = instantiate(cfg.optimizer)(params=param_groups(model))
    sched = instantiate(cfg.scheduler)(opt, total_steps=10, steps_per_epoch=5)
    images, masks = zip(*(train_ds[i] for i in range(2)))
    before = [p.detach().clone() for p in model.parameters()]
    inputs = train_ds.labels.normalizer()(torch.stack(images))  # uint8 -> model input
    loss_value = loss_fn(model(inputs), torch.stack(masks).long())
    loss_value.backward()
    opt.step()
    sched.step()
    assert torch.isfinite(loss_value)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes_and_builds(experiment):
    cfg = compose_train(f"experiment={experiment}", "model.pretrained=false", "dataset.root=/d")
    check_train_config(cfg)  # no old or unknown keys, values in range, in the shipped recipes
    model = build_model(cfg, DistInfo())
    h, w = 64, 96
    out = model.eval()(torch.zeros(1, 3, h, w))["out"]
    assert out.shape == (1, cfg.dataset.num_classes, h, w)
    assert cfg.model.num_classes == cfg.dataset.num_classes


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


def test_trainer_yaml_is_the_schema_of_the_loop_and_launch_keys():
    """Every LoopOptions field is in conf/trainer/default.yaml, and every key there is either a
    loop option or a launch key read by segkit.run: no default is written twice."""
    from segkit.engine.trainer import LoopOptions
    from segkit.run import LAUNCH_KEYS, loop_options

    fields = {f.name: f for f in dataclasses.fields(LoopOptions)}
    cfg = compose_train()
    options = loop_options(cfg, show_progress=True)
    assert set(cfg.trainer) == set(fields) | set(LAUNCH_KEYS)
    assert not set(fields) & set(LAUNCH_KEYS)
    assert all(f.default is dataclasses.MISSING for f in fields.values())
    assert options.max_epochs == cfg.trainer.max_epochs
    assert options.precision == cfg.trainer.precision
    assert not loop_options(cfg, show_progress=False).progress_bar


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
    for ok in ("auto", "sqrt_median", "median**0.25", "median**2", "inverse"):
        check_train_config(compose_train(*TINY, f"loss.class_weights={ok}"))
    for bad in ("median**0", "median**-1", "sqrt", "median^0.5"):
        with pytest.raises(ConfigError, match=r"expected null, .*median\*\*P \(P > 0\)"):
            check_train_config(compose_train(*TINY, f"loss.class_weights='{bad}'"))


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.max_num_timeout == 3
