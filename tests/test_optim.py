import math

import pytest
import torch
from torch import nn

from segkit.optim import WarmupCosineLR, param_groups, warmup_cosine_factor


def test_factor_hand_values():
    # 10 steps, 2 warmup from 0.1, cosine to 0.0 over the remaining 8
    f = lambda s: warmup_cosine_factor(s, 10, 2, 0.1, 0.0)  # noqa: E731
    assert f(0) == pytest.approx(0.1)
    assert f(1) == pytest.approx(0.55)  # 0.1 + 0.9 * 1/2
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.5)  # half-way through the cosine
    assert f(4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 8)))
    assert f(10) == pytest.approx(0.0)
    assert f(50) == pytest.approx(0.0)  # clamps past the end


def test_factor_min_ratio_and_no_warmup():
    assert warmup_cosine_factor(0, 4, 0, 0.1, 0.2) == pytest.approx(1.0)
    assert warmup_cosine_factor(4, 4, 0, 0.1, 0.2) == pytest.approx(0.2)


def _model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def test_param_groups_no_decay_on_norm_and_bias():
    m = _model()
    decay, no_decay = param_groups(m)
    assert {id(p) for p in decay["params"]} == {id(m[0].weight), id(m[2].weight)}
    expected = {id(m[0].bias), id(m[1].weight), id(m[1].bias), id(m[2].bias)}
    assert {id(p) for p in no_decay["params"]} == expected
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    opt = torch.optim.SGD(param_groups(m), lr=0.1, weight_decay=0.5)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]


def test_scheduler_follows_the_pure_function_and_resumes():
    m = _model()
    opt = torch.optim.SGD(param_groups(m), lr=0.1)
    sched = WarmupCosineLR(opt, total_steps=20, steps_per_epoch=5, warmup_epochs=1, eta_min=0.01)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.1 * warmup_cosine_factor(s, 20, 5, 0.1, 0.1) for s in range(8)]
    assert lrs == pytest.approx(expected)
    # a new optimiser + scheduler loaded from state continue with the same LR
    opt2 = torch.optim.SGD(param_groups(_model()), lr=0.1)
    sched2 = WarmupCosineLR(opt2, total_steps=20, steps_per_epoch=5, warmup_epochs=1, eta_min=0.01)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(
        0.1 * warmup_cosine_factor(8, 20, 5, 0.1, 0.1)
    )
    opt.step()
    sched.step()
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_scheduler_rejects_zero_steps():
    opt = torch.optim.SGD(_model().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="total_steps"):
        WarmupCosineLR(opt, total_steps=0, steps_per_epoch=1)
