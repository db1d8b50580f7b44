"""Reading images, masks and split files, and turning raw masks into class ids.

Conventions:
- Images come back as (H,W,3) uint8 RGB, whatever the file holds (gray, gray+alpha, RGBA,
  16-bit, CMYK, palette), or as (H,W,1) uint8 gray when asked for one channel. An alpha channel
  is dropped: the stored colours are used, transparent pixels too (`ALPHA_RULE`).
- Masks come back as (H,W) uint8 raw values (palette PNGs give their palette *indices*, never
  colours) or (H,W,3) uint8 RGB for colour-coded masks; `encode_mask` turns either into ids.
- EXIF orientation: files are decoded WITHOUT any automatic rotation, then the EXIF orientation
  tag (0x0112) of that same file, if present, is applied explicitly. Images and masks follow this
  one rule, so a phone JPEG (tag 6) and a mask PNG drawn on the displayed picture (no tag) line up.
  For PNG only an eXIf chunk placed before the pixel data is honoured (read from the header,
  without decoding the pixels twice).
- Every file is read as bytes first (np.fromfile / Path.read_bytes), so non-ASCII names work.
"""

from __future__ import annotations

import glob
import io
from collections.abc import Mapping
from numbers import Number
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segkit.errors import DataError

EXIF_ORIENTATION = 0x0112
# what happens to transparency, in the words the dataset check and the docs use too
ALPHA_RULE = "alpha channel dropped (the stored colours are used, transparent pixels too)"


def _read_bytes(path: str | Path, what: str) -> np.ndarray:
    """File content as a 1-D uint8 array; DataError when missing, empty or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path} (check the dataset root and file names)")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read {what} file {path}: {e}") from e
    if data.size == 0:
        raise DataError(f"{what} file is empty: {path} (re-export it or remove it from the split)")
    return data


def _open_pil(data: np.ndarray, path: str | Path, what: str) -> Image.Image:
    """Lazily opened PIL image (header parsed, pixels not decoded yet)."""
    try:
        return Image.open(io.BytesIO(data.tobytes()))
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ...) for bad files
        raise DataError(
            f"cannot decode {what} file {path}: not an image or corrupt ({e}); "
            "re-export it or remove it from the split"
        ) from e


def exif_orientation(im: Image.Image) -> int:
    """EXIF orientation tag 1..8 of an opened PIL image (1 when absent or invalid)."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # getexif() on a PNG would decode all pixels to look for a late eXIf chunk
    try:
        value = int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block is treated as absent, the pixels may still be fine
        return 1
    return value if 1 <= value <= 8 else 1


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a stored (H,W[,C]) array into its displayed orientation (same result as
    PIL.ImageOps.exif_transpose for tags 1..8)."""
    ops = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: np.rot90(a, k=2).swapaxes(0, 1),
        8: lambda a: np.rot90(a, k=1),
    }
    return np.ascontiguousarray(ops.get(orientation, ops[1])(arr))


def _to_uint8(arr: np.ndarray, path: str | Path) -> np.ndarray:
    """uint8 stays, uint16 is scaled by 255/65535 (rounded); other dtypes are refused."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return (arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    raise DataError(
        f"image {path} has unsupported pixel type {arr.dtype}; convert it to 8-bit PNG or JPEG"
    )


def _to_rgb(arr: np.ndarray, bgr: bool) -> np.ndarray:
    """(H,W), (H,W,1|2|3|4) uint8 -> (H,W,3) uint8 RGB; an alpha channel is dropped
    (`ALPHA_RULE`), as PIL's convert("RGB") and OpenCV's IMREAD_COLOR do: the picture is what the
    annotation tools showed, and a file whose alpha is wrong (all 0) keeps its pixels."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] in (2, 4):
        arr = arr[..., :-1]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif bgr:  # cv2's SIMD conversion: much faster than copying the reversed numpy view
        arr = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(arr)


def _decode_pil_image(im: Image.Image, path: str | Path) -> np.ndarray:
    """Fallback decoder (CMYK, formats OpenCV lacks): any PIL mode -> (H,W[,C]) uint8/uint16."""
    try:
        if im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("RGB")
        elif im.mode == "P":
            im = im.convert("RGBA")  # a palette's transparency: dropped like any alpha
        elif im.mode in ("1", "F", "I"):
            im = im.convert("L")
        return np.asarray(im)
    except Exception as e:  # any decoder failure means a corrupt file
        raise DataError(f"cannot decode image file {path}: {e}; re-export it") from e


def read_image(path: str | Path, channels: int = 3) -> np.ndarray:
    """Read any picture as (H,W,3) uint8 RGB, or with ``channels=1`` as (H,W,1) uint8 gray
    (a colour picture is converted with the ITU-R 601 weights; a gray one keeps its values),
    in its displayed (EXIF) orientation.

    Decoded by OpenCV (fast) except for CMYK and formats OpenCV cannot read (PIL fallback).
    """
    if channels not in (1, 3):
        raise DataError(f"dataset.in_channels must be 1 (gray) or 3 (RGB), got {channels}")
    data = _read_bytes(path, "image")
    im = _open_pil(data, path, "image")
    arr, bgr = None, True
    if im.mode not in ("CMYK", "P"):
        try:  # IMREAD_UNCHANGED: no auto-rotation (done explicitly below), keeps 16 bit/alpha
            arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        except cv2.error:
            arr = None  # let PIL try (and report) below
    if arr is None:
        arr, bgr = _decode_pil_image(im, path), False
    rgb = _to_rgb(_to_uint8(arr, path), bgr=bgr)
    if channels == 1:  # gray replicated to RGB converts back exactly
        rgb = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None]
    return apply_orientation(rgb, exif_orientation(im))


def read_mask(path: str | Path) -> np.ndarray:
    """Read a label file: (H,W) uint8 raw values, or (H,W,3) uint8 RGB for colour masks.

    Palette PNGs give indices (not colours); 1-bit files give 0/1; 16-bit files are accepted when
    every value fits in 0..255; an alpha channel is dropped. EXIF orientation as in `read_image`.
    """
    data = _read_bytes(path, "mask")
    im = _open_pil(data, path, "mask")
    orientation = exif_orientation(im)
    try:
        if im.mode in ("RGBA", "RGBX", "CMYK", "YCbCr"):
            im = im.convert("RGB")
        elif im.mode in ("LA", "PA"):
            im = im.getchannel(0)
        arr = np.asarray(im)
    except Exception as e:  # any decoder failure means a corrupt file
        raise DataError(f"cannot decode mask file {path}: {e}; re-export it") from e
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(
                f"mask {path} is {arr.dtype} with values {int(arr.min())}..{int(arr.max())}; "
                "class ids must fit in 0..255: save it as an 8-bit (L or P mode) PNG"
            )
        arr = arr.astype(np.uint8)
    return apply_orientation(arr, orientation)


def read_split_file(path: str | Path) -> list[str]:
    """Sample names of a split file: first whitespace token of each non-blank line; a UTF-8 BOM,
    CRLF line ends and trailing spaces are tolerated."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"split file {path} is not UTF-8 text ({e}); save it as UTF-8") from e
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _format_counts(values: np.ndarray, counts: np.ndarray, limit: int = 10) -> str:
    items = [f"{v} ({c} px)" for v, c in zip(values.tolist(), counts.tolist())]
    more = f", ... {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def build_label_lut(label_map: Mapping | None) -> np.ndarray:
    """256-entry uint8 lookup table raw value -> id: identity, overridden by label_map."""
    lut = np.arange(256, dtype=np.uint8)
    for raw, target in (label_map or {}).items():
        raw, target = int(raw), int(target)
        if not (0 <= raw <= 255 and 0 <= target <= 255):
            raise DataError(
                f"dataset.label_map entry {raw}: {target} is out of 0..255; "
                "keys are raw mask values, values are class ids or ignore_index"
            )
        lut[raw] = target
    return lut


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(...,3) uint8 -> (...) int32 key r<<16 | g<<8 | b."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def build_color_table(color_map: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """color_map {class id: [r,g,b]} (or a list of [r,g,b] for several colours of one class)
    -> (sorted packed colour keys (K,) int32, their ids (K,) uint8)."""
    keys, ids = [], []
    for cls, colours in color_map.items():
        colours = list(colours)
        if colours and isinstance(colours[0], Number):
            colours = [colours]  # one [r,g,b], not a list of them
        for colour in colours:
            colour = list(colour)
            if len(colour) != 3 or not all(0 <= int(c) <= 255 for c in colour):
                raise DataError(
                    f"dataset.color_map[{cls}] = {colour} is not an [r, g, b] colour in 0..255"
                )
            keys.append(_pack_rgb(np.array([int(c) for c in colour])))
            ids.append(int(cls))
    keys_arr = np.array(keys, np.int32)
    if len(set(keys)) != len(keys):
        raise DataError("dataset.color_map gives the same colour to two classes")
    order = np.argsort(keys_arr)
    return keys_arr[order], np.array(ids, np.uint8)[order]


def _encode_colors(raw: np.ndarray, color_map: Mapping, path: str | Path) -> np.ndarray:
    """(H,W,3) uint8 RGB -> (H,W) uint8 ids; DataError listing colours not in color_map."""
    keys, ids = build_color_table(color_map)
    packed = _pack_rgb(raw)
    pos = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
    known = keys[pos] == packed
    if not known.all():
        values, counts = np.unique(packed[~known], return_counts=True)
        colours = np.stack([(values >> 16) & 255, (values >> 8) & 255, values & 255], axis=1)
        listed = [f"[{r}, {g}, {b}]" for r, g, b in colours.tolist()]
        raise DataError(
            f"mask {path} has colours not in dataset.color_map: "
            f"{_format_counts(np.array(listed), counts)}; add them to dataset.color_map "
            "(class id: [r, g, b]), e.g. map a border colour to the ignore_index"
        )
    return ids[pos]


def encode_mask(
    raw: np.ndarray,
    *,
    num_classes: int,
    ignore_index: int = 255,
    label_map: Mapping | None = None,
    color_map: Mapping | None = None,
    path: str | Path = "",
) -> np.ndarray:
    """Raw mask -> (H,W) uint8 ids in [0, num_classes) or ignore_index.

    raw: (H,W) uint8 values, mapped through label_map {raw value: id} (identity elsewhere), or
    (H,W,3) uint8 RGB, mapped through color_map {id: [r,g,b] | [[r,g,b], ...]}; every colour must
    be listed. Any other resulting value is a DataError listing values, pixel counts and the fix.
    """
    if raw.ndim == 3:
        if not color_map:
            raise DataError(
                f"mask {path} is a colour (RGB) image but dataset.color_map is not set; set "
                "dataset.color_map={class id: [r, g, b], ...} or save masks as class-id PNGs"
            )
        ids = _encode_colors(raw, color_map, path)
    else:
        ids = cv2.LUT(raw, build_label_lut(label_map))
    bad_value = np.zeros(256, np.uint8)  # 1 for values that are neither a class nor ignore
    bad_value[num_classes:] = 1
    if 0 <= ignore_index <= 255:
        bad_value[ignore_index] = 0
    if not cv2.countNonZero(cv2.LUT(ids, bad_value)):  # the common case: cheaper than counting
        return ids
    counts = np.bincount(ids.ravel(), minlength=256)
    bad = np.flatnonzero(counts)
    bad = bad[(bad >= num_classes) & (bad != ignore_index)]
    if bad.size:
        example = f"{{{int(bad[0])}: {num_classes - 1}}}"
        raise DataError(
            f"mask {path} has label values outside [0, {num_classes}) that are not "
            f"ignore_index={ignore_index}: {_format_counts(bad, counts[bad])}. Fix: map them, e.g. "
            f"set dataset.label_map={example} (raw value: class id), or set "
            "dataset.num_classes / dataset.ignore_index to match the data"
        )
    return ids


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


def list_inputs(spec: str) -> tuple[list[Path], list[Path]]:
    """``input=`` -> (sorted files, the folders holding them). ``spec``: a file (any suffix),
    a folder (its images and videos, recursively, hidden entries left out) or a glob."""
    path, known = Path(spec).expanduser(), IMAGE_SUFFIXES + VIDEO_SUFFIXES
    if path.is_file():
        return [path], [path.parent]
    if path.is_dir():
        files = [
            f
            for f in path.rglob("*")
            if f.is_file()
            and f.suffix.lower() in known
            and not any(part.startswith(".") for part in f.relative_to(path).parts)
        ]
        roots = [path]
    elif glob.has_magic(spec):
        files = [Path(f) for f in glob.glob(str(path), recursive=True) if Path(f).is_file()]
        roots = sorted({f.parent for f in files})
    else:
        raise DataError(
            f"input={spec}: no such file or folder (give an image, folder, glob, video)"
        )
    if not files:
        raise DataError(f"input={spec}: no images or videos found (suffixes {', '.join(known)})")
    return sorted(files), roots
