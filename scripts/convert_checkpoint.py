"""Convert a checkpoint that only loads by unpickling into one that loads as data.

    python scripts/convert_checkpoint.py whole_model.pth weights.pt --trust   # torch.save(model)
    python scripts/convert_checkpoint.py colleague.pt converted.pt --trust

segkit reads checkpoints with ``torch.load(weights_only=True)``, which refuses pickled Python
objects because unpickling them can run any code the file names. This script is the one,
explicit way past that: with ``--trust`` it unpickles IN (``weights_only=False``), so use it only
on a file you trust; without ``--trust`` it lists what IN would import and stops.

OUT holds only tensors and plain data: a pickled ``nn.Module`` becomes its state dict (use it as
``model.init_from=OUT``); a segkit checkpoint keeps every entry, RNG states converted, so
``resume=OUT`` continues exactly; numpy values become tensors / numbers, and anything
else that is not plain data is dropped and listed. OUT is checked to load with
``weights_only=True`` before the script reports success.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segkit.errors import CheckpointError, exit_on_error
from segkit.io.checkpoint import plain_rng_state, save_atomic
from segkit.io.partial_load import UnsafeCheckpointError, read_checkpoint

_LEAF_TYPES = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device)
_DROP = object()  # marks a value that is not plain data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", type=Path, metavar="IN", help="the checkpoint to convert")
    p.add_argument("out", type=Path, metavar="OUT", help="the converted file (must not exist)")
    p.add_argument(
        "--trust",
        action="store_true",
        help="unpickle IN (weights_only=False): this runs any code IN holds; only for files "
        "from a source you trust",
    )
    return p.parse_args(argv)


def read_source(src: Path, trust: bool) -> Any:
    """IN's content: read as data when it allows it, else unpickled when ``trust``."""
    try:
        return read_checkpoint(src)
    except UnsafeCheckpointError as e:
        if not trust:
            raise UnsafeCheckpointError(
                f"{e}. Nothing was written: add --trust to unpickle it (only if you trust it)"
            ) from None
    print(f"--trust: unpickling {src} with weights_only=False", file=sys.stderr)
    try:
        return torch.load(src, map_location="cpu", weights_only=False)
    except Exception as e:  # a missing class, a truncated file, ...
        raise CheckpointError(f"{src} could not be unpickled: {e}") from e


def to_plain(obj: Any, where: str, dropped: list[str]) -> Any:
    """``obj`` as tensors and plain data; what cannot be converted is listed in ``dropped``
    and returned as ``_DROP``."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if type(obj) in _LEAF_TYPES:
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        return torch.from_numpy(obj.copy())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        pairs = ((k, to_plain(v, f"{where}[{k!r}]", dropped)) for k, v in obj.items())
        return {k: v for k, v in pairs if v is not _DROP and type(k) in _LEAF_TYPES}
    if isinstance(obj, list | tuple):
        items = (to_plain(v, f"{where}[{i}]", dropped) for i, v in enumerate(obj))
        kept = [v for v in items if v is not _DROP]
        return kept if isinstance(obj, list) else tuple(kept)
    dropped.append(f"{where} ({type(obj).__module__}.{type(obj).__qualname__})")
    return _DROP


def convert(src: Path, out: Path, trust: bool) -> None:
    """Read ``src``, convert it to plain data, write ``out`` and read it back as data."""
    if not src.is_file():
        raise CheckpointError(f"{src} not found: give the checkpoint file to convert")
    if out.exists() or out.resolve() == src.resolve():
        raise CheckpointError(f"{out} exists: choose a new file name for the converted copy")
    obj = read_source(src, trust)
    if isinstance(obj, dict) and isinstance(obj.get("rng"), dict):  # a segkit checkpoint
        obj = {**obj, "rng": plain_rng_state(obj["rng"])}
    dropped: list[str] = []
    plain = to_plain(obj, "IN", dropped)
    if not isinstance(plain, dict):
        raise CheckpointError(f"{src}: nothing convertible found (dropped: {', '.join(dropped)})")
    save_atomic(plain, out)
    read_checkpoint(out)  # proves OUT loads with weights_only=True
    tensors = sum(isinstance(v, torch.Tensor) for v in _leaves(plain))
    print(f"wrote {out}: {tensors} tensors, loads with weights_only=True")
    for entry in dropped:
        print(f"  dropped (not plain data): {entry}")


def _leaves(obj: Any):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _leaves(v)
    else:
        yield obj


def main() -> None:
    args = parse_args()
    exit_on_error(lambda a: convert(a.src, a.out, a.trust), args)


if __name__ == "__main__":
    main()
