"""``python eval.py ckpt=PATH``: evaluate a checkpoint at the images' original resolution.

Training-time validation scores the letterboxed input (padding ignored). Here each
prediction is cropped out of the letterbox, its logits resized (bilinear) to the original
image size and compared with the original mask, as the user's notes do with their PNGs,
but in memory: one confusion matrix, no files read back.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from segkit import checkpoint as ckpt_io
from segkit.dist import select_device
from segkit.metrics import ConfusionMatrix

log = logging.getLogger("segkit")


def dataset_config(cfg: DictConfig, stored: dict) -> dict:
    """The dataset partial: ``dataset=NAME`` if given, else the checkpoint's own."""
    ds = OmegaConf.to_container(cfg.dataset, resolve=True) if cfg.get("dataset") else dict(stored)
    if cfg.dataset_root:
        ds["root"] = cfg.dataset_root
    return ds


def restore_logits(logits: torch.Tensor, in_hw: tuple[int, int], orig_hw: tuple[int, int]):
    """(C,h,w) logits of a letterboxed input -> (C,H0,W0) logits at the original size."""
    from segkit.data.transforms import letterbox_geometry

    nh, nw, top, left = letterbox_geometry(orig_hw, in_hw)
    crop = logits[:, top : top + nh, left : left + nw]
    return F.interpolate(crop[None].float(), size=orig_hw, mode="bilinear", align_corners=False)[0]


def save_palette_png(ids: np.ndarray, palette: list[list[int]], path: Path) -> None:
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    flat = [v for colour in palette for v in colour]
    im.putpalette(flat + [255, 255, 255] * (256 - len(palette)))
    im.save(path)


def evaluate(cfg: DictConfig) -> dict:
    """Score ``cfg.ckpt`` on ``cfg.split``; prints a per-class table, writes metrics.json."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    device = select_device(cfg.accelerator, 0)
    model, ckpt = ckpt_io.build_model(cfg.ckpt, map_location="cpu")
    model.to(device)
    ds = instantiate(dataset_config(cfg, ckpt["config"]["dataset"]))(split=cfg.split, train=False)
    cm = ConfusionMatrix(ds.num_classes, ds.ignore_index, device=device)
    pred_dir = out_dir / "predictions"
    if cfg.save_masks:
        pred_dir.mkdir(parents=True, exist_ok=True)
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.precision]
    index = 0
    with torch.inference_mode():
        for images, _ in tqdm(loader, desc="eval"):
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                logits = model(images.to(device))["out"]
            for lg in logits:
                _, mask = ds.load_raw(index)
                pred = restore_logits(lg, tuple(images.shape[-2:]), mask.shape[:2]).argmax(0)
                cm.update(pred[None], torch.from_numpy(mask.astype(np.int64))[None].to(device))
                if cfg.save_masks:
                    stem = Path(ds.files[index][0]).stem
                    save_palette_png(pred.cpu().numpy(), ds.palette, pred_dir / f"{stem}.png")
                index += 1
    metrics = cm.compute()
    report = {
        "checkpoint": str(cfg.ckpt),
        "split": cfg.split,
        "num_images": index,
        "class_names": list(ds.class_names),
        **metrics,
    }
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    print(format_metrics(metrics, ds.class_names))
    log.info("metrics written to %s", out_dir / "metrics.json")
    return report


def format_metrics(metrics: dict, class_names: list[str]) -> str:
    """Per-class IoU / recall / precision / Dice table followed by the means."""

    def pct(v: float) -> str:
        return "   -  " if v is None or math.isnan(v) else f"{100 * v:6.2f}"

    width = max(8, *(len(n) for n in class_names))
    lines = [f"{'class':<{width}}    IoU  Recall  Precision   Dice"]
    for i, name in enumerate(class_names):
        lines.append(
            f"{name:<{width}} {pct(metrics['iou'][i])}  {pct(metrics['recall'][i])}     "
            f"{pct(metrics['precision'][i])} {pct(metrics['dice'][i])}"
        )
    lines.append(
        f"mIoU {pct(metrics['miou'])}  mPA {pct(metrics['mpa'])}  pixel acc "
        f"{pct(metrics['pixel_acc'])}  mDice {pct(metrics['mdice'])}  FWIoU {pct(metrics['fwiou'])}"
    )
    return "\n".join(lines)
