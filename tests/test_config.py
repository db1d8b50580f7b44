"""The config space: every option of every group composes, builds and runs a step; bad
overrides fail before training with a message naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from segkit.dist import DistInfo
from segkit.optim import param_groups
from segkit.run import build_loss, build_model
from tests.conftest import CONF, TINY, compose_train, run_cli


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("loss", _options("loss"))
@pytest.mark.parametrize("optimizer", _options("optimizer"))
def test_every_loss_and_optimizer_takes_a_step(loss, optimizer):
    cfg = compose_train(*TINY, f"loss={loss}", f"optimizer={optimizer}")
    train_ds = instantiate(cfg.dataset)(split="train", train=True)
    model = build_model(cfg, DistInfo())
    loss_fn = build_loss(cfg, train_ds)
    opt = instantiate(cfg.optimizer)(params=param_groups(model))
    sched = instantiate(cfg.scheduler)(opt, total_steps=10, steps_per_epoch=5)
    images, masks = zip(*(train_ds[i] for i in range(2)))
    before = [p.detach().clone() for p in model.parameters()]
    loss_value = loss_fn(model(torch.stack(images)), torch.stack(masks))
    loss_value.backward()
    opt.step()
    sched.step()
    assert torch.isfinite(loss_value)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes_and_builds(experiment):
    cfg = compose_train(f"experiment={experiment}", "model.pretrained=false")
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
    assert proc.returncode == 1
    assert "trainer.precision='fp8'" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_missing_dataset_root_names_the_path(tmp_path: Path):
    missing = tmp_path / "no_such_VOCdevkit"
    proc = run_cli("train.py", "dataset=voc", f"dataset.root={missing}", cwd=tmp_path)
    assert proc.returncode == 1
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr


def test_cli_typo_fails_before_training(tmp_path: Path):
    proc = run_cli("train.py", "trainer.max_epoch=3", cwd=tmp_path)
    assert proc.returncode == 1
    assert "max_epoch" in proc.stderr
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
