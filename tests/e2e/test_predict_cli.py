"""scripts/predict.py on the user's own images and videos (every image mode and format, the
sliding window and TTA options) and eval.py on a folder of plain images, the way users run
them: neither writes into its input folders (the predictors in-process:
tests/unit/test_inference.py)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from segkit.data.demo import DemoDataset, make_demo_sample
from segkit.errors import ConfigError, DataError
from tests.conftest import run_cli


# --------------------------------------------------------------------------- predict
@pytest.fixture
def demo_ckpt(tiny_run: Path) -> Path:
    """A UNet trained on the tiny demo set, once per session (tests/conftest.py): its best
    checkpoint."""
    return tiny_run / "checkpoints" / "best.pt"


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (and folder) under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(folder.rglob("*"))
    }


def make_mixed_folder(folder: Path) -> dict[str, tuple[int, int]]:
    """Images in many modes and formats; -> output name: displayed (H, W)."""
    (folder / "sub").mkdir(parents=True)
    rgb, _ = make_demo_sample(0, (45, 70))
    Image.fromarray(rgb[..., 0]).save(folder / "gray.png")  # L
    Image.fromarray(np.dstack([rgb[:30, :50], np.full((30, 50), 200, np.uint8)])).save(
        folder / "rgba.png"
    )
    Image.fromarray(rgb[:33, :47, 1].astype(np.uint16) * 257).save(folder / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 70 wide x 45 high, displayed rotated: 45 wide x 70 high
    Image.fromarray(rgb).save(folder / "phone.jpg", exif=exif, quality=95)
    Image.fromarray(rgb[:40, :36]).convert("CMYK").save(folder / "print.jpg", quality=95)
    Image.fromarray(rgb[:21, :64]).save(folder / "sub" / "wide.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "notes.txt").write_text("not an image")
    writer = cv2.VideoWriter(str(folder / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (48, 32))
    for i in range(3):
        writer.write(np.ascontiguousarray(make_demo_sample(i, (32, 48))[0][..., ::-1]))
    writer.release()
    return {
        "gray": (45, 70),
        "rgba": (30, 50),
        "deep16": (33, 47),
        "phone": (70, 45),
        "print": (40, 36),
        "sub/wide": (21, 64),
    }


def check_outputs(out: Path, sizes: dict[str, tuple[int, int]]) -> None:
    for name, hw in sizes.items():
        mask = Image.open(out / "masks" / f"{name}.png")
        assert mask.mode == "P" and (mask.height, mask.width) == hw, name
        assert np.asarray(mask).max() < 5  # demo class ids
        overlay = Image.open(out / "overlays" / f"{name}.jpg")
        assert (overlay.height, overlay.width) == hw
    with open(out / "areas.csv", newline="") as f:
        rows = {r["input"]: r for r in csv.DictReader(f)}
    classes = ["background", "circle", "rectangle", "triangle", "cross"]
    for name, (h, w) in sizes.items():
        row = rows[name]
        assert (int(row["height"]), int(row["width"])) == (h, w)
        assert sum(int(row[c]) for c in classes) == h * w
    assert [k for k in rows if k.startswith("clip#")] == ["clip#0", "clip#1", "clip#2"]
    skipped = (out / "skipped.txt").read_text()
    assert "broken.png" in skipped and "notes.txt" not in skipped
    video = cv2.VideoCapture(str(out / "videos" / "clip.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert (video.get(cv2.CAP_PROP_FRAME_HEIGHT), video.get(cv2.CAP_PROP_FRAME_WIDTH)) == (32, 48)
    assert sorted(p.name for p in (out / "masks" / "clip").iterdir()) == [
        f"frame_{i:06d}.png" for i in range(3)
    ]


@pytest.mark.parametrize(
    "options",
    [
        (),
        (
            "eval.modes=[slide+flip+ms]",
            "eval.slide.window=[24,24]",
            "eval.tta.scales=[0.75,1.0]",
            "precision=auto",
        ),
    ],
)
def test_predict_folder_of_mixed_images(demo_ckpt, tmp_path, options):
    images = tmp_path / "images"
    sizes = make_mixed_folder(images)
    before = snapshot(images)
    out = tmp_path / "pred"
    args = [f"ckpt={demo_ckpt}", f"input={images}", f"out={out}", "progress_bar=false"]
    result = run_cli("scripts/predict.py", *args, *options, "loader.batch_size=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr + result.stdout and "broken.png" in result.stdout
    check_outputs(out, sizes)
    assert snapshot(images) == before


def test_predict_refuses_to_write_into_the_input_folder(demo_ckpt, tmp_path):
    images = tmp_path / "images"
    make_mixed_folder(images)
    before = snapshot(images)
    for out in (images, images / "pred"):
        args = [f"ckpt={demo_ckpt}", f"input={images}", f"out={out}"]
        result = run_cli("scripts/predict.py", *args, cwd=tmp_path)
        assert result.returncode == ConfigError.exit_code
        assert f"input folder {images}" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(images) == before


def test_eval_on_a_folder_of_plain_images_stops_and_leaves_it_unchanged(demo_ckpt, tmp_path):
    images = tmp_path / "my_images"
    make_mixed_folder(images)
    before = snapshot(images)
    result = run_cli("eval.py", f"ckpt={demo_ckpt}", f"dataset_root={images}", cwd=tmp_path)
    assert result.returncode == DataError.exit_code
    assert f"dataset.root={images} is not a demo cache folder" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(images) == before
    with pytest.raises(DataError, match="not a demo cache folder"):
        DemoDataset(root=images, split="val", num_train=4, num_val=2, image_size=(32, 32))
    assert snapshot(images) == before
