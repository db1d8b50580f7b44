"""``dataset.augment``: ordered lists of steps -> the pipelines a dataset runs, checked.

``dataset.augment.train`` and ``dataset.augment.val`` each hold steps in order, as a mapping
name -> step (the presets of ``conf/dataset/augment``: a step is changed or switched off by
name, ``dataset.augment.train.hflip.p=0`` or ``dataset.augment.train.hflip=null``) or as a
list. A step is a mapping with a ``_target_``: a step class of segkit (re-exported here:
``segkit.data.augment.Rotate``), any ``torchvision.transforms.v2`` transform, or a user's class
whose ``__call__(image, mask, ctx)`` returns the pair. `build_pipelines` imports and builds
every step up front; an unknown step, a bad argument or a transform that would not move the
mask with the image is a DataError naming the step and the fix. Steps draw every random number
from ``ctx.rng``, the sample's (seed, epoch, index) stream.

The old flat keys (``{jitter, scale, flip, hue, sat, val, class_crop, copy_paste,
paste_classes}``, in checkpoints of segkit <= 0.2) are read as the default list with those
values (`steps_from_flat_keys`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from segkit.data.arguments import FLAT_AUGMENT_KEYS, check_augment
from segkit.data.geometric_steps import (
    HorizontalFlip,
    Letterbox,
    Pair,
    RandomCrop,
    RandomResize,
    RandomScaleAspect,
    Rotate,
    Rotate90,
    VerticalFlip,
)
from segkit.data.pixel_steps import (
    CopyPaste,
    Cutout,
    GaussianBlur,
    GaussianNoise,
    HSVJitter,
    PhotometricDistortion,
)
from segkit.data.torchvision_steps import (
    TorchvisionStep,
    is_torchvision_transform,
    mask_fill,
    mask_problem,
)
from segkit.errors import DataError

Step = Callable[[np.ndarray, np.ndarray, "Context"], Pair]
STEPS = (
    CopyPaste,
    Cutout,
    GaussianBlur,
    GaussianNoise,
    HSVJitter,
    HorizontalFlip,
    Letterbox,
    PhotometricDistortion,
    RandomCrop,
    RandomResize,
    RandomScaleAspect,
    Rotate,
    Rotate90,
    VerticalFlip,
)
HERE = __name__


@dataclass
class Context:
    """What a step may read besides the pair: the sample's random stream, the output (H, W),
    the mask's ignore index, and ``donor(rng) -> (image, mask) | None``, another training
    sample (copy-paste; None when there is none)."""

    rng: np.random.Generator
    out_hw: tuple[int, int]
    ignore_index: int = 255
    donor: Callable[[np.random.Generator], Pair | None] | None = None


class Pipeline:
    """Named steps applied in order; a step that fails is named in the DataError."""

    def __init__(self, steps: Sequence[tuple[str, Step]], where: str) -> None:
        self.steps, self.where = list(steps), where

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={type(step).__name__}" for name, step in self.steps)
        return f"Pipeline({self.where}: {inner})"

    def __call__(self, image: np.ndarray, mask: np.ndarray, ctx: Context) -> Pair:
        image, mask = self.run_steps(image, mask, ctx)
        check_output(image, mask, ctx.out_hw, self.where)
        return image, mask

    def run_steps(self, image: np.ndarray, mask: np.ndarray, ctx: Context) -> Pair:
        """The steps without the final size check."""
        name = "(start)"
        try:
            for name, step in self.steps:  # noqa: B007 (the failing step's name is reported)
                image, mask = step(image, mask, ctx)
        except DataError:
            raise
        except (ValueError, TypeError, RuntimeError, IndexError, cv2.error) as e:
            raise DataError(f"{_key(self.where, name)}: {type(e).__name__}: {e}") from e
        return image, mask


def check_output(image: np.ndarray, mask: np.ndarray, out_hw: Sequence[int], where: str) -> None:
    """A list must end at the input size (the batch is stacked from its samples)."""
    if mask.shape != tuple(out_hw) or image.shape[:2] != mask.shape:
        raise DataError(
            f"{where} makes {image.shape[:2]} images / {mask.shape} masks, not the input size "
            f"{tuple(out_hw)}: end it with a step that produces that size (RandomCrop for "
            "training, Letterbox for validation)"
        )


def _key(where: str, name: str) -> str:
    return f"{where}{name}" if name.startswith("[") else f"{where}.{name}"


# --------------------------------------------------------------------------- building
def build_pipelines(
    augment: Mapping | None, class_names: Sequence[str], ignore_index: int
) -> dict[str, Pipeline]:
    """``{"train": Pipeline, "val": Pipeline}`` from ``dataset.augment`` (None: the defaults;
    the old flat keys: the default list with their values)."""
    specs = plain(augment) if augment is not None else {}
    if "train" not in specs and not isinstance(specs.get("val"), (dict, list)):
        specs = steps_from_flat_keys(specs, class_names)  # the old keys (val: a number there)
    unknown = sorted(set(specs) - {"train", "val"})
    if unknown:
        raise DataError(
            f"dataset.augment has {unknown}: it takes `train` and `val` step lists "
            "(presets: dataset/augment=default|strong)"
        )
    defaults = steps_from_flat_keys({}, class_names)
    return {
        split: build_pipeline(
            specs.get(split, defaults[split]), f"dataset.augment.{split}", class_names, ignore_index
        )
        for split in ("train", "val")
    }


def build_pipeline(
    steps: Mapping | Sequence | None, where: str, class_names: Sequence[str], ignore_index: int
) -> Pipeline:
    """One list (a mapping name -> step, null entries skipped, or a list) -> a Pipeline."""
    if isinstance(steps, Mapping):
        named = [(str(k), v) for k, v in steps.items() if v is not None]
    elif isinstance(steps, Sequence) and not isinstance(steps, str):
        named = [(f"[{i}]", v) for i, v in enumerate(steps)]
    else:
        raise DataError(f"{where} must be a list of steps (or name: step), got {steps!r}")
    built = []
    for name, spec in named:
        step = build_step(spec, _key(where, name), ignore_index)
        if hasattr(step, "bind"):
            try:
                step.bind(class_names)
            except DataError as e:
                raise DataError(f"{_key(where, name)}: {e}") from None
        built.append((name, step))
    return Pipeline(built, where)


def build_step(spec: Any, key: str, ignore_index: int) -> Step:
    """One step from its mapping (``_target_`` + arguments); DataError naming ``key``."""
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise DataError(
            f"{key} must be a step, a mapping with a _target_ (e.g. {{_target_: "
            f"{HERE}.HorizontalFlip, p: 0.5}}), got {spec!r}"
        )
    target = str(spec["_target_"])
    cls = locate_step(target, key)
    kwargs = {str(k): _nested(v, key, ignore_index) for k, v in spec.items() if k != "_target_"}
    name = target.rsplit(".", 1)[-1]
    if is_torchvision_transform(cls):
        step = TorchvisionStep(_construct(cls, mask_fill(cls, kwargs, ignore_index), key, name))
        problem = mask_problem(step, ignore_index)
        if problem:
            raise DataError(
                f"{key} ({target}) would corrupt the masks: {problem}. Use a transform that "
                f"moves masks with the image (torchvision's geometric and colour v2 transforms "
                f"do), or a step of {HERE}"
            )
        return step
    if not takes_a_pair(cls):
        raise DataError(
            f"{key}: {target} transforms an image alone, so the mask would not follow it. Use "
            f"torchvision.transforms.v2.{name} (it moves the mask with the image) or one of "
            f"{HERE}'s steps: {', '.join(s.__name__ for s in STEPS)}"
        )
    return _construct(cls, kwargs, key, name)


def locate_step(target: str, key: str) -> Any:
    """Import ``pkg.module.Name``; a missing one is a DataError with a did-you-mean."""
    module_name, _, attr = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise DataError(f"{key}._target_={target}: cannot import {module_name} ({e})") from None
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_") and n[:1].isupper()]
        close = difflib.get_close_matches(attr, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; steps of {HERE}: "
        hint += "" if close else ", ".join(s.__name__ for s in STEPS)
        raise DataError(f"{key}._target_={target}: {module_name} has no {attr!r}{hint}")
    return getattr(module, attr)


def takes_a_pair(cls: Any) -> bool:
    """A step class: ``__call__(self, image, mask, ctx)`` (three arguments besides self)."""
    call = inspect.getattr_static(cls, "__call__", None) if inspect.isclass(cls) else None
    if call is None:
        return False
    try:
        params = list(inspect.signature(call).parameters.values())[1:]
    except (TypeError, ValueError):
        return False
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) == 3


def _construct(cls: Any, kwargs: dict[str, Any], key: str, name: str) -> Any:
    """``cls(**kwargs)``; a wrong argument name or value is a DataError naming the step."""
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError:
        known = [p for p in inspect.signature(cls).parameters if p not in ("self", "args")]
        bad = sorted(set(kwargs) - set(known))
        raise DataError(
            f"{key}: {name} has no argument {', '.join(map(repr, bad)) or '(missing one)'}; "
            f"its arguments: {known}"
        ) from None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise DataError(f"{key} ({name}): {e}") from None


def _nested(value: Any, key: str, ignore_index: int) -> Any:
    """Arguments that are components themselves (``v2.RandomApply(transforms=[...])``)."""
    if isinstance(value, Mapping) and "_target_" in value:
        cls = locate_step(str(value["_target_"]), key)
        args = {k: _nested(v, key, ignore_index) for k, v in value.items() if k != "_target_"}
        if is_torchvision_transform(cls):
            args = mask_fill(cls, args, ignore_index)
        return _construct(cls, args, key, cls.__name__)
    if isinstance(value, list):
        return [_nested(v, key, ignore_index) for v in value]
    return value


def plain(value: Any) -> Any:
    """Config containers (OmegaConf's too) -> dicts and lists, for building and for show."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- the default list
def steps_from_flat_keys(flat: Mapping, class_names: Sequence[str]) -> dict[str, dict]:
    """The notes' augmentation as step lists (``conf/dataset/augment/default.yaml``), with the
    old flat keys' values: copy-paste, aspect/scale resize, horizontal flip, crop (class-
    balanced with class_crop), HSV jitter; validation letterboxes. Unknown or bad keys ->
    DataError naming ``dataset.augment.<key>``."""
    p = check_augment(flat, class_names)
    step = f"{HERE}.%s"
    train = {
        "copy_paste": {
            "_target_": step % "CopyPaste",
            "p": p["copy_paste"],
            "classes": list(p["paste_classes"]),
        },
        "resize": {
            "_target_": step % "RandomScaleAspect",
            "scale": list(p["scale"]),
            "jitter": p["jitter"],
        },
        "hflip": {"_target_": step % "HorizontalFlip", "p": p["flip"]},
        "crop": {
            "_target_": step % "RandomCrop",
            "class_balanced": p["class_crop"],
            "cat_max_ratio": 1.0,
        },
        "hsv": {"_target_": step % "HSVJitter", "hue": p["hue"], "sat": p["sat"], "val": p["val"]},
    }
    return {"train": train, "val": {"letterbox": {"_target_": step % "Letterbox"}}}


def get_random_data(
    image: np.ndarray,
    mask: np.ndarray,
    input_shape: Sequence[int],
    rng: np.random.Generator | None = None,
    *,
    random: bool = True,
    ignore_index: int = 255,
    **flat: Any,
) -> Pair:
    """The notes' function over the default list: random=True -> the train list with the flat
    keys' values (``jitter``, ``scale``, ``flip``, ``hue``, ``sat``, ``val``, ``class_crop``),
    random=False -> letterbox. image (H,W,C) uint8, mask (H,W) uint8 -> input_shape pair."""
    if random and rng is None:
        raise ValueError("get_random_data(random=True) needs rng=np.random.default_rng(...)")
    unknown = sorted(set(flat) - set(FLAT_AUGMENT_KEYS))
    if unknown:
        raise TypeError(f"get_random_data() got unexpected keyword arguments {unknown}")
    pipelines = build_pipelines(flat, [], ignore_index)
    ctx = Context(rng or np.random.default_rng(0), tuple(int(v) for v in input_shape), ignore_index)
    return pipelines["train" if random else "val"](image, mask, ctx)


# --------------------------------------------------------------------------- dry run
def dry_run(
    pipelines: Mapping[str, Pipeline],
    out_hw: Sequence[int],
    *,
    channels: int,
    num_classes: int,
    ignore_index: int,
    draws: int = 4,
) -> None:
    """Run every list on generated pairs (larger than ``out_hw``, every class present, a donor
    for copy-paste) a few times; after each step the pair must stay uint8 of one size with only
    class ids and ignore_index in the mask, and each list must end at ``out_hw``. DataError
    naming the step otherwise. Cheap: the dataset check runs it before reading any file."""
    h, w = int(out_hw[0]), int(out_hw[1])
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h * 3 // 2 + 5, w * 5 // 4 + 3, channels), dtype=np.uint8)
    mask = (np.arange(image.shape[1]) * num_classes // image.shape[1]).astype(np.uint8)
    mask = np.broadcast_to(mask, image.shape[:2]).copy()
    mask[: image.shape[0] // 8] = ignore_index
    for pipeline in pipelines.values():
        for k in range(draws):
            ctx = Context(np.random.default_rng(k), (h, w), ignore_index, lambda r: (image, mask))
            out = _checked_run(pipeline, image, mask, ctx, num_classes)
            check_output(*out, (h, w), pipeline.where)


def _checked_run(
    pipeline: Pipeline, image: np.ndarray, mask: np.ndarray, ctx: Context, num_classes: int
) -> Pair:
    for name, step in pipeline.steps:
        key = _key(pipeline.where, name)
        image, mask = Pipeline([(name, step)], pipeline.where).run_steps(image, mask, ctx)
        if image.dtype != np.uint8 or mask.dtype != np.uint8 or image.shape[:2] != mask.shape:
            raise DataError(
                f"{key} returns an image {image.dtype} {image.shape} and a mask {mask.dtype} "
                f"{mask.shape}: a step keeps both uint8 and of one size"
            )
        bad = sorted(set(np.unique(mask).tolist()) - set(range(num_classes)) - {ctx.ignore_index})
        if bad:
            raise DataError(
                f"{key} puts values {bad[:6]} in the mask, neither class ids (0.."
                f"{num_classes - 1}) nor ignore_index={ctx.ignore_index}: it interpolates the "
                "mask or pads it with another value; masks take nearest-neighbour only"
            )
    return image, mask
