"""Export a checkpoint to ONNX and check the export against PyTorch (see conf/export.yaml).

    python scripts/export.py ckpt=outputs/train/runs/<run>/checkpoints/best.pt
    python scripts/export.py ckpt=best.pt out=model.onnx parity.images=photos/

The export has dynamic batch, height and width. The parity check runs the PyTorch model and
the exported file on real images (the checkpoint's val images, or ``parity.images``) at
several sizes, the export size among them and sizes that are not multiples of 32, and prints
the largest logit difference and the share of pixels whose class changes per size. Exit code
0: within tolerance, the file is at ``out``. 1: the export differs (it is kept as
``<out stem>.failed.onnx`` for inspection) or the input is bad (one message, no traceback).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from segkit.data.io import IMAGE_SUFFIXES, list_inputs, read_image
from segkit.errors import ConfigError, UserError, run_task
from segkit.evaluation.logit_bias import stored_biases, with_bias
from segkit.evaluation.onnx import (
    OnnxModel,
    default_parity_sizes,
    export_metadata,
    export_onnx,
    model_target,
    parity_check,
)
from segkit.io.allowlist import check_dataset_target
from segkit.run import dataset_factory
from segkit.run.models import (
    checkpoint_input_shape,
    checkpoint_labels,
    checkpoint_window,
    load_model,
)

log = logging.getLogger("segkit")


def dataset_images(config: dict, count: int) -> list[np.ndarray]:
    """The first ``count`` val (else train) images of the checkpoint's own dataset."""
    ds_cfg = dict(config["dataset"])
    check_dataset_target(ds_cfg, "the checkpoint")  # a checkpoint is data: segkit's datasets only
    split = ds_cfg.get("val_split") or ds_cfg.get("train_split") or "val"
    try:
        ds = dataset_factory(ds_cfg)(split=split, train=False)
        return [read_image(ds.files[i][0]) for i in range(min(count, len(ds)))]
    except UserError as e:
        raise ConfigError(
            f"parity images: the checkpoint's dataset cannot be read ({e}); give images to "
            "compare on with parity.images=DIR|GLOB|FILE"
        ) from e


def user_images(spec: str, count: int) -> list[np.ndarray]:
    """The first ``count`` readable images of ``parity.images``."""
    files, _ = list_inputs(spec)
    images = [read_image(f) for f in files if f.suffix.lower() in IMAGE_SUFFIXES][:count]
    if not images:
        raise ConfigError(f"parity.images={spec}: no images found")
    return images


def output_path(cfg: DictConfig, ckpt: Path) -> Path:
    if cfg.format != "onnx":
        raise ConfigError(f"format={cfg.format!r}: the supported format is onnx")
    if cfg.out:
        return Path(cfg.out)
    return Path(HydraConfig.get().runtime.output_dir) / f"{ckpt.stem}.onnx"


def export(cfg: DictConfig) -> int:
    """Export, check, keep or set aside; -> exit code (see the module docstring)."""
    ckpt = Path(cfg.ckpt)
    out = output_path(cfg, ckpt)
    model, meta = load_model(ckpt)
    labels, input_shape = checkpoint_labels(meta), checkpoint_input_shape(meta)
    # a calibrated checkpoint: the whole-image logit biases become part of the graph
    model = with_bias(model, stored_biases(meta, labels.num_classes, str(ckpt)), "whole")
    export_hw = tuple(cfg.export_shape or input_shape)
    pc = cfg.parity
    images = user_images(str(pc.images), pc.num_images) if pc.images else None
    images = images or dataset_images(meta["config"], pc.num_images)
    sizes = [tuple(s) for s in pc.sizes] if pc.sizes else default_parity_sizes(export_hw)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    log.info("exporting %s (%s exporter, example %s) ...", ckpt, cfg.exporter, export_hw)
    target, window = model_target(meta["config"]), checkpoint_window(meta)
    metadata = export_metadata(labels, input_shape, target, window)
    try:
        export_onnx(
            model, tmp, export_hw, exporter=cfg.exporter, opset=cfg.opset,
            in_channels=labels.in_channels, metadata=metadata,
        )  # fmt: skip
        report = parity_check(
            model, OnnxModel(tmp), images, sizes, labels,
            logit_tol=pc.logit_tol, pixel_tol=pc.pixel_tol, export_hw=export_hw,
        )  # fmt: skip
        return finish(report, tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def finish(report, tmp: Path, out: Path) -> int:
    """Print the parity table; move the export to ``out`` (passed) or aside (failed)."""
    print(f"parity of the ONNX export with PyTorch:\n{report.format()}")
    if report.passed:
        os.replace(tmp, out)
        print(f"exported to {out}")
        return 0
    failed = out.with_name(f"{out.stem}.failed.onnx")
    os.replace(tmp, failed)
    print(
        f"\nsegkit: error: the ONNX export differs from PyTorch beyond the tolerance (table "
        f"above); it is kept as {failed} for inspection, not as {out}. A model that tests a "
        "size in Python (if h % 32: ...) is frozen at the export size: express it with tensor "
        "ops, or try exporter=legacy",
        file=sys.stderr,
    )
    return 1


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    sys.exit(run_task(export, cfg))


if __name__ == "__main__":
    main()
