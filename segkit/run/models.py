"""Models from configs: a ``model`` node, a ``conf/model`` name, or the config stored in a
checkpoint or weights file (checked against the allow-list first, so a file from elsewhere can
only build one of segkit's model classes). Imports only what building a model needs, so
prediction and export do not pull in the training stack."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segkit.config.keys import CONF_DIR
from segkit.data.arguments import IMAGENET_MEAN, IMAGENET_STD, check_input_shape
from segkit.data.base import LabelSpace
from segkit.errors import CheckpointError, ConfigError
from segkit.io import checkpoint as ckpt_io
from segkit.io.allowlist import check_model_target
from segkit.io.partial_load import is_safetensors, load_weights
from segkit.io.weights_file import read_weights_file

log = logging.getLogger("segkit")


def instantiate_model(model_cfg: DictConfig | Mapping, *, from_checkpoint: bool = False):
    """A model from a ``model`` config node. ``init_from`` is segkit's fine-tuning option, not a
    constructor argument: it is applied here. ``from_checkpoint``: the weights come from the
    checkpoint, so nothing pretrained or ``init_from`` is loaded."""
    if isinstance(model_cfg, DictConfig):
        model_cfg = OmegaConf.to_container(model_cfg, resolve=True)
    kwargs = dict(model_cfg)
    init_from = kwargs.pop("init_from", None)
    if from_checkpoint:
        kwargs.update(
            {k: v for k, v in (("pretrained", False), ("weights_path", None)) if k in kwargs}
        )
    model = instantiate(kwargs)
    if init_from and not from_checkpoint:
        log.info("model.init_from: %s", load_weights(model, init_from))
    return model


def model_config_names() -> list[str]:
    """The model config names: the stems of ``conf/model/*.yaml``, sorted."""
    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def compose_model_config(
    name: str, num_classes: int, overrides: Iterable[str] = (), in_channels: int = 3
) -> dict:
    """``model=<name>`` composed with Hydra outside any ``@hydra.main`` app, resolved with
    ``dataset.num_classes`` / ``dataset.in_channels``; ``overrides`` like
    ``["model.pretrained=false"]``."""
    if name not in model_config_names():
        raise ConfigError(f"model config {name!r} not found: choose one of {model_config_names()}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(
            overrides=[
                f"+model={name}",
                f"+dataset.num_classes={num_classes}",
                f"+dataset.in_channels={in_channels}",
                *overrides,
            ]
        )
    return OmegaConf.to_container(cfg.model, resolve=True)


def load_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the model stored in a checkpoint (``.pt``) or a weights file (``.safetensors``):
    architecture from its config (after `check_model_target`), weights from its state dict.
    Returns ``(model in eval mode, info)``: the checkpoint dict, or for a weights file a dict
    with ``model``, ``config``, ``labels``, ``class_names``, ``palette`` (and ``logit_bias``)."""

    path = Path(path)
    if path.is_file() and is_safetensors(path):
        info = read_weights_file(path, map_location)
    else:
        info = ckpt_io.load(path, map_location)
    config = info.get("config")
    model_cfg = config.get("model") if isinstance(config, Mapping) else None
    check_model_target(model_cfg, path)
    model = instantiate_model(model_cfg, from_checkpoint=True)
    try:
        model.load_state_dict(info["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not fit its model config: {e}") from e
    return model.eval(), info


def checkpoint_labels(ckpt: Mapping[str, Any]) -> LabelSpace:
    """The checkpoint's label space (classes, names, palette, mean/std). Checkpoints without
    ``labels`` rebuild it from their dataset config, ``class_names`` and ``palette``."""
    if "labels" in ckpt:
        return LabelSpace.from_dict(ckpt["labels"])
    ds = ckpt["config"]["dataset"]
    return LabelSpace.from_dict(
        {
            "num_classes": ds["num_classes"],
            "ignore_index": ds.get("ignore_index", 255),
            "class_names": ckpt["class_names"],
            "palette": ckpt["palette"],
            "mean": ds.get("mean") or IMAGENET_MEAN,
            "std": ds.get("std") or IMAGENET_STD,
        }
    )


def checkpoint_input_shape(ckpt: Mapping[str, Any]) -> tuple[int, int]:
    """(H, W) the model is used at: the checkpoint's ``dataset.val_input_shape`` when set (it
    trained on crops), else its ``dataset.input_shape``."""
    ds = ckpt["config"]["dataset"]
    shape = ds.get("val_input_shape") or ds.get("input_shape") or ds.get("image_size")
    return check_input_shape(shape)


def checkpoint_window(ckpt: Mapping[str, Any]) -> tuple[int, int]:
    """(H, W) of the ``slide`` windows when the command line sets none: the recipe's
    ``eval.slide.window``, else the dataset's validation windows (``dataset.val_window``),
    else the training crop (its ``dataset.input_shape``). A crop-trained
    recipe scores at a larger `checkpoint_input_shape`; windows of the crop size show the model
    what it learned on, and only windows smaller than the image make ``slide`` differ from
    ``whole``."""
    config = ckpt["config"]
    slide = (config.get("eval") or {}).get("slide") if isinstance(config, Mapping) else None
    window = slide.get("window") if isinstance(slide, Mapping) else None
    ds = config["dataset"]
    return check_input_shape(
        window or ds.get("val_window") or ds.get("input_shape") or ds.get("image_size")
    )
