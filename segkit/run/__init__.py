"""The one place that reads the config: the builders and the tasks.

- ``models``: a model from a config node, a ``conf/model`` name or a checkpoint's stored config;
- ``building``: config nodes -> datasets, loaders, loss, optimizer, schedule, Trainer;
- ``start_checks``: train.py's Hydra callback: the run directory claimed, every sweep job checked;
- ``training``: the train task of ``train.py`` (spawning, resume, status, result files);
- ``evaluation``: the evaluate task of ``eval.py`` (evaluation modes, metrics files);
- ``calibration``: fitting and scoring a checkpoint's logit biases (``calibrate.enabled``).

The submodules are imported on first use (``from segkit.run import train``), so loading a model
for prediction does not import the training stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "models": (
        "CONF_DIR",
        "compose_model_config",
        "instantiate_model",
        "load_model",
        "model_config_names",
    ),
    "building": (
        "DATASET_RUN_KEYS",
        "build_datasets",
        "build_loaders",
        "build_loss",
        "build_model",
        "build_optimizer",
        "build_scheduler",
        "build_trainer",
        "check_datasets",
        "compile_and_wrap",
        "dataset_factory",
        "loop_options",
        "resume",
        "seed_everything",
        "unused_heads",
    ),
    "evaluation": ("eval_dataset_config", "evaluate", "score_mode"),
    "training": ("finish_run", "restart_record", "train", "train_rank"),
}
_WHERE = {name: module for module, names in _HOME.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'segkit.run' has no attribute {name!r}")
    return getattr(importlib.import_module(f"segkit.run.{_WHERE[name]}"), name)
