"""Parameter and FLOP counts (the notes' thop ``profile``, with PyTorch's own counter).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts a multiply-add as
**2 FLOPs** and only counts matrix-multiply-like ops (convolutions, linear/matmul, attention);
bias adds, BatchNorm, activations, pooling and interpolation are not counted. thop and most
papers report MACs (multiply-accumulates), so ``macs = flops / 2`` is reported alongside:
``Conv2d(C_in, C_out, k)`` on an ``H_out x W_out`` output costs
``k*k*C_in/groups*C_out*H_out*W_out`` MACs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "complexity_report",
    "count_flops",
    "count_parameters",
    "format_report",
    "log_complexity",
]

log = logging.getLogger("segkit")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter element counts; shared parameters are counted once."""
    params = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return total, trainable


def count_flops(model: nn.Module, input_shape: Sequence[int] = (1, 3, 512, 512)) -> int:
    """FLOPs (2 per multiply-add) of one eval-mode forward on zeros of ``input_shape``.

    Runs under ``torch.no_grad`` on the model's device and dtype; the model's train/eval mode is
    restored afterwards (eval mode matters: auxiliary heads only run in training).
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(tuple(input_shape), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def complexity_report(model: nn.Module, input_size: Sequence[int] = (512, 512)) -> dict:
    """Params and FLOPs at batch 1 and ``input_size`` ``(H, W)``, 3 input channels.

    Keys: ``params_total``, ``params_trainable``, ``flops``, ``macs``, ``input_size`` ([H, W]).
    """
    h, w = input_size
    total, trainable = count_parameters(model)
    in_channels = getattr(model, "in_channels", 3)
    flops = count_flops(model, (1, in_channels, h, w))
    return {
        "params_total": total,
        "params_trainable": trainable,
        "flops": flops,
        "macs": flops // 2,
        "input_size": [h, w],
    }


def format_report(report: dict) -> str:
    """One line: ``params 24.89 M (trainable 24.89 M) | 902.10 GFLOPs = 451.05 GMACs @ 512x512``."""
    h, w = report["input_size"]
    return (
        f"params {report['params_total'] / 1e6:.2f} M "
        f"(trainable {report['params_trainable'] / 1e6:.2f} M) | "
        f"{report['flops'] / 1e9:.2f} GFLOPs = {report['macs'] / 1e9:.2f} GMACs @ {h}x{w}"
    )


def log_complexity(model: nn.Module, input_size: Sequence[int]) -> dict | None:
    """``complexity_report`` at the training input size, logged once; None (with a warning)
    for a model the FLOP counter cannot trace, which must not stop training."""
    try:
        report = complexity_report(model, tuple(input_size))
    except Exception as e:
        log.warning("complexity report failed: %s", e)
        return None
    log.info("model: %s", format_report(report))
    return report
