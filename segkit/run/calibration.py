"""Calibrating a checkpoint (``calibrate.enabled=true``, ``scripts/calibrate.py``): fit its
per-class logit biases on the train split (`segkit.evaluation.logit_bias`), score the val
split without and with them, and store them in the checkpoint."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from segkit import precision as prec
from segkit.data.original_size import original_size_loader
from segkit.evaluation.logit_bias import MAX_PIXELS, LogitBias, collect, fit_bias, spread_indices
from segkit.evaluation.metrics import ConfusionMatrix
from segkit.evaluation.metrics import evaluate as evaluate_model
from segkit.evaluation.predictors import predictor_for
from segkit.io import checkpoint as ckpt_io
from segkit.run.building import dataset_factory
from segkit.run.evaluation import eval_dataset_config, eval_modes, eval_precision
from segkit.run.models import checkpoint_input_shape, checkpoint_window, load_model

log = logging.getLogger("segkit")


def calibrate_checkpoint(
    path: str | Path,
    device: torch.device,
    *,
    out: str | Path | None = None,
    root: str | None = None,
    batch_size: int = 4,
    num_workers: int = 2,
    max_images: int | None = None,
    precision: str | None = None,
) -> dict:
    """Fit the logit biases of checkpoint ``path`` on its dataset's train split, once for
    ``whole`` and once for each of the recipe's other ``eval.modes`` (with its
    ``eval.tta.scales``), each scored at the original resolution; score the val split (if any)
    whole without and with them; write the checkpoint with ``logit_bias`` (mode -> C floats)
    and ``calibration`` (the record below) to ``out`` (default: ``path``), atomically.
    ``root`` replaces the dataset root; ``max_images`` fits on that many train images, spread
    evenly (`spread_indices`); ``precision`` (fp32 | bf16 | fp16 | auto) replaces the autocast
    the checkpoint's run validated with (scripts/calibrate.py --precision). -> the record:
    ``logit_bias``, ``images`` and ``pixels`` (per mode), ``val_miou_raw``, ``val_miou`` (whole
    image; NaN without a val split)."""

    model, ckpt = load_model(path, map_location="cpu")
    model = model.to(device)
    # what eval.py does without options: the stored dataset (root replaced), recipe's modes
    request = {"ckpt": str(path), "eval": {"modes": None, "tta": {"scales": None}}, "dataset": None}
    request = OmegaConf.create({**request, "dataset_root": root})
    ds_cfg = eval_dataset_config(request, ckpt["config"]["dataset"], str(path))
    shape = checkpoint_input_shape(ckpt)
    ds_cfg["input_shape"], ds_cfg["val_input_shape"] = list(shape), None
    make = dataset_factory(ds_cfg)
    amp = prec.amp_dtype(eval_precision(precision, ckpt, device, key="--precision"))
    modes, scales = eval_modes(request, ckpt)
    train = make(split=ds_cfg.get("train_split") or "train", train=False)
    images = spread_indices(len(train), max_images)
    loader = original_size_loader(train, batch_size, num_workers, images)
    biases, pixels = fit_mode_biases(
        model, loader, train, ["whole", *modes],
        window=checkpoint_window(ckpt), scales=scales, device=device, amp=amp,
    )  # fmt: skip
    record = {"logit_bias": biases, "images": len(loader.sampler), "pixels": pixels}
    val_split = ds_cfg.get("val_split", "val")
    val = make(split=val_split, train=False) if val_split else None
    record["val_miou_raw"], record["val_miou"] = score_whole(
        model, biases["whole"], val, batch_size, num_workers, device=device, amp=amp
    )
    ckpt["logit_bias"] = biases
    ckpt["calibration"] = {k: v for k, v in record.items() if k != "logit_bias"}
    ckpt_io.save_atomic(ckpt, Path(out or path))
    log.info(
        "calibrated %s: val mIoU %.4f -> %.4f (whole image; eval.py scores every mode)",
        out or path, record["val_miou_raw"], record["val_miou"],
    )  # fmt: skip
    return record


def score_whole(
    model, bias, dataset, batch_size: int, num_workers: int, *, device, amp
) -> tuple[float, float]:
    """Whole-image val mIoU at the original resolution of ``model`` without and with the logit
    ``bias`` (C floats); (NaN, NaN) when there is no val ``dataset``."""

    if dataset is None:
        return math.nan, math.nan
    loader = original_size_loader(dataset, batch_size, num_workers)
    scores = []
    for predictor in (model, LogitBias(model, bias)):
        cm = ConfusionMatrix(dataset.num_classes, dataset.ignore_index, device=device)
        metrics = evaluate_model(predictor.to(device), loader, cm, device=device, amp_dtype=amp)
        scores.append(metrics["miou"])
    return scores[0], scores[1]


def fit_mode_biases(
    model, loader, dataset, modes: list[str], *, window, scales, device, amp
) -> tuple[dict[str, list[float]], int]:
    """One set of logit biases per evaluation mode (each mode once, in order), fitted on
    ``loader`` (original-size batches of ``dataset``, or of the images its sampler picks)
    -> ({mode: C floats}, pixels per mode). ``window``: of the ``slide`` modes (as eval.py's
    default, `checkpoint_window`)."""

    per_image = max(1, math.ceil(MAX_PIXELS / max(1, len(loader.sampler))))
    biases: dict[str, list[float]] = {}
    pixels = 0
    for spec in dict.fromkeys(modes):
        t0 = time.perf_counter()
        predictor = predictor_for(
            spec, model, window=window, scales=scales, batch=loader.batch_size
        )
        logits, labels = collect(
            predictor, loader, dataset.num_classes, dataset.ignore_index,
            device=device, amp_dtype=amp, pixels_per_image=per_image,
        )  # fmt: skip
        biases[spec] = [round(float(b), 6) for b in fit_bias(logits, labels, dataset.num_classes)]
        pixels = len(labels)
        log.info(
            "logit biases for mode %s (%d train images, %d pixels, %.0f s): %s",
            spec, len(loader.sampler), pixels, time.perf_counter() - t0, biases[spec],
        )  # fmt: skip
    return biases, pixels
