"""Segmentation models. Each is a plain class named by ``_target_`` in ``conf/model/*.yaml``.

All return ``{"out": (N, C, H, W) logits}`` plus ``"aux"`` (training only, models with aux
heads); see `segkit.models.blocks.SegmentationModel` for the freeze API.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from segkit.models.bisenetv1 import BiSeNetV1
from segkit.models.bisenetv2 import BiSeNetV2
from segkit.models.blocks import SegmentationModel
from segkit.models.stdc import STDCSeg
from segkit.models.unet import UNet

__all__ = [
    "BiSeNetV1",
    "BiSeNetV2",
    "STDCSeg",
    "SegmentationModel",
    "UNet",
    "compose_model_config",
    "model_config_names",
]


def model_config_names(config_dir: str | Path) -> list[str]:
    """Names of the model configs, i.e. the stems of ``<config_dir>/model/*.yaml``, sorted."""
    names = sorted(p.stem for p in (Path(config_dir) / "model").glob("*.yaml"))
    if not names:
        raise FileNotFoundError(f"no model configs found in {Path(config_dir) / 'model'}")
    return names


def compose_model_config(
    name: str, config_dir: str | Path, num_classes: int, overrides: Sequence[str] = ()
) -> DictConfig:
    """Compose ``model=<name>`` with Hydra, outside any ``@hydra.main`` app.

    ``${dataset.num_classes}`` is satisfied by ``num_classes``; ``overrides`` are Hydra override
    strings relative to the root, e.g. ``["model.pretrained=false"]``. Returns the resolved
    ``model`` node without ``init_from``, ready for ``hydra.utils.instantiate``.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    config_dir = Path(config_dir).resolve()
    if not (config_dir / "model" / f"{name}.yaml").is_file():
        raise FileNotFoundError(
            f"model config {name!r} not found: choose one of {model_config_names(config_dir)}"
        )
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = compose(
            overrides=[f"+model={name}", f"+dataset.num_classes={num_classes}", *overrides]
        )
    OmegaConf.resolve(cfg)
    model = cfg.model
    with open_dict(model):
        model.pop("init_from", None)  # segkit's fine-tuning option, not a constructor argument
    return model
