"""Config validation before any work is done.

Every check raises :class:`segkit.errors.ConfigError` with one message naming the key, what was
expected, what was found and a fix (with a did-you-mean where a name is close to a real one):

- old key names (a table of renamed and removed keys), on the command line and in yaml files;
- keys nothing reads (a ``+ckpt_path=...`` that Hydra accepts, a misspelt component argument);
- ``_target_`` classes whose module fails to import, with the real ImportError;
- types and ranges of the numeric keys and lengths that must match ``dataset.num_classes``.

``segkit.run`` calls :func:`check_train_config` / :func:`check_eval_config` first thing;
``train.py`` and ``eval.py`` call :func:`check_command_line` before Hydra composes anything.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf

from segkit.config import schema
from segkit.config.keys import (
    CONF_DIR,
    DATASET_RUN_KEYS,
    RENAMED_KEYS,
    composition_error,
    default_config,
    default_keys,
    did_you_mean,
    renamed_key_error,
    unknown_key_error,
)
from segkit.data.stats import CLASS_WEIGHT_METHODS, is_class_weight_method
from segkit.errors import ConfigError, StorageError
from segkit.evaluation.predictors import check_scales, parse_mode

# segkit's own keys inside component nodes (not constructor arguments)
OWN_KEYS = {
    "dataset": set(DATASET_RUN_KEYS),
    "model": {"init_from"},
    "optimizer": {"param_groups"},  # segkit.optim.ParamGroups, not an optimiser argument
}
COMPONENTS = ("dataset", "model", "loss", "optimizer", "scheduler")


# --------------------------------------------------------------------------- old key names


def check_renamed(cfg: DictConfig) -> None:
    """Stop on old key names that came in through config files (experiments, own yamls)."""
    for old in ("data", *RENAMED_KEYS):
        if OmegaConf.select(cfg, old, default=None, throw_on_missing=False) is not None:
            raise renamed_key_error(old)


# --------------------------------------------------------------------------- command line
def check_command_line(config_name: str, args: Sequence[str]) -> None:
    """Before Hydra runs: old key names, then (single runs) compose the config once so that an
    unknown key or option becomes one message with a did-you-mean instead of Hydra's dump."""
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    for arg in overrides:
        err = renamed_key_error(arg.split("=", 1)[0])
        if err is not None:
            raise err
    check_output_dir(overrides)
    if any(a.startswith("-") for a in args):  # -m, --cfg, --config-name ...: Hydra's business
        return

    mine = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose(config_name=config_name, overrides=mine)
    except HydraException as e:
        chosen = tuple(o.split("=", 1) for o in mine if "." not in o.split("=", 1)[0])
        raise composition_error(f"{e}\n{e.__cause__ or ''}", config_name, chosen) from None


def check_output_dir(overrides: Sequence[str]) -> None:
    """The run directory (``hydra.run.dir`` / ``hydra.sweep.dir``, default ``outputs/``) must be
    creatable: Hydra would otherwise fail inside its own code."""

    dirs = [
        o.split("=", 1)[1]
        for o in overrides
        if o.startswith(("hydra.run.dir=", "hydra.sweep.dir="))
    ]
    for d in dirs or ["outputs"]:
        path = Path(d).expanduser().absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise StorageError(
                f"cannot create the run directory {path}: {existing} is not a writable folder; "
                "run from a "
                "writable folder or set hydra.run.dir=/a/writable/path"
            )


# --------------------------------------------------------------------------- keys nothing reads


def check_known_keys(cfg: DictConfig, config_name: str, plain_nodes: Sequence[str]) -> None:
    """Top-level keys and the keys of plain nodes (``trainer``, ``loader``) must exist in the
    default config; component nodes are checked against their constructors."""
    top = default_keys(config_name, "") + list(COMPONENTS)
    for key in cfg:
        if key != "hydra" and key not in top:
            raise unknown_key_error(str(key), top)
    for parent in plain_nodes:
        known = default_keys(config_name, parent)
        for key in cfg.get(parent) or {}:
            if f"{parent}.{key}" not in known:
                raise unknown_key_error(f"{parent}.{key}", known)


def locate(target: str, key: str) -> Any:
    """Import ``target`` (``pkg.module.Name``); a failing import is shown as the ImportError."""
    module_name, _, attr = str(target).rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        missing = getattr(e, "name", None)
        if missing and module_name.startswith(missing):
            raise ConfigError(
                f"{key}._target_={target}: no module named {missing!r}; check the spelling"
            ) from None
        raise ConfigError(
            f"{key}._target_={target}: importing {module_name} failed: {type(e).__name__}: {e} "
            "(install the missing package or fix that module)"
        ) from None
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ConfigError(
            f"{key}._target_={target}: {module_name} has no {attr!r}{did_you_mean(attr, names)}"
        )
    return getattr(module, attr)


def accepted_kwargs(target: Any) -> set[str] | None:
    """Keyword arguments a class or function accepts, following ``**kwargs`` up the MRO;
    None when anything goes (a ``**kwargs`` that is not passed to a base class)."""
    classes = target.__mro__ if inspect.isclass(target) else (None,)
    names: set[str] = set()
    for cls in classes:
        fn = target if cls is None else cls.__dict__.get("__init__")
        if fn is None or cls is object:
            continue
        params = inspect.signature(fn).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
    return None


def check_components(cfg: DictConfig) -> None:
    """Each component's ``_target_`` imports, and each of its keys is an argument it takes."""
    for key in COMPONENTS:
        node = cfg.get(key)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        accepted = accepted_kwargs(locate(node._target_, key))
        if accepted is None:
            continue
        known = accepted | OWN_KEYS.get(key, set())
        for arg in node:
            if not str(arg).startswith("_") and arg not in known:
                name = node._target_.rsplit(".", 1)[-1]
                raise ConfigError(
                    f"{key}.{arg}: {name} has no argument {arg!r} (it would fail or be ignored); "
                    f"its arguments: {sorted(known)}{did_you_mean(str(arg), known)}"
                )


# --------------------------------------------------------------------------- values
@dataclass(frozen=True)
class Rule:
    """``key`` must lie within [lo, hi]. A plain node's key (``trainer``, ``launch``,
    ``loader``, ``calibrate``) takes its type from `segkit.config.schema`; a component's key
    states it here (``integer``, ``nullable``). An absent key is fine (a component that does not
    take it)."""

    key: str
    lo: float | None = None
    hi: float | None = None
    integer: bool = False
    nullable: bool = False


RULES = (
    Rule("seed", integer=True),
    Rule("loader.batch_size", 1),
    Rule("loader.val_batch_size", 1),
    Rule("loader.num_workers", 0),
    Rule("loader.prefetch_factor", 1),
    Rule("trainer.max_epochs", 1),
    Rule("trainer.val_every", 1),
    Rule("trainer.log_every", 1),
    Rule("trainer.accumulate_grad_batches", 1),
    Rule("trainer.max_steps", 1),
    Rule("trainer.val_every_steps", 1),
    Rule("trainer.num_vis", 0),
    Rule("trainer.freeze_epochs", 0),
    Rule("trainer.grad_clip", 1e-12),
    Rule("trainer.early_stop_patience", 1),
    Rule("trainer.limit_train_batches", 1),
    Rule("trainer.limit_val_batches", 1),
    Rule("trainer.max_nonfinite_steps", 1),
    Rule("trainer.checkpoint_every_steps", 1),
    Rule("trainer.max_time_min", 1e-12),
    Rule("trainer.ema_decay", 1e-12, 0.999999),
    Rule("launch.dist_timeout_s", 1),
    Rule("calibrate.max_images", 1),
    Rule("optimizer.lr", 1e-300),
    Rule("optimizer.weight_decay", 0),
    Rule("optimizer.momentum", 0, 1),
    Rule("scheduler.warmup_epochs", 0),
    Rule("scheduler.eta_min", 0),
    Rule("dataset.num_classes", 1, 255, integer=True),
    Rule("dataset.ignore_index", 0, 255, integer=True),
)
CHOICES = {"dataset.check": ("off", "quick", "full")}


def numeric_kind(rule: Rule) -> tuple[bool, bool]:
    """(integer, nullable) of a rule's key: from the schema for plain nodes, else the rule's."""
    tp = schema.field_type(rule.key)
    if tp is None:
        return rule.integer, rule.nullable
    alts = schema.alternatives(tp)
    return float not in alts, type(None) in alts


def check_value(cfg: DictConfig, rule: Rule) -> None:
    if OmegaConf.select(cfg, rule.key, default="<absent>", throw_on_missing=False) == "<absent>":
        return
    value = OmegaConf.select(cfg, rule.key)
    integer, nullable = numeric_kind(rule)
    if value is None and nullable:
        return
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    bounds = _bounds(rule)
    if ok_type and not isinstance(value, bool):
        if (rule.lo is None or value >= rule.lo) and (rule.hi is None or value <= rule.hi):
            return
    found = f"{type(value).__name__} {value!r}"
    raise ConfigError(
        f"{rule.key}={value!r}: expected {kind}{bounds}{' or null' if nullable else ''}, "
        f"found {found}; fix: e.g. {rule.key}={_example(rule)}"
    )


def check_plain_types(cfg: DictConfig) -> None:
    """Every key of a plain node has its schema's type (numbers also get their RULES range)."""
    for node in schema.PLAIN_NODES:
        for key, value in (OmegaConf.select(cfg, node, default=None) or {}).items():
            full = f"{node}.{key}"
            tp = schema.field_type(full)
            value = OmegaConf.select(cfg, full)
            if tp is not None and not schema.matches(value, tp):
                raise ConfigError(
                    f"{full}={value!r}: expected {schema.describe(tp)}, found "
                    f"{type(value).__name__} {value!r}; fix: e.g. {full}={_default(full)}"
                )


def _default(key: str) -> str:
    node, _, name = key.partition(".")
    field = {f.name: f for f in dataclasses.fields(schema.PLAIN_NODES[node])}.get(name)
    value = field.default if field is not None else None
    return {True: "true", False: "false", None: "null"}.get(value, str(value))


def _bounds(rule: Rule) -> str:
    if rule.lo is not None and rule.hi is not None:
        return f" in [{rule.lo:g}, {rule.hi:g}]"
    if rule.lo is not None:
        return " > 0" if 0 < rule.lo < 1e-6 else f" >= {rule.lo:g}"
    return ""


def _example(rule: Rule) -> str:
    try:
        value = OmegaConf.select(default_config("train"), rule.key, default=None)
    except Exception:  # an interpolation into a group not in the defaults
        value = None
    value = value if isinstance(value, int | float) else None
    return repr(value) if value is not None else str(int(rule.lo or 0) + 1)


def check_values(cfg: DictConfig) -> None:
    """Types and ranges (RULES, the schema), choices, devices and class_weights length."""
    for rule in RULES:
        check_value(cfg, rule)
    check_plain_types(cfg)
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and value not in choices:
            raise ConfigError(f"{key}={value!r}: expected one of {list(choices)}")
    devices = OmegaConf.select(cfg, "launch.devices", default=1)
    if devices != "auto" and (not isinstance(devices, int) or devices < 1):
        raise ConfigError(f"launch.devices={devices!r}: expected an int >= 1 or auto")
    check_class_weights(cfg)
    check_channels(cfg)
    check_eval_modes(cfg)


def check_eval_modes(cfg: DictConfig) -> None:
    """``eval.modes`` and ``eval.tta.scales`` (the recipe's evaluation, used later by eval.py)
    must be valid before training starts."""

    modes = OmegaConf.select(cfg, "eval.modes", default=None) or []
    if isinstance(modes, str):
        raise ConfigError(
            f"eval.modes={modes}: expected a list of evaluation modes, e.g. eval.modes=[{modes}]"
        )
    for spec in modes:
        parse_mode(spec, "eval.modes")
    scales = OmegaConf.select(cfg, "eval.tta.scales", default=None)
    if scales is not None:
        check_scales(scales, "eval.tta.scales")
    check_slide(cfg)


def check_slide(cfg: DictConfig) -> None:
    """``eval.slide.window`` ([H, W] or null) and ``eval.slide.overlap`` (in [0, 1))."""
    window = OmegaConf.select(cfg, "eval.slide.window", default=None)
    if window is not None:
        sizes = list(window) if isinstance(window, ListConfig | list | tuple) else [window]
        if len(sizes) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes
        ):
            raise ConfigError(
                f"eval.slide.window={window!r}: expected [H, W], two positive integers, or "
                "null (the training crop); fix: eval.slide.window=[512,512]"
            )
    overlap = OmegaConf.select(cfg, "eval.slide.overlap", default=0.5)
    if isinstance(overlap, bool) or not isinstance(overlap, int | float) or not 0 <= overlap < 1:
        raise ConfigError(
            f"eval.slide.overlap={overlap!r}: expected a number in [0, 1) (the share of a "
            "window that overlaps the next); fix: eval.slide.overlap=0.5"
        )


def check_channels(cfg: DictConfig) -> None:
    """A gray (or other non-RGB) dataset needs a model that takes its channel count."""
    channels = OmegaConf.select(cfg, "dataset.in_channels", default=3)
    model = cfg.get("model") or {}
    if channels != 3 and model.get("in_channels", 3) != channels:
        raise ConfigError(
            f"dataset.in_channels={channels} but model {model.get('_target_')} takes "
            f"{model.get('in_channels', 3)}-channel input; use a model with in_channels (the "
            f"unet* configs) and model.in_channels={channels}, or dataset.in_channels=3"
        )


def check_class_weights(cfg: DictConfig) -> None:
    weights = OmegaConf.select(cfg, "loss.class_weights", default=None)
    n = OmegaConf.select(cfg, "dataset.num_classes", default=None)
    if weights is None or is_class_weight_method(weights):
        return
    expected = f"null, {' / '.join(CLASS_WEIGHT_METHODS)} (P > 0), or a list of {n} numbers >= 0"
    if not isinstance(weights, ListConfig | list):
        raise ConfigError(f"loss.class_weights={weights!r}: expected {expected}")
    values = list(weights)
    if n is not None and len(values) != n:
        raise ConfigError(
            f"loss.class_weights has {len(values)} values but dataset.num_classes={n}: give one "
            "weight per class, or loss.class_weights=auto"
        )
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ConfigError(f"loss.class_weights={values}: expected {expected}")


# --------------------------------------------------------------------------- entry points
def check_missing(cfg: DictConfig) -> None:
    """Mandatory values (``???``) that were not given, e.g. ``dataset.root`` of ``dataset=voc``."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        given = " ".join(f"{k}=..." for k in missing)
        raise ConfigError(f"{', '.join(missing)} not set: add {given} to the command line")


def check_train_config(cfg: DictConfig) -> None:
    """Everything above, for ``train.py``."""
    check_renamed(cfg)
    check_missing(cfg)
    check_known_keys(cfg, "train", ("trainer", "launch", "loader", "calibrate", "eval"))
    check_components(cfg)
    check_values(cfg)


def check_eval_config(cfg: DictConfig) -> None:
    """Old and unknown keys, for ``eval.py`` (the model and data come from the checkpoint)."""
    check_renamed(cfg)
    check_known_keys(cfg, "eval", ("launch", "loader", "eval"))
    check_components(cfg)
    check_plain_types(cfg)
    check_eval_modes(cfg)
    flag = cfg.get("logit_bias", True)
    if not isinstance(flag, bool):
        raise ConfigError(
            f"logit_bias={flag!r}: expected true or false, found {type(flag).__name__} "
            f"{flag!r}; fix: logit_bias=false (the raw model) or logit_bias=true"
        )
