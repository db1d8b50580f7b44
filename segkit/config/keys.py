"""Which config keys exist: the table of renamed and removed keys, the default config as a schema
(composed by Hydra), and messages for unknown keys and options with a did-you-mean."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

from hydra._internal.config_loader_impl import ConfigLoaderImpl  # Hydra 1.3's loader
from hydra._internal.utils import create_config_search_path
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from segkit.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # the repository's conf/


# old key -> new key (None: removed, with the reason in REMOVED_KEYS)
RENAMED_KEYS: dict[str, str | None] = {
    "data.batch_size": "loader.batch_size",
    "data.val_batch_size": "loader.val_batch_size",
    "data.num_workers": "loader.num_workers",
    "data.train_split": "dataset.train_split",
    "data.val_split": "dataset.val_split",
    "data.check": "dataset.check",
    "batch_size": "loader.batch_size",  # eval.py
    "num_workers": "loader.num_workers",  # eval.py
    "trainer.fail_at_step": None,
    "dataset.one_hot": None,
    # segkit 0.2: one launch block, resume and calibration out of the loop keys, one eval node
    "trainer.accelerator": "launch.accelerator",
    "trainer.devices": "launch.devices",
    "trainer.dist_timeout_s": "launch.dist_timeout_s",
    "trainer.sync_bn": "launch.sync_bn",
    "trainer.compile": "launch.compile",
    "trainer.resume": "resume",
    "trainer.calibrate": "calibrate.enabled",
    "trainer.calibrate_images": "calibrate.max_images",
    "accelerator": "launch.accelerator",  # eval.py, predict.py
    # segkit 0.2: dataset.augment is a list of steps (conf/dataset/augment/default.yaml)
    "dataset.augment.jitter": "dataset.augment.train.resize.jitter",
    "dataset.augment.scale": "dataset.augment.train.resize.scale",
    "dataset.augment.flip": "dataset.augment.train.hflip.p",
    "dataset.augment.hue": "dataset.augment.train.hsv.hue",
    "dataset.augment.sat": "dataset.augment.train.hsv.sat",
    "dataset.augment.class_crop": "dataset.augment.train.crop.class_balanced",
    "dataset.augment.copy_paste": "dataset.augment.train.copy_paste.p",
    "dataset.augment.paste_classes": "dataset.augment.train.copy_paste.classes",
    "modes": "eval.modes",  # eval.py
    "mode": "eval.modes",  # predict.py
    "tta.scales": "eval.tta.scales",  # eval.py, predict.py
    "tta.flip": None,  # predict.py
    "slide.window": "eval.slide.window",  # eval.py
    "slide.overlap": "eval.slide.overlap",  # eval.py
    "window": "eval.slide.window",  # predict.py
    "overlap": "eval.slide.overlap",  # predict.py
}
REMOVED_KEYS = {
    "trainer.fail_at_step": "fault injection is test machinery and lives in the tests now",
    "dataset.one_hot": "losses that need one-hot targets build them on the device",
    "tta.flip": "a mode says it: eval.modes=[whole+flip] (or slide+flip)",
}


HINTS = {
    "ckpt_path": "resume=PATH (continue a run) or model.init_from=PATH (fine-tune)",
    "ckpt": "resume=PATH (continue a run) or model.init_from=PATH (fine-tune)",
    "epochs": "trainer.max_epochs",
    "lr": "optimizer.lr",
    "batch_size": "loader.batch_size",
}


def renamed_key_error(key: str) -> ConfigError | None:
    """The error for an old key name (``data.batch_size``, or the whole old ``data`` block),
    or None."""
    key = key.lstrip("+~")
    matches = [old for old in RENAMED_KEYS if key == old or (key == "data" and old[:5] == "data.")]
    if not matches:
        return None
    if key in REMOVED_KEYS:
        return ConfigError(f"{key} was removed: {REMOVED_KEYS[key]}; drop it from your config")
    pairs = ", ".join(f"{old} -> {RENAMED_KEYS[old]}" for old in matches if RENAMED_KEYS[old])
    return ConfigError(f"{key} was renamed ({pairs}); see 'Renamed keys' in docs/configuration.md")


def composition_error(message: str, config_name: str, chosen: tuple = ()) -> ConfigError:
    """Hydra's composition message -> one ConfigError with the closest real key or option."""
    option = re.search(r"Could not find '([\w/]+)/([\w.-]+)'", message)
    if option:
        group, name = option.groups()
        known = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if p.stem[0] != "_")
        return ConfigError(
            f"{group}={name}: no such option in conf/{group}/; expected one of {known}"
            f"{did_you_mean(name, known)}"
        )
    key = re.search(r"full_key: ([\w.]+)", message) or re.search(r"override '([\w.]+)'", message)
    if key:
        full = key.group(1)
        parent = full.rpartition(".")[0]
        return unknown_key_error(full, default_keys(config_name, parent, chosen))
    return ConfigError(message.strip().splitlines()[0])


@cache
def default_config(config_name: str, chosen: tuple = ()) -> DictConfig:
    """``conf/<config_name>.yaml`` composed by Hydra's own config loader with its default group
    options (or those ``chosen``, pairs like ``("dataset", "voc")``), without the ``hydra``
    node; interpolations stay unresolved. The loader is built here rather than taken from the
    running app, so this works inside a Hydra app and outside one alike."""
    # an option that does not exist is the error being reported: compose without it
    valid = [(g, o) for g, o in chosen if (CONF_DIR / g / f"{o}.yaml").is_file()]
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF_DIR)))
    cfg = loader.load_configuration(
        config_name, overrides=[f"{g}={o}" for g, o in valid], run_mode=RunMode.RUN
    )
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def default_keys(config_name: str, parent: str, chosen: tuple = ()) -> list[str]:
    """The keys of node ``parent`` ("" = top level) in the default config."""
    cfg = default_config(config_name, tuple(tuple(c) for c in chosen))
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    keys = list(node.keys()) if isinstance(node, DictConfig) else []
    return [f"{parent}.{k}" if parent else str(k) for k in keys]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def unknown_key_error(key: str, known: Sequence[str]) -> ConfigError:
    leaf = key.rpartition(".")[2]
    hint = HINTS.get(leaf)
    fix = f"; to do that use {hint}" if hint else did_you_mean(key, known)
    return ConfigError(
        f"{key} is not a key segkit reads (it would be ignored); known keys here: "
        f"{sorted(k.rpartition('.')[2] for k in known)}{fix}"
    )


# segkit's own dataset keys: read by segkit.run, never passed to the dataset constructor
DATASET_RUN_KEYS = (
    "train_split",
    "val_split",
    "check",
    "val_input_shape",
    "val_original_size",
    "val_window",
)
