import math

import pytest
import torch
from torch import nn

from segkit.errors import ConfigError
from segkit.optim import (
    WarmupCosineLR,
    WarmupPolyLR,
    param_groups,
    warmup_cosine_factor,
    warmup_poly_factor,
)
from tests.conftest import CONF


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


# ---------------------------------------------------------------- poly


def _lrs(opt, sched, steps: int) -> list[float]:
    """The LR of group 0 used at each of ``steps`` optimiser steps."""
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_poly_factor_hand_values():
    # 12 steps, 2 warmup from 0.1, then (1 - k/10) ** 0.9
    f = lambda s: warmup_poly_factor(s, 12, 2, 0.1, 0.9, 0.0)  # noqa: E731
    assert f(0) == pytest.approx(0.1)
    assert f(1) == pytest.approx(0.55)
    assert f(2) == pytest.approx(1.0)
    assert f(7) == pytest.approx(0.5**0.9)
    assert f(11) == pytest.approx(0.1**0.9)
    assert f(12) == 0.0 and f(40) == 0.0
    # eta_min as a ratio: 0.2 + 0.8 * 0.5 ** 2 at the half-way step of power 2
    assert warmup_poly_factor(5, 10, 0, 0.1, 2.0, 0.2) == pytest.approx(0.4)


@pytest.mark.parametrize("power", [0.9, 2.0])
def test_poly_matches_torch_polynomial_lr_after_warmup(power):
    total, per_epoch, warmup = 30, 4, 8  # warmup_epochs=2 -> 8 steps
    opt = torch.optim.SGD(param_groups(_model()), lr=0.05)
    sched = WarmupPolyLR(opt, total, per_epoch, warmup_epochs=2, warmup_start=0.2, power=power)
    ours = _lrs(opt, sched, total + 3)
    # warmup: linear from 0.2 * lr to lr, equal increments
    assert ours[:warmup] == pytest.approx([0.05 * (0.2 + 0.8 * s / warmup) for s in range(warmup)])
    assert len({round(b - a, 12) for a, b in zip(ours[: warmup + 1], ours[1 : warmup + 1])}) == 1
    ref_opt = torch.optim.SGD(param_groups(_model()), lr=0.05)
    ref = torch.optim.lr_scheduler.PolynomialLR(ref_opt, total_iters=total - warmup, power=power)
    assert ours[warmup:] == pytest.approx(_lrs(ref_opt, ref, total + 3 - warmup), abs=1e-12)
    assert ours[total - 1] > 0 and ours[total] == 0.0


def test_poly_resumes_from_state_and_eta_min_is_absolute():
    opt = torch.optim.SGD(param_groups(_model()), lr=0.1)
    sched = WarmupPolyLR(opt, total_steps=20, steps_per_epoch=5, warmup_epochs=0, eta_min=0.01)
    _lrs(opt, sched, 7)
    opt2 = torch.optim.SGD(param_groups(_model()), lr=0.1)
    sched2 = WarmupPolyLR(opt2, total_steps=20, steps_per_epoch=5, warmup_epochs=0, eta_min=0.01)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert _lrs(opt2, sched2, 20) == pytest.approx(_lrs(opt, sched, 20))
    # both groups (with and without weight decay) end at eta_min, not at a ratio of it
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.01])


def test_poly_config_builds_the_scheduler():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / "scheduler" / "poly.yaml")
    opt = torch.optim.SGD(_model().parameters(), lr=1.0)
    sched = instantiate(cfg)(opt, total_steps=10, steps_per_epoch=2)
    assert isinstance(sched, WarmupPolyLR) and sched.power == 0.9 and sched.warmup_steps == 2


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"power": 0.0}, "scheduler.power"), ({"warmup_start": 1.5}, "scheduler.warmup_start")],
)
def test_poly_rejects_bad_values_naming_the_key(kwargs, key):
    opt = torch.optim.SGD(_model().parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=key):
        WarmupPolyLR(opt, total_steps=10, steps_per_epoch=2, **kwargs)


def _stepped(total: int, steps: int, **kwargs) -> WarmupCosineLR:
    opt = torch.optim.SGD(_model().parameters(), lr=0.1)
    sched = WarmupCosineLR(opt, total_steps=total, steps_per_epoch=4, eta_min=0.0, **kwargs)
    for _ in range(steps):
        opt.step()
        sched.step()
    return sched


@pytest.mark.parametrize("new_total", [10, 24])
def test_retarget_continues_from_the_current_lr_and_ends_at_the_new_last_step(new_total):
    # 16 steps, warmup 4 (1 epoch of 4): retargeted at step 8 to end at step 10 or 24
    sched = _stepped(16, 8, warmup_epochs=1)
    lr_now = sched.get_last_lr()[0]
    assert lr_now == pytest.approx(0.1 * warmup_cosine_factor(8, 16, 4, 0.1, 0.0))
    sched.retarget(new_total)
    assert sched.get_last_lr()[0] == lr_now  # no jump
    lrs = []
    for _ in range(new_total - 8):
        sched.optimizer.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert all(a > b for a, b in zip([lr_now, *lrs], lrs))  # decays every step
    assert lrs[-1] == pytest.approx(0.0, abs=1e-15)  # eta_min at the new last step
    # the progress runs linearly from where it stood (4 of 12 decay steps) to 1 at the new end
    p0 = (8 - 4) / (16 - 4)
    mid = 8 + (new_total - 8) // 2
    p_mid = p0 + (1 - p0) * (mid - 8) / (new_total - 8)
    expected = 0.1 * 0.5 * (1 + math.cos(math.pi * p_mid))
    assert lrs[mid - 9] == pytest.approx(expected)
    # the retargeted schedule resumes from its state
    again = _stepped(16, 0, warmup_epochs=1)
    again.load_state_dict(sched.state_dict())
    assert again.total_steps == new_total and again.get_last_lr() == sched.get_last_lr()


def test_retarget_in_warmup_keeps_it_and_an_ended_schedule_restarts_at_the_new_length():
    sched = _stepped(16, 2, warmup_epochs=1)  # in warmup (4 steps)
    sched.retarget(32)
    assert sched.warmup_steps == 4 and sched.get_last_lr()[0] == pytest.approx(
        0.1 * warmup_cosine_factor(2, 32, 4, 0.1, 0.0)
    )
    ended = _stepped(8, 8, warmup_epochs=1)  # a finished run trained for longer
    assert ended.get_last_lr()[0] == pytest.approx(0.0, abs=1e-15)
    ended.retarget(12)
    assert ended.get_last_lr()[0] == pytest.approx(0.1 * warmup_cosine_factor(8, 12, 4, 0.1, 0.0))
    assert ended.get_last_lr()[0] > 0.01


def test_param_group_rules_globs_first_match_and_bad_rules():
    from segkit.optim import ParamGroups, log_table

    m = _model()  # 0: conv, 1: batchnorm, 2: conv
    rules = [{"match": "2.*", "lr_mult": 5.0}, {"match": "*.weight", "decay_mult": 0.0}]
    groups = ParamGroups(rules)(m, lr=0.1, weight_decay=0.5)
    table = {g["name"]: (len(g["params"]), g["lr"], g["weight_decay"]) for g in groups}
    assert table == {
        "2.*": (1, 0.5, 0.5),  # 2.weight: the first rule wins over *.weight
        "2.* (no decay)": (1, 0.5, 0.0),  # 2.bias
        "*.weight": (1, 0.1, 0.0),  # 0.weight, decay x0
        "*.weight (no decay)": (1, 0.1, 0.0),  # 1.weight (a norm)
        "rest (no decay)": (2, 0.1, 0.0),  # 0.bias, 1.bias
    }
    assert "2.* (no decay)" in log_table(groups)
    with pytest.raises(ConfigError, match=r"rules\[0\].*'match'"):
        ParamGroups([{"pattern": "x"}])
    with pytest.raises(ConfigError, match="needs a model with an encoder"):
        ParamGroups([{"match": "encoder"}])(m, lr=0.1, weight_decay=0.0)
