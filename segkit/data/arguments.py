"""The dataset's constructor arguments, checked: class ids, input shape, class names, palette,
augmentation parameters (paste_classes resolved to ids), mean/std. Each check returns the value
in the form the dataset keeps, or raises a DataError naming the dataset.* key and the fix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from segkit.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Channels = tuple[float, ...]  # a per-channel mean or std (3 values for RGB, 1 for gray)
# The flat dataset.augment keys of segkit <= 0.2 (read as the default step list, see
# segkit.data.augment.steps_from_flat_keys) and their values there.
FLAT_AUGMENT_KEYS = {
    "jitter": 0.3,  # aspect ratio jitter: ratio * U(1-j, 1+j) / U(1-j, 1+j)
    "scale": (0.25, 2.0),  # longer side of the pasted picture / output side
    "flip": 0.5,  # probability of a horizontal flip
    "hue": 0.1,  # hue gain U(1-hue, 1+hue) (OpenCV hue, 0..179, wraps)
    "sat": 0.7,  # saturation gain U(1-sat, 1+sat)
    "val": 0.3,  # value (brightness) gain U(1-val, 1+val)
    "class_crop": 0.0,  # probability that a crop holds a pixel of a class drawn uniformly
    "copy_paste": 0.0,  # probability that another image's pixels of paste_classes are pasted in
    "paste_classes": (),  # class ids that copy_paste copies (rare thin ones: poles, signs, ...)
}


def voc_palette(n: int) -> list[list[int]]:
    """The PASCAL VOC colour map: n [r, g, b] lists (0 black, 1 dark red, 2 dark green, ...)."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int]:
    """(H, W) as two positive ints, else DataError naming dataset.input_shape."""
    try:
        h, w = (int(v) for v in input_shape)
    except (TypeError, ValueError) as e:
        raise DataError(f"dataset.input_shape must be [H, W], got {input_shape!r}") from e
    if h <= 0 or w <= 0:
        raise DataError(f"dataset.input_shape must be positive [H, W], got {[h, w]}")
    return h, w


def check_class_names(names: Sequence[str] | None, num_classes: int) -> list[str]:
    """num_classes names; default "class_0", "class_1", ..."""
    if names is None:
        return [f"class_{i}" for i in range(num_classes)]
    names = [str(n) for n in names]
    if len(names) != num_classes:
        raise DataError(
            f"dataset.class_names has {len(names)} names but dataset.num_classes={num_classes}; "
            "give one name per class id"
        )
    return names


def check_palette(palette: Sequence | None, num_classes: int) -> list[list[int]]:
    """num_classes [r, g, b] int lists in 0..255; default the VOC colour map."""
    if palette is None:
        return voc_palette(num_classes)
    palette = [list(p) for p in palette]
    if len(palette) != num_classes:
        raise DataError(
            f"dataset.palette has {len(palette)} colours but dataset.num_classes={num_classes}"
        )
    for i, colour in enumerate(palette):
        if len(colour) != 3 or not all(0 <= int(c) <= 255 for c in colour):
            raise DataError(f"dataset.palette[{i}] = {colour} is not an [r, g, b] in 0..255")
    return [[int(c) for c in colour] for colour in palette]


def check_augment(augment: Mapping | None, class_names: Sequence[str]) -> dict:
    """The old flat dataset.augment keys: FLAT_AUGMENT_KEYS updated with `augment`,
    paste_classes as class ids (names resolved against class_names, one per class); unknown
    keys or bad values -> DataError."""
    params = dict(FLAT_AUGMENT_KEYS)
    for key, value in (augment or {}).items():
        if key not in FLAT_AUGMENT_KEYS:
            raise DataError(
                f"unknown key dataset.augment.{key}; known: {sorted(FLAT_AUGMENT_KEYS)}"
            )
        params[key] = _augment_value(key, value)
    lo, hi = params["scale"] if len(params["scale"]) == 2 else (0, -1)
    if not 0 < lo <= hi:
        raise DataError(f"dataset.augment.scale must be [lo, hi] with 0 < lo <= hi: {lo, hi}")
    if not 0 <= params["class_crop"] <= 1:
        raise DataError(f"dataset.augment.class_crop must be in [0, 1]: {params['class_crop']}")
    if not 0 <= params["jitter"] < 1:
        raise DataError(f"dataset.augment.jitter must be in [0, 1): {params['jitter']}")
    if not 0 <= params["copy_paste"] <= 1:
        raise DataError(f"dataset.augment.copy_paste must be in [0, 1]: {params['copy_paste']}")
    if params["copy_paste"] > 0 and not params["paste_classes"]:
        raise DataError(
            f"dataset.augment.copy_paste={params['copy_paste']} needs the classes to paste: "
            "set dataset.augment.paste_classes, e.g. [2,6] or [Pole,SignSymbol] (or copy_paste=0)"
        )
    params["paste_classes"] = paste_class_ids(params["paste_classes"], class_names)
    return params


def paste_class_ids(
    classes: Sequence[int | str],
    class_names: Sequence[str],
    key: str = "dataset.augment.paste_classes",
) -> tuple[int, ...]:
    """dataset.augment.paste_classes as class ids: each entry an id in 0..len(class_names)-1
    or a class name (case-insensitive); anything else -> DataError naming the known names."""
    by_name = {name.lower(): i for i, name in enumerate(class_names)}
    ids = [by_name.get(c.lower(), -1) if isinstance(c, str) else c for c in classes]
    bad = [c for c, i in zip(classes, ids) if not 0 <= i < len(class_names)]
    if bad:
        n = len(class_names)
        raise DataError(
            f"{key} holds {bad}, not class ids of "
            f"dataset.num_classes={n} (0..{n - 1}) nor class names ({', '.join(class_names)})"
        )
    return tuple(ids)


def _augment_value(key: str, value: Any) -> Any:
    """One dataset.augment value as check_augment keeps it: scale a tuple of floats,
    paste_classes a tuple of ints and names (resolved later), the rest a float; a value of the
    wrong kind -> DataError."""
    try:
        if key == "scale":
            return tuple(float(v) for v in value)
        if key == "paste_classes":  # one class may be given bare: paste_classes=Pole
            values = [value] if isinstance(value, (str, int)) else value or ()
            return tuple(_id_or_name(v) for v in values)
        return float(value)
    except (TypeError, ValueError) as e:
        kind = {"scale": "[lo, hi]", "paste_classes": "a list of class ids or names"}
        raise DataError(
            f"dataset.augment.{key} must be {kind.get(key, 'a number')}, got {value!r}"
        ) from e


def _id_or_name(value: Any) -> int | str:
    """A paste_classes entry: an int (or int-valued float / digit string) or a class name."""
    if isinstance(value, str):
        return int(value) if value.strip().isdigit() else value.strip()
    if isinstance(value, bool) or not float(value).is_integer():
        raise ValueError(value)
    return int(value)


def check_mean_std(
    mean: Sequence[float], std: Sequence[float], in_channels: int | None = None
) -> tuple[Channels, Channels]:
    """``in_channels`` floats each (1 or 3; None: whatever the mean has), std > 0."""
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    n = len(mean) if in_channels is None else in_channels
    if n not in (1, 3) or len(mean) != n or len(std) != n or min(std) <= 0:
        raise DataError(
            f"dataset.mean/std must be dataset.in_channels={n} values each (1 gray, 3 RGB), "
            f"std > 0; got mean {list(mean)}, std {list(std)}"
        )
    return mean, std


def check_ids(num_classes: int, ignore_index: int) -> None:
    """Masks are uint8: ids and ignore_index must fit, and ignore must not be a class id."""
    if not 1 <= num_classes <= 255:
        raise DataError(f"dataset.num_classes must be in 1..255, got {num_classes}")
    if not num_classes <= ignore_index <= 255:
        raise DataError(
            f"dataset.ignore_index={ignore_index} must be in {num_classes}..255 (not a class id)"
        )
