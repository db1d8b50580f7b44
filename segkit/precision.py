"""Numerics of a device: ``trainer.precision`` (fp32 / fp16 / bf16 / auto) and its autocast,
channels-last memory format, and the process-wide cuDNN / TF32 switches. Training, evaluation
and prediction share them, so a model is scored in the precision it was trained in."""

from __future__ import annotations

import logging

import torch

from segkit.errors import ConfigError

log = logging.getLogger("segkit")

AMP_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def amp_dtype(precision: str) -> torch.dtype | None:
    """``trainer.precision`` -> the autocast dtype (None for fp32)."""
    if precision not in AMP_DTYPES:
        raise ConfigError(f"trainer.precision={precision!r}: expected one of {sorted(AMP_DTYPES)}")
    return AMP_DTYPES[precision]


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX512-BF16 or AMX: AMD Zen 4, Intel Cooper Lake /
    Sapphire Rapids and newer). Elsewhere bf16 autocast is emulated and slower than fp32
    (``scripts/benchmark.py --compare-precision bf16`` measures it)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``trainer.precision`` -> fp32 | fp16 | bf16. ``auto``: bf16 on a CUDA GPU that supports
    it (Ampere and newer), fp16 with loss scaling on older GPUs; on a CPU bf16 where it is
    native (``cpu_has_native_bf16``), else fp32."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


_warned_emulated = False


def warn_emulated_bf16(precision: str, device: torch.device, key: str) -> bool:
    """Warn, once per process, that ``precision`` (resolved) is bf16 on a CPU that only emulates
    it; ``key`` names the setting to change. True when it warned."""
    global _warned_emulated
    if _warned_emulated or precision != "bf16" or device.type != "cpu" or cpu_has_native_bf16():
        return False
    _warned_emulated = True
    message = (
        "{k}=bf16 on a CPU without native bf16 (AVX512-BF16 or AMX): autocast emulates it and "
        "runs several times slower than fp32; set {k}=auto "
        "(bf16 where the CPU has it, else fp32) or {k}=fp32"
    )
    log.warning(message.format(k=key))
    return True


def use_channels_last(setting: bool | str, device: torch.device) -> bool:
    """``trainer.channels_last``: ``auto`` (the default) -> on CUDA only; ``true`` -> on any
    device (on a CPU with oneDNN most conv nets also step faster); ``false`` -> never."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def configure_backends(device: torch.device, *, cudnn_benchmark: bool, tf32: bool) -> None:
    """Process-wide CUDA switches (nothing on CPU): cuDNN autotuning (one search per input
    shape: leave it off when shapes vary from batch to batch) and TF32 matmuls/convolutions
    (Ampere and newer; ~10 mantissa bits in products, fp32 accumulation)."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """One code path for fp32/fp16/bf16: autocast is simply disabled for fp32 (``dtype=None``)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
