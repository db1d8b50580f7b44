"""Gradient accumulation (``trainer.accumulate_grad_batches``) against hand-computed steps:
k accumulated batches of b against one batch of k*b, ignored pixels, BatchNorm, and an exact
resume from a SIGTERM inside an accumulation (2 processes: tests/e2e/test_distributed.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segkit import dist
from segkit.engine.trainer import Trainer
from segkit.errors import Interrupted
from segkit.io import checkpoint as ck
from segkit.reporting.tracker import NullTracker
from segkit.run import build_trainer, train_rank
from tests.conftest import TINY, compose_train

CPU = dist.DistInfo(device=torch.device("cpu"))
IGNORE = 255


class _Net(nn.Module):
    """Two convolutions (with BatchNorm between them when ``bn``): the segkit model contract."""

    def __init__(self, bn: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.b = nn.Conv2d(4, 5, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.b(torch.relu(self.bn(self.a(x))))}


@pytest.fixture(scope="module")
def base() -> Trainer:
    """The TINY run's Trainer: its loss, loaders, labels and loop options."""
    return build_trainer(compose_train(*TINY, "dataset.check=off"), CPU)[0]


def _trainer(base: Trainer, model: nn.Module, k: int) -> Trainer:
    """A Trainer of ``model`` with plain SGD (lr 0.1, no momentum): a step is w - 0.1 * grad."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return Trainer(
        model,
        base.loss_fn,
        opt,
        torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
        base.train_loader,
        base.val_loader,
        labels=base.labels,
        info=CPU,
        checkpoints=ck.NullCheckpointWriter(),
        run_config={},
        tracker=NullTracker(),
        options=dataclasses.replace(base.opt, accumulate_grad_batches=k, channels_last=False),
    )


def _batch(ignore_in_first_half: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (4, 3, 8, 8), generator=g, dtype=torch.uint8)
    masks = torch.randint(0, 5, (4, 8, 8), generator=g, dtype=torch.uint8)
    if ignore_in_first_half:  # 3/4 of the pixels of images 0 and 1 are ignored
        masks[:2, :6] = IGNORE
    return images, masks


def _halves(images, masks) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images[:2], masks[:2]), (images[2:], masks[2:])]


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _hand_step(base: Trainer, model: nn.Module, batches, lr: float = 0.1) -> None:
    """The documented rule by hand: mean over the batches of each batch's cross-entropy over
    its non-ignored pixels; one SGD step."""
    losses = []
    for images, masks in batches:
        logits = model(base.normalize(images))["out"]
        losses.append(F.cross_entropy(logits, masks.long(), ignore_index=IGNORE))
    torch.stack(losses).mean().backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad


def test_two_accumulated_batches_equal_one_batch_of_twice_the_size_without_batchnorm(base):
    images, masks = _batch(ignore_in_first_half=False)
    accumulated, whole = _Net(bn=False), _Net(bn=False)
    before = _weights(whole)
    _trainer(base, accumulated, 2).train_step(_halves(images, masks))
    _trainer(base, whole, 1).train_step([(images, masks)])
    a, b = _weights(accumulated), _weights(whole)
    assert any(not torch.equal(b[n], before[n]) for n in b)  # the step moved the weights
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7)


def test_ignored_pixels_weigh_by_batch_as_documented(base):
    """With ignored pixels unevenly spread, each batch's mean counts the same: the step equals
    the hand-computed mean of per-batch means and differs from one batch of 4."""
    images, masks = _batch(ignore_in_first_half=True)
    accumulated, hand, whole = _Net(bn=False), _Net(bn=False), _Net(bn=False)
    _trainer(base, accumulated, 2).train_step(_halves(images, masks))
    _hand_step(base, hand, _halves(images, masks))
    _trainer(base, whole, 1).train_step([(images, masks)])
    a, h, w = _weights(accumulated), _weights(hand), _weights(whole)
    for name in a:
        torch.testing.assert_close(a[name], h[name], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(a["a.weight"], w["a.weight"], rtol=1e-4, atol=1e-6)


def test_batchnorm_normalises_each_accumulated_batch_alone(base):
    """With BatchNorm each batch is normalised with its own statistics and the running
    statistics take one update per batch (two here): the step equals that computed by hand,
    not one batch of 4."""
    images, masks = _batch(ignore_in_first_half=False)
    accumulated, hand, whole = _Net(bn=True), _Net(bn=True), _Net(bn=True)
    _trainer(base, accumulated, 2).train_step(_halves(images, masks))
    hand.train()
    _hand_step(base, hand, _halves(images, masks))
    _trainer(base, whole, 1).train_step([(images, masks)])
    a, h, w = _weights(accumulated), _weights(hand), _weights(whole)
    assert a["bn.num_batches_tracked"] == 2 and w["bn.num_batches_tracked"] == 1
    for name in a:
        torch.testing.assert_close(a[name], h[name], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(a["a.weight"], w["a.weight"], rtol=1e-4, atol=1e-6)


def test_sigterm_inside_an_accumulation_resumes_exactly(tmp_path):
    """Batches of 2, 3 per step, 11 batches per epoch: steps of 3 + 3 + 3 + 2 batches (the
    epoch's last group is short). The SIGTERM comes during batch 5 (the second of step 2):
    the step finishes, the interrupt checkpoint holds the position after it, and the resumed
    run ends with the uninterrupted run's weights, history and schedule."""
    acc = [*TINY, "loader.batch_size=2", "trainer.accumulate_grad_batches=3"]
    acc += ["trainer.limit_train_batches=11", "trainer.log_every=1", "dataset.check=off"]
    straight = tmp_path / "straight"
    train_rank(compose_train(*acc), straight)
    signal = ["loss._target_=tests.faults.SignalingCrossEntropy", "+loss.signal_at_step=5"]
    stopped = tmp_path / "stopped"
    with pytest.raises(Interrupted):
        train_rank(compose_train(*acc, *signal), stopped)
    mid = ck.load(stopped / "checkpoints" / "interrupt.pt")
    assert (mid["epoch"], mid["step"], mid["epoch_step"]) == (0, 2, 6)  # after step 2's group
    train_rank(compose_train(*acc, "resume=auto"), stopped)
    a = ck.load(straight / "checkpoints" / "last.pt")
    b = ck.load(stopped / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 2 * 4  # 11 batches: 3 + 3 + 3 + 2 per epoch
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["history"] == b["history"] and a["scheduler"] == b["scheduler"]
    assert a["scheduler"]["total_steps"] == 8
