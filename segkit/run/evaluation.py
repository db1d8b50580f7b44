"""The evaluate task of ``eval.py``: score a checkpoint at the images' original resolution in
one or more evaluation modes."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from segkit import dist
from segkit import precision as prec
from segkit.config.checks import check_components, check_eval_config
from segkit.data.original_size import original_size_loader
from segkit.errors import ConfigError
from segkit.evaluation.logit_bias import stored_biases, with_bias
from segkit.evaluation.metrics import ConfusionMatrix, format_table
from segkit.evaluation.metrics import evaluate as evaluate_model
from segkit.evaluation.predictors import (
    DEFAULT_SCALES,
    check_scales,
    format_modes,
    parse_mode,
    predictor_for,
)
from segkit.io.allowlist import check_dataset_target
from segkit.reporting.figures import PredictionWriter, write_eval_report
from segkit.reporting.run_files import log_to_files
from segkit.run.building import dataset_factory
from segkit.run.models import checkpoint_input_shape, checkpoint_window, load_model

log = logging.getLogger("segkit")


def evaluate(cfg: DictConfig, out_dir: Path | None = None) -> dict:
    """Score ``cfg.ckpt`` on ``cfg.split`` at the original resolution, once per evaluation mode;
    prints per-class and per-mode tables, writes ``metrics.json`` (the first mode, plus every
    mode's means), pictures, and ``predictions/*.png`` with ``save_masks`` into ``out_dir``
    (default: Hydra's run directory)."""

    check_eval_config(cfg)
    out_dir = Path(out_dir or HydraConfig.get().runtime.output_dir)
    device = dist.select_device(cfg.launch.accelerator, 0)
    model, ckpt = load_model(cfg.ckpt, map_location="cpu")
    precision = eval_precision(cfg.precision, ckpt, device)
    ds_cfg = eval_dataset_config(cfg, ckpt["config"]["dataset"], str(cfg.ckpt))
    # the model's own input size (what validation used), also when dataset=NAME names a config
    # whose input_shape is another: eval.py then reproduces the training-time numbers
    shape = cfg.input_shape or checkpoint_input_shape(ckpt)
    ds_cfg["input_shape"], ds_cfg["val_input_shape"] = list(shape), None
    ds = dataset_factory(ds_cfg)(split=cfg.split, train=False)
    loader = original_size_loader(ds, cfg.loader.batch_size, cfg.loader.num_workers)
    writer = PredictionWriter(ds.files, ds.palette, out_dir / "predictions")
    window = cfg.eval.slide.window or checkpoint_window(ckpt)
    modes, scales = eval_modes(cfg, ckpt)
    biases = stored_biases(ckpt, ds.num_classes, str(cfg.ckpt)) if cfg.logit_bias else {}
    if biases:
        log.info("calibrated checkpoint: logit biases of the modes %s", ", ".join(biases))
    results = {}
    for i, spec in enumerate(modes):
        hook = writer if cfg.save_masks and i == 0 else None  # masks of the first mode
        results[spec] = score_mode(
            cfg, spec, model.to(device), loader, ds, window, hook, precision, scales, biases
        )
    metrics = results[modes[0]]
    confusion = metrics.pop("confusion")
    report = {"checkpoint": str(cfg.ckpt), "split": cfg.split, "num_images": len(ds)}
    report["logit_bias"] = modes[0] in biases
    report.update(class_names=list(ds.class_names), **metrics)
    means = ("miou", "mpa", "pixel_acc", "mdice")
    report["modes"] = {spec: {k: m[k] for k in means} for spec, m in results.items()}
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    table = format_table(metrics, ds.class_names) + "\n\n" + format_modes(results)
    print(table)
    log_to_files(f"per-class metrics ({cfg.split}, mode {modes[0]}):\n{table}")
    scores = {**metrics, "confusion": confusion}
    files = write_eval_report(out_dir, scores, ds.class_names, ds.palette)
    log.info("written: %s", ", ".join(str(p) for p in [out_dir / "metrics.json", *files]))
    return report


def score_mode(
    cfg: DictConfig,
    spec: str,
    model,
    loader,
    ds,
    window,
    on_batch,
    precision: str,
    scales: tuple[float, ...],
    biases: Mapping[str, Sequence[float]] | None = None,
) -> dict:
    """``metrics.evaluate`` with the predictor of one evaluation mode (``inference``; ``+ms``
    averages over ``scales``; plus the mode's logit ``biases``, `segkit.evaluation.logit_bias`),
    under autocast to ``precision``."""

    device = next(model.parameters()).device
    predictor = predictor_for(
        spec,
        model,
        window=window,
        overlap=cfg.eval.slide.overlap,
        scales=scales,
        batch=cfg.loader.batch_size,
    )
    metrics = evaluate_model(
        with_bias(predictor, biases or {}, spec),
        loader,
        ConfusionMatrix(ds.num_classes, ds.ignore_index, device=device),
        device=device,
        amp_dtype=prec.amp_dtype(precision),
        on_batch=on_batch,
    )
    metrics.pop("loss")
    return metrics


def eval_modes(cfg: DictConfig, ckpt: dict) -> tuple[list[str], tuple[float, ...]]:
    """The evaluation modes and ``+ms`` scales: ``eval.modes`` / ``eval.tta.scales`` of the
    command line,
    else the ones the checkpoint's recipe chose (its ``eval.modes`` / ``eval.tta.scales``),
    else ``[whole]`` / ``inference.DEFAULT_SCALES``. Each is checked: the stored ones are data
    from a file, and a bad one must not cost a long evaluation first."""

    if cfg.eval.modes:
        modes, key = cfg.eval.modes, "eval.modes"
    else:
        modes, key = (
            stored(ckpt, "config", "eval", "modes") or ["whole"],
            f"eval.modes in {cfg.ckpt}",
        )
    if isinstance(modes, str) or not isinstance(modes, Sequence):
        raise ConfigError(f"{key}: expected a list of evaluation modes, found {modes!r}")
    for spec in modes:
        parse_mode(spec, key)
    if cfg.eval.tta.scales:
        scales, key = cfg.eval.tta.scales, "eval.tta.scales"
    else:
        scales = stored(ckpt, "config", "eval", "tta", "scales") or DEFAULT_SCALES
        key = f"eval.tta.scales in {cfg.ckpt}"
    check_scales(scales, key)
    return [str(m) for m in modes], tuple(float(s) for s in scales)


def stored(ckpt: Mapping, *keys: str) -> Any:
    """``ckpt[k0][k1]...``, or None where a level is missing or not a mapping (a checkpoint is
    data from a file: its config may lack, or mangle, any key)."""
    node: Any = ckpt
    for key in keys:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def eval_precision(chosen: str | None, ckpt: dict, device, key: str = "precision") -> str:
    """``precision`` of ``eval.py``; null: the one the checkpoint's run validated with (its
    ``trainer.precision``), so eval.py reproduces the training-time numbers. fp16 autocast is
    for CUDA only: fp32 elsewhere. ``key`` names the setting in the emulated-bf16 warning."""
    trainer = (ckpt.get("config") or {}).get("trainer") or {}
    precision = prec.resolve_precision(chosen or trainer.get("precision") or "fp32", device)
    precision = "fp32" if precision == "fp16" and device.type != "cuda" else precision
    prec.warn_emulated_bf16(precision, device, key)
    return precision


def eval_dataset_config(cfg: DictConfig, stored: dict, source: str) -> dict:
    """The dataset to score: ``dataset=NAME`` (a whole config, with its ``_target_``) if given,
    else the checkpoint's own config (only segkit's dataset classes: a checkpoint is data, never
    code) with the keys of ``+dataset.KEY=VALUE`` overrides merged on top, each checked against
    the dataset's arguments; ``dataset_root`` replaces its root (same dataset, data somewhere
    else)."""
    chosen = cfg.get("dataset") or OmegaConf.create({})
    if "_target_" in chosen:
        ds = OmegaConf.to_container(chosen, resolve=True)
    else:
        check_dataset_target(stored, source)
        ds = OmegaConf.to_container(OmegaConf.merge(stored, chosen), resolve=True)
        if chosen:  # a key the dataset does not take: one message naming it, not a TypeError
            check_components(OmegaConf.create({"dataset": ds}))
    if cfg.dataset_root:
        ds["root"] = cfg.dataset_root
    return ds
