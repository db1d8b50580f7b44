"""Dataset tools: make_splits, labelme2voc, convert_to_voc, dump_augmented, check_dataset, as
functions in this process (as commands: tests/e2e/test_tools_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segkit.data.folder import fraction_split
from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
SHARED = REPO.parent / "shared" / "datasets"


def gray(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8)).save(path)


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ---------------------------------------------------------------------------------------------
# make_splits
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def voc_pairs(tmp_path: Path) -> Path:
    """VOCdevkit with 10 image/mask pairs 0..9, an image without mask and a mask without image."""
    year = tmp_path / "VOCdevkit" / "VOC2007"
    for i in range(10):
        gray(year / "JPEGImages" / f"{i}.jpg", np.zeros((4, 4)))
        gray(year / "SegmentationClass" / f"{i}.png", np.zeros((4, 4)))
    gray(year / "JPEGImages" / "orphan_image.jpg", np.zeros((4, 4)))
    gray(year / "SegmentationClass" / "orphan_mask.png", np.zeros((4, 4)))
    return tmp_path / "VOCdevkit"


def split_lists(root: Path) -> dict[str, list[str]]:
    folder = root / "VOC2007" / "ImageSets" / "Segmentation"
    return {n: (folder / f"{n}.txt").read_text().split() for n in ("train", "val", "trainval")}


def test_make_splits_deterministic_pairs_only(voc_pairs, capsys):
    make_splits = load_script("make_splits")
    assert make_splits.main([str(voc_pairs), "--val-ratio", "0.3", "--seed", "1"]) == 0
    first = split_lists(voc_pairs)
    out = capsys.readouterr().out
    assert "1 images without a mask: orphan_image" in out
    assert "1 masks without an image: orphan_mask" in out
    assert first["trainval"] == [str(i) for i in range(10)]  # natural order, orphans left out
    assert len(first["val"]) == 3 and sorted(first["train"] + first["val"], key=int) == list(
        first["trainval"]
    )
    # the same rule as FolderDataset(val_fraction=0.3, split_seed=1) reading the folder in place
    assert first["val"] == fraction_split(first["trainval"], "val", 0.3, 1)
    args = [str(voc_pairs), "--val-ratio", "0.3", "--seed", "1", "--overwrite"]
    assert make_splits.main(args) == 0
    assert split_lists(voc_pairs) == first
    assert make_splits.main([*args[:-2], "2", "--overwrite"]) == 0
    assert split_lists(voc_pairs)["val"] != first["val"]  # another seed, another draw


def test_make_splits_refuses_to_overwrite(voc_pairs):
    make_splits = load_script("make_splits")
    make_splits.main([str(voc_pairs)])
    with pytest.raises(SystemExit, match="--overwrite"):
        make_splits.main([str(voc_pairs)])


# ---------------------------------------------------------------------------------------------
# labelme2voc
# ---------------------------------------------------------------------------------------------


def labelme_json(folder: Path, stem: str, shapes: list[dict], size=(16, 20)) -> Path:
    """<stem>.png (H x W = size) next to <stem>.json with the given shapes."""
    folder.mkdir(parents=True, exist_ok=True)
    gray(folder / f"{stem}.png", np.full(size, 128))
    data = {
        "version": "5.2.1",
        "shapes": shapes,
        "imagePath": f"{stem}.png",
        "imageData": None,
        "imageHeight": size[0],
        "imageWidth": size[1],
    }
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(data))
    return path


def shape(label: str, points, kind: str = "polygon") -> dict:
    return {"label": label, "points": points, "shape_type": kind, "group_id": None, "flags": {}}


@pytest.fixture
def labels_txt(tmp_path: Path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("__ignore__\n_background_\ncat\ndog\n")
    return path


def test_labelme_polygon_rectangle_to_mask_values(tmp_path, labels_txt):
    shapes = [
        shape("cat", [[2, 2], [10, 2], [2, 10]]),  # triangle, right angle at (2, 2)
        shape("dog", [[12, 4], [18, 12]], "rectangle"),
        shape("__ignore__", [[14, 6], [16, 6], [16, 8], [14, 8]]),  # painted over the dog
        shape("cat", [[0, 15], [19, 15]], "line"),  # no area: skipped
    ]
    labelme_json(tmp_path / "ann", "img1", shapes)
    out = tmp_path / "VOCdevkit"
    labelme2voc = load_script("labelme2voc")
    assert labelme2voc.main([str(tmp_path / "ann"), str(out), "--labels", str(labels_txt)]) == 0
    mask_file = out / "VOC2007/SegmentationClass/img1.png"
    assert Image.open(mask_file).mode == "P"
    mask = read(mask_file)  # indexed [y, x]
    assert mask.shape == (16, 20)
    assert mask[3, 3] == 1 and mask[2, 9] == 1 and mask[9, 2] == 1  # inside / on the edges
    assert mask[9, 9] == 0  # beyond the hypotenuse
    assert mask[4, 12] == 2 and mask[12, 18] == 2 and mask[10, 13] == 2
    assert mask[7, 15] == 255 and mask[6, 14] == 255
    assert mask[15, 5] == 0 and mask[0, 0] == 0
    assert np.unique(mask).tolist() == [0, 1, 2, 255]
    image = Image.open(out / "VOC2007/JPEGImages/img1.jpg")
    assert image.format == "JPEG" and image.size == (20, 16)
    assert (out / "VOC2007/class_names.txt").read_text().split() == ["_background_", "cat", "dog"]


def test_labelme_unknown_label_names_file_and_label(tmp_path, labels_txt):
    labelme_json(tmp_path / "ann", "a", [shape("cat", [[1, 1], [5, 1], [1, 5]])])
    bad = labelme_json(tmp_path / "ann", "b", [shape("bird", [[1, 1], [5, 1], [1, 5]])])
    labelme2voc = load_script("labelme2voc")
    out = tmp_path / "VOCdevkit"
    with pytest.raises(SystemExit) as err:
        labelme2voc.main([str(tmp_path / "ann"), str(out), "--labels", str(labels_txt)])
    assert f"{bad}: label 'bird'" in str(err.value)
    assert not out.exists()  # validated before writing anything


def test_labelme_embedded_image_data(tmp_path, labels_txt):
    import base64
    import io

    path = labelme_json(tmp_path / "ann", "emb", [shape("dog", [[0, 0], [3, 3]], "rectangle")])
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 20, 3), 50, np.uint8)).save(buf, format="PNG")
    data = json.loads(path.read_text())
    data.update(imagePath="missing.png", imageData=base64.b64encode(buf.getvalue()).decode())
    path.write_text(json.dumps(data))
    out = tmp_path / "VOCdevkit"
    load_script("labelme2voc").main([str(tmp_path / "ann"), str(out), "--labels", str(labels_txt)])
    assert read(out / "VOC2007/SegmentationClass/emb.png")[2, 2] == 2
    assert read(out / "VOC2007/JPEGImages/emb.jpg").shape == (16, 20, 3)


# ---------------------------------------------------------------------------------------------
# convert_to_voc
# ---------------------------------------------------------------------------------------------


def test_convert_isbi_layout_png_with_split(tmp_path, monkeypatch):
    src = tmp_path / "isbi"
    for i in range(5):
        gray(src / "Images" / f"{i}.png", np.full((6, 6), 10 * i))
        label = np.full((6, 6), 255)
        label[:, :2] = 0
        gray(src / "Labels" / f"{i}.png", label)
    out = tmp_path / "VOCdevkit"
    monkeypatch.syspath_prepend(str(SCRIPTS))  # as when run as a script: imports make_splits
    convert = load_script("convert_to_voc")
    assert (
        convert.main(["isbi", str(src), str(out), "--val-ratio", "0.4", "--image-suffix", ".png"])
        == 0
    )
    splits = split_lists(out)
    assert splits["trainval"] == ["0", "1", "2", "3", "4"] and len(splits["val"]) == 2
    assert splits["val"] == fraction_split(splits["trainval"], "val", 0.4, 0)  # = in place
    mask = read(out / "VOC2007/SegmentationClass/3.png")
    assert (mask[:, :2] == 0).all() and (mask[:, 2:] == 1).all()  # 255 -> 1
    copied = out / "VOC2007/JPEGImages/3.png"
    assert copied.read_bytes() == (src / "Images/3.png").read_bytes()  # PNG kept as is


def test_convert_bad_label_map_option(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    convert = load_script("convert_to_voc")
    with pytest.raises(SystemExit, match="'255-1' is not RAW:ID"):
        convert.main(["isbi", str(tmp_path), str(tmp_path / "out"), "--label-map", "255-1"])


# ---------------------------------------------------------------------------------------------
# check_dataset and dump_augmented
# ---------------------------------------------------------------------------------------------


# 8x8 masks by column: a: 0 x4, 2 x2, 1 x2; b: 0 x4, 2 x4; c: 0 x2, 1 x6 (val: a copy of b)
COLUMNS = {"a": [0] * 4 + [2] * 2 + [1] * 2, "b": [0] * 4 + [2] * 4, "c": [0] * 2 + [1] * 6}
COLUMNS.update(d=COLUMNS["b"], e=COLUMNS["a"])


def tiny_voc(root: Path, bad_value: int | None = None) -> Path:
    """VOCdevkit with 3 train + 2 val 8x8 samples of 3 classes; mask b gets bad_value if set."""
    year = root / "VOC2007"
    names = {"train": ["a", "b", "c"], "val": ["d", "e"]}
    for k, name in enumerate(names["train"] + names["val"]):
        gray(year / "JPEGImages" / f"{name}.jpg", np.full((8, 8, 3), 30 * k))
        mask = np.tile(np.array(COLUMNS[name]), (8, 1))
        if name == "b" and bad_value is not None:
            mask[0, :3] = bad_value
        gray(year / "SegmentationClass" / f"{name}.png", mask)
    for split, members in names.items():
        path = year / "ImageSets" / "Segmentation" / f"{split}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(members) + "\n")
    return root


VOC3 = ["dataset=voc", "dataset.num_classes=3", "dataset.class_names=null"]


def compose_check(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("check_data", overrides=list(overrides))


def test_check_dataset_clean_dataset_writes_weights(tmp_path, capsys):
    root = tiny_voc(tmp_path / "VOCdevkit")
    out = tmp_path / "w.json"
    overrides = [*VOC3, f"dataset.root={root}", "weights=median", f"weights_out={out}"]
    assert load_script("check_dataset").run(compose_check(*overrides)) == 0
    # class 0: 32+32+16 px of the 192 of a, b, c; class 1: 16+48 of the 128 of a, c;
    # class 2: 16+32 of the 128 of a, b -> freq 5/12, 1/2, 3/8, median 5/12 -> 1, 5/6, 10/9
    saved = json.loads(out.read_text())
    assert saved["class_weights"] == [1.0, 0.8333, 1.1111] and saved["method"] == "median"
    text = capsys.readouterr().out
    assert "0 error(s), 0 warning(s)" in text
    assert "loss.class_weights=[1.0,0.8333,1.1111]" in text


def test_check_dataset_val_split_null_checks_train_only(tmp_path, capsys):
    root = tiny_voc(tmp_path / "VOCdevkit")
    (root / "VOC2007/SegmentationClass/e.png").write_bytes(b"garbage")  # a val mask
    overrides = [*VOC3, f"dataset.root={root}", "dataset.val_split=null"]
    assert load_script("check_dataset").run(compose_check(*overrides)) == 0
    assert "train: 3 samples (3 read): 0 error(s)" in capsys.readouterr().out
    overrides[-1] = "dataset.val_split=val"
    assert load_script("check_dataset").run(compose_check(*overrides)) == 3  # data errors found


def test_dump_augmented_grid(tmp_path):
    dump = load_script("dump_augmented")
    out = tmp_path / "grid.png"
    demo = ["dataset=demo", "dataset.num_train=4", "dataset.num_val=1"]
    demo += ["dataset.image_size=[32,32]", "dataset.input_shape=[32,32]"]
    assert dump.main([*demo, "--n", "3", "--cols", "2", "--out", str(out)]) == 0
    picture = read(out)
    # 2 columns of (32 + 4 + 32) px tiles with 4 px gaps; 2 rows of 32 px; legend of 6 rows
    assert picture.shape == (2 * 36 + 4 + 6 * 20 + 4, 2 * 72 + 4, 3)

    from hydra import compose, initialize_config_dir

    from segkit.run import dataset_factory

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=demo)
    ds = dataset_factory(cfg.dataset)(split="train", train=True)
    image_t, mask_t = ds[1]  # third tile: row 0, column 1 (epoch 0 stream, as the script)
    image = image_t.numpy().transpose(1, 2, 0)
    tile = picture[4 : 4 + 32, 4 + 72 : 4 + 72 + 68]
    assert np.array_equal(tile[:, :32], image)
    mask = mask_t.numpy()
    over = tile[:, 36:]
    assert (over[mask == 255] == 255).all()
    c = int(mask[mask != 255][0])
    y, x = np.argwhere(mask == c)[0]
    expected = (0.5 * image[y, x] + 0.5 * np.array(ds.palette[c])).astype(np.uint8)
    assert np.array_equal(over[y, x], expected)
