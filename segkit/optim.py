"""Optimiser parameter groups (per-module learning rates and weight decay: ``ParamGroups``)
and the warmup + cosine / poly learning-rate schedules.

Both schedules are pure functions of the optimiser step (``warmup_cosine_factor``,
``warmup_poly_factor``) wrapped in an ``LRScheduler`` that is stepped once per iteration, so
resuming restores the LR from the step count alone.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from segkit.errors import ConfigError

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


# parameters that get no weight decay by default: normalisation layers, biases (and any 1-D
# tensor), position embeddings and tokens (SegFormer / ViT names)
NO_DECAY = ("norm", "bias", "*pos_embed*", "*position_embedding*", "*cls_token*")


@dataclass(frozen=True)
class GroupRule:
    """One rule of ``optimizer.param_groups.rules``: the parameters it ``match``es get
    ``lr * lr_mult`` and ``weight_decay * decay_mult``. ``match``: ``encoder`` (the model's
    ``encoder_modules()``), ``decoder`` (every parameter outside them) or a glob over parameter
    names (``head.*``, ``*.attn.*``)."""

    match: str
    lr_mult: float = 1.0
    decay_mult: float = 1.0


class ParamGroups:
    """The optimiser's parameter groups: each parameter goes to the first rule that matches
    it (none: x1), and loses its weight decay when it is one of ``no_decay`` (``norm``:
    parameters of normalisation layers; ``bias``: names ending in ``.bias`` and 1-D tensors;
    other entries are globs over parameter names). Every parameter lands in exactly one group;
    frozen ones too (they get no gradient), so unfreezing needs no new optimiser.

    Example (MMSegmentation's SegFormer recipe: encoder x0.1, decoder x10)::

        rules = [{"match": "encoder", "lr_mult": 0.1}, {"match": "decoder", "lr_mult": 10}]
    """

    def __init__(self, rules: Sequence[Mapping] = (), no_decay: Sequence[str] = NO_DECAY) -> None:
        self.rules = [self._rule(i, r) for i, r in enumerate(rules)]
        self.no_decay = tuple(no_decay)

    @staticmethod
    def _rule(i: int, rule: Mapping) -> GroupRule:
        known = {f.name for f in fields(GroupRule)}
        if not isinstance(rule, Mapping) or "match" not in rule or set(rule) - known:
            raise ConfigError(
                f"optimizer.param_groups.rules[{i}]={rule!r}: expected a mapping with 'match' "
                f"and optionally 'lr_mult', 'decay_mult' (e.g. {{match: encoder, lr_mult: 0.1}})"
            )
        if rule.get("lr_mult", 1.0) < 0 or rule.get("decay_mult", 1.0) < 0:
            raise ConfigError(f"optimizer.param_groups.rules[{i}]: multipliers must be >= 0")
        return GroupRule(**rule)

    def assign(self, model: nn.Module) -> dict[str, tuple[int, bool]]:
        """Parameter name -> (index of its rule, -1 for none; whether it gets weight decay)."""
        encoder = _encoder_ids(model)
        norms = {
            id(p)
            for m in model.modules()
            if isinstance(m, _NORM_TYPES)
            for p in m.parameters(recurse=False)
        }
        out = {}
        for name, p in model.named_parameters():
            rule = next(
                (i for i, r in enumerate(self.rules) if _matches(r.match, name, p, encoder)), -1
            )
            out[name] = (rule, not self._exempt(name, p, norms))
        return out

    def _exempt(self, name: str, p: nn.Parameter, norms: set[int]) -> bool:
        for kind in self.no_decay:
            if kind == "norm" and id(p) in norms:
                return True
            if kind == "bias" and (name.endswith(".bias") or p.ndim <= 1):
                return True
            if kind not in ("norm", "bias") and fnmatch.fnmatchcase(name, kind):
                return True
        return False

    def __call__(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        """The groups for ``torch.optim.X(groups, lr=lr, weight_decay=weight_decay)``, one per
        (rule, decay or not) that holds parameters, each with its own ``lr`` and
        ``weight_decay`` and a ``name``."""
        params = dict(model.named_parameters())
        groups: dict[tuple[int, bool], dict] = {}
        for name, (rule, decays) in sorted(
            self.assign(model).items(), key=lambda kv: _order(kv[1])
        ):
            r = self.rules[rule] if rule >= 0 else GroupRule("*")
            group = groups.setdefault(
                (rule, decays),
                {
                    "params": [],
                    "name": f"{r.match if rule >= 0 else 'rest'}{'' if decays else ' (no decay)'}",
                    "lr": lr * r.lr_mult,
                    "weight_decay": weight_decay * r.decay_mult if decays else 0.0,
                },
            )
            group["params"].append(params[name])
        return list(groups.values())


def _order(key: tuple[int, bool]) -> tuple[int, bool]:
    """Groups by rule (unmatched last), decay before no decay."""
    rule, decays = key
    return (rule if rule >= 0 else 1 << 30, not decays)


def _encoder_ids(model: nn.Module) -> set[int]:
    encoder = getattr(model, "encoder_parameters", None)
    return {id(p) for p in encoder()} if encoder is not None else set()


def _matches(pattern: str, name: str, p: nn.Parameter, encoder: set[int]) -> bool:
    if pattern in ("encoder", "decoder"):
        if not encoder:
            raise ConfigError(
                f"optimizer.param_groups: match={pattern!r} needs a model with an encoder "
                "(encoder_modules()); match parameter names with a glob instead"
            )
        return (id(p) in encoder) == (pattern == "encoder")
    return fnmatch.fnmatchcase(name, pattern)


def param_groups(model: nn.Module) -> list[dict]:
    """Two groups without rules: weights that get the optimiser's weight decay, and the
    ``NO_DECAY`` parameters (norms, biases, ...) with ``weight_decay=0``."""
    params = dict(model.named_parameters())
    assigned = ParamGroups().assign(model).items()
    decay = [params[n] for n, (_, decays) in assigned if decays]
    no_decay = [params[n] for n, (_, decays) in assigned if not decays]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def log_table(groups: list[dict]) -> str:
    """The optimiser's groups as a text table: name, tensors, parameters, lr, weight decay."""
    rows = [("group", "tensors", "parameters", "lr", "weight_decay")]
    for i, g in enumerate(groups):
        numel = sum(p.numel() for p in g["params"])
        name = g.get("name", f"group {i}")
        rows.append(
            (
                name,
                str(len(g["params"])),
                f"{numel:,}",
                f"{g['lr']:.3g}",
                f"{g.get('weight_decay', 0):.3g}",
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows)


def _warmup_factor(step: int, warmup_steps: int, warmup_start: float) -> float:
    """Linear from ``warmup_start`` (step 0) towards 1 (reached at ``warmup_steps``)."""
    return warmup_start + (1.0 - warmup_start) * step / warmup_steps


def _progress(step: int, total_steps: int, anchor_step: int, anchor_progress: float = 0.0) -> float:
    """Fraction in [0, 1] of the decay done at ``step``: ``anchor_progress`` at
    ``anchor_step`` (the end of warmup, or where the schedule was last retargeted), 1 from
    ``total_steps`` on, linear in between."""
    if step >= total_steps:
        return 1.0
    span = max(1, total_steps - anchor_step)
    return min(1.0, anchor_progress + (1.0 - anchor_progress) * (step - anchor_step) / span)


def cosine_shape(progress: float, min_ratio: float) -> float:
    """Cosine from 1 (progress 0) to ``min_ratio`` (progress 1)."""
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def poly_shape(progress: float, power: float, min_ratio: float) -> float:
    """``min_ratio + (1 - min_ratio) * (1 - progress) ** power``."""
    return min_ratio + (1.0 - min_ratio) * (1.0 - progress) ** power


def warmup_cosine_factor(
    step: int, total_steps: int, warmup_steps: int, warmup_start: float, min_ratio: float
) -> float:
    """LR multiplier at optimiser ``step`` (0-based): linear from ``warmup_start`` to 1 over
    ``warmup_steps``, then cosine from 1 to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return _warmup_factor(step, warmup_steps, warmup_start)
    return cosine_shape(_progress(step, total_steps, warmup_steps), min_ratio)


def warmup_poly_factor(
    step: int,
    total_steps: int,
    warmup_steps: int,
    warmup_start: float,
    power: float,
    min_ratio: float,
) -> float:
    """LR multiplier at optimiser ``step`` (0-based): linear warmup as in the cosine schedule,
    then ``min_ratio + (1 - min_ratio) * (1 - progress) ** power`` with ``progress`` going from
    0 at ``warmup_steps`` to 1 at ``total_steps`` (the segmentation "poly" rule of DeepLab,
    BiSeNet and torchvision's references; ``torch.optim.lr_scheduler.PolynomialLR`` with
    ``total_iters = total_steps - warmup_steps`` when ``min_ratio == 0``)."""
    if warmup_steps > 0 and step < warmup_steps:
        return _warmup_factor(step, warmup_steps, warmup_start)
    return poly_shape(_progress(step, total_steps, warmup_steps), power, min_ratio)


class _WarmupLR(LRScheduler):
    """Shared part of the per-iteration schedules: step counts, warmup, absolute ``eta_min``.

    ``total_steps`` and ``steps_per_epoch`` are filled in by the run from ``len(loader)``;
    ``warmup_epochs`` may be fractional. ``eta_min`` is absolute (same for every group).
    Subclasses implement ``shape(progress, min_ratio) -> float``.

    :meth:`retarget` moves the end (a resume with another step count, the time budget's
    plan); the decay then runs from where it stands (``anchor_step``, ``anchor_progress``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        steps_per_epoch: int,
        warmup_epochs: float,
        warmup_start: float,
        eta_min: float,
        last_epoch: int = -1,
        warmup_steps: int | None = None,
    ) -> None:
        if total_steps <= 0:
            raise ConfigError(f"scheduler total_steps must be > 0, got {total_steps}")
        if not 0.0 <= warmup_start <= 1.0:
            raise ConfigError(f"scheduler.warmup_start must be in [0, 1], got {warmup_start}")
        if warmup_epochs < 0 or eta_min < 0:
            raise ConfigError(
                f"scheduler.warmup_epochs and scheduler.eta_min must be >= 0, got "
                f"{warmup_epochs} and {eta_min}"
            )
        self.total_steps = total_steps
        if warmup_steps is None:  # warmup in epochs (fractional allowed)
            warmup_steps = int(round(warmup_epochs * steps_per_epoch))
        elif warmup_steps < 0:
            raise ConfigError(f"scheduler.warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = min(warmup_steps, total_steps)
        self.warmup_start = warmup_start
        self.eta_min = eta_min
        self.anchor_step, self.anchor_progress = self.warmup_steps, 0.0
        super().__init__(optimizer, last_epoch)

    def shape(self, progress: float, min_ratio: float) -> float:
        raise NotImplementedError

    def factor(self, step: int, min_ratio: float) -> float:
        """LR multiplier at optimiser ``step``: warmup, then the decay's shape."""
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return _warmup_factor(step, self.warmup_steps, self.warmup_start)
        progress = _progress(step, self.total_steps, self.anchor_step, self.anchor_progress)
        return self.shape(progress, min_ratio)

    def retarget(self, total_steps: int) -> str:
        """End the schedule at ``total_steps`` from the current step; returns how, in words.

        Inside the decay the lr goes on from its current value and reaches ``eta_min`` at
        the new end (the rest of the curve is stretched or shrunk). A schedule that had
        already ended (a finished run trained for longer) restarts as if it had had the new
        length from the start. Warmup keeps its steps (clamped to the new end)."""
        step, old = self.last_epoch, self.total_steps
        if step >= old:
            self.anchor_step, self.anchor_progress = self.warmup_steps, 0.0
            how = f"the schedule had ended (step {old}): it continues as a {total_steps}-step one"
        else:
            if step > self.warmup_steps:
                self.anchor_progress = _progress(step, old, self.anchor_step, self.anchor_progress)
                self.anchor_step = step
            how = f"from step {step} it decays from the current lr to reach eta_min at the end"
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = min(self.warmup_steps, self.total_steps)
        self.anchor_step = min(self.anchor_step, self.total_steps)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        return f"the schedule now ends at step {self.total_steps} (was {old}); {how}"

    def get_lr(self) -> list[float]:
        lrs = []
        for base_lr in self.base_lrs:
            min_ratio = min(1.0, self.eta_min / base_lr) if base_lr > 0 else 0.0
            lrs.append(base_lr * self.factor(self.last_epoch, min_ratio))
        return lrs


class WarmupCosineLR(_WarmupLR):
    """Cosine annealing to ``eta_min`` with linear warmup, stepped once per iteration
    (see :func:`warmup_cosine_factor`)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        steps_per_epoch: int,
        warmup_epochs: float = 1.0,
        warmup_start: float = 0.1,
        eta_min: float = 1e-5,
        last_epoch: int = -1,
        warmup_steps: int | None = None,
    ) -> None:
        super().__init__(
            optimizer,
            total_steps,
            steps_per_epoch,
            warmup_epochs,
            warmup_start,
            eta_min,
            last_epoch,
            warmup_steps,
        )

    def shape(self, progress: float, min_ratio: float) -> float:
        return cosine_shape(progress, min_ratio)


class WarmupPolyLR(_WarmupLR):
    """Poly decay ``(1 - progress) ** power`` to ``eta_min`` with linear warmup, stepped once
    per iteration (see :func:`warmup_poly_factor`). ``power=0.9`` is the usual choice."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        steps_per_epoch: int,
        warmup_epochs: float = 1.0,
        warmup_start: float = 0.1,
        power: float = 0.9,
        eta_min: float = 0.0,
        last_epoch: int = -1,
        warmup_steps: int | None = None,
    ) -> None:
        if power <= 0:
            raise ConfigError(f"scheduler.power must be > 0, got {power}")
        self.power = float(power)
        super().__init__(
            optimizer,
            total_steps,
            steps_per_epoch,
            warmup_epochs,
            warmup_start,
            eta_min,
            last_epoch,
            warmup_steps,
        )

    def shape(self, progress: float, min_ratio: float) -> float:
        return poly_shape(progress, self.power, min_ratio)
