"""Layout checks of the public datasets read in place (Cityscapes, ADE20K, VOC + SBD,
COCO-Stuff): a wrong root, a missing split, an unconverted SBD, labelIds already converted, a
city with images but no labels. Each is one `LayoutError` naming the path and the fix.

The dataset constructors raise them (so training and ``scripts/check_dataset.py`` stop with the
same one message); mask-content findings (`LayoutError` from a dataset's ``encode``) reach the
dataset check as a problem of their own ``kind`` (`LAYOUT_KINDS`, merged into
``segkit.data.problems.KINDS``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from segkit.errors import DataError

# kind -> (what is wrong, how to fix it), as segkit.data.problems.KINDS
LAYOUT_KINDS: dict[str, tuple[str, str]] = {
    "wrong_root": (
        "dataset.root is not the dataset's top folder",
        "set dataset.root to the folder the docs/datasets.md tree starts at",
    ),
    "missing_split": (
        "a split folder or split file of the layout is missing",
        "unpack the archive that holds the split (docs/datasets.md), or choose another split",
    ),
    "missing_labels": (
        "images without their label files",
        "unpack the label archive into dataset.root (docs/datasets.md)",
    ),
    "unconverted_sbd": (
        "the SBD masks were not converted",
        "run scripts/convert_sbd.py and point dataset.root at its output folder",
    ),
    "converted_label_ids": (
        "a *_labelIds.png mask holds values no Cityscapes labelId has (trainIds already?)",
        "restore the original labelIds files, or keep converted masks as *_labelTrainIds.png",
    ),
}


class LayoutError(DataError):
    """A public dataset's files are not laid out (or encoded) as published; ``kind`` is a key
    of `LAYOUT_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def listing(folder: Path, limit: int = 8) -> str:
    """'[a, b, ...]' of the entries of folder (what the user has instead), or 'nothing'."""
    if not folder.is_dir():
        return "nothing: it does not exist" if not folder.exists() else "nothing: not a folder"
    names = sorted(p.name for p in folder.iterdir())
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return f"[{', '.join(names[:limit])}{more}]" if names else "an empty folder"


def find_root(root: str | Path, markers: Sequence[str], name: str, tree: str) -> Path:
    """The dataset's top folder: ``root`` itself, or its one sub-folder, holding every entry of
    ``markers``; else the ``wrong_root`` LayoutError showing ``tree`` (the expected layout)."""
    root = Path(root).expanduser()
    candidates = [root]
    if root.is_dir():  # the folder the archive was unpacked into is accepted too
        candidates += sorted(p for p in root.iterdir() if p.is_dir())
    for folder in candidates:
        if all((folder / m).exists() for m in markers):
            return folder
    parent = root.parent
    hint = f"dataset.root={parent}" if all((parent / m).exists() for m in markers) else None
    raise LayoutError(
        "wrong_root",
        f"dataset.root={root} is not the {name} folder: it holds {listing(root)}, expected "
        f"{', '.join(m + '/' for m in markers)}. Fix: "
        f"{hint or 'set dataset.root to the folder of this tree'} (docs/datasets.md):\n{tree}",
    )


def split_folder(folder: Path, split: str, known: Iterable[str], fix: str) -> Path:
    """``folder`` of one split, or the ``missing_split`` LayoutError listing the splits there."""
    if folder.is_dir():
        return folder
    found = sorted(p.name for p in folder.parent.iterdir() if p.is_dir())
    raise LayoutError(
        "missing_split",
        f"split {split!r}: no folder {folder} (split folders there: {found}; this dataset's "
        f"splits: {list(known)}). Fix: {fix}",
    )


def missing_labels(pairs: Iterable[tuple[str, str]], group: Path, fix: str) -> LayoutError | None:
    """The ``missing_labels`` LayoutError when no pair of ``group`` (a folder of images) has its
    label file; None when at least one has (single missing files are the dataset check's)."""
    pairs = list(pairs)
    if not pairs or any(Path(mask).is_file() for _, mask in pairs):
        return None
    example = Path(pairs[0][1])
    return LayoutError(
        "missing_labels",
        f"{group} holds {len(pairs)} images but none has its label file (e.g. {example} does "
        f"not exist; {example.parent} holds {listing(example.parent, 4)}). Fix: {fix}",
    )


def images_annotations_pairs(
    top: Path, folder: str, known: Sequence[str], suffixes: tuple[str, str], fix: str
) -> list[tuple[str, str]]:
    """(image, mask) pairs of the ``images/<folder>/*<suffixes[0]>`` +
    ``annotations/<folder>/<stem><suffixes[1]>`` layout (ADE20K, COCO-Stuff), sorted by stem;
    LayoutError for a missing split folder, no images, or no label file at all."""
    images = split_folder(top / "images" / folder, folder, known, fix)
    image_suffix, mask_suffix = suffixes
    stems = sorted(p.name[: -len(image_suffix)] for p in images.glob(f"*{image_suffix}"))
    if not stems:
        raise LayoutError(
            "missing_split", f"{images} holds no *{image_suffix} file ({listing(images)})"
        )
    masks = top / "annotations" / folder
    pairs = [(str(images / f"{s}{image_suffix}"), str(masks / f"{s}{mask_suffix}")) for s in stems]
    error = missing_labels(pairs, images, fix)
    if error is not None:
        raise error
    return pairs
