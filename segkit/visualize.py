"""Pictures for TensorBoard and files: coloured masks, image|label|prediction panels,
confusion-matrix heat maps, palette PNGs. Pure numpy/cv2/PIL; no torch state."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

IGNORE_COLOUR = (255, 255, 255)


def colorize(mask: np.ndarray, palette: list[list[int]], ignore_index: int = 255) -> np.ndarray:
    """(H,W) integer ids -> (H,W,3) uint8 RGB; ids outside the palette (ignore) are white."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:] = IGNORE_COLOUR
    for i, colour in enumerate(palette[:256]):
        lut[i] = colour
    lut[ignore_index % 256] = IGNORE_COLOUR
    return lut[np.clip(mask, 0, 255).astype(np.uint8)]


def denormalize(image: np.ndarray, mean, std) -> np.ndarray:
    """(3,H,W) float normalised as (x/255 - mean)/std -> (H,W,3) uint8 RGB."""
    img = image.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def panel(image: np.ndarray, label_rgb: np.ndarray, pred_rgb: np.ndarray) -> np.ndarray:
    """Three (H,W,3) uint8 pictures side by side with a 2-pixel white gutter: (H, 3W+4, 3)."""
    h = image.shape[0]
    gutter = np.full((h, 2, 3), 255, np.uint8)
    return np.concatenate([image, gutter, label_rgb, gutter, pred_rgb], axis=1)


def confusion_image(mat: np.ndarray, cell: int = 24) -> np.ndarray:
    """(C,C) counts (rows = label, cols = prediction) -> (C*cell, C*cell, 3) uint8 RGB heat map
    of the row-normalised matrix (each row shows where the pixels of one true class went)."""
    mat = mat.astype(np.float64)
    rows = mat.sum(axis=1, keepdims=True)
    norm = np.divide(mat, rows, out=np.zeros_like(mat), where=rows > 0)
    grey = (norm * 255).astype(np.uint8)
    big = cv2.resize(grey, None, fx=cell, fy=cell, interpolation=cv2.INTER_NEAREST)
    heat = cv2.applyColorMap(big, cv2.COLORMAP_VIRIDIS)
    return cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)


def save_palette_png(ids: np.ndarray, palette: list[list[int]], path: Path) -> None:
    """(H,W) class ids -> a palette ("P" mode) PNG: pixel values are the ids, colours the
    palette (ids past the palette are white)."""
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    flat = [v for colour in palette for v in colour]
    im.putpalette(flat + [255, 255, 255] * (256 - len(palette)))
    im.save(path)


class PredictionWriter:
    """``on_batch`` hook of :func:`segkit.metrics.evaluate`: saves each prediction as a palette
    PNG named after its image (``files[i][0]``), in dataset order, into ``folder``."""

    def __init__(self, files: list, palette: list[list[int]], folder: Path) -> None:
        self.files, self.palette, self.folder, self.index = files, palette, folder, 0
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, images, masks, preds) -> None:
        for pred in preds:
            stem = Path(self.files[self.index][0]).stem
            save_palette_png(pred.cpu().numpy(), self.palette, self.folder / f"{stem}.png")
            self.index += 1
