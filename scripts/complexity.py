"""Print parameters and FLOPs of every model config (or one) at a given input size.

    python scripts/complexity.py                      # all conf/model/*.yaml at 512x512
    python scripts/complexity.py --model unet_vgg16 --size 256 256 --num-classes 2

FLOPs count a multiply-add as 2 (torch's FlopCounterMode); MACs = FLOPs / 2 (thop's number).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from segkit.reporting.complexity import complexity_report, format_report
from segkit.run import compose_model_config, instantiate_model, model_config_names


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", nargs="*", help="config names in conf/model (default: all)")
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--json", type=Path, help="also write the reports to this JSON file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    names = args.model or model_config_names()
    reports = {}
    for name in names:
        cfg = compose_model_config(name, args.num_classes, ["model.pretrained=false"])
        model = instantiate_model(cfg)
        reports[name] = complexity_report(model, args.size)
        print(f"{name:<16} {format_report(reports[name])}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
