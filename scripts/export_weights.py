"""Export a checkpoint's model as a weights file to share (safetensors format).

    python scripts/export_weights.py outputs/.../checkpoints/best.pt best.safetensors

The file holds the model's tensors and, as JSON metadata, the run config (model and dataset),
the label space (class names, palette, mean / std) and nothing else: no optimizer, RNG state or
pickled code. ``eval.py ckpt=best.safetensors``, ``model.init_from=best.safetensors`` and
``segkit.run.models.load_model`` accept it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segkit.errors import exit_on_error
from segkit.io.weights_file import export_weights, read_weights_file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ckpt", type=Path, metavar="CKPT", help="segkit checkpoint (.pt)")
    p.add_argument("out", type=Path, metavar="OUT", help="the weights file (.safetensors)")
    args = p.parse_args(argv)
    if args.out.suffix != ".safetensors":
        p.error(f"OUT must end in .safetensors, got {args.out}")
    if args.out.resolve() == args.ckpt.resolve():
        p.error("OUT must differ from CKPT")
    return args


def export(args: argparse.Namespace) -> None:
    out = export_weights(args.ckpt, args.out)
    info = read_weights_file(out)
    size_mb = out.stat().st_size / 2**20
    print(
        f"wrote {out}: {len(info['model'])} tensors, {size_mb:.2f} MiB; model "
        f"{info['config']['model']['_target_']}; classes {info.get('class_names')}"
    )


def main() -> None:
    exit_on_error(export, parse_args())


if __name__ == "__main__":
    main()
