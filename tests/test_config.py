"""The config space: every option of every group composes, builds and runs a step; bad
overrides fail before training with a message naming the key."""

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
from tests.conftest import CONF, TINY, compose_train, run_cli


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


def test_cli_bad_value_is_a_clean_error(tmp_path: Path):
    proc = run_cli("train.py", *TINY, "trainer.precision=fp8", cwd=tmp_path)
    assert proc.returncode == 2
    assert "trainer.precision='fp8'" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_missing_dataset_root_names_the_path(tmp_path: Path):
    missing = tmp_path / "no_such_VOCdevkit"
    proc = run_cli("train.py", "dataset=voc", f"dataset.root={missing}", cwd=tmp_path)
    assert proc.returncode == 3
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr


def test_cli_typo_fails_before_training(tmp_path: Path):
    proc = run_cli("train.py", "trainer.max_epoch=3", cwd=tmp_path)
    assert proc.returncode == 2
    assert "trainer.max_epoch is not a key" in proc.stderr
    assert "did you mean trainer.max_epochs?" in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_debug_smoke_run_through_train_py(tmp_path: Path):
    proc = run_cli(
        "train.py",
        "debug=smoke",
        "dataset.num_train=8",
        "dataset.num_val=4",
        "dataset.image_size=[32,32]",
        "trainer.accelerator=cpu",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "epoch 2 val loss" in log and "best val mIoU" in log
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


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


@pytest.mark.parametrize(
    ("override", "new"),
    [
        ("data.batch_size=2", "loader.batch_size"),
        ("+data.num_workers=0", "loader.num_workers"),
        ("data.check=off", "dataset.check"),
        ("trainer.fail_at_step=3", "removed"),
    ],
)
def test_old_key_on_the_command_line_names_its_new_key(tmp_path: Path, override, new):
    proc = run_cli("train.py", override, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert new in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()


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
