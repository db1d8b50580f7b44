"""Calibrate a trained checkpoint: per-class logit biases fitted on its train split.

    python scripts/calibrate.py outputs/.../checkpoints/best.pt best_calibrated.pt
    python scripts/calibrate.py best.pt best_calibrated.pt --dataset-root /data/camvid
    python scripts/calibrate.py best.pt best_calibrated.pt --max-images 96   # faster on a CPU
    python scripts/calibrate.py best.pt best_calibrated.pt --precision auto  # bf16 if native

What ``calibrate.enabled=true`` does at the end of training, for a checkpoint trained without
it (segkit.evaluation.logit_bias): the model runs on the train images in each of its recipe's
evaluation modes (``whole`` and ``eval.modes``), one bias per class and mode is fitted so that it
predicts each class as often as the train labels hold it, the val split is scored whole
without and with the biases, and the checkpoint is written to OUT with them (CKPT is left as
it is). eval.py and predict apply the biases of the mode they run, export the whole-image
ones; ``eval.py logit_bias=false`` scores the raw model.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from segkit import dist
from segkit.errors import exit_on_error
from segkit.run.calibration import calibrate_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ckpt", type=Path, metavar="CKPT", help="segkit checkpoint (.pt)")
    p.add_argument("out", type=Path, metavar="OUT", help="the calibrated checkpoint (.pt)")
    p.add_argument("--dataset-root", help="the dataset's root, if not where it was trained")
    p.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16", "auto"),
        help="autocast (fp16: CUDA only); default: what the checkpoint's run validated with",
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument(
        "--max-images",
        type=int,
        help="fit on this many train images, spread evenly over the split (default: all)",
    )
    args = p.parse_args(argv)
    if args.out.suffix != ".pt":
        p.error(f"OUT must end in .pt (a checkpoint), got {args.out}")
    if args.out.resolve() == args.ckpt.resolve():
        p.error("OUT must differ from CKPT (the input stays as it is)")
    if args.batch_size < 1 or args.num_workers < 0:
        p.error("--batch-size must be >= 1 and --num-workers >= 0")
    if args.max_images is not None and args.max_images < 1:
        p.error(f"--max-images must be >= 1, got {args.max_images}")
    return args


def calibrate(args: argparse.Namespace) -> None:
    record = calibrate_checkpoint(
        args.ckpt,
        dist.select_device(args.accelerator, 0),
        out=args.out,
        root=args.dataset_root,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        max_images=args.max_images,
        precision=args.precision,
    )
    modes = ", ".join(record["logit_bias"])
    print(
        f"wrote {args.out}: logit biases for {modes} ({record['images']} train images); val"
        f" mIoU {100 * record['val_miou_raw']:.2f} -> {100 * record['val_miou']:.2f} (whole"
        " image; eval.py scores every mode)"
    )


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the per-mode progress
    exit_on_error(calibrate, args)


if __name__ == "__main__":
    main()
