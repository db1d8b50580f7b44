"""Every loss (``conf/loss``) with every optimiser (``conf/optimizer``) and the default
schedule: one finite step that changes the weights."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from segkit.dist import DistInfo
from segkit.run import build_loss, build_model, build_optimizer, dataset_factory
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
    opt = build_optimizer(cfg, model)
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
