"""Calibrating a checkpoint (``trainer.calibrate=true``, ``scripts/calibrate.py``): fit its
per-class logit biases on the train split (`segkit.calibrate`), score the val split without and
with them, and store them in the checkpoint."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from segkit import checkpoint as ckpt_io
from segkit import dist
from segkit.calibrate import MAX_PIXELS, LogitBias, collect, fit_bias
from segkit.metrics import ConfusionMatrix
from segkit.metrics import evaluate as evaluate_model
from segkit.run.building import dataset_factory
from segkit.run.evaluation import eval_modes, eval_precision
from segkit.targets import check_dataset_target

log = logging.getLogger("segkit")


def calibrate_checkpoint(
    path: str | Path,
    device: torch.device,
    *,
    out: str | Path | None = None,
    root: str | None = None,
    batch_size: int = 4,
    num_workers: int = 2,
) -> dict:
    """Fit the logit biases of checkpoint ``path`` on its dataset's train split, once for
    ``whole`` and once for each of the recipe's other ``eval.modes`` (with its
    ``eval.tta.scales``), each scored at the original resolution; score the val split (if any)
    whole without and with them; write the checkpoint with ``logit_bias`` (mode -> C floats)
    and ``calibration`` (the record below) to ``out`` (default: ``path``), atomically.
    ``root`` replaces the dataset root. -> the record: ``logit_bias``, ``pixels`` (per mode),
    ``val_miou_raw``, ``val_miou`` (whole image; NaN without a val split)."""
    from segkit.data.original import OriginalSizeMasks, collate_original
    from segkit.inference import checkpoint_input_shape, predictor_for

    model, ckpt = ckpt_io.load_model(path, map_location="cpu")
    model = model.to(device)
    ds_cfg = dict(ckpt["config"]["dataset"])
    check_dataset_target(ds_cfg, str(path))
    if root:
        ds_cfg["root"] = root
    shape = checkpoint_input_shape(ckpt)
    ds_cfg["input_shape"], ds_cfg["val_input_shape"] = list(shape), None
    make = dataset_factory(ds_cfg)
    amp = dist.amp_dtype(eval_precision(None, ckpt, device))
    recipe = OmegaConf.create({"ckpt": str(path), "modes": None, "tta": {"scales": None}})
    modes, scales = eval_modes(recipe, ckpt)

    def loader(split: str) -> DataLoader:
        ds = make(split=split, train=False)
        return DataLoader(
            OriginalSizeMasks(ds),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate_original,
        )

    train = loader(ds_cfg.get("train_split") or "train")
    num_classes, ignore = train.dataset.dataset.num_classes, train.dataset.dataset.ignore_index
    per_image = max(1, math.ceil(MAX_PIXELS / max(1, len(train.dataset))))
    biases: dict[str, list[float]] = {}
    for spec in dict.fromkeys(["whole", *modes]):  # whole first (validation, export), once
        t0 = time.perf_counter()
        predictor = predictor_for(spec, model, window=shape, scales=scales, batch=batch_size)
        logits, labels = collect(
            predictor, train, num_classes, ignore,
            device=device, amp_dtype=amp, pixels_per_image=per_image,
        )  # fmt: skip
        biases[spec] = [round(float(b), 6) for b in fit_bias(logits, labels, num_classes)]
        log.info(
            "logit biases for mode %s (%d train pixels, %.0f s): %s",
            spec, len(labels), time.perf_counter() - t0, biases[spec],
        )  # fmt: skip
    record = {"logit_bias": biases, "pixels": len(labels), "val_miou_raw": math.nan}
    record["val_miou"] = math.nan
    val_split = ds_cfg.get("val_split", "val")
    if val_split:
        val = loader(val_split)
        whole = LogitBias(model, biases["whole"])
        for key, predictor in (("val_miou_raw", model), ("val_miou", whole)):
            cm = ConfusionMatrix(num_classes, ignore, device=device)
            scores = evaluate_model(predictor.to(device), val, cm, device=device, amp_dtype=amp)
            record[key] = scores["miou"]
    ckpt["logit_bias"] = biases
    ckpt["calibration"] = {k: v for k, v in record.items() if k != "logit_bias"}
    ckpt_io.save_atomic(ckpt, Path(out or path))
    log.info(
        "calibrated %s: val mIoU %.4f -> %.4f (whole image; eval.py scores every mode)",
        out or path, record["val_miou_raw"], record["val_miou"],
    )  # fmt: skip
    return record
