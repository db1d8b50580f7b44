"""The public datasets read in place (Cityscapes, ADE20K, VOC + SBD trainaug, COCO-Stuff), each on
a small replica of its official layout (tests/public_replicas.py): samples per split, mapped ids
against hand-written tables, class names, and the dataset check passing on the replica and
naming the problem and the fix on each broken variant."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from segkit.data.base import SegmentationDataset
from segkit.data.cityscapes import CLASSES as CITYSCAPES_CLASSES
from segkit.data.cityscapes import label_id_map
from segkit.data.coco_stuff import CLASSES as COCO_CLASSES
from segkit.data.layout import LayoutError
from segkit.data.voc_aug import read_sbd_mat, trainaug_names
from segkit.dist import DistInfo
from segkit.errors import DataError, run_task
from segkit.run import build_trainer, dataset_factory
from tests import public_replicas as rep
from tests.conftest import compose_train, load_script

REPO = Path(__file__).resolve().parents[2]
TINY_SHAPE = ["dataset.input_shape=[32,64]", "dataset.val_input_shape=[32,64]"]

# The cityscapesscripts labels table (helpers/labels.py), copied by hand: labelId -> (name,
# trainId) for the 19 evaluated classes; every other id 0..33 is ignored (255).
CITYSCAPES_TRAIN = {
    7: ("road", 0), 8: ("sidewalk", 1), 11: ("building", 2), 12: ("wall", 3),
    13: ("fence", 4), 17: ("pole", 5), 19: ("traffic light", 6), 20: ("traffic sign", 7),
    21: ("vegetation", 8), 22: ("terrain", 9), 23: ("sky", 10), 24: ("person", 11),
    25: ("rider", 12), 26: ("car", 13), 27: ("truck", 14), 28: ("bus", 15),
    31: ("train", 16), 32: ("motorcycle", 17), 33: ("bicycle", 18),
}  # fmt: skip


def compose_check(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("check_data", overrides=[*overrides, *TINY_SHAPE])


def build(name: str, root: Path, *overrides: str):
    """(train, val) datasets of ``dataset=name`` as training builds them, without augmenting."""
    cfg = compose_check(f"dataset={name}", f"dataset.root={root}", *overrides)
    make = dataset_factory(cfg.dataset)
    val = cfg.dataset.val_split
    return make(split=cfg.dataset.train_split, train=False), make(split=val, train=False)


def check(name: str, root: Path, *overrides: str) -> int:
    """scripts/check_dataset.py's exit code on ``dataset=name dataset.root=root``."""
    cfg = compose_check(f"dataset={name}", f"dataset.root={root}", *overrides)
    return load_script("check_dataset").run(cfg)


def masks(ds: SegmentationDataset) -> list[np.ndarray]:
    return [ds.load_raw(i)[1] for i in range(len(ds))]


# --------------------------------------------------------------------------- Cityscapes
def test_cityscapes_map_is_the_official_table():
    expected = {i: CITYSCAPES_TRAIN.get(i, (None, 255))[1] for i in range(34)}
    assert label_id_map() == expected
    assert CITYSCAPES_CLASSES == [
        name for name, _ in sorted(CITYSCAPES_TRAIN.values(), key=lambda v: v[1])
    ]
    try:  # the published table itself, where the package is installed
        from cityscapesscripts.helpers.labels import labels
    except ImportError:
        return
    official = {
        lb.id: 255 if lb.trainId in (-1, 255) else lb.trainId for lb in labels if lb.id >= 0
    }
    assert label_id_map() == official


def test_cityscapes_replica_reads_in_place(tmp_path, capsys):
    root = rep.cityscapes(tmp_path / "cityscapes")
    train, val = build("cityscapes", root)
    assert (len(train), len(val)) == (4, 3)  # aachen 2 + bochum 2; frankfurt 3
    assert train.class_names == CITYSCAPES_CLASSES and train.num_classes == 19
    assert train.palette[0] == [128, 64, 128] and train.palette[18] == [
        119,
        11,
        32,
    ]  # road, bicycle
    for k, mask in enumerate(masks(val)):
        raw = rep.value_mask(rep.LABEL_IDS, shift=k)
        table = np.array([CITYSCAPES_TRAIN.get(i, (None, 255))[1] for i in range(256)], np.uint8)
        assert np.array_equal(mask, table[raw])
    assert check("cityscapes", root) == 0
    assert "val: 3 samples (3 read): 0 error(s)" in capsys.readouterr().out


def test_cityscapes_label_train_ids_read_when_present_and_gtcoarse(tmp_path):
    root = rep.cityscapes(tmp_path / "cityscapes")
    trained = rep.value_mask([0, 5, 18, 255])
    for label in (root / "gtFine" / "val").rglob("*_labelIds.png"):
        rep.write_mask(Path(str(label).replace("_labelIds", "_labelTrainIds")), trained)
    train, val = build("cityscapes", root)
    assert not train.train_ids and val.train_ids  # train has no labelTrainIds: labelIds
    assert all(np.array_equal(m, trained) for m in masks(val))
    coarse = {"train_extra": {"erlangen": 2}, "val": {"frankfurt": 3}}
    rep.cityscapes(root, coarse, annotation="gtCoarse")
    extra, val = build(
        "cityscapes", root, "dataset.annotation=gtCoarse", "dataset.train_split=train_extra"
    )
    assert (len(extra), len(val)) == (2, 3) and extra.files[0][1].endswith("_gtCoarse_labelIds.png")


def cityscapes_already_converted(root: Path) -> Path:
    """Every labelIds PNG of frankfurt overwritten with trainIds (255 = ignore)."""
    for label in (root / "gtFine" / "val" / "frankfurt").glob("*_labelIds.png"):
        rep.write_mask(label, rep.value_mask([0, 13, 255]))
    return label


def test_cityscapes_converted_label_ids_is_one_problem_per_file(tmp_path, capsys):
    root = rep.cityscapes(tmp_path / "cityscapes")
    label = cityscapes_already_converted(root)
    assert check("cityscapes", root) == DataError.exit_code
    out = capsys.readouterr().out
    assert "ERROR [converted_label_ids]" in out and "3 file(s)" in out and str(label) in out
    assert "*_labelTrainIds.png" in out  # the fix
    _, val = build("cityscapes", root)
    with pytest.raises(DataError, match="already converted"):  # training stops on it too
        val[0]


def break_cityscapes_root(root: Path) -> Path:
    return root / "leftImg8bit"  # one level too deep


def break_cityscapes_split(root: Path) -> Path:
    shutil.rmtree(root / "leftImg8bit" / "val")
    return root


def break_cityscapes_city(root: Path) -> Path:
    shutil.rmtree(root / "gtFine" / "train" / "bochum")
    return root


def break_ade_root(root: Path) -> Path:
    return root / "images"


def break_ade_labels(root: Path) -> Path:
    shutil.rmtree(root / "annotations" / "validation")
    return root


def break_coco_split(root: Path) -> Path:
    shutil.rmtree(root / "images" / "val2017")
    return root


# variant: (dataset, replica builder, how it is broken, kind, words the message must hold)
CS, ADE, COCO = "cityscapes", "ade20k", "coco_stuff"
BROKEN = {
    "cityscapes wrong root": (
        CS, rep.cityscapes, break_cityscapes_root, "wrong_root", ["leftImg8bit/", "gtFine/"]
    ),
    "cityscapes missing split": (
        CS, rep.cityscapes, break_cityscapes_split, "missing_split", ["leftImg8bit/val", "unpack"]
    ),
    "cityscapes city without labels": (
        CS, rep.cityscapes, break_cityscapes_city, "missing_labels", ["bochum", "2 images"]
    ),
    "ade20k wrong root": (ADE, rep.ade20k, break_ade_root, "wrong_root", ["annotations/"]),
    "ade20k missing annotations": (
        ADE, rep.ade20k, break_ade_labels, "missing_labels", ["validation", "ADEChallenge"]
    ),
    "coco_stuff missing split": (
        COCO, rep.coco_stuff, break_coco_split, "missing_split", ["val2017", "val2017.zip"]
    ),
}  # fmt: skip


@pytest.mark.parametrize("variant", list(BROKEN))
def test_broken_layout_is_one_message_with_path_and_fix(tmp_path, capsys, variant):
    name, make, breaks, kind, words = BROKEN[variant]
    root = breaks(make(tmp_path / name))
    cfg = compose_check(f"dataset={name}", f"dataset.root={root}")
    script = load_script("check_dataset")
    with pytest.raises(LayoutError) as e:
        script.run(cfg)
    assert e.value.kind == kind
    message = str(e.value)
    assert str(root) in message and "Fix:" in message
    for word in words:
        assert word in message
    with pytest.raises(SystemExit) as stop:  # what scripts/check_dataset.py prints: once
        run_task(script.run, cfg)
    assert stop.value.code == DataError.exit_code
    err = capsys.readouterr().err
    assert err.count("segkit: error:") == 1 and message in err and "Traceback" not in err


# --------------------------------------------------------------------------- ADE20K
def test_ade20k_replica_reduce_zero_label(tmp_path):
    root = rep.ade20k(tmp_path)  # the folder above ADEChallengeData2016 is accepted too
    train, val = build("ade20k", tmp_path)
    assert (len(train), len(val)) == (4, 2)
    assert train.num_classes == 150 and len(train.class_names) == 150
    assert train.class_names[:3] == ["wall", "building", "sky"] and train.class_names[-1] == "flag"
    reduced = {0: 255, 1: 0, 2: 1, 75: 74, 149: 148, 150: 149}  # 0 "other" ignored, v -> v-1
    for k, mask in enumerate(masks(val), start=1):
        raw = rep.value_mask(rep.ADE_VALUES, k)
        assert np.array_equal(mask, np.vectorize(reduced.get)(raw))
    assert check("ade20k", root) == 0


def test_reduce_zero_label_is_a_key_of_every_dataset_before_label_map():
    kw = dict(train=False, num_classes=3, input_shape=[4, 4], reduce_zero_label=True)
    files = [(__file__, __file__)]
    ds = SegmentationDataset(files, label_map={3: 255, 4: 2}, **kw)
    raw = np.array([[0, 1, 2, 3], [4, 5, 255, 1]], np.uint8)
    # reduce first (0 -> ignore, v -> v-1), then label_map on the reduced value
    assert ds.encode(raw).tolist() == [[255, 0, 1, 2], [255, 2, 255, 0]]
    with pytest.raises(DataError, match="outside"):
        SegmentationDataset(files, **kw).encode(raw)  # reduced 4 -> 3 is not a class of 3


# --------------------------------------------------------------------------- COCO-Stuff
def test_coco_stuff_replica_182_to_171(tmp_path):
    root = rep.coco_stuff(tmp_path / "coco_stuff164k")
    train, val = build("coco_stuff", root)
    assert (len(train), len(val)) == (4, 2)
    assert len(COCO_CLASSES) == len(set(COCO_CLASSES)) == 171 == train.num_classes
    # hand table: map value = COCO-Stuff id - 1; ids 12 (value 11) and 91 (value 90) are unused
    # things; stop sign (id 13) is class 11, banner (id 92, the first stuff) class 80
    expected = {0: 0, 11: 255, 12: 11, 90: 255, 91: 80, 181: 170, 255: 255}
    names = {0: "person", 11: "stop sign", 79: "toothbrush", 80: "banner", 170: "wood"}
    assert all(train.class_names[i] == n for i, n in names.items())
    for k, mask in enumerate(masks(val)):
        raw = rep.value_mask(rep.COCO_VALUES, k)
        assert np.array_equal(mask, np.vectorize(expected.get)(raw))
    assert check("coco_stuff", root) == 0


# --------------------------------------------------------------------------- VOC + SBD
def test_trainaug_split_is_voc_train_and_sbd_minus_voc_val():
    voc_train, voc_val = ["a", "b"], ["c", "d"]
    assert trainaug_names(voc_train, voc_val, ["b", "e", "c"], ["f", "d"]) == ["a", "b", "e", "f"]


def test_convert_sbd_replica_then_train_set(tmp_path, capsys):
    sbd, voc = rep.sbd_and_voc(tmp_path / "in")
    before = sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "in").rglob("*"))
    out = tmp_path / "voc_aug"
    assert load_script("convert_sbd").main([str(sbd), str(voc), str(out)]) == 0
    assert sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "in").rglob("*")) == before
    split = out / "ImageSets" / "Segmentation"
    # VOC train {032, 002} + SBD {002, 010, 033, 011} - VOC val {033, 003}
    assert (split / "trainaug.txt").read_text().split() == [
        "2007_000032",
        "2008_000002",
        "2008_000010",
        "2008_000011",
    ]
    assert (split / "val.txt").read_text().split() == rep.VOC_SPLITS["val"]
    sbd_names = sorted({n for v in rep.SBD_SPLITS.values() for n in v})
    for name in rep.SBD_ONLY:  # from the .mat, palette PNG of the same ids
        png = Image.open(out / "SegmentationClassAug" / f"{name}.png")
        assert png.mode == "P"
        assert np.array_equal(np.array(png), rep.sbd_mask(sbd_names.index(name)))
        assert np.array_equal(read_sbd_mat(sbd / "dataset" / "cls" / f"{name}.mat"), np.array(png))
    voc_mask = np.array(Image.open(out / "SegmentationClassAug" / "2008_000002.png"))
    assert np.array_equal(voc_mask, rep.value_mask([0, 15, 255, 7]))  # VOC's own mask wins
    train, val = build("voc_aug", out)
    assert (len(train), len(val)) == (4, 2) and train.num_classes == 21
    assert check("voc_aug", out) == 0
    assert "wrote" in capsys.readouterr().out


def test_convert_sbd_refuses_bad_inputs_and_writing_into_them(tmp_path, capsys):
    sbd, voc = rep.sbd_and_voc(tmp_path / "in")
    convert = load_script("convert_sbd").main
    assert convert([str(sbd), str(voc), str(voc / "aug")]) == DataError.exit_code
    assert convert([str(voc), str(voc), str(tmp_path / "out")]) == DataError.exit_code
    err = capsys.readouterr().err
    assert f"out={voc / 'aug'} is inside the input" in err and "no SBD cls/ folder" in err
    assert not (voc / "aug").exists() and not (tmp_path / "out").exists()
    with pytest.raises(LayoutError) as e:  # the SBD folder given as the dataset: not converted
        check("voc_aug", sbd)
    assert e.value.kind == "unconverted_sbd"
    assert "scripts/convert_sbd.py" in str(e.value) and str(sbd) in str(e.value)


# --------------------------------------------------------------------------- sliding window
class ShapeProbe(torch.nn.Module):
    """A 19-class 'model' that records the input sizes it is run on; predicts class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, ...]] = []
        self.bias = torch.nn.Parameter(torch.zeros(19))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append(tuple(x.shape))
        logits = torch.zeros(x.shape[0], 19, *x.shape[2:]) + self.bias[:, None, None]
        logits[:, 0] += 1.0
        return {"out": logits}


@pytest.mark.parametrize("window", [None, [16, 32]])
def test_validation_runs_the_dataset_val_window(tmp_path, window):
    root = rep.cityscapes(tmp_path / "cityscapes")
    overrides = [f"dataset.root={root}", f"dataset.val_window={window or 'null'}"]
    overrides += ["eval.slide.overlap=0.5", "loader.batch_size=2", "loader.val_batch_size=3"]
    overrides += ["loader.num_workers=0", "launch.accelerator=cpu"]
    cfg = compose_train(
        "dataset=cityscapes", *TINY_SHAPE, "model=unet", "model.base_channels=4", *overrides
    )
    trainer, _ = build_trainer(cfg, DistInfo())
    trainer.model = probe = ShapeProbe()
    metrics = trainer.validate(0)
    if window is None:  # 3 val images of 32x64, one batch, whole
        assert probe.seen == [(3, 3, 32, 64)]
    else:  # 3 x 3 windows of 16x32 per image (stride 8x16), 27 windows in batches of 3
        assert probe.seen == [(3, 3, 16, 32)] * 9
    # class 0 (road) everywhere: its IoU is road pixels / (all labelled pixels); labelled
    # blocks: 19 of the 34 ids, road one of them -> IoU = share of road blocks among those
    labelled = np.isin(
        np.concatenate([rep.value_mask(rep.LABEL_IDS, k) for k in range(3)]), list(CITYSCAPES_TRAIN)
    )
    road = np.concatenate([rep.value_mask(rep.LABEL_IDS, k) for k in range(3)]) == 7
    assert metrics["iou"][0] == pytest.approx(road.sum() / labelled.sum())
