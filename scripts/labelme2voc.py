"""Convert labelme JSON annotations to a VOC folder (palette PNG masks + JPEGImages).

    python scripts/labelme2voc.py annotations/ VOCdevkit --labels labels.txt
    python scripts/make_splits.py VOCdevkit --val-ratio 0.1

labels.txt: one class name per line, background first (id 0), then ids 1, 2, ... in order.
A line `__ignore__` (labelme's own convention) is not a class: shapes with that label are
painted with --ignore-index (255). Shapes are painted in file order (later ones on top):
polygon, rectangle and circle; line / linestrip / point shapes have no area and are skipped
with a note. Every JSON is validated first; unknown labels are all reported at once (file and
label) and nothing is written.

Writes <out>/<year>/SegmentationClass/<stem>.png (mode P, VOC palette, ignore white) and
<out>/<year>/JPEGImages/<stem>.jpg (JPEG sources copied byte for byte, EXIF included, since
labelme draws on the EXIF-rotated picture as segkit reads it; others re-encoded, quality 95),
plus <out>/<year>/class_names.txt.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import shutil
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from segkit.data.arguments import voc_palette

IGNORE_LABEL = "__ignore__"
AREA_SHAPES = ("polygon", "rectangle", "circle")


def read_labels(path: Path, ignore_index: int = 255) -> dict[str, int]:
    """labels.txt -> {name: id}; `__ignore__` maps to ignore_index, the others count from 0."""
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    names = [n for n in names if n]
    ids: dict[str, int] = {}
    for name in names:
        if name in ids:
            raise SystemExit(f"error: {path}: label {name!r} is listed twice")
        ids[name] = ignore_index if name == IGNORE_LABEL else len(ids) - (IGNORE_LABEL in ids)
    if not [n for n in ids if n != IGNORE_LABEL]:
        raise SystemExit(f"error: {path} lists no class (first line: the background class)")
    return ids


def unknown_labels(annotation: dict, json_path: Path, labels: dict[str, int]) -> list[str]:
    """'<json>: label <name>' for every label of the file that labels.txt lacks."""
    found = {s.get("label") for s in annotation.get("shapes", [])}
    return [f"{json_path}: label {name!r}" for name in sorted(found - set(labels), key=str)]


def shape_mask_draw(draw: ImageDraw.ImageDraw, shape: dict, value: int) -> bool:
    """Paint one labelme shape with `value`; False for shapes without area (line, point)."""
    kind = shape.get("shape_type") or "polygon"
    points = [tuple(map(float, p)) for p in shape["points"]]
    if kind == "polygon" and len(points) >= 3:
        draw.polygon(points, fill=value, outline=value)
    elif kind == "rectangle" and len(points) == 2:
        (x0, y0), (x1, y1) = points
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=value)
    elif kind == "circle" and len(points) == 2:
        (cx, cy), (px, py) = points
        r = ((px - cx) ** 2 + (py - cy) ** 2) ** 0.5
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value, outline=value)
    else:
        return False
    return True


def load_image(annotation: dict, json_path: Path) -> tuple[Image.Image, Path | None]:
    """(EXIF-rotated PIL image, its file or None when it came from the embedded imageData)."""
    image_path = json_path.parent / annotation.get("imagePath", "")
    if annotation.get("imagePath") and image_path.is_file():
        return ImageOps.exif_transpose(Image.open(image_path)), image_path
    if annotation.get("imageData"):
        data = base64.b64decode(annotation["imageData"])
        return ImageOps.exif_transpose(Image.open(io.BytesIO(data))), None
    raise SystemExit(
        f"error: {json_path}: image {image_path} not found and no imageData embedded; "
        "put the image next to the JSON or fix imagePath"
    )


def make_mask(annotation: dict, size: tuple[int, int], labels: dict[str, int]) -> Image.Image:
    """(W,H) -> mode P mask: background 0, shapes painted in order with their label id."""
    mask = Image.new("P", size, 0)
    mask.putpalette(palette_bytes())
    draw = ImageDraw.Draw(mask)
    for shape in annotation.get("shapes", []):
        if not shape_mask_draw(draw, shape, labels[shape["label"]]):
            print(f"note: skipped {shape.get('shape_type')} shape {shape['label']!r} (no area)")
    return mask


def palette_bytes() -> list[int]:
    """VOC palette for ids 0..254, white for 255 (ignore)."""
    flat = [v for colour in voc_palette(256) for v in colour]
    flat[-3:] = [255, 255, 255]
    return flat


def save_image(image: Image.Image, source: Path | None, out: Path) -> None:
    """JPEG source: copied as is (keeps its EXIF orientation); anything else: RGB JPEG q95."""
    if source is not None and source.suffix.lower() in (".jpg", ".jpeg"):
        shutil.copyfile(source, out)
    else:
        image.convert("RGB").save(out, quality=95)


def convert(json_files: list[Path], out_year: Path, labels: dict[str, int]) -> int:
    """Validate every file, then write images and masks; -> number converted."""
    annotations = {p: json.loads(p.read_text(encoding="utf-8")) for p in json_files}
    unknown = [u for p, a in annotations.items() for u in unknown_labels(a, p, labels)]
    if unknown:
        known = ", ".join(labels)
        raise SystemExit(
            "error: labels not in --labels (" + known + "):\n  " + "\n  ".join(unknown)
        )
    for sub in ("JPEGImages", "SegmentationClass"):
        (out_year / sub).mkdir(parents=True, exist_ok=True)
    for json_path, annotation in annotations.items():
        image, source = load_image(annotation, json_path)
        mask = make_mask(annotation, image.size, labels)
        save_image(image, source, out_year / "JPEGImages" / f"{json_path.stem}.jpg")
        mask.save(out_year / "SegmentationClass" / f"{json_path.stem}.png")
    names = [n for n in labels if n != IGNORE_LABEL]
    (out_year / "class_names.txt").write_text("".join(f"{n}\n" for n in names))
    return len(annotations)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("input_dir", type=Path, help="folder with labelme *.json files")
    p.add_argument("out", type=Path, help="output VOCdevkit folder")
    p.add_argument("--labels", type=Path, required=True, help="labels.txt, background first")
    p.add_argument("--year", default="VOC2007")
    p.add_argument("--ignore-index", type=int, default=255)
    args = p.parse_args(argv)
    json_files = sorted(args.input_dir.glob("*.json"))
    if not json_files:
        print(f"error: no *.json files in {args.input_dir}", file=sys.stderr)
        return 1
    labels = read_labels(args.labels, args.ignore_index)
    n = convert(json_files, args.out / args.year, labels)
    classes = len([name for name in labels if name != IGNORE_LABEL])
    print(f"wrote {n} masks to {args.out / args.year}; {classes} classes (dataset.num_classes)")
    print(f"next: python scripts/make_splits.py {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
