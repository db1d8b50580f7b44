"""``trainer.activation_checkpointing``: the encoder's blocks keep no activations for backward;
each recomputes its forward during backward instead (less memory, about one more encoder
forward of time per step).

A block is a module inside the model's ``encoder_modules()`` with at least two layers that hold
parameters (a ResNet bottleneck, a conv + BatchNorm pair, an STDC module); containers
(``nn.Sequential``, ``nn.ModuleList``) and modules made of two or more such blocks (a ResNet
body) are opened, single layers are left alone (checkpointing one convolution saves nothing).
An encoder made of single layers only (VGG16's ``features``) has no block: the log says so.
The weights and their names do not change: checkpoints, EMA copies and exports are the same
as without.

BatchNorm inside a block updates its running statistics in the forward only, not again in
the recomputation, so the statistics equal those of a run without checkpointing.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def checkpoint_encoder(model: nn.Module) -> list[str]:
    """Turn on activation checkpointing for the blocks of ``model``'s encoder; returns their
    names (empty when the model has no encoder or its encoder no block)."""
    encoder = getattr(model, "encoder_modules", None)
    if encoder is None:
        return []
    ids = {id(m) for part in encoder() for m in _blocks(part)}
    names = [name for name, m in model.named_modules() if id(m) in ids]
    for name in names:
        block = model.get_submodule(name)
        # bound to the instance, so a deepcopy (the EMA) binds to the copy
        block.forward = types.MethodType(_checkpointed_forward, block)
    return names


def _blocks(module: nn.Module) -> Iterator[nn.Module]:
    """The outermost modules under ``module`` with two or more layers holding parameters,
    opening containers and modules made of such blocks (a ResNet body, a stage)."""
    for child in module.children():
        if isinstance(child, _CONTAINERS) or _composite_children(child) >= 2:
            yield from _blocks(child)
        elif _layers_with_params(child) >= 2:
            yield child


def _composite_children(module: nn.Module) -> int:
    return sum(1 for c in module.children() if _layers_with_params(c) >= 2)


def _layers_with_params(module: nn.Module) -> int:
    return sum(1 for m in module.modules() if any(True for _ in m.parameters(recurse=False)))


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    forward = type(self).forward
    if not (self.training and torch.is_grad_enabled()):  # validation, EMA, export: as usual
        return forward(self, *args, **kwargs)
    return checkpoint(
        forward,
        self,
        *args,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _norm_statistics_kept(self)),
        **kwargs,
    )


@contextlib.contextmanager
def _norm_statistics_kept(block: nn.Module) -> Iterator[None]:
    """During the recomputation: BatchNorm momentum 0 (running statistics unchanged) and its
    batch counter restored (the forward has already counted this batch)."""
    norms = [
        m
        for m in block.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)
