"""Dataset checks: one broken dataset per problem, each must name the file and the problem."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segkit.data import doctor, problems
from segkit.data.doctor import check_dataset, check_for_training, check_split_file
from segkit.data.io import ALPHA_RULE
from segkit.data.problems import CheckReport, Problem, format_warnings, write_bad_samples
from segkit.data.stats import ClassCounts, auto_class_weights, class_pixel_counts, class_weights
from segkit.data.voc import VOCDataset
from segkit.errors import ConfigError, DataError

H, W = 12, 16
SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def clean_mask(seed: int, num_classes: int = 3) -> np.ndarray:
    """(H,W) uint8: left half 0, right half a class in 1..num_classes-1, one ignore pixel."""
    mask = np.zeros((H, W), np.uint8)
    mask[:, W // 2 :] = 1 + seed % (num_classes - 1)
    mask[0, 0] = 255
    return mask


def save_palette_png(path: Path, mask: np.ndarray) -> None:
    im = Image.fromarray(mask)  # mode L; putpalette makes it P with the same indices
    im.putpalette([v for i in range(256) for v in (i, i, i)])
    im.save(path)


def make_voc(root: Path, train: list[str], val: list[str], num_classes: int = 3) -> Path:
    """Tiny valid VOCdevkit: RGB JPEG images, palette PNG masks, train/val split files."""
    voc = root / "VOC2007"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(dict.fromkeys(train + val)):
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
        save_palette_png(voc / "SegmentationClass" / f"{name}.png", clean_mask(i, num_classes))
    for split, names in (("train", train), ("val", val)):
        (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text(
            "".join(f"{n}\n" for n in names)
        )
    return root


def datasets(root: Path, num_classes: int = 3, **kwargs) -> tuple[VOCDataset, VOCDataset]:
    kw = dict(train=False, num_classes=num_classes, input_shape=[H, W], **kwargs)
    return VOCDataset(root, "train", **kw), VOCDataset(root, "val", **kw)


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    return make_voc(tmp_path, ["a", "b", "c", "d"], ["e", "f"])


def path_of(root: Path, kind: str, name: str) -> Path:
    sub, suffix = {"image": ("JPEGImages", ".jpg"), "mask": ("SegmentationClass", ".png")}[kind]
    return root / "VOC2007" / sub / f"{name}{suffix}"


def only(report: CheckReport, kind: str) -> Problem:
    """The single problem of `kind`, after asserting that it is the only error of the report."""
    matching = [p for p in report.problems if p.kind == kind]
    assert len(matching) == 1, report.format()
    others = [p for p in report.errors if p.kind != kind]
    assert not others, report.format()
    return matching[0]


def assert_reported(report: CheckReport, kind: str, file: Path, *fragments: str) -> None:
    problem = only(report, kind)
    assert problem.file == str(file)
    text = report.format()
    assert f"[{kind}]" in text and str(file) in text, text
    for fragment in fragments:
        assert fragment in text, text


def test_clean_dataset_has_no_problems_and_counts_pixels(voc):
    report = check_dataset(*datasets(voc), level="full")
    assert report.problems == [], report.format()
    assert report.sizes == {"train": 4, "val": 2} and report.checked == {"train": 4, "val": 2}
    # per mask: 96 px of class 0 minus one ignore pixel, 96 px of class 1 (i even) or 2 (i odd)
    assert report.counts["train"].pixels == [4 * 95, 2 * 96, 2 * 96]
    assert report.counts["train"].images == [4, 2, 2]
    assert report.counts["train"].image_pixels == [4 * 191, 2 * 191, 2 * 191]


def test_missing_image(voc):
    train, val = datasets(voc)  # the constructor already refuses missing files; delete afterwards
    path_of(voc, "image", "b").unlink()
    report = check_dataset(train, val, level="quick")
    assert_reported(report, "missing_image", path_of(voc, "image", "b"))
    assert report.bad_indices == {"train": [1]}


def test_missing_mask(voc):
    train, val = datasets(voc)
    path_of(voc, "mask", "f").unlink()
    assert_reported(check_dataset(train, val), "missing_mask", path_of(voc, "mask", "f"))


def test_unreadable_mask_garbage(voc):
    path_of(voc, "mask", "c").write_bytes(b"this is not a png at all")
    report = check_dataset(*datasets(voc), level="full")
    assert_reported(report, "unreadable_mask", path_of(voc, "mask", "c"), "cannot decode")


def test_unreadable_image_truncated_jpeg(voc):
    path = path_of(voc, "image", "a")
    path.write_bytes(path.read_bytes()[:200])  # OpenCV would decode it, gray below the cut
    report = check_dataset(*datasets(voc), level="full")
    assert_reported(report, "unreadable_image", path, "truncated")


def test_size_mismatch(voc):
    save_palette_png(path_of(voc, "mask", "d"), np.zeros((H, W + 4), np.uint8))
    report = check_dataset(*datasets(voc), level="full")
    assert_reported(report, "size_mismatch", path_of(voc, "mask", "d"), "20x12", "16x12")


def test_out_of_range_values_listed_with_label_map(voc):
    mask = clean_mask(0)
    mask[:3, :2] = 7  # 6 px
    mask[5, 5] = 9
    save_palette_png(path_of(voc, "mask", "a"), mask)
    report = check_dataset(*datasets(voc), level="full")
    assert_reported(report, "out_of_range", path_of(voc, "mask", "a"), "7 (6 px)", "9 (1 px)")
    # values 0, 1, 7, 9 (+ ignore): four values for three classes, no map can fix it
    assert "4 distinct values for 3 classes" in report.format()


def test_void_class_value_suggests_mapping_it_to_ignore(voc):
    mask = clean_mask(0)
    mask[:, :3] = 3  # == num_classes: a 'void' class
    save_palette_png(path_of(voc, "mask", "b"), mask)
    report = check_dataset(*datasets(voc), level="full")
    assert_reported(report, "out_of_range", path_of(voc, "mask", "b"), "3 (36 px)")
    assert "'dataset.label_map={3: 255}'" in report.format()


def binary_mask() -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[:, 4:] = 255
    return mask


def test_binary_0_255_masks_with_255_as_ignore_suggest_label_map(tmp_path):
    root = make_voc(tmp_path, ["a", "b"], ["c"], num_classes=2)
    for name in "abc":
        save_palette_png(path_of(root, "mask", name), binary_mask())
    report = check_dataset(*datasets(root, num_classes=2), level="full")
    files = {p.file for p in report.errors if p.kind == "binary_mask"}
    assert files == {str(path_of(root, "mask", n)) for n in "abc"}, report.format()
    assert "'dataset.label_map={255: 1}'" in report.format()
    assert "255 is ignore_index" in report.format()


def test_binary_0_255_mask_out_of_range_when_255_is_not_ignore(tmp_path):
    root = make_voc(tmp_path, ["a"], ["b"], num_classes=2)
    save_palette_png(path_of(root, "mask", "a"), binary_mask())
    save_palette_png(path_of(root, "mask", "b"), np.zeros((H, W), np.uint8))
    report = check_dataset(*datasets(root, num_classes=2, ignore_index=254), level="full")
    assert_reported(report, "binary_mask", path_of(root, "mask", "a"), "255 (144 px)")
    assert "'dataset.label_map={255: 1}'" in report.format()


def test_rgb_mask_suggests_color_map_with_top_colours(voc):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, 10:] = (128, 0, 0)  # VOC palette colour of class 1, 72 px
    path = path_of(voc, "mask", "c")
    Image.fromarray(rgb).save(path)
    report = check_dataset(*datasets(voc), level="full")
    assert_reported(report, "rgb_mask", path, "[0, 0, 0] 62.5%", "[128, 0, 0] 37.5%")
    assert "dataset.color_map={0: [0, 0, 0], 1: [128, 0, 0]}" in report.format()


def test_lossy_jpeg_mask(tmp_path):
    root = make_voc(tmp_path, ["a", "b"], ["c"])
    mask = np.zeros((48, 48), np.uint8)
    mask[10:30, 12:40] = 2
    for name in "abc":  # images must match the bigger mask
        Image.fromarray(np.full((48, 48, 3), 90, np.uint8)).save(path_of(root, "image", name))
        Image.fromarray(mask if name == "b" else mask * 0).save(
            path_of(root, "mask", name).with_suffix(".jpg"), quality=75
        )
    train, val = datasets(root, mask_suffix=".jpg")
    report = check_dataset(train, val, level="full")
    lossy = [p for p in report.errors if p.kind == "lossy_mask"]
    assert [Path(p.file).name for p in lossy] == ["a.jpg", "b.jpg", "c.jpg"], report.format()
    assert all(p.message.startswith("JPEG mask file") for p in lossy)
    # JPEG ringing gives the 0|2 edges of mask b in-between values: named on top of the suffix
    assert ";" in lossy[1].message and ";" not in lossy[0].message


def test_bilinear_resized_png_mask_is_lossy(voc):
    mask = np.zeros((6, 8), np.uint8)
    mask[:3, 4:] = mask[3:, :4] = 2  # 2x2 blocks of 0 and 2: bilinear puts 1s along the edges
    resized = np.asarray(Image.fromarray(mask).resize((W, H), Image.BILINEAR))
    save_palette_png(path_of(voc, "mask", "a"), resized)
    report = check_dataset(*datasets(voc), level="full")
    assert_reported(report, "lossy_mask", path_of(voc, "mask", "a"), "resampled")


def ring_layout(size: int = 48, ring: int = 2) -> np.ndarray:
    """(size,size) uint8: background 0, objects 2 inside a ``ring``-px boundary band of 1 (the
    nuclei / instance-boundary layout: 0 never touches 2)."""
    yy, xx = np.mgrid[:size, :size]
    objects = np.zeros((size, size), bool)
    for cy, cx, ry, rx in ((12, 14, 8, 6), (30, 32, 9, 12), (36, 10, 6, 5)):
        objects |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    inside = objects.copy()
    for _ in range(ring):  # erode by one pixel (4-neighbourhood) per step
        inside[1:-1, 1:-1] &= inside[:-2, 1:-1] & inside[2:, 1:-1]
        inside[1:-1, 1:-1] &= inside[1:-1, :-2] & inside[1:-1, 2:]
    return (objects.astype(np.uint8) + inside).astype(np.uint8)


def jpeg_roundtrip(mask: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def test_ring_layouts_are_crisp_and_resampled_masks_stay_lossy():
    block = np.zeros((48, 48), np.uint8)
    block[10:30, 12:40] = 2
    for ring in (2, 3):  # a consistent band of 1 between 0 and 2: class ids, not a ramp
        assert not problems.is_lossy(ring_layout(ring=ring)), ring
    # the same 0|2 edges JPEG-compressed (saved as PNG afterwards: no suffix to go by) or
    # resized bilinear: the in-between 1s come and go, 0 still meets 2 in places
    assert problems.is_lossy(jpeg_roundtrip(block, 75))
    assert problems.is_lossy(jpeg_roundtrip(block, 95))
    shrunk = np.asarray(Image.fromarray(block).resize((33, 33), Image.BILINEAR))
    assert problems.is_lossy(shrunk)
    classes = np.zeros((40, 50), np.uint8)  # VOC-like ids: ramps through many values
    classes[5:25, 5:30], classes[20:35, 25:45] = 15, 8
    assert problems.is_lossy(np.asarray(Image.fromarray(classes).resize((68, 55), Image.BILINEAR)))


def test_ring_layout_masks_pass_the_training_check(tmp_path):
    root = make_voc(tmp_path, ["a", "b"], ["c"])
    for k, name in enumerate("abc"):
        Image.fromarray(np.full((48, 48, 3), 90, np.uint8)).save(path_of(root, "image", name))
        save_palette_png(path_of(root, "mask", name), np.rot90(ring_layout(), k))
    report, drop = check_for_training(*datasets(root), level="quick")  # the default check
    assert report.problems == [] and drop == {}, report.format()
    assert report.counts["train"].pixels[1] > 0 and report.counts["train"].pixels[2] > 0


def test_empty_split_file(voc):
    split = voc / "VOC2007/ImageSets/Segmentation/val.txt"
    split.write_text("\n  \n")
    report = CheckReport(check_split_file(split))
    assert report.errors[0].kind == "empty_split"
    assert str(split) in report.format() and "[empty_split]" in report.format()
    with pytest.raises(DataError, match="lists no samples"):  # and the dataset refuses it
        datasets(voc)


def test_duplicate_ids(voc):
    split = voc / "VOC2007/ImageSets/Segmentation/train.txt"
    split.write_text("a\nb\nc\nb\nd\n")
    report = check_dataset(*datasets(voc), level="quick")
    assert_reported(report, "duplicate_id", path_of(voc, "image", "b"), "sample 3 repeats sample 1")
    assert f"of the 'train' split ({split})" in report.format()  # names the split file
    assert report.bad_indices == {"train": [3]}  # 'skip' drops the repeat, keeps the first
    assert check_split_file(split)[0].message == "id 'b' listed 2 times"


def test_train_val_overlap_names_the_split_file(voc):
    val_list = voc / "VOC2007/ImageSets/Segmentation/val.txt"
    val_list.write_text("e\nc\n")
    train, val = datasets(voc)
    assert val.split_file == val_list
    report = check_dataset(train, val, level="quick")
    assert_reported(report, "overlap", path_of(voc, "image", "c"), f"also listed in {val_list}")
    assert report.bad_indices == {"train": [2]}
    assert len(train) == 4  # a check never removes samples


def test_overlap_without_split_file_names_the_val_split(voc):
    train, val = datasets(voc)
    val.files.append(train.files[1])
    val.split_file = None  # e.g. a FolderDataset: no split list
    report = check_dataset(train, val, level="quick")
    assert_reported(report, "overlap", path_of(voc, "image", "b"), "also listed in the val split")


def exif_jpeg(path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.full((W, H, 3), 100, np.uint8)).save(path, exif=exif)  # stored W x H


@pytest.mark.parametrize(
    "mode, fragment",
    [("L", "grayscale"), ("RGBA", "RGBA"), ("I;16", "16-bit"), ("exif", "EXIF orientation 6")],
)
def test_odd_image_modes_are_warnings(voc, mode, fragment):
    path = path_of(voc, "image", "d")
    if mode == "exif":  # stored 12 wide x 16 high, displayed (rotated 90) 16 x 12 like the mask
        exif_jpeg(path, 6)
    else:
        pixels = {"L": (H, W), "RGBA": (H, W, 4), "I;16": (H, W)}[mode]
        array = np.full(
            pixels, 40000 if mode == "I;16" else 100, np.uint16 if mode == "I;16" else np.uint8
        )
        buf = io.BytesIO()
        Image.fromarray(array).save(
            buf, format="PNG"
        )  # PNG bytes under the .jpg name: fine for PIL/OpenCV
        path.write_bytes(buf.getvalue())
    report = check_dataset(*datasets(voc), level="full")
    assert report.errors == [], report.format()
    (warning,) = report.warnings
    assert warning.file == str(path) and fragment in warning.message
    assert "WARNING [" in report.format() and str(path) in report.format()
    if mode == "RGBA":  # the words of the loader (segkit.data.io), with the share it affects
        assert ALPHA_RULE in warning.message and "100% of the pixels" in warning.message


def test_transparent_pixels_are_counted_in_the_alpha_warning(voc):
    path = path_of(voc, "image", "b")
    rgba = np.full((H, W, 4), 200, np.uint8)
    rgba[..., 3] = 255
    rgba[:3, :, 3] = 0  # 3 of 12 rows transparent
    Image.fromarray(rgba).save(path, format="PNG")
    (warning,) = check_dataset(*datasets(voc), level="full").warnings
    assert warning.message == f"RGBA, {ALPHA_RULE}; 25% of the pixels are not opaque"


def test_crlf_bom_split_file_is_accepted(voc):
    (voc / "VOC2007/ImageSets/Segmentation/train.txt").write_bytes(
        "\ufeffa\r\nb  \r\n\r\nc\r\nd\r\n".encode()
    )
    train, val = datasets(voc)
    assert [Path(f[0]).stem for f in train.files] == ["a", "b", "c", "d"]
    assert check_dataset(train, val, level="full").problems == []


def break_masks(root: Path, names: str) -> None:
    for name in names:
        path_of(root, "mask", name).write_bytes(b"garbage")


def test_skip_mode_returns_bad_indices_and_removes_nothing(tmp_path, caplog):
    root = make_voc(tmp_path / "data", [f"t{i}" for i in range(10)], ["v0", "v1"])
    break_masks(root, ["t3"])
    train, val = datasets(root, on_bad_sample="skip", max_bad_fraction=0.2)
    report, drop = check_for_training(train, val, level="quick")
    assert drop == {"train": [3]} == report.bad_indices
    assert len(train) == 10 and len(val) == 2  # the caller removes them
    path = write_bad_samples(report, tmp_path / "run/bad_samples.txt")
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"train\t{path_of(root, 'mask', 't3')}\tunreadable_mask"
    )
    removed = train.remove_samples(drop["train"])
    assert [Path(a).stem for a, _ in removed] == ["t3"]
    assert [Path(f[0]).stem for f in train.files] == [f"t{i}" for i in range(10) if i != 3]


def test_skip_mode_raises_when_too_many_are_bad(tmp_path):
    root = make_voc(tmp_path / "data", [f"t{i}" for i in range(10)], ["v0", "v1"])
    break_masks(root, ["t1", "t2", "t5"])
    train, val = datasets(root, on_bad_sample="skip", max_bad_fraction=0.2)
    with pytest.raises(DataError, match=r"train: 3/10 bad \(> max_bad_fraction=0.2\)"):
        check_for_training(train, val, level="full")
    assert len(train.files) == 10  # nothing removed


def test_skip_mode_refuses_split_level_errors(voc):
    train, val = datasets(voc, on_bad_sample="skip", max_bad_fraction=0.5)
    val.files = []  # an empty split cannot be fixed by dropping samples
    with pytest.raises(DataError, match="split-level errors cannot be skipped"):
        check_for_training(train, val, level="quick")


def test_raise_mode_lists_all_problems_in_one_message(voc):
    break_masks(voc, ["a"])
    save_palette_png(path_of(voc, "mask", "e"), np.zeros((H + 1, W), np.uint8))
    train, val = datasets(voc)
    with pytest.raises(DataError) as err:
        check_for_training(train, val, level="quick")
    message = str(err.value)
    for fragment in (
        "[unreadable_mask]",
        str(path_of(voc, "mask", "a")),
        "[size_mismatch]",
        str(path_of(voc, "mask", "e")),
        "dataset.on_bad_sample=skip",
        "python scripts/check_dataset.py",
    ):
        assert fragment in message, message


def test_check_off_reads_nothing_and_bad_level_names_the_key(voc):
    train, val = datasets(voc)
    break_masks(voc, "ab")
    assert check_for_training(train, val, level="off") == (None, {})
    assert len(train.files) == 4
    with pytest.raises(ConfigError, match="dataset.check must be one of"):
        check_for_training(train, val, level="fast")


def test_warnings_are_logged_once_without_failing(voc, caplog):
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(path_of(voc, "image", "a"), format="PNG")
    with caplog.at_level(logging.WARNING, logger="segkit.data.doctor"):
        report, drop = check_for_training(*datasets(voc), level="full")
    assert report.errors == [] and len(report.warnings) == 1 and drop == {}
    assert "grayscale" in caplog.text and str(path_of(voc, "image", "a")) in caplog.text
    assert len(caplog.records) == 1 and caplog.records[0].getMessage() == format_warnings(report)


def test_check_for_training_without_val(voc):
    train, _ = datasets(voc)
    report, drop = check_for_training(train, None, level="full")
    assert report.sizes == {"train": 4} and drop == {}


def test_quick_level_reads_an_even_deterministic_subset():
    assert doctor._spread(5, 64) == [0, 1, 2, 3, 4]
    picked = doctor._spread(1000, 64)
    assert len(picked) == 64 and picked[0] == 0 and picked[-1] == 999
    assert picked == doctor._spread(1000, 64)


def test_class_weights_hand_computed():
    # mask 1: 3 px class 0, 1 px class 1; mask 2: 1 px class 0, 2 px class 2, 1 ignored; no class 3
    counts = ClassCounts.zeros(4)
    counts.add(np.array([3, 1, 0, 0]))
    counts.add(np.array([1, 0, 2, 0]))
    assert counts.pixels == [4, 1, 2, 0] and counts.image_pixels == [7, 4, 3, 0]
    # freq = 4/7, 1/4, 2/3 -> median 4/7; w = 1, (4/7)/(1/4) = 16/7, (4/7)/(2/3) = 6/7, absent 0
    assert class_weights(counts, "median") == pytest.approx([1.0, 16 / 7, 6 / 7, 0.0])
    # total 7 over K=3 present classes: 7/(3*4), 7/(3*1), 7/(3*2)
    assert class_weights(counts, "inverse") == pytest.approx([7 / 12, 7 / 3, 7 / 6, 0.0])
    # the square roots of the median-frequency weights
    sqrt = [1.0, 4 / 7**0.5, (6 / 7) ** 0.5, 0.0]
    assert class_weights(counts, "sqrt_median") == pytest.approx(sqrt)
    assert class_weights(counts, "median**0.5") == class_weights(counts, "sqrt_median")
    # median**P: the median-frequency weights to the power P
    assert class_weights(counts, "median**0.25") == pytest.approx(
        [1.0, (16 / 7) ** 0.25, (6 / 7) ** 0.25, 0.0]
    )
    assert class_weights(counts, "median**2") == pytest.approx(
        [1.0, (16 / 7) ** 2, (6 / 7) ** 2, 0.0]
    )
    assert class_weights(counts, "median**1") == class_weights(counts, "median")
    # a plain count list: every class counted present everywhere, freq = count / total
    assert class_weights([4, 1, 2], "median") == pytest.approx([0.5, 2.0, 1.0])
    for bad in ("sqrt", "median**0", "median**-1", "median**", "median^0.5"):
        with pytest.raises(
            ValueError, match=r"'median', 'sqrt_median', 'median\*\*P' \(P > 0\) or"
        ):
            class_weights(counts, bad)
    with pytest.raises(DataError, match="0 pixels"):
        class_weights([0, 0], "median")


def test_auto_class_weights_from_dataset_masks(tmp_path):
    root = make_voc(tmp_path, ["a", "b"], ["c"], num_classes=4)
    m1 = np.zeros((H, W), np.uint8)
    m1[:, 12:] = 1  # 48 px of class 1, 144 of class 0
    m2 = np.full((H, W), 255, np.uint8)
    m2[:6] = 2  # 96 px of class 2, rest ignored
    m2[6, :8] = 0  # 8 px of class 0
    save_palette_png(path_of(root, "mask", "a"), m1)
    save_palette_png(path_of(root, "mask", "b"), m2)
    train, _ = datasets(root, num_classes=4)
    counts = class_pixel_counts(train)
    assert counts.pixels == [152, 48, 96, 0] and counts.image_pixels == [296, 192, 104, 0]
    freq = np.array([152 / 296, 48 / 192, 96 / 104])
    expected = list(np.median(freq) / freq) + [0.0]
    assert auto_class_weights(train, "median") == pytest.approx(expected)


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared datasets not available")
def test_isbi_raw_labels_flagged_binary_with_label_map_fix():
    from hydra import compose, initialize_config_dir

    from segkit.run import build_datasets

    conf = Path(__file__).resolve().parents[2] / "conf"
    overrides = [
        "dataset=isbi",
        "dataset.label_map=null",
        f"dataset.root={SHARED / 'isbi-membrane'}",
    ]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("check_data", overrides=overrides)
    train, val = build_datasets(cfg, augment_train=False)
    report = check_dataset(train, val, level="full")
    assert {p.kind for p in report.errors} == {"binary_mask"}
    assert len(report.errors) == 30  # every label file of the stack
    assert "'dataset.label_map={255: 1}'" in report.format()
