"""Save a grid of augmented training samples, to see what the model is really fed.

    python scripts/dump_augmented.py dataset=demo --n 16 --out grid.png
    python scripts/dump_augmented.py dataset=camvid dataset.root=/data/camvid --epoch 3
    python scripts/dump_augmented.py dataset/augment=strong --n 4 --draws 6   # 6 draws each

Positional arguments are Hydra overrides of conf/train.yaml (the repo's conf/ folder, found
next to this script). Sample i is drawn exactly as in training epoch --epoch (train=True, the
dataset's own augmentation stream), then shown as image | mask over the image (palette colours,
ignore_index white), --cols pairs per row, with a colour legend underneath. With --draws K,
each sample is shown K times (epochs --epoch .. --epoch+K-1), one sample per row: what the
configured ``dataset.augment.train`` list (printed) makes of it.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np
from hydra import compose, initialize_config_dir
from PIL import Image

from segkit.errors import ConfigError, DataError
from segkit.reporting.figures import colorize
from segkit.run import dataset_factory

CONF = Path(__file__).resolve().parents[1] / "conf"
GUTTER = 4


def overlay(image: np.ndarray, mask: np.ndarray, palette, ignore_index: int) -> np.ndarray:
    """(H,W,3) uint8 image + (H,W) ids -> image blended 50/50 with class colours, ignore white."""
    colours = colorize(mask, palette, ignore_index)
    out = (0.5 * image + 0.5 * colours).astype(np.uint8)
    out[mask == ignore_index] = 255
    return out


def sample_tiles(ds, n: int, epochs: range = range(1)) -> list[np.ndarray]:
    """image | overlay (H, 2W+GUTTER, 3) uint8 for samples 0..n-1, each at every epoch."""
    tiles = []
    for i, epoch in ((i, e) for i in range(min(n, len(ds))) for e in epochs):
        ds.set_epoch(epoch)
        image_t, mask_t = ds[i]
        image = image_t.numpy().transpose(1, 2, 0)  # the uint8 sample as the model gets it
        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        over = overlay(image, mask_t.numpy(), ds.palette, ds.ignore_index)
        gap = np.full((image.shape[0], GUTTER, 3), 255, np.uint8)
        tiles.append(np.concatenate([image, gap, over], axis=1))
    return tiles


def grid(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    """Tiles (all the same size) in rows of `cols`, GUTTER-pixel white gaps."""
    h, w = tiles[0].shape[:2]
    rows = math.ceil(len(tiles) / cols)
    out = np.full((rows * (h + GUTTER) + GUTTER, cols * (w + GUTTER) + GUTTER, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        y, x = GUTTER + (k // cols) * (h + GUTTER), GUTTER + (k % cols) * (w + GUTTER)
        out[y : y + h, x : x + w] = tile
    return out


def legend(names: list[str], palette, width: int) -> np.ndarray:
    """Rows of colour swatch + class name, `width` pixels wide; ignore listed last (white)."""
    entries = [(n, tuple(int(c) for c in palette[i])) for i, n in enumerate(names)]
    entries.append(("ignore", (255, 255, 255)))
    per_row = max(1, width // 140)
    out = np.full((math.ceil(len(entries) / per_row) * 20 + 4, width, 3), 255, np.uint8)
    for k, (name, colour) in enumerate(entries):
        x, y = 6 + (k % per_row) * 140, 4 + (k // per_row) * 20
        cv2.rectangle(out, (x, y), (x + 14, y + 14), colour, -1)
        cv2.rectangle(out, (x, y), (x + 14, y + 14), (0, 0, 0), 1)
        cv2.putText(out, name[:16], (x + 20, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml")
    p.add_argument("--n", type=int, default=16, help="number of samples")
    p.add_argument("--out", type=Path, default=Path("augmented.png"))
    p.add_argument("--epoch", type=int, default=0, help="augmentation stream of this epoch")
    p.add_argument("--cols", type=int, default=4, help="image|mask pairs per row")
    p.add_argument("--draws", type=int, default=1, help="draws per sample (then one per row)")
    p.add_argument("--split", default=None, help="default: dataset.train_split")
    return p.parse_intermixed_args(argv)  # overrides may come before and after the options


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=args.overrides)
    try:
        make = dataset_factory(cfg.dataset)
        ds = make(split=args.split or cfg.dataset.train_split, train=True)
        draws = max(1, args.draws)
        tiles = sample_tiles(ds, args.n, range(args.epoch, args.epoch + draws))
    except (ConfigError, DataError) as e:  # a config or file the user must fix
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(ds.pipeline)
    cols = draws if draws > 1 else args.cols
    picture = grid(tiles, max(1, min(cols, len(tiles))))
    picture = np.concatenate([picture, legend(ds.class_names, ds.palette, picture.shape[1])])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(args.out)
    epochs = (
        f"epoch {args.epoch}" if draws == 1 else f"epochs {args.epoch}..{args.epoch + draws - 1}"
    )
    print(f"wrote {len(tiles)} augmented samples ({epochs}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
