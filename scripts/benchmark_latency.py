"""Forward-pass latency of the model configs: eager vs torch.compile, fp32 vs fp16/bf16.

    python scripts/benchmark_latency.py --model bisenetv2 unet --out results.json
    python scripts/benchmark_latency.py --device cuda --compile --precisions fp32 fp16 bf16

Measures the network forward only: the input already lives on the device, the model is in eval
mode under ``torch.inference_mode``, and every timed call is synchronised (CUDA). Half precision
uses ``torch.autocast`` (the path segkit trains and evaluates with). Reports median and p90 in
ms per batch. CPU defaults (batch 1 and 2, 2 warm-up + 5 timed iterations) suit a 2-core box.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from segkit.run import compose_model_config, instantiate_model, model_config_names

_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", nargs="*", help="config names in conf/model (default: all)")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    p.add_argument("--batch-sizes", type=int, nargs="+", help="default: 1 8 (cuda), 1 2 (cpu)")
    p.add_argument("--warmup", type=int, help="default: 10 (cuda), 2 (cpu)")
    p.add_argument("--iters", type=int, help="timed iterations; default: 50 (cuda), 5 (cpu)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(model)")
    p.add_argument("--precisions", nargs="+", choices=sorted(_DTYPES), help="default: fp32 fp16 "
                   "(cuda), fp32 (cpu); fp16 is skipped on CPU")  # fmt: skip
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--out", type=Path, help="write settings and results as JSON")
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    args.batch_sizes = args.batch_sizes or ([1, 8] if cuda else [1, 2])
    if args.warmup is None:
        args.warmup = 10 if cuda else 2
    args.iters = args.iters or (50 if cuda else 5)
    args.precisions = args.precisions or (["fp32", "fp16"] if cuda else ["fp32"])
    return args


def device_info(device: torch.device) -> dict:
    info = {
        "device_type": device.type,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = platform.processor() or platform.machine()
    return info


def time_forward(model, x: torch.Tensor, dtype, warmup: int, iters: int) -> list[float]:
    """Per-call wall time in ms; the first warm-up call includes any compilation."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    times = []
    with (
        torch.inference_mode(),
        torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
    ):
        for _ in range(warmup + iters):
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    return times


def measure(model, args, device, mode: str, precision: str, batch: int) -> dict:
    row = {"mode": mode, "precision": precision, "batch": batch}
    if device.type == "cpu" and precision == "fp16":
        return row | {"skipped": "fp16 is not benchmarked on CPU (use bf16)"}
    x = torch.randn(batch, 3, *args.size, device=device)
    try:
        times = time_forward(model, x, _DTYPES[precision], args.warmup, args.iters)
    except Exception as err:  # compile/autocast/OOM failures are results too
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return row | {"skipped": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    timed = np.array(times[args.warmup :])
    return row | {
        "first_call_ms": round(times[0], 2),
        "median_ms": round(float(np.median(timed)), 3),
        "p90_ms": round(float(np.percentile(timed, 90)), 3),
        "imgs_per_s": round(batch * 1e3 / float(np.median(timed)), 2),
        "iters": len(timed),
    }


def benchmark_model(name: str, args, device: torch.device) -> list[dict]:
    cfg = compose_model_config(name, args.num_classes, ["model.pretrained=false"])
    model = instantiate_model(cfg).to(device).eval()
    variants = [("eager", model)]
    if args.compile:
        try:
            variants.append(("compile", torch.compile(model)))
        except Exception as err:
            variants.append(("compile", f"{type(err).__name__}: {err}"))
    rows = []
    for mode, net in variants:
        for precision in args.precisions:
            for batch in args.batch_sizes:
                if isinstance(net, str):  # torch.compile itself failed
                    row = {"mode": mode, "precision": precision, "batch": batch, "skipped": net}
                else:
                    row = measure(net, args, device, mode, precision, batch)
                rows.append({"model": name} | row)
                print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row: dict) -> str:
    head = f"{row['model']:<14} {row['mode']:<8} {row['precision']:<5} bs={row['batch']:<3}"
    if "skipped" in row:
        return f"{head} skipped: {row['skipped']}"
    return (
        f"{head} median {row['median_ms']:9.2f} ms  p90 {row['p90_ms']:9.2f} ms  "
        f"{row['imgs_per_s']:8.2f} img/s"
    )


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = device_info(device)
    print(f"device: {info['device']} ({info['device_type']}), torch {info['torch']}", flush=True)
    results = []
    for name in args.model or model_config_names():
        results += benchmark_model(name, args, device)
    if args.out:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        report = info | {"settings": settings, "results": results}
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
