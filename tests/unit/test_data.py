"""Data contracts: file reading, mask encoding, transforms, datasets, label space, configs."""

from __future__ import annotations

import gc
import inspect
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf
from PIL import Image, ImageOps
from torch.utils.data import DataLoader

from segkit.config.keys import DATASET_RUN_KEYS
from segkit.data import (
    DataError,
    FolderDataset,
    LabelSpace,
    SegmentationDataset,
    UnetDataset,
    VOCDataset,
    encode_mask,
    get_random_data,
    letterbox,
    normalize,
    read_image,
    read_mask,
    read_split_file,
)
from segkit.data.io import apply_orientation
from segkit.data.transforms import Normalize
from tests.conftest import compose_train

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"
NO_HSV = {"hue": 0.0, "sat": 0.0, "val": 0.0}


# ---------------------------------------------------------------- helpers


def save_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(arr, mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def save_palette_png(path: Path, ids: np.ndarray) -> Path:
    im = Image.fromarray(ids.astype(np.uint8))
    im.putpalette([255, 0, 0] * 256)  # every index red: reading colours would be wrong
    im.save(path)
    return path


def make_voc(root: Path, names: list[str], size=(24, 32), num_classes=3) -> Path:
    """Tiny VOCdevkit/VOC2007 with random PNG images (lossless) and palette masks."""
    year = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        save_png(year / "JPEGImages" / f"{name}.png", rng.integers(0, 256, (*size, 3), np.uint8))
        save_palette_png(
            year / "SegmentationClass" / f"{name}.png", rng.integers(0, num_classes, size)
        )
    (year / "ImageSets/Segmentation/train.txt").write_text("\n".join(names) + "\n")
    return root / "VOCdevkit"


def voc_kwargs(**over) -> dict:
    kw = dict(train=True, num_classes=3, input_shape=(16, 16), image_suffix=".png", **NO_HSV)
    kw.pop("hue"), kw.pop("sat"), kw.pop("val")
    kw.update(over)
    return kw


def squares_pair(h=60, w=80):
    """Gray image with a red square (class 1) and a green square (class 2); mask 0 elsewhere."""
    image = np.full((h, w, 3), 90, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    image[10:30, 10:35] = (200, 30, 30)
    mask[10:30, 10:35] = 1
    image[35:55, 45:75] = (30, 200, 30)
    mask[35:55, 45:75] = 2
    return image, mask


# ---------------------------------------------------------------- io


def test_read_image_conversions(tmp_path):
    gray = save_png(tmp_path / "g.png", np.full((4, 5), 77, np.uint8))
    assert read_image(gray).shape == (4, 5, 3) and (read_image(gray) == 77).all()

    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[0, :, 3] = 255  # opaque row
    rgba[1, 0, 3] = 0  # transparent
    rgba[1, 1:, 3] = 102  # 40 %
    out = read_image(save_png(tmp_path / "a.png", rgba))
    assert out.tolist() == [[[10, 20, 30]] * 3] * 2  # alpha dropped: the stored colours
    transparent = np.zeros((2, 3, 2), np.uint8)
    transparent[..., 0] = 90  # gray + alpha 0 everywhere: still the picture, not flat gray
    Image.fromarray(transparent, mode="LA").save(tmp_path / "la.png")
    assert (read_image(tmp_path / "la.png") == 90).all()
    assert (read_image(tmp_path / "la.png", channels=1) == 90).all()

    deep = np.array([[0, 65535, 257 * 100]], np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    assert read_image(tmp_path / "d.png")[0, :, 0].tolist() == [0, 255, 100]

    red = save_png(tmp_path / "r.png", np.tile(np.array([255, 0, 0], np.uint8), (3, 3, 1)))
    assert read_image(red)[1, 1].tolist() == [255, 0, 0]  # RGB order, not BGR


def test_read_image_cmyk_and_palette(tmp_path):
    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    rgb = read_image(tmp_path / "c.jpg")
    assert rgb.shape == (4, 6, 3) and rgb[..., 0].min() > 200 and rgb[..., 1:].max() < 60
    save_palette_png(tmp_path / "p.png", np.zeros((3, 3)))
    assert read_image(tmp_path / "p.png")[0, 0].tolist() == [255, 0, 0]  # images: colours


def test_exif_orientation_matches_pil(tmp_path):
    arr = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    for tag in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = tag
        im = Image.fromarray(arr)
        im.info["exif"] = exif.tobytes()
        expected = np.asarray(ImageOps.exif_transpose(im))
        assert np.array_equal(apply_orientation(arr, tag), expected), tag
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "o.png", exif=exif)  # lossless, tag 6 = rotate 90 cw
    assert np.array_equal(read_image(tmp_path / "o.png"), np.rot90(arr, -1))
    Image.fromarray(arr).save(tmp_path / "o.jpg", exif=exif)
    assert read_image(tmp_path / "o.jpg").shape == (6, 4, 3)  # applied exactly once


def test_read_mask_palette_bilevel_and_16bit(tmp_path):
    ids = np.array([[0, 1], [2, 255]], np.uint8)
    assert read_mask(save_palette_png(tmp_path / "p.png", ids)).tolist() == ids.tolist()
    bits = Image.fromarray(np.array([[True, False]]))
    bits.save(tmp_path / "b.png")
    assert read_mask(tmp_path / "b.png").tolist() == [[1, 0]]
    cv2.imwrite(str(tmp_path / "s.png"), np.array([[3, 300]], np.uint16))
    with pytest.raises(DataError, match=r"s\.png.*3\.\.300"):
        read_mask(tmp_path / "s.png")
    rgb = np.zeros((2, 2, 3), np.uint8)
    assert read_mask(save_png(tmp_path / "rgb.png", rgb)).shape == (2, 2, 3)


def test_non_ascii_names(tmp_path):
    folder = tmp_path / "données"
    folder.mkdir()
    img = save_png(folder / "图像_01.png", np.full((3, 4, 3), 9, np.uint8))
    msk = save_palette_png(folder / "маска.png", np.ones((3, 4)))
    assert read_image(img).shape == (3, 4, 3) and read_mask(msk).tolist() == [[1] * 4] * 3


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"bad\.jpg.*corrupt"):
        read_image(tmp_path / "bad.jpg")


def test_read_split_file_crlf_bom(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(b"\xef\xbb\xbfa_1\r\nb_2   \r\n\r\n   \r\n c_3 extra\r\nd_4")
    assert read_split_file(path) == ["a_1", "b_2", "c_3", "d_4"]


# ---------------------------------------------------------------- encode_mask


def test_label_map():
    raw = np.array([[0, 255], [255, 0]], np.uint8)
    out = encode_mask(raw, num_classes=2, label_map={0: 0, 255: 1})
    assert out.dtype == np.uint8 and out.tolist() == [[0, 1], [1, 0]]


def test_out_of_range_error_names_file_and_values():
    raw = np.zeros((4, 4), np.uint8)
    raw[0, :3] = 7
    raw[1, 0] = 255  # ignore: fine
    assert encode_mask(raw[1:], num_classes=3).max() == 255
    with pytest.raises(DataError) as info:
        encode_mask(raw, num_classes=3, path="/data/m_001.png")
    text = str(info.value)
    assert "/data/m_001.png" in text and "7 (3 px)" in text and "dataset.label_map={7: 2}" in text
    assert "255 (" not in text


def test_color_map_and_unmapped_colour():
    raw = np.zeros((2, 3, 3), np.uint8)
    raw[0, 0] = (128, 0, 0)
    raw[1, 2] = (224, 224, 192)
    cmap = {0: [0, 0, 0], 1: [128, 0, 0], 255: [[224, 224, 192]]}
    assert encode_mask(raw, num_classes=2, color_map=cmap).tolist() == [[1, 0, 0], [0, 0, 255]]
    raw[1, :2] = (1, 2, 3)
    with pytest.raises(DataError) as info:
        encode_mask(raw, num_classes=2, color_map=cmap, path="c.png")
    assert "c.png" in str(info.value) and "[1, 2, 3] (2 px)" in str(info.value)
    with pytest.raises(DataError, match="dataset.color_map"):
        encode_mask(raw, num_classes=2, path="c.png")


# ---------------------------------------------------------------- transforms


def _centroid(sel: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(sel)
    return np.array([ys.mean(), xs.mean()])


@pytest.mark.parametrize("seed", range(8))
def test_augmentation_keeps_image_and_mask_aligned(seed):
    image, mask = squares_pair()
    out_img, out_mask = get_random_data(
        image, mask, (64, 64), np.random.default_rng(seed), scale=(0.6, 1.6), **NO_HSV
    )
    for cls, colour in ((1, (200, 30, 30)), (2, (30, 200, 30))):
        in_mask = out_mask == cls
        if in_mask.sum() < 30:
            continue  # square pushed (mostly) out of the canvas
        # 2 px inside the mask region (the canvas border counts as outside) the colour is exact
        core = cv2.erode(
            in_mask.astype(np.uint8),
            np.ones((5, 5), np.uint8),
            borderType=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        assert np.abs(out_img[core > 0].astype(int) - colour).max() <= 3
        in_image = np.abs(out_img.astype(int) - colour).max(axis=2) <= 3
        assert not (in_image & ~in_mask).any()  # the colour never shows outside its class
        touches_border = in_mask[[0, -1]].any() or in_mask[:, [0, -1]].any()
        if not touches_border:  # cropping cuts blur asymmetrically: compare whole squares only
            shift = _centroid(in_image) - _centroid(in_mask)
            assert np.abs(shift).max() < 0.75, shift  # sub-pixel aligned


def test_augmented_mask_values_and_padding():
    rng = np.random.default_rng(0)
    mask = rng.choice(np.array([0, 3, 7], np.uint8), (40, 50))
    image = rng.integers(0, 256, (40, 50, 3), np.uint8)
    for seed in range(10):
        _, out = get_random_data(image, mask, (32, 32), np.random.default_rng(seed))
        assert set(np.unique(out).tolist()) <= {0, 3, 7, 255}
    # scale 0.25 of a square canvas: an 8x8 (aspect kept) picture, the rest is padding
    img, out = get_random_data(
        image[:40, :40],
        np.full((40, 40), 1, np.uint8),
        (32, 32),
        np.random.default_rng(1),
        jitter=0.0,
        scale=(0.25, 0.25),
        ignore_index=200,
        **NO_HSV,
    )
    assert (out == 1).sum() == 64 and (out == 200).sum() == 32 * 32 - 64 and (out == 0).sum() == 0
    assert (img[out == 200] == 128).all()


def test_letterbox_geometry():
    image = np.full((100, 200, 3), 50, np.uint8)
    img, mask = letterbox(image, np.ones((100, 200), np.uint8), (128, 128), ignore_index=255)
    assert img.shape == (128, 128, 3) and mask.shape == (128, 128)
    assert (mask[:32] == 255).all() and (mask[32:96] == 1).all() and (mask[96:] == 255).all()
    assert (img[:32] == 128).all() and (img[32:96] == 50).all() and (img[96:] == 128).all()
    img, mask = letterbox(np.zeros((64, 64, 3), np.uint8), np.ones((64, 64), np.uint8), (128, 256))
    assert (mask[:, 64:192] == 1).all() and (mask[:, :64] == 255).all()
    assert (mask[:, 192:] == 255).all()
    same, m = letterbox(image, np.ones((100, 200), np.uint8), (100, 200))
    assert np.array_equal(same, image) and (m == 1).all()


def test_normalize_values():
    image = np.array([[[255, 0, 51]]], np.uint8)
    out = normalize(image, (0.5, 0.5, 0.0), (0.25, 0.5, 0.1))
    assert out.shape == (3, 1, 1) and out.dtype == np.float32
    assert np.allclose(out.ravel(), [2.0, -1.0, 2.0], atol=1e-6)


# ---------------------------------------------------------------- datasets


def test_dataset_sample_contract_and_determinism(tmp_path):
    voc = make_voc(tmp_path, ["a", "b", "c"])
    ds = VOCDataset(voc, "train", **voc_kwargs())
    image, mask = ds[1]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8
    assert mask.shape == (16, 16) and mask.dtype == torch.uint8
    again = VOCDataset(voc, "train", **voc_kwargs())
    assert torch.equal(again[1][0], image) and torch.equal(again[1][1], mask)
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], image)
    ds.set_epoch(0)
    assert torch.equal(ds[1][0], image)
    other_seed = VOCDataset(voc, "train", **voc_kwargs(seed=1))
    assert not torch.equal(other_seed[1][0], image)
    assert ds.class_names == ["class_0", "class_1", "class_2"]
    assert ds.palette == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    assert ds.files[0] == (str(voc / "VOC2007/JPEGImages/a.png"),) + (
        str(voc / "VOC2007/SegmentationClass/a.png"),
    )


def test_set_epoch_reaches_persistent_workers(tmp_path):
    ds = VOCDataset(make_voc(tmp_path, ["a", "b"]), "train", **voc_kwargs())
    loader = DataLoader(ds, batch_size=2, num_workers=1, persistent_workers=True)
    first = next(iter(loader))[0]
    ds.set_epoch(3)
    second = next(iter(loader))[0]
    assert torch.equal(first[1], VOCDataset(ds.root, "train", **voc_kwargs())[1][0])
    assert torch.equal(second[1], ds[1][0]) and not torch.equal(first, second)
    del loader


def test_validation_sample_is_letterboxed_raw(tmp_path):
    voc = make_voc(tmp_path, ["a"], size=(16, 16))
    ds = VOCDataset(voc, "train", **voc_kwargs(train=False, mean=(0, 0, 0), std=(1, 1, 1)))
    raw_image, raw_mask = ds.load_raw(0)
    image, mask = ds[0]
    assert np.array_equal(mask.numpy(), raw_mask)
    assert np.array_equal(image.numpy(), raw_image.transpose(2, 0, 1))


def test_voc_root_forms_and_errors(tmp_path):
    voc = make_voc(tmp_path, ["a", "b"])
    assert len(VOCDataset(voc / "VOC2007", "train", **voc_kwargs())) == 2  # year folder
    with pytest.raises(DataError, match=r"val\.txt.*\['train'\].*expected layout"):
        VOCDataset(voc, "val", **voc_kwargs())
    with pytest.raises(DataError, match="dataset.root=.*missing"):
        VOCDataset(tmp_path / "missing", "train", **voc_kwargs())


def test_non_ascii_sample_names(tmp_path):
    voc = make_voc(tmp_path, ["图像_一", "снимок"])
    ds = VOCDataset(voc, "train", **voc_kwargs())
    assert len(ds) == 2 and ds[1][0].shape == (3, 16, 16)


def test_config_errors_name_the_key(tmp_path):
    voc = make_voc(tmp_path, ["a"])
    bad = {
        "dataset.class_names": dict(class_names=["x", "y"]),
        "dataset.palette": dict(palette=[[0, 0, 0], [1, 2, 3], [1, 2, 300]]),
        "dataset.input_shape": dict(input_shape=(0, 16)),
        "dataset.augment.zoom": dict(augment={"zoom": 2}),
        "dataset.ignore_index": dict(ignore_index=1),
        "dataset.on_bad_sample": dict(on_bad_sample="ignore"),
    }
    for key, over in bad.items():
        with pytest.raises(DataError, match=key.replace(".", r"\.")):
            VOCDataset(voc, "train", **voc_kwargs(**over))


def test_size_mismatch_names_both_files(tmp_path):
    voc = make_voc(tmp_path, ["a"])
    save_palette_png(voc / "VOC2007/SegmentationClass/a.png", np.zeros((10, 11)))
    ds = VOCDataset(voc, "train", **voc_kwargs())
    with pytest.raises(DataError) as info:
        ds[0]
    text = str(info.value)
    assert "a.png is 32x24 (WxH)" in text and "SegmentationClass/a.png is 11x10" in text
    assert "bad sample 0" in text


def test_bad_sample_raise_skip_and_worker_message(tmp_path, caplog, monkeypatch):
    # torch waits this long (5 s) for a worker that raised to stop: 0.1 s does here
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.1)
    voc = make_voc(tmp_path, ["a", "b", "c", "d"])
    (voc / "VOC2007/JPEGImages/b.png").write_bytes(b"garbage")
    ds = VOCDataset(voc, "train", **voc_kwargs())
    with pytest.raises(DataError, match=r"bad sample 1 \(image .*b\.png, mask .*b\.png\)"):
        ds[1]
    batches = iter(DataLoader(ds, batch_size=4, num_workers=1))
    with pytest.raises(DataError, match=r"JPEGImages/b\.png"):  # the message leaves the worker
        next(batches)
    del batches  # stop the worker here (see above), not in a later test
    gc.collect()  # (the traceback kept the iterator alive in a reference cycle)
    skip = VOCDataset(voc, "train", **voc_kwargs(on_bad_sample="skip", max_bad_fraction=0.5))
    with caplog.at_level(logging.WARNING, logger="segkit.data"):
        image, _ = skip[1]
    assert torch.equal(image, skip[2][0]) and "b.png" in caplog.text
    strict = VOCDataset(voc, "train", **voc_kwargs(on_bad_sample="skip", max_bad_fraction=0.1))
    with pytest.raises(DataError, match="max_bad_fraction"):
        strict[1]


def test_missing_files_at_init_and_remove_samples(tmp_path):
    voc = make_voc(tmp_path, ["a", "b", "c"])
    (voc / "VOC2007/SegmentationClass/c.png").unlink()
    with pytest.raises(DataError, match=r"1 of 3 samples.*c\.png MISSING"):
        VOCDataset(voc, "train", **voc_kwargs())
    ds = VOCDataset(voc, "train", **voc_kwargs(on_bad_sample="skip", max_bad_fraction=0.5))
    assert [Path(a).stem for a, _ in ds.files] == ["a", "b"]
    removed = ds.remove_samples([0])
    assert [Path(a).stem for a, _ in removed] == ["a"] and len(ds) == 1


def test_default_collate_batches_images_and_masks(tmp_path):
    ds = VOCDataset(make_voc(tmp_path, ["a", "b"]), "train", **voc_kwargs())
    images, masks = next(iter(DataLoader(ds, batch_size=2)))
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.uint8
    assert masks.shape == (2, 16, 16) and masks.dtype == torch.uint8
    assert torch.equal(images[1], ds[1][0]) and torch.equal(masks[1], ds[1][1])


def test_uint8_batch_normalised_on_the_device_equals_the_float_path(tmp_path):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ds = VOCDataset(make_voc(tmp_path, ["a", "b", "c"]), "train", **voc_kwargs(mean=mean, std=std))
    images, masks = next(iter(DataLoader(ds, batch_size=3)))
    on_device = ds.labels.normalizer()(images)
    # the float path as it was: each sample normalised in the worker with numpy
    ds.set_epoch(0)
    before = [ds.transform(*ds.load_raw(i), np.random.default_rng([0, 0, i])) for i in range(3)]
    expected = torch.stack([torch.from_numpy(normalize(im, mean, std)) for im, _ in before])
    assert on_device.dtype == torch.float32 and on_device.shape == (3, 3, 16, 16)
    assert torch.allclose(on_device, expected, atol=1e-6, rtol=0)
    by_hand = (images[0, :, 0, 0].double() / 255 - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(on_device[0, :, 0, 0].double(), by_hand, atol=1e-6)
    assert torch.equal(masks, torch.stack([torch.from_numpy(m) for _, m in before]))
    assert Normalize(mean, std)(on_device) is on_device  # already float: left alone
    channels_last = Normalize(mean, std, channels_last=True)(images)
    assert torch.equal(channels_last, on_device)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)


def test_normalize_rejects_a_channel_mismatch():
    with pytest.raises(ValueError, match="in_channels"):
        Normalize([0.5], [0.25])(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))


def test_gray_dataset_reads_one_channel_augmented_like_rgb(tmp_path):
    """in_channels=1: a gray file gives exactly channel 0 of what the RGB path gives (same
    draws, same HSV value gain); a colour file is converted to gray."""
    voc = make_voc(tmp_path, ["a", "b"], size=(24, 32))
    for name in ("a", "b"):  # make the pictures gray
        path = voc / "VOC2007" / "JPEGImages" / f"{name}.png"
        save_png(path, np.asarray(Image.open(path).convert("L")))
    hsv = {"hue": 0.1, "sat": 0.7, "val": 0.3}
    gray = VOCDataset(
        voc, "train", **voc_kwargs(in_channels=1, mean=[0.5], std=[0.25], augment=hsv)
    )
    rgb = VOCDataset(voc, "train", **voc_kwargs(augment=hsv))
    for i in range(2):
        (g, gm), (c, cm) = gray[i], rgb[i]
        assert g.shape == (1, 16, 16) and g.dtype == torch.uint8
        assert torch.equal(g[0], c[0]) and torch.equal(gm, cm)
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    save_png(tmp_path / "c.png", colour)
    assert read_image(tmp_path / "c.png", channels=1).shape == (2, 2, 1)
    assert read_image(tmp_path / "c.png", channels=1)[0, 0, 0] == 76  # 0.299 * 255
    assert gray.labels.in_channels == 1
    with pytest.raises(DataError, match="in_channels=1"):
        VOCDataset(voc, "train", **voc_kwargs(in_channels=1))  # 3-value ImageNet mean/std


def test_unet_dataset_is_the_voc_dataset():
    assert UnetDataset is VOCDataset


def test_label_space_round_trip_and_dataset_labels(tmp_path):
    ds = VOCDataset(make_voc(tmp_path, ["a"]), "train", **voc_kwargs(class_names=["x", "y", "z"]))
    labels = ds.labels
    assert labels == LabelSpace(3, 255, ["x", "y", "z"], ds.palette, ds.mean, ds.std)
    assert (labels.num_classes, labels.ignore_index) == (ds.num_classes, ds.ignore_index)
    assert labels.class_names == ds.class_names and labels.palette == ds.palette
    assert labels.mean == ds.mean and labels.std == ds.std
    plain = labels.to_dict()
    assert plain == {
        "num_classes": 3,
        "ignore_index": 255,
        "class_names": ["x", "y", "z"],
        "palette": [[0, 0, 0], [128, 0, 0], [0, 128, 0]],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    assert LabelSpace.from_dict(plain) == labels
    assert LabelSpace.from_dict(OmegaConf.create(plain)) == labels  # e.g. from a YAML file
    with pytest.raises(DataError, match="dataset.class_names"):
        LabelSpace.from_dict({**plain, "class_names": ["x"]})


def test_segmentation_dataset_color_masks(tmp_path):
    save_png(tmp_path / "i.png", np.zeros((4, 4, 3), np.uint8))
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[:2] = (0, 128, 0)
    save_png(tmp_path / "m.png", colour)
    ds = SegmentationDataset(
        [(tmp_path / "i.png", tmp_path / "m.png")],
        train=False,
        num_classes=2,
        input_shape=(4, 4),
        color_map={0: [0, 0, 0], 1: [0, 128, 0]},
    )
    assert ds[0][1].tolist() == [[1] * 4] * 2 + [[0] * 4] * 2


# ---------------------------------------------------------------- folder layouts


def test_folder_dataset_split_placeholder(tmp_path):
    for split, stems in (("train", ["x1", "x2"]), ("val", ["y"])):
        (tmp_path / split).mkdir()
        (tmp_path / f"{split}annot").mkdir()
        for s in stems:
            save_png(tmp_path / split / f"{s}.png", np.zeros((8, 8, 3), np.uint8))
            save_png(tmp_path / f"{split}annot" / f"{s}.png", np.full((8, 8), 2, np.uint8))
    kw = dict(image_dir="{split}", mask_dir="{split}annot", train=False, num_classes=3)
    ds = FolderDataset(tmp_path, "train", input_shape=(8, 8), **kw)
    assert [Path(m).name for _, m in ds.files] == ["x1.png", "x2.png"]
    assert Path(ds.files[0][1]).parent.name == "trainannot" and (ds[0][1] == 2).all()
    assert len(FolderDataset(tmp_path, "val", input_shape=(8, 8), **kw)) == 1


def test_folder_dataset_fraction_split(tmp_path):
    (tmp_path / "Images").mkdir()
    (tmp_path / "Labels").mkdir()
    for i in range(30):
        (tmp_path / "Images" / f"{i}.png").touch()
        (tmp_path / "Labels" / f"{i}.png").touch()
    kw = dict(image_dir="Images", mask_dir="Labels", train=False, num_classes=2)
    kw.update(input_shape=(8, 8), val_fraction=0.2)
    train = FolderDataset(tmp_path, "train", **kw)
    val = FolderDataset(tmp_path, "val", **kw)
    assert len(train) == 24 and len(val) == 6
    stems = {Path(a).stem for a, _ in train.files + val.files}
    assert stems == {str(i) for i in range(30)}
    assert val.files == FolderDataset(tmp_path, "val", **kw).files  # deterministic
    assert Path(train.files[1][0]).stem == "1" and Path(train.files[-1][0]).stem == "29"
    kw["val_fraction"] = None
    with pytest.raises(DataError, match="dataset.val_fraction"):
        FolderDataset(tmp_path, "train", **kw)


@pytest.mark.skipif(not (SHARED / "camvid").is_dir(), reason="shared CamVid absent")
def test_shared_camvid():
    kw = dict(image_dir="{split}", mask_dir="{split}annot", num_classes=11, ignore_index=11)
    ds = FolderDataset(SHARED / "camvid", "val", train=False, input_shape=(360, 480), **kw)
    assert len(ds) == 101
    image, mask = ds[0]
    assert image.shape == (3, 360, 480) and mask.shape == (360, 480)
    assert set(mask.unique().tolist()) <= set(range(12))


@pytest.mark.skipif(not (SHARED / "isbi-membrane").is_dir(), reason="shared ISBI absent")
def test_shared_isbi():
    kw = dict(image_dir="Images", mask_dir="Labels", num_classes=2, val_fraction=0.2)
    ds = FolderDataset(
        SHARED / "isbi-membrane",
        "val",
        train=False,
        input_shape=(256, 256),
        label_map={0: 0, 255: 1},
        **kw,
    )
    assert len(ds) == 6
    _, mask = ds[0]
    assert set(mask.unique().tolist()) == {0, 1} and 0.6 < (mask == 1).float().mean() < 0.95
    raw_image, raw_mask = ds.load_raw(1)
    assert raw_image.shape == (512, 512, 3) and set(np.unique(raw_mask)) == {0, 1}


# ---------------------------------------------------------------- configs

RUN_KEYS = {"_target_", "_partial_", "_recursive_", *DATASET_RUN_KEYS}


def _own_kwargs(cls) -> set[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name for p in params if p.kind is not p.VAR_KEYWORD} - {"self"}


@pytest.mark.parametrize("name", ["demo", "voc", "camvid", "isbi"])
def test_dataset_config_lists_every_kwarg(name):
    """The composed node (the dataset yaml over _base.yaml) sets every keyword of the class and
    of SegmentationDataset (DemoDataset fixes the VOC layout arguments itself), and nothing
    else besides segkit's own keys."""
    cfg = compose_train(f"dataset={name}").dataset
    assert cfg._partial_ is True
    assert (cfg.train_split, cfg.val_split, cfg.check) == ("train", "val", "quick")
    assert cfg.val_input_shape is None and cfg.val_original_size is False
    cls = get_class(cfg._target_)
    expected = (_own_kwargs(cls) | _own_kwargs(SegmentationDataset)) - {"split", "train", "files"}
    assert set(cfg) - RUN_KEYS == expected
    assert len(cfg.class_names) == cfg.num_classes
    assert cfg.palette is None or len(cfg.palette) == cfg.num_classes
    assert cfg._recursive_ is False  # the dataset builds and checks its augment steps
    assert list(cfg.augment.train) == ["copy_paste", "resize", "hflip", "crop", "hsv"]
    scale = [0.5, 1.5] if name == "demo" else [0.25, 2.0]
    assert cfg.augment.train.resize.scale == scale
    assert list(cfg.augment.val) == ["letterbox"]
    assert cfg.seed == 42 and cfg.on_bad_sample == "raise" and cfg.max_bad_fraction == 0.1


def test_dataset_configs_keep_their_values():
    demo, voc, camvid, isbi = (
        compose_train(f"dataset={n}").dataset for n in ("demo", "voc", "camvid", "isbi")
    )
    assert demo._target_ == "segkit.data.demo.DemoDataset" and demo.input_shape == [128, 128]
    assert demo.ignore_index == 255 and demo.palette is None and demo.label_map is None
    assert voc._target_ == "segkit.data.voc.VOCDataset" and voc.num_classes == 21
    assert OmegaConf.is_missing(voc, "root") and voc.color_map is None
    assert camvid.ignore_index == 11 and camvid.num_classes == 11 and len(camvid.palette) == 11
    assert camvid.mean == [0.485, 0.456, 0.406] and camvid.std == [0.229, 0.224, 0.225]
    assert isbi.label_map == {0: 0, 255: 1} and isbi.val_fraction == 0.2
    assert isbi.mean == [0.495] * 3 and isbi.std == [0.173] * 3 and isbi.ignore_index == 255
    override = compose_train("dataset=demo", "dataset.val_split=null", "dataset.check=off")
    assert override.dataset.val_split is None and override.dataset.check == "off"


def test_gray_input_trains_a_one_channel_model_end_to_end(tmp_path):
    from segkit.io import checkpoint as ck
    from segkit.run import train_rank
    from tests.conftest import TINY

    gray = ["dataset.in_channels=1", "dataset.mean=[0.5]", "dataset.std=[0.25]"]
    train_rank(compose_train(*TINY, "trainer.max_epochs=1", "model.in_channels=1", *gray), tmp_path)
    ckpt = ck.load(tmp_path / "checkpoints" / "last.pt")
    first_conv = next(t for t in ckpt["model"].values() if t.ndim == 4)
    assert first_conv.shape[1] == 1  # the model reads one channel
    assert ckpt["labels"]["mean"] == [0.5] and ckpt["labels"]["std"] == [0.25]
    assert torch.isfinite(torch.tensor(ckpt["history"][0]["train_loss"]))
