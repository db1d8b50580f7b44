"""The embedded demo dataset: synthetic shapes in the VOC layout, generated once into a cache.

Classes are defined by SHAPE only: 0 background, 1 circle/ellipse, 2 rectangle, 3 triangle,
4 cross. Each image holds 2..5 objects, each with a random tint (hue is random and says nothing
about the class), size, rotation and position; objects mostly keep apart but may overlap or
leave the frame. Objects are bright and flat (lightly shaded); backgrounds are dark and
textured: gradients, colour blobs, stripes and grain, with distractor lines and rings
(background class, any brightness). Light noise, blur and JPEG compression on top.
Like VOC, a 255 (ignore) band of 2 px runs along every boundary between classes.

The data depends only on (DEMO_VERSION, num_train, num_val, size, seed), which name its folder:
changing the generator means bumping DEMO_VERSION, which rebuilds it. Creation is atomic (temp
folder + rename) and guarded by a lock file, so concurrent creators (DDP ranks, pytest workers)
build it once.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segkit.data.arguments import voc_palette
from segkit.data.voc import VOCDataset
from segkit.errors import DataError

try:
    import fcntl
except ImportError:  # Windows: no lock, the atomic rename still prevents half-built folders
    fcntl = None

DEMO_VERSION = "v8"
DEMO_CLASSES = ["background", "circle", "rectangle", "triangle", "cross"]
IGNORE = 255
JPEG_QUALITY = 90
# objects are bright, backgrounds dark (any hue): edges have a consistent polarity, which a
# small CNN picks up in a few hundred steps; distractor lines may be bright too
BACKGROUND_BRIGHTNESS = (20, 120)
OBJECT_BRIGHTNESS = (170, 255)
OBJECT_MIN_CHANNEL = 0.45  # tinted, not fully saturated objects
# what a demo cache folder may hold: built sets, their lock files and temp folders, dotfiles
_CACHE_ENTRY = re.compile(r"\.?v\d+-\d+-\d+-\d+x\d+-seed-?\d+(\.lock|-.+)?|\..*")
# radius multiplier per class so that every shape covers about the same area for one radius
SHAPE_SCALE = {1: 1.0, 2: 1.0, 3: 1.35, 4: 1.15}


def default_demo_root() -> Path:
    """$SEGKIT_CACHE/demo, else ~/.cache/segkit/demo."""
    cache = os.environ.get("SEGKIT_CACHE")
    base = Path(cache) if cache else Path.home() / ".cache" / "segkit"
    return base.expanduser() / "demo"


def check_cache_root(root: Path) -> None:
    """Stop before generating into a folder that is not a demo cache (e.g. the user's own
    images given as ``dataset.root``): the demo set is written only into its cache folder."""
    if not root.exists():
        return
    if not root.is_dir():
        raise DataError(f"dataset.root={root} is a file; the demo set needs a cache folder")
    foreign = sorted(p.name for p in root.iterdir() if not _CACHE_ENTRY.fullmatch(p.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise DataError(
            f"dataset.root={root} is not a demo cache folder: it holds {len(foreign)} other "
            f"entries ({shown}), and the demo set is generated only into a folder that is new, "
            f"empty or holds demo sets alone (default {default_demo_root()}). Nothing was "
            "written. To score your own labelled data use dataset=voc dataset.root=...; to "
            "segment plain images use scripts/predict.py ckpt=... input=..."
        )


def _random_colour(
    rng: np.random.Generator, lo: float = 0, hi: float = 255, min_channel: float = 0
) -> np.ndarray:
    """(3,) float32 RGB of random hue whose brightest channel is in [lo, hi]; every channel is
    at least min_channel times the brightest one (1 = gray, 0 = any saturation)."""
    c = rng.uniform(min_channel, 1, 3)
    return (c / c.max() * rng.uniform(lo, hi)).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h,w,3) float32 ~0..255: gradient between two dark colours + colour blobs + stripes +
    grain."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h + 1) / 2
    dark = BACKGROUND_BRIGHTNESS
    img = (
        _random_colour(rng, *dark) * (1 - t[..., None]) + _random_colour(rng, *dark) * t[..., None]
    )
    if rng.uniform() < 0.5:  # low-frequency colour blobs
        g = int(rng.integers(2, 5))
        grid = np.stack([_random_colour(rng, *dark) for _ in range(g * g)]).reshape(g, g, 3)
        blobs = cv2.resize(grid, (w, h))
        mix = rng.uniform(0.2, 0.6)
        img = img * (1 - mix) + blobs * mix
    if rng.uniform() < 0.5:  # stripes
        period, theta = rng.uniform(6, 30), rng.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * (np.cos(theta) * xx + np.sin(theta) * yy) / period)
        img = img + wave[..., None] * rng.uniform(8, 35) * rng.uniform(-1, 1, 3)
    # grain: backgrounds are textured, objects are flat (shaded) - a local cue like stuff/things
    return img + rng.normal(0, rng.uniform(8, 20), img.shape)


def _distractors(img: np.ndarray, rng: np.random.Generator) -> None:
    """Draw background-class clutter in place: random lines and unfilled rings."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(0, 3))):
        p0 = tuple(int(v) for v in rng.integers(0, [w, h]))
        p1 = tuple(int(v) for v in rng.integers(0, [w, h]))
        colour = _random_colour(rng).tolist()
        cv2.line(img, p0, p1, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    if rng.uniform() < 0.25:
        centre = tuple(int(v) for v in rng.integers(0, [w, h]))
        radius = int(rng.integers(8, 30))
        cv2.circle(img, centre, radius, _random_colour(rng).tolist(), 2, cv2.LINE_AA)


def _shape_polygons(cls: int, rng: np.random.Generator, centre: np.ndarray, r: float) -> list:
    """Outline(s) of one object as float (K,2) x,y polygons; circles are sampled ellipses."""
    rot = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(rot), np.sin(rot)
    turn = np.array([[c, -s], [s, c]])
    if cls == 1:  # circle / ellipse
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([np.cos(t) * r, np.sin(t) * r * rng.uniform(0.6, 1.0)], 1)
        return [pts @ turn.T + centre]
    if cls == 2:  # rectangle
        a, b = r * rng.uniform(0.7, 1.0), r * rng.uniform(0.45, 0.9)
        pts = np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
        return [pts @ turn.T + centre]
    if cls == 3:  # triangle
        angles = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, 3)
        radii = r * rng.uniform(0.85, 1.15, 3)
        pts = np.stack([np.cos(angles) * radii, np.sin(angles) * radii], 1)
        return [pts @ turn.T + centre]
    arm, half = r, r * rng.uniform(0.25, 0.35)  # cross: two crossing bars
    bar = np.array([[-arm, -half], [arm, -half], [arm, half], [-arm, half]])
    return [bar @ turn.T + centre, bar[:, ::-1] @ turn.T + centre]


def _place(rng: np.random.Generator, r: float, placed: list, h: int, w: int) -> np.ndarray:
    """(x, y) centre for radius r: the best of 8 tries at keeping apart from `placed` objects
    (list of (centre, radius)); overlaps stay possible but mostly partial."""
    best, best_gap = None, -np.inf
    for _ in range(8):
        centre = rng.uniform([r * 0.5, r * 0.5], [w - r * 0.5, h - r * 0.5])
        gap = min((np.hypot(*(centre - c)) / (r + rc) for c, rc in placed), default=1.0)
        if gap > best_gap:
            best, best_gap = centre, gap
        if gap >= 0.8:
            break
    placed.append((best, r))
    return best


def _fill_texture(cls: int, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """(H,W) brightness factor: each class has its own faint fill pattern (circles plain,
    rectangles stripes, triangles dots, crosses diagonal bands) at a random phase and period.

    A local cue a small CNN learns in a few minutes on a CPU; the shape, the 255 band and
    overlapping objects still have to be learnt for a high mIoU.
    """
    period = rng.uniform(4.0, 7.0)
    phase = rng.uniform(0, 2 * np.pi)
    depth = rng.uniform(0.12, 0.2)
    if cls == 2:
        wave = np.sin(2 * np.pi * yy / period + phase)
    elif cls == 3:
        wave = np.sin(2 * np.pi * xx / period + phase) * np.sin(2 * np.pi * yy / period + phase)
    elif cls == 4:
        wave = np.sin(2 * np.pi * (xx + yy) / (1.4 * period) + phase)
    else:
        return np.ones_like(xx)
    return 1 + depth * wave


def _draw_object(img, label, rng, cls: int, placed: list) -> None:
    """Paint one object of class cls in place: anti-aliased shaded colour, binary label."""
    h, w = label.shape
    r = rng.uniform(0.07, 0.19) * min(h, w) * SHAPE_SCALE[cls]  # 9..24 px at 128x128
    centre = _place(rng, r, placed, h, w)
    polys = [np.round(p * 16).astype(np.int32) for p in _shape_polygons(cls, rng, centre, r)]
    alpha, binary = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    for poly in polys:  # one call per polygon: a single call would XOR their overlap
        cv2.fillPoly(alpha, [poly], 255, cv2.LINE_AA, shift=4)
        cv2.fillPoly(binary, [poly], 1, cv2.LINE_8, shift=4)
    under = img[int(centre[1]) % h, int(centre[0]) % w]
    for _ in range(10):  # keep some contrast with the background (or object) under it
        colour = _random_colour(rng, *OBJECT_BRIGHTNESS, OBJECT_MIN_CHANNEL)
        if np.abs(colour - under).sum() >= 150:
            break
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 1 + rng.uniform(-0.25, 0.25) * ((xx - centre[0]) + (yy - centre[1])) / (2 * r)
    shade *= _fill_texture(cls, rng, xx, yy)
    a = alpha[..., None].astype(np.float32) / 255
    img[:] = img * (1 - a) + np.clip(colour * shade[..., None], 0, 255) * a
    label[binary > 0] = cls


def _boundary(label: np.ndarray) -> np.ndarray:
    """(H,W) bool: pixels touching a different class (3x3), a 2 px band along every edge."""
    kernel = np.ones((3, 3), np.uint8)
    return cv2.dilate(label, kernel) != cv2.erode(label, kernel)


def make_demo_sample(index: int, size: Sequence[int], seed: int = 0):
    """Sample `index`: ((H,W,3) uint8 RGB image, (H,W) uint8 mask in {0..4, 255}).

    Deterministic in (seed, index). Object count 2..5; the last (topmost, so always visible)
    object has class index % 4 + 1, so any 4 consecutive samples hold every class.
    """
    rng = np.random.default_rng([seed, index])
    h, w = int(size[0]), int(size[1])
    img = _background(rng, h, w)
    _distractors(img, rng)
    label = np.zeros((h, w), np.uint8)
    classes = list(rng.integers(1, 5, int(rng.integers(1, 5)))) + [index % 4 + 1]
    placed: list = []
    for cls in classes:
        _draw_object(img, label, rng, int(cls), placed)
    img += rng.normal(0, rng.uniform(1, 5), img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if rng.uniform() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 0.9))
    label[_boundary(label)] = IGNORE
    return img, label


def _write_sample(voc: Path, name: str, image: np.ndarray, mask: np.ndarray, palette) -> None:
    """JPEG image (quality 90) and palette PNG mask (indices; 255 shown white)."""
    ok, jpg = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"cannot encode demo image {name}")
    (voc / "JPEGImages" / f"{name}.jpg").write_bytes(jpg.tobytes())
    png = Image.fromarray(mask)
    png.putpalette(palette)
    png.save(voc / "SegmentationClass" / f"{name}.png")


def _generate(voc: Path, num_train: int, num_val: int, size: Sequence[int], seed: int) -> None:
    """Write the whole VOC2007-layout folder `voc` (JPEGImages, SegmentationClass, splits)."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    flat = [0] * 768
    for i, colour in enumerate(voc_palette(len(DEMO_CLASSES))):
        flat[3 * i : 3 * i + 3] = colour
    flat[3 * IGNORE : 3 * IGNORE + 3] = [255, 255, 255]
    names = [f"{i:06d}" for i in range(num_train + num_val)]
    for i, name in enumerate(names):
        _write_sample(voc, name, *make_demo_sample(i, size, seed), flat)
    splits = {"train": names[:num_train], "val": names[num_train:], "trainval": names}
    for split, members in splits.items():
        text = "".join(f"{n}\n" for n in members)
        (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text(text)


@contextmanager
def _file_lock(path: Path):
    """Exclusive lock held while the block runs (no-op where fcntl is missing)."""
    with open(path, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def make_demo_dataset(
    root: str | Path | None = None,
    *,
    num_train: int = 320,
    num_val: int = 80,
    size: Sequence[int] = (128, 128),
    seed: int = 0,
) -> Path:
    """Build the demo set once under root (default `default_demo_root()`); -> its VOCdevkit path.

    root must be a demo cache: new, empty, or holding demo sets only (else DataError, nothing
    written).

    Layout: <root>/<DEMO_VERSION>-<num_train>-<num_val>-<H>x<W>-seed<seed>/VOCdevkit/VOC2007/
    {JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val,trainval}.txt}.
    """
    if num_train < 1 or num_val < 1:
        raise DataError("dataset.num_train and dataset.num_val must be >= 1")
    root = Path(root).expanduser() if root is not None else default_demo_root()
    h, w = int(size[0]), int(size[1])
    final = root / f"{DEMO_VERSION}-{num_train}-{num_val}-{h}x{w}-seed{seed}"
    if final.is_dir():
        return final / "VOCdevkit"
    check_cache_root(root)
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f"{final.name}.lock"):
        if final.is_dir():  # built by another process while we waited for the lock
            return final / "VOCdevkit"
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
        try:
            _generate(tmp / "VOCdevkit" / "VOC2007", num_train, num_val, (h, w), seed)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # else another creator (no fcntl) won the race
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final / "VOCdevkit"


class DemoDataset(VOCDataset):
    """The demo set (see module doc) as a VOCDataset; generated on first use.

    root: cache folder (None -> $SEGKIT_CACHE/demo or ~/.cache/segkit/demo). num_train, num_val,
    image_size (H,W) and demo_seed select the generated set; input_shape defaults to image_size.
    The remaining keyword arguments (train, augment, mean, ...) go to SegmentationDataset.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        *,
        num_train: int = 320,
        num_val: int = 80,
        image_size: Sequence[int] = (128, 128),
        demo_seed: int = 0,
        num_classes: int = len(DEMO_CLASSES),
        input_shape: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        **common,
    ):
        if num_classes != len(DEMO_CLASSES):
            raise DataError(
                f"dataset.num_classes={num_classes}, but the demo set has "
                f"{len(DEMO_CLASSES)} classes {DEMO_CLASSES}; set dataset.num_classes=5"
            )
        voc = make_demo_dataset(
            root, num_train=num_train, num_val=num_val, size=image_size, seed=demo_seed
        )
        super().__init__(
            voc,
            split,
            num_classes=num_classes,
            input_shape=image_size if input_shape is None else input_shape,
            class_names=DEMO_CLASSES if class_names is None else class_names,
            palette=voc_palette(num_classes) if palette is None else palette,
            **common,
        )
