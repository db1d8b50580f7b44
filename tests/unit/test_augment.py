"""``dataset.augment``: the step lists, each step on generated data, the default list against
the frozen outputs of the code it replaced, presets, checks and their messages."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from segkit.config.checks import check_train_config
from segkit.data import augment as aug
from segkit.data.augment import Context, build_pipeline, build_pipelines, get_random_data
from segkit.data.doctor import check_dataset
from segkit.errors import DataError
from segkit.io.allowlist import check_dataset_target
from segkit.run import dataset_factory
from tests.conftest import TINY, compose_train

FIXTURE = Path(__file__).parent / "fixtures" / "transforms_8de46b8.npz"
IDS, IGNORE = (0, 1, 2, 3, 4), 255
NAMES = [f"c{i}" for i in IDS]


def generated_pair(seed: int, h: int = 37, w: int = 53, c: int = 3):
    """Random image and random class ids with an ignored top band (as the fixture's)."""
    g = np.random.default_rng(seed)
    image = g.integers(0, 256, (h, w, c), dtype=np.uint8)
    mask = g.integers(0, 5, (h, w), dtype=np.uint8)
    mask[: h // 5] = IGNORE
    return image, mask


def marked_pair(h: int = 48, w: int = 64):
    """A dark olive picture of class 1 with a 6x6 orange block of class 3 off-centre."""
    image = np.empty((h, w, 3), np.uint8)
    image[:] = (60, 90, 30)
    mask = np.ones((h, w), np.uint8)
    image[8:14, 40:46], mask[8:14, 40:46] = (250, 160, 20), 3
    return image, mask


def ctx(seed, out_hw=(32, 40), donor=None) -> Context:
    return Context(np.random.default_rng(seed), out_hw, IGNORE, donor)


def one_step(spec: dict):
    return build_pipeline({"s": spec}, "dataset.augment.train", NAMES, IGNORE).steps[0][1]


def target(name: str) -> str:
    return f"segkit.data.augment.{name}"


# --------------------------------------------------------------------------- the default list
def test_default_list_reproduces_the_replaced_function_output_for_output():
    """tests/unit/fixtures/transforms_8de46b8.npz: get_random_data of commit 8de46b8 (the
    fixed function) on these pairs and seeds; the default list must give the same bytes."""
    frozen = np.load(FIXTURE)
    cases = [
        ("default", (37, 53), (32, 40), {}),
        ("demo_scale", (48, 48), (48, 48), {"scale": (0.5, 1.5)}),
        ("class_crop", (70, 50), (24, 32), {"class_crop": 0.5, "jitter": 0.1, "scale": (0.75, 2.25)}),  # noqa: E501
        ("no_hsv", (30, 30), (30, 30), {"hue": 0.0, "sat": 0.0, "val": 0.0}),
    ]  # fmt: skip
    for name, in_hw, out_hw, kwargs in cases:
        for k in range(6):
            image, mask = generated_pair(k, *in_hw)
            out = get_random_data(image, mask, out_hw, np.random.default_rng([7, 1, k]), **kwargs)
            assert np.array_equal(out[0], frozen[f"{name}_{k}_image"]), (name, k)
            assert np.array_equal(out[1], frozen[f"{name}_{k}_mask"]), (name, k)
    gray, gray_mask = generated_pair(99, 33, 41, c=1)
    out = get_random_data(gray, gray_mask, (32, 32), np.random.default_rng([7, 0, 3]))
    assert np.array_equal(out[0], frozen["gray_image"]) and np.array_equal(
        out[1], frozen["gray_mask"]
    )
    out = get_random_data(gray, gray_mask, (40, 24), random=False)
    assert np.array_equal(out[0], frozen["letterbox_image"])
    assert np.array_equal(out[1], frozen["letterbox_mask"])
    # copy-paste (p=1) on the raw pair, then the rest: the dataset's order and draws
    image, mask = generated_pair(3, 40, 40)
    donor = generated_pair(4, 30, 50)
    pipes = build_pipelines({"copy_paste": 1.0, "paste_classes": [1, 3]}, NAMES, IGNORE)
    pick = lambda rng: (int(rng.integers(1)), donor)[1]  # noqa: E731 (one donor to draw from)
    out = pipes["train"](
        image, mask, Context(np.random.default_rng([7, 2, 0]), (32, 32), 255, pick)
    )
    assert np.array_equal(out[0], frozen["paste_image"]) and np.array_equal(
        out[1], frozen["paste_mask"]
    )


def _digest(overrides: list[str], root: Path) -> str:
    """sha256 of every train sample (epochs 0 and 3) and val sample of a small demo set."""
    cfg = compose_train(
        "dataset.num_train=8", "dataset.num_val=3", "dataset.image_size=[40,40]",
        f"dataset.root={root}", *overrides,
    )  # fmt: skip
    make, h = dataset_factory(cfg.dataset), hashlib.sha256()
    for train, split in ((True, "train"), (False, "val")):
        ds = make(split=split, train=train)
        for epoch in (0, 3):
            ds.set_epoch(epoch)
            for i in range(len(ds)):
                h.update(b"".join(t.numpy().tobytes() for t in ds[i]))
    return h.hexdigest()[:16]


def test_demo_and_recipe_configs_give_the_samples_of_the_replaced_code(tmp_path):
    """Digests printed by the code of commit 8de46b8 with its flat keys (class_crop=0.5,
    copy_paste=0.5, paste_classes=[circle,cross], jitter=0.1, val_input_shape=[24,48])."""
    assert _digest([], tmp_path) == "9c524256c54b7301"
    recipe = [
        "dataset.augment.train.crop.class_balanced=0.5",
        "dataset.augment.train.copy_paste.p=0.5",
        "dataset.augment.train.copy_paste.classes=[circle,cross]",
        "dataset.augment.train.resize.jitter=0.1",
        "dataset.val_input_shape=[24,48]",
    ]
    assert _digest(recipe, tmp_path) == "2ee23a6a9e561eb9"


def test_python_default_is_the_default_preset():
    """No value written twice in effect: augment=None builds what conf/dataset/augment/default
    builds (both compared as specs)."""
    preset = aug.plain(compose_train("dataset=voc", "dataset.root=x").dataset.augment)
    assert preset == aug.steps_from_flat_keys({}, NAMES)


# --------------------------------------------------------------------------- every step
EVERY_STEP = {  # each step with arguments that make it act on (nearly) every call
    "CopyPaste": {"p": 1.0, "classes": [2, "c3"]},
    "Cutout": {"p": 1.0, "holes": 2, "ignore_labels": True},
    "GaussianBlur": {"p": 1.0},
    "GaussianNoise": {"p": 1.0},
    "HSVJitter": {},
    "HorizontalFlip": {"p": 1.0},
    "Letterbox": {},
    "PhotometricDistortion": {"p": 1.0},
    "RandomCrop": {"class_balanced": 0.5, "cat_max_ratio": 0.75},
    "RandomResize": {},
    "RandomScaleAspect": {},
    "Rotate": {"p": 1.0, "degrees": 40},
    "Rotate90": {"p": 1.0},
    "VerticalFlip": {"p": 1.0},
    "torchvision.RandomRotation": {"degrees": 40},
}
GEOMETRIC = ["HorizontalFlip", "VerticalFlip", "Rotate", "Rotate90", "RandomCrop", "Letterbox",
             "RandomResize", "RandomScaleAspect", "torchvision.RandomRotation"]  # fmt: skip


def spec_of(name: str) -> dict:
    if name.startswith("torchvision."):
        return {"_target_": f"torchvision.transforms.v2.{name.split('.')[1]}", **EVERY_STEP[name]}
    return {"_target_": target(name), **EVERY_STEP[name]}


def test_every_step_is_exercised():
    assert {s.__name__ for s in aug.STEPS} == {n for n in EVERY_STEP if "." not in n}


@pytest.mark.parametrize("name", list(EVERY_STEP))
def test_step_keeps_the_pair_uint8_with_valid_ids_only(name):
    step = one_step(spec_of(name))
    donor = generated_pair(50, 30, 44)
    for seed in range(12):
        image, mask = generated_pair(seed)
        out_image, out_mask = step(image.copy(), mask.copy(), ctx(seed, donor=lambda r: donor))
        assert out_image.dtype == np.uint8 and out_mask.dtype == np.uint8
        assert out_image.shape[:2] == out_mask.shape and out_image.shape[2] == 3
        assert set(np.unique(out_mask).tolist()) <= set(IDS) | {IGNORE}, name
        again = step(image, mask, ctx(seed, donor=lambda r: donor))  # inputs left as they were
        assert np.array_equal(again[0], out_image) and np.array_equal(again[1], out_mask)
        assert np.array_equal((image, mask)[1], generated_pair(seed)[1])
    gray, gray_mask = generated_pair(1, c=1)
    assert step(gray, gray_mask, ctx(0, donor=lambda r: (gray, gray_mask)))[0].shape[2] == 1


def _centroid(where: np.ndarray) -> np.ndarray:
    return np.argwhere(where).mean(axis=0)


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometry_moves_image_and_mask_alike(name):
    """The marked block lands at the same place in the image (bright pixels) and in the mask
    (class 3), whatever the step did to it."""
    step = one_step(spec_of(name))
    moved = 0
    for seed in range(10):
        image, mask = marked_pair()
        out_image, out_mask = step(image, mask, ctx(seed, out_hw=(40, 56)))
        if not (out_mask == 3).any():
            continue  # cropped away
        bright = out_image[..., 0] > 155
        assert np.abs(_centroid(bright) - _centroid(out_mask == 3)).max() <= 1.0, (name, seed)
        moved += not np.allclose(_centroid(out_mask == 3), (10.5, 42.5))
    assert moved > 0, f"{name} never moved the marked block"


def test_padding_is_ignore_index_and_gray():
    for name in ("Rotate", "Letterbox", "RandomCrop", "torchvision.RandomRotation"):
        step = one_step(spec_of(name))
        image, mask = marked_pair(20, 64)  # wide: rotations and letterbox leave borders
        out_image, out_mask = step(image, mask, ctx(3, out_hw=(64, 64)))
        assert (out_mask == IGNORE).any(), name
        assert not (out_mask == 0).any(), name  # 0 is a class id: never a fill value
        if not name.startswith("torchvision"):
            assert (out_image[out_mask == IGNORE] == 128).mean() > 0.8, name


@pytest.mark.parametrize(
    "name", ["HorizontalFlip", "VerticalFlip", "Rotate", "Rotate90", "GaussianBlur",
             "GaussianNoise", "Cutout", "HSVJitter", "PhotometricDistortion", "CopyPaste"],
)  # fmt: skip
def test_probability_holds_over_many_draws(name):
    step = one_step({**spec_of(name), "p": 0.3})
    image, mask = marked_pair()
    donor = (np.full((24, 32, 3), 9, np.uint8), np.full((24, 32), 2, np.uint8))
    rng, acted = np.random.default_rng(0), 0
    for _ in range(600):
        out_image, out_mask = step(image, mask, Context(rng, (48, 64), IGNORE, lambda r: donor))
        acted += not (np.array_equal(out_image, image) and np.array_equal(out_mask, mask))
    # PhotometricDistortion: p per operation (4): at least one acts with 1 - 0.7^4 = 0.76
    expected = 1 - 0.7**4 if name == "PhotometricDistortion" else 0.3
    assert abs(acted / 600 - expected) < 0.06, (name, acted / 600)


def test_photometric_distortion_matches_the_formula():
    """Brightness then contrast (coin says first) on a gray pixel: clip(clip(v + b) * a)."""
    step = aug.PhotometricDistortion(p=1.0, saturation_range=(1, 1), hue_delta=0)
    image = np.full((2, 2, 3), 100, np.uint8)
    rng = np.random.default_rng(4)
    draws = np.random.default_rng(4)
    beta = (draws.uniform(), draws.uniform(-32, 32))[1]
    draws.uniform()  # the coin: contrast first or last
    alpha = (draws.uniform(), draws.uniform(0.5, 1.5))[1]
    out, _ = step(image, np.zeros((2, 2), np.uint8), Context(rng, (2, 2)))
    value = np.clip(np.clip(100 + beta, 0, 255).astype(np.uint8) * alpha, 0, 255).astype(np.uint8)
    assert (out == value).all()  # either order: saturation and hue leave gray alone


def test_cat_max_ratio_avoids_crops_of_one_dominant_class():
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 48:] = 1  # class 1 only in the right quarter
    image = np.zeros((64, 64, 3), np.uint8)

    def mixed(step) -> float:
        rng = np.random.default_rng(0)
        outs = [step(image, mask, Context(rng, (16, 16)))[1] for _ in range(200)]
        return np.mean([len(np.unique(m)) > 1 for m in outs])

    assert mixed(aug.RandomCrop()) < 0.4
    assert mixed(aug.RandomCrop(cat_max_ratio=0.9)) > 0.8


# --------------------------------------------------------------------------- seeds
def _small_dataset(tmp_path: Path, preset: str = "strong"):
    cfg = compose_train(*TINY, f"dataset/augment={preset}", f"dataset.root={tmp_path}")
    return dataset_factory(cfg.dataset)(split="train", train=True)


def test_same_seed_same_samples_across_workers_and_resumes(tmp_path):
    ds = _small_dataset(tmp_path)
    ds.set_epoch(2)

    def batches(workers: int) -> list[list[torch.Tensor]]:
        return list(DataLoader(ds, batch_size=4, num_workers=workers))

    one, two = batches(0), batches(2)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    resumed = _small_dataset(tmp_path)  # a new process after a resume: same epoch, same samples
    resumed.set_epoch(2)
    image, mask = resumed[5]
    assert torch.equal(image, one[1][0][1]) and torch.equal(mask, one[1][1][1])
    ds.set_epoch(3)
    assert not torch.equal(ds[5][0], image)  # another epoch, other draws
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    one_step(spec_of("torchvision.RandomRotation"))(*marked_pair(), ctx(0))
    assert torch.rand(1) == before  # torchvision steps leave the global torch stream alone


# --------------------------------------------------------------------------- presets, training
def test_strong_preset_adds_vflip_rotation_photometric_and_trains(tmp_path):
    from segkit.run import train_rank

    cfg = compose_train(
        *TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "dataset/augment=strong"
    )
    check_train_config(cfg)
    assert list(cfg.dataset.augment.train) == [
        "copy_paste", "resize", "hflip", "crop", "hsv", "vflip", "rotate", "photometric",
    ]  # fmt: skip
    assert cfg.dataset.augment.train.resize.scale == [0.5, 1.5]  # demo.yaml still applies
    train_rank(cfg, tmp_path)
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    stored = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["config"]
    check_dataset_target(stored["dataset"])  # eval.py may rebuild it: steps are allowed
    bad = {**stored["dataset"], "augment": {"train": [{"_target_": "os.system"}]}}
    with pytest.raises(Exception, match="os.system"):
        check_dataset_target(bad)


def test_a_step_is_switched_off_or_added_from_the_command_line(tmp_path):
    blur = "+dataset.augment.train.blur={_target_: segkit.data.augment.GaussianBlur, p: 1.0}"
    cfg = compose_train(*TINY, "dataset.augment.train.hsv=null", blur, f"dataset.root={tmp_path}")
    ds = dataset_factory(cfg.dataset)(split="train", train=True)
    names = [name for name, _ in ds.pipeline.steps]
    assert names == ["copy_paste", "resize", "hflip", "crop", "blur"]
    as_list = [{"_target_": target("HorizontalFlip")}, {"_target_": target("RandomCrop")}]
    pipes = build_pipelines({"train": as_list}, NAMES, IGNORE)
    assert [n for n, _ in pipes["train"].steps] == ["[0]", "[1]"]
    assert [n for n, _ in pipes["val"].steps] == ["letterbox"]  # the default val list


# --------------------------------------------------------------------------- checks, messages
class Smear(v2.Transform):
    """A test transform that averages neighbours in every input, masks too."""

    def transform(self, inpt, params):
        x = inpt.as_subclass(torch.Tensor).float()
        return tv_tensors.wrap(((x + x.roll(1, -1)) / 2).to(torch.uint8), like=inpt)


TV = "torchvision.transforms"
BAD_STEPS = [  # (spec, what the message says)
    ({"_target_": target("Rotat")}, r"train\.s\._target_=.*has no 'Rotat'; did you mean Rotate"),
    ({"_target_": "nowhere.Flip"}, r"train\.s\._target_=nowhere\.Flip: cannot import nowhere"),
    (
        {"_target_": target("HorizontalFlip"), "prob": 1},
        r"train\.s: HorizontalFlip has no argument 'prob'; its arguments: \['p'\]",
    ),
    ({"_target_": target("Rotate"), "p": 2}, r"train\.s \(Rotate\): p must be in \[0, 1\], got 2"),
    ({"_target_": f"{TV}.ColorJitter"}, rf"transforms an image alone.*{TV}\.v2\.ColorJitter"),
    ({"_target_": f"{__name__}.Smear"}, r"would corrupt the masks: it turns mask ids .* into new"),
    (
        {"_target_": f"{TV}.v2.ToDtype", "dtype": torch.float32, "scale": True},
        r"would corrupt the masks: it fails.*uint8",
    ),
    ({"p": 0.5}, r"train\.s must be a step, a mapping with a _target_"),
    (
        {"_target_": target("CopyPaste"), "p": 0.5, "classes": ["pole"]},
        r"train\.s: .*holds \['pole'\].*nor class names \(c0, c1",
    ),
]


@pytest.mark.parametrize(("spec", "message"), BAD_STEPS)
def test_a_bad_step_is_one_message_naming_it(spec, message):
    with pytest.raises(DataError, match=message):
        build_pipeline({"s": spec}, "dataset.augment.train", NAMES, IGNORE)


def test_the_dataset_check_runs_the_lists_before_reading_files(tmp_path):
    """A list that does not end at the input size, or that turns a non-square crop a quarter:
    named by the dataset check, on generated pairs, before any file is read."""
    ds = _small_dataset(tmp_path, "default")
    for i in range(len(ds.files)):
        ds.files[i] = ("/nonexistent.png", "/nonexistent_mask.png")  # nothing may be read
    ds.pipelines["val"] = build_pipeline(
        {"hflip": {"_target_": target("HorizontalFlip")}}, "dataset.augment.val", NAMES, IGNORE
    )
    with pytest.raises(DataError, match=r"dataset\.augment\.val makes .* not the input size"):
        check_dataset(ds)
    ds.input_shape = (32, 24)
    turn_after_crop = {
        "crop": {"_target_": target("RandomCrop")},
        "turn": {"_target_": target("Rotate90"), "p": 1},
    }
    ds.pipelines = build_pipelines({"train": turn_after_crop}, NAMES, IGNORE)
    with pytest.raises(DataError, match=r"dataset\.augment\.train makes \(24, 32\) images"):
        check_dataset(ds)
