"""The plain config nodes as typed dataclasses: the one place their types are written.

``trainer`` is the Trainer's :class:`~segkit.engine.trainer.LoopOptions`; ``launch``,
``loader`` and ``calibrate`` are below. `segkit.config.checks` checks a composed config's values
against these types (and its range rules) before any work is done, and the tasks build the
dataclasses from the checked nodes.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf

from segkit.engine.trainer import LoopOptions


@dataclasses.dataclass(frozen=True)
class LaunchOptions:
    """How the job runs (``conf/launch/default.yaml``); eval and predict read ``accelerator``."""

    accelerator: Literal["auto", "cpu", "cuda"] = "auto"
    devices: int | Literal["auto"] = 1
    dist_timeout_s: float = 1800.0
    sync_bn: bool = False
    compile: bool = False


@dataclasses.dataclass(frozen=True)
class LoaderOptions:
    """The DataLoader settings (``loader`` in train.yaml; eval and predict use a subset)."""

    batch_size: int = 8
    val_batch_size: int | None = None
    num_workers: int = 2
    prefetch_factor: int = 2


@dataclasses.dataclass(frozen=True)
class CalibrateOptions:
    """``calibrate``: fit per-class logit biases on the train split after training."""

    enabled: bool = False
    max_images: int | None = None


PLAIN_NODES: dict[str, type] = {
    "trainer": LoopOptions,
    "launch": LaunchOptions,
    "loader": LoaderOptions,
    "calibrate": CalibrateOptions,
}


def field_type(key: str) -> Any:
    """The annotated type of ``node.field`` of a plain node, or None for any other key."""
    node, _, name = key.partition(".")
    schema = PLAIN_NODES.get(node)
    return typing.get_type_hints(schema).get(name) if schema else None


def alternatives(tp: Any) -> tuple[Any, ...]:
    """``int | None`` -> (int, NoneType); ``Literal["a", "b"]`` -> ("a", "b") as values."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return tuple(a for arg in typing.get_args(tp) for a in alternatives(arg))
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    return (tp,)


def matches(value: Any, tp: Any) -> bool:
    """Whether a plain config value fits ``tp`` (bools are not numbers; ints are floats)."""
    for alt in alternatives(tp):
        if alt is type(None) and value is None:
            return True
        if alt is bool and isinstance(value, bool):
            return True
        if alt is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if alt is float and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if alt is str and isinstance(value, str):
            return True
        if not isinstance(alt, type) and value == alt and type(value) is type(alt):
            return True
    return False


def describe(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    parts = [
        "null"
        if a is type(None)
        else names.get(a, repr(a) if not isinstance(a, type) else a.__name__)
        for a in alternatives(tp)
    ]
    return " or ".join(dict.fromkeys(parts))


def build(schema: type, node: DictConfig | dict | None) -> Any:
    """The dataclass ``schema`` from a checked config node (absent keys keep their defaults)."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    names = {f.name for f in dataclasses.fields(schema)}
    return schema(**{k: v for k, v in (values or {}).items() if k in names})
