"""segkit: config-driven semantic segmentation training.

The package map is the layering; imports point down it (``pyproject.toml``'s import-linter
contract, checked by the tests):

- ``run/``: the one place that reads the config: builders and the train / evaluate tasks;
- ``config/``: config key checks, renamed keys, did-you-mean messages;
- ``engine/``: the Trainer loop, step statistics, time budget, EMA, signals, loaders, spawning;
- ``reporting/``: TensorBoard tracker, run-directory files, figures, complexity, feature maps,
  sweep summary;
- ``evaluation/``: confusion-matrix metrics, predictors (whole / slide / TTA), logit bias, ONNX;
- ``data/``, ``models/``, ``losses/``, ``optim.py``: datasets, models, losses, optimisers;
- ``dist.py``, ``precision.py``, ``io/``: ranks and collectives, numeric precision, checkpoint
  and weights files;
- ``errors.py``: every user-facing error and its exit code.

Module paths of segkit 0.1 (``segkit.checkpoint``, ``segkit.metrics``, ...) still import, with a
FutureWarning naming the new path, until segkit 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from typing import Any

# segkit 0.1 module -> the modules its names live in now (searched in order)
_MOVED: dict[str, tuple[str, ...]] = {
    "segkit.budget": ("segkit.engine.time_budget",),
    "segkit.calibrate": ("segkit.evaluation.logit_bias",),
    "segkit.checkpoint": ("segkit.io.checkpoint", "segkit.run.models"),
    "segkit.complexity": ("segkit.reporting.complexity",),
    "segkit.config_keys": ("segkit.config.keys", "segkit.data.stats"),
    "segkit.ema": ("segkit.engine.ema",),
    "segkit.export": ("segkit.evaluation.onnx",),
    "segkit.features": ("segkit.reporting.feature_maps",),
    "segkit.inference": ("segkit.evaluation.predictors", "segkit.data.io"),
    "segkit.launch": ("segkit.engine.spawn", "segkit.dist"),
    "segkit.metrics": ("segkit.evaluation.metrics",),
    "segkit.sharing": ("segkit.io.weights_file",),
    "segkit.signals": ("segkit.engine.signals", "segkit.engine.loader"),
    "segkit.stepstats": ("segkit.engine.step_stats",),
    "segkit.sweep": ("segkit.reporting.sweep_summary",),
    "segkit.targets": ("segkit.io.allowlist",),
    "segkit.tracking": ("segkit.reporting.tracker", "segkit.reporting.run_files"),
    "segkit.trainer": ("segkit.engine.trainer",),
    "segkit.validate": ("segkit.config.checks", "segkit.run.building"),
    "segkit.visualize": ("segkit.reporting.figures",),
    "segkit.weights": ("segkit.io.partial_load",),
    "segkit.data.params": ("segkit.data.arguments",),
    "segkit.data.check": ("segkit.data.doctor",),
    "segkit.data.report": ("segkit.data.problems",),
    "segkit.data.diagnose": ("segkit.data.problems",),
    "segkit.data.original": ("segkit.data.original_size",),
}


class _MovedModule(types.ModuleType):
    """An old module path: each name is looked up in the modules it moved to."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        for target in _MOVED[self.__name__]:
            try:
                module = importlib.import_module(target)
            except ModuleNotFoundError:
                continue
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"{self.__name__}.{name} no longer exists in segkit")


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        return importlib.util.spec_from_loader(fullname, self) if fullname in _MOVED else None

    def create_module(self, spec: Any) -> types.ModuleType:
        new = " / ".join(_MOVED[spec.name])
        warnings.warn(
            f"{spec.name} moved to {new}; the old path stops working in segkit 0.3",
            FutureWarning,
            stacklevel=3,
        )
        return _MovedModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedFinder())
