"""Save the feature maps of chosen layers for one image, from a segkit checkpoint.

    python scripts/feature_maps.py --ckpt outputs/.../checkpoints/best.pt --list-layers
    python scripts/feature_maps.py --ckpt best.pt --image img.jpg \
        --layers encoder.downs.0 encoder.downs.3 --out feature_maps/
    python scripts/feature_maps.py --ckpt best.pt --image img.jpg --layers head \
        --tensorboard runs/features

The checkpoint is a segkit checkpoint (.pt) or weights file (.safetensors), read as data by
``segkit.run.models.load_model`` (its model config may only name segkit's models). The image
is normalised with the checkpoint's dataset.mean/std (ImageNet's when the config has none)
unless --mean/--std are given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from segkit.data.io import read_image
from segkit.data.transforms import normalize
from segkit.errors import exit_on_error
from segkit.reporting.feature_maps import FeatureRecorder, log_feature_maps, save_feature_maps
from segkit.run.models import load_model

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--ckpt",
        type=Path,
        required=True,
        help="segkit checkpoint (.pt) or weights file (.safetensors)",
    )
    p.add_argument("--layers", nargs="+", help="names from model.named_modules()")
    p.add_argument("--image", type=Path, help="input picture")
    p.add_argument("--out", type=Path, help="directory for one PNG grid per layer")
    p.add_argument("--tensorboard", type=Path, help="SummaryWriter log dir for the grids")
    p.add_argument("--max-channels", type=int, default=16)
    p.add_argument("--mean", type=float, nargs=3)
    p.add_argument("--std", type=float, nargs=3)
    p.add_argument("--list-layers", action="store_true", help="print the layer names and exit")
    args = p.parse_args()
    if not args.list_layers and not (args.layers and args.image and (args.out or args.tensorboard)):
        p.error("give --layers, --image and --out or --tensorboard (or --list-layers)")
    return args


def load_input(path: Path, cfg: dict, mean, std) -> torch.Tensor:
    dataset = cfg.get("dataset") or {}
    mean = mean or dataset.get("mean") or IMAGENET_MEAN
    std = std or dataset.get("std") or IMAGENET_STD
    return torch.from_numpy(normalize(read_image(path), mean, std)).unsqueeze(0)


def main() -> None:
    args = parse_args()
    model, info = exit_on_error(load_model, args.ckpt)
    cfg = info["config"]
    if args.list_layers:
        print("\n".join(name for name, _ in model.named_modules() if name))
        return
    x = load_input(args.image, cfg, args.mean, args.std)
    with FeatureRecorder(model, args.layers) as recorder, torch.inference_mode():
        model(x)
    if args.out:
        for path in save_feature_maps(recorder.features, args.out, args.max_channels):
            print(f"wrote {path}")
    if args.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(args.tensorboard) as writer:
            log_feature_maps(writer, recorder.features, step=0, max_channels=args.max_channels)
        print(f"logged {len(recorder.features)} feature grids to {args.tensorboard}")


if __name__ == "__main__":
    main()
