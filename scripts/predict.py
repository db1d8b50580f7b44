"""Segment your own images and videos with a trained model (see conf/predict.yaml, README.md).

    python scripts/predict.py ckpt=outputs/train/runs/<run>/checkpoints/best.pt \\
        input=photos/ out=photos_pred [mode=slide] [tta.flip=true] [tta.scales=[0.75,1,1.25]]
    python scripts/predict.py ckpt=model.onnx input=clip.mp4 out=clip_pred   # ONNX Runtime

Everything the model needs (classes, palette, mean/std, input size) comes from the checkpoint.
Writes into ``out`` only: ``masks/<name>.png`` (palette PNG of class ids at the size of the
image as displayed, EXIF rotation applied), ``overlays/<name>.jpg`` (image blended with the
class colours, legend of the classes present), ``videos/<name>.mp4`` (overlay video; masks of
every ``video.mask_every``-th frame in ``masks/<name>/frame_NNNNNN.png``), ``areas.csv``
(pixels per class per image or frame) and ``skipped.txt``. An input that cannot be read is
reported and skipped; exit code 1 only when no input could be read.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch import nn
from tqdm import tqdm

from segkit import dist
from segkit import precision as prec
from segkit.config.checks import check_command_line, check_slide
from segkit.data.base import LabelSpace
from segkit.data.io import VIDEO_SUFFIXES, list_inputs, read_image
from segkit.errors import CheckpointError, ConfigError, DataError, exit_on_error, run_task
from segkit.evaluation.logit_bias import stored_biases, with_bias
from segkit.evaluation.predictors import (
    check_scales,
    full_input,
    letterbox_input,
    parse_mode,
    predictor_for,
    restore_logits,
)
from segkit.run.models import (
    checkpoint_input_shape,
    checkpoint_labels,
    checkpoint_window,
    load_model,
)

log = logging.getLogger("segkit")
IGNORE_COLOUR = (255, 255, 255)
Segmenter = Callable[[list[np.ndarray]], list[np.ndarray]]


# --------------------------------------------------------------------------- model
def load(
    ckpt: str, spec: str = "whole"
) -> tuple[nn.Module, LabelSpace, tuple[int, int], tuple[int, int]]:
    """(model, label space, input_shape, default slide window) from a checkpoint / weights file
    or an ``.onnx``. The window is the training crop (`checkpoint_window`); an ``.onnx`` file
    exported before the window was stored falls back to its input size. A calibrated
    checkpoint's model adds the logit biases of the mode ``spec`` it is run in (a constant per
    class: the same before or after the flip / scale / window averaging)."""
    if Path(ckpt).suffix.lower() == ".onnx":
        from segkit.evaluation.onnx import OnnxModel

        model = OnnxModel(ckpt)
        if model.labels is None or model.input_shape is None:
            raise CheckpointError(
                f"{ckpt} lacks segkit's metadata (classes, input size): export it with "
                "scripts/export.py, or predict from the checkpoint"
            )
        shape = tuple(model.input_shape)
        return model, model.labels, shape, tuple(model.window or shape)
    model, meta = load_model(ckpt)
    labels = checkpoint_labels(meta)
    model = with_bias(model, stored_biases(meta, labels.num_classes, ckpt), spec)
    return model, labels, checkpoint_input_shape(meta), checkpoint_window(meta)


def mode_spec(cfg: DictConfig) -> str:
    """The one evaluation mode of ``eval.modes`` (``whole``, ``slide+flip+ms``, ...), checked
    with its ``eval.tta.scales``: predict writes one mask per image."""
    modes = cfg.eval.modes
    if isinstance(modes, str) or len(modes) != 1:
        raise ConfigError(
            f"eval.modes={modes}: predict runs one evaluation mode, e.g. eval.modes=[whole+flip]"
        )
    parse_mode(modes[0], "eval.modes")
    check_scales(cfg.eval.tta.scales, "eval.tta.scales")
    check_slide(cfg)
    return str(modes[0])


def make_segmenter(
    cfg: DictConfig, model: nn.Module, labels, input_shape, device, window=None
) -> Segmenter:
    """images ((H,W,3) uint8 RGB) -> (H,W) uint8 class-id masks at each image's size.
    ``slide`` windows: ``eval.slide.window``, else ``window`` (the training crop), else
    ``input_shape``."""
    predictor = predictor_for(
        mode_spec(cfg),
        model.to(device),
        window=cfg.eval.slide.window or window or input_shape,
        overlap=cfg.eval.slide.overlap,
        scales=tuple(cfg.eval.tta.scales),
        batch=cfg.loader.batch_size,
    )
    precision = prec.resolve_precision(cfg.precision, device)
    prec.warn_emulated_bf16(precision, device, "precision")
    amp = prec.amp_dtype(precision)
    whole = mode_spec(cfg).startswith("whole")

    @torch.no_grad()
    def run(x: torch.Tensor) -> torch.Tensor:
        with prec.autocast(device, amp):
            return predictor(x.to(device))["out"].float()

    def segment(images: list[np.ndarray]) -> list[np.ndarray]:
        if whole:  # one batch, letterboxed as in training, then undone
            x = torch.stack(
                [letterbox_input(im, input_shape, labels.mean, labels.std) for im in images]
            )
            logits = run(x)
            return [
                restore_logits(lg, input_shape, im.shape[:2]).argmax(0).byte().cpu().numpy()
                for lg, im in zip(logits, images)
            ]
        return [  # sliding: each image at its own size, the windows are batched
            run(full_input(im, labels.mean, labels.std)[None])[0].argmax(0).byte().cpu().numpy()
            for im in images
        ]

    return segment


# --------------------------------------------------------------------------- pictures
def colour_table(labels: LabelSpace) -> np.ndarray:
    """(256,3) uint8: class colours, white for everything else."""
    lut = np.full((256, 3), IGNORE_COLOUR, np.uint8)
    lut[: labels.num_classes] = np.asarray(labels.palette, np.uint8)
    return lut


def blend(image: np.ndarray, ids: np.ndarray, lut: np.ndarray, alpha: float) -> np.ndarray:
    """(H,W,3) uint8 image, (H,W) ids -> (H,W,3) uint8: ``(1-alpha) image + alpha colour``."""
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * lut[ids].astype(np.float32)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def draw_legend(image: np.ndarray, names: Sequence[str], colours: Sequence) -> None:
    """Draw, in place at the top left, a darkened box listing ``names`` with colour swatches
    (text scaled to the picture)."""
    if not names:
        return
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.3, min(image.shape[:2]) / 900)
    thick = max(1, round(scale * 1.5))
    sizes = [cv2.getTextSize(name, font, scale, thick)[0] for name in names]  # (w, h) each
    text_h = max(h for _, h in sizes)
    line, pad = int(text_h * 1.9) + 2, max(3, int(6 * scale))
    box_w = min(image.shape[1], 3 * pad + line + max(w for w, _ in sizes))
    box_h = min(image.shape[0], 2 * pad + line * len(names))
    image[:box_h, :box_w] = (image[:box_h, :box_w] * 0.35).astype(np.uint8)
    for k, (name, colour) in enumerate(zip(names, colours)):
        top, swatch = pad + k * line, line - 4
        cv2.rectangle(image, (pad, top), (pad + swatch, top + swatch), [int(c) for c in colour], -1)
        baseline = top + (swatch + text_h) // 2
        white = (255, 255, 255)
        cv2.putText(image, name, (2 * pad + line, baseline), font, scale, white, thick, cv2.LINE_AA)


def save_mask(ids: np.ndarray, labels: LabelSpace, path: Path) -> None:
    """(H,W) uint8 ids -> palette PNG (values = ids, colours = the class palette)."""
    im = Image.fromarray(ids, mode="P")
    im.putpalette(colour_table(labels).reshape(-1).tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


# --------------------------------------------------------------------------- outputs
class Outputs:
    """Everything ``predict`` writes under ``out``: masks, overlays, videos, areas.csv and the
    list of skipped inputs."""

    def __init__(self, out: Path, labels: LabelSpace, alpha: float, legend: bool) -> None:
        if not 0 <= alpha <= 1:
            raise ConfigError(f"overlay.alpha={alpha}: must be in [0, 1]")
        self.out, self.labels, self.alpha, self.legend = out, labels, float(alpha), legend
        self.lut = colour_table(labels)
        out.mkdir(parents=True, exist_ok=True)
        self._csv_file = open(out / "areas.csv", "w", newline="", encoding="utf-8")
        self.csv = csv.writer(self._csv_file)
        self.csv.writerow(["input", "height", "width", *labels.class_names])
        self.skipped: list[tuple[Path, str]] = []
        self.done = 0

    def overlay(self, image: np.ndarray, ids: np.ndarray) -> np.ndarray:
        picture = blend(image, ids, self.lut, self.alpha)
        if self.legend:
            present = [c for c in np.unique(ids) if c < self.labels.num_classes]
            names = [self.labels.class_names[c] for c in present]
            draw_legend(picture, names, [self.labels.palette[c] for c in present])
        return picture

    def areas(self, name: str, ids: np.ndarray) -> None:
        counts = np.bincount(ids.reshape(-1), minlength=256)[: self.labels.num_classes]
        self.csv.writerow([name, *ids.shape, *counts.tolist()])

    def image(self, name: str, image: np.ndarray, ids: np.ndarray) -> None:
        save_mask(ids, self.labels, self.out / "masks" / f"{name}.png")
        path = self.out / "overlays" / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.overlay(image, ids)).save(path, quality=90)
        self.areas(name, ids)
        self.done += 1

    def skip(self, path: Path, reason: object) -> None:
        log.warning("skipped %s: %s", path, reason)
        self.skipped.append((path, str(reason)))

    def close(self) -> None:
        self._csv_file.close()
        lines = "".join(f"{p}\t{reason}\n" for p, reason in self.skipped)
        (self.out / "skipped.txt").write_text(lines, encoding="utf-8")


def output_names(files: list[Path], roots: list[Path]) -> dict[Path, str]:
    """A unique output name per input: its path relative to the inputs' common folder without
    the suffix (with it where two inputs would share a name)."""
    base = Path(os.path.commonpath([str(r.resolve()) for r in roots]))
    rel = {f: f.resolve().relative_to(base).as_posix() for f in files}
    stems = [r.rsplit(".", 1)[0] for r in rel.values()]
    return {f: (s if stems.count(s) == 1 else r) for (f, r), s in zip(rel.items(), stems)}


def check_out(out: Path, roots: list[Path]) -> None:
    """``out`` must be neither a folder holding the inputs nor inside one."""
    target = out.expanduser().resolve()
    for root in (r.resolve() for r in roots):
        if target == root or root in target.parents:
            raise ConfigError(
                f"out={out} is {'the' if target == root else 'inside the'} input folder {root}: "
                "predict never writes into a folder holding its inputs; choose a folder outside "
                f"it, e.g. out={root.parent / (root.name + '_pred')}"
            )


# --------------------------------------------------------------------------- running
def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for k in range(0, len(items), max(1, size)):
        yield items[k : k + max(1, size)]


def run_images(files: list[Path], names: dict, segment: Segmenter, outputs: Outputs, cfg) -> None:
    """Read (skipping unreadable files), segment in batches of ``batch_size``, write."""
    per_call = cfg.loader.batch_size if mode_spec(cfg).startswith("whole") else 1
    bar = tqdm(total=len(files), desc="images", unit="img", disable=not cfg.progress_bar)
    for chunk in chunks(files, per_call):
        loaded = []
        for path in chunk:
            try:
                loaded.append((path, read_image(path)))
            except (DataError, OSError) as e:
                outputs.skip(path, e)
        if loaded:
            for (path, image), ids in zip(loaded, segment([im for _, im in loaded])):
                outputs.image(names[path], image, ids)
        bar.update(len(chunk))
    bar.close()


def read_frames(cap: cv2.VideoCapture, count: int) -> list[np.ndarray]:
    """Up to ``count`` next frames as (H,W,3) uint8 RGB."""
    frames = []
    while len(frames) < count:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(np.ascontiguousarray(frame[..., ::-1]))
    return frames


def run_video(path: Path, name: str, segment: Segmenter, outputs: Outputs, cfg) -> int:
    """Segment every frame: an overlay video, masks of every ``video.mask_every``-th frame,
    one areas.csv row per frame. -> frames done (0: skipped as unreadable)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        outputs.skip(path, "OpenCV cannot open it as a video")
        return 0
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    target = outputs.out / "videos" / f"{name}.mp4"
    target.parent.mkdir(parents=True, exist_ok=True)
    writer, index, every = None, 0, int(cfg.video.mask_every)
    bar = tqdm(total=total, desc=name, unit="frame", disable=not cfg.progress_bar)
    per_call = cfg.loader.batch_size if mode_spec(cfg).startswith("whole") else 1
    while frames := read_frames(cap, per_call):
        for frame, ids in zip(frames, segment(frames)):
            if writer is None:
                size = (frame.shape[1], frame.shape[0])
                writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
            writer.write(np.ascontiguousarray(outputs.overlay(frame, ids)[..., ::-1]))
            if every and index % every == 0:
                save_mask(
                    ids, outputs.labels, outputs.out / "masks" / name / f"frame_{index:06d}.png"
                )
            outputs.areas(f"{name}#{index}", ids)
            index += 1
        bar.update(len(frames))
    bar.close()
    cap.release()
    if writer is None:
        outputs.skip(path, "no frame could be decoded")
    else:
        writer.release()
    return index


def predict(cfg: DictConfig) -> int:
    """Load, list the inputs, check ``out``, segment images then videos; -> exit code."""
    files, roots = list_inputs(str(cfg.input))
    out = Path(cfg.out)
    check_out(out, roots)
    model, labels, input_shape, window = load(str(cfg.ckpt), mode_spec(cfg))
    onnx = Path(cfg.ckpt).suffix.lower() == ".onnx"  # ONNX Runtime runs on the CPU here
    device = torch.device("cpu") if onnx else dist.select_device(cfg.launch.accelerator, 0)
    segment = make_segmenter(cfg, model, labels, input_shape, device, window)
    names = output_names(files, roots)
    videos = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
    images = [f for f in files if f not in set(videos)]
    outputs = Outputs(out, labels, cfg.overlay.alpha, cfg.overlay.legend)
    t0, frames = time.perf_counter(), 0
    try:
        run_images(images, names, segment, outputs, cfg)
        for video in videos:
            frames += run_video(video, names[video], segment, outputs, cfg)
    finally:
        outputs.close()
    seconds = time.perf_counter() - t0
    done = outputs.done + frames
    log.info(
        "%d images and %d video frames segmented in %.1f s (%.2f per s) -> %s; %d skipped%s",
        outputs.done, frames, seconds, done / max(seconds, 1e-9), out, len(outputs.skipped),
        f" (listed in {out / 'skipped.txt'})" if outputs.skipped else "",
    )  # fmt: skip
    if not done:
        raise DataError(f"input={cfg.input}: none of the {len(files)} inputs could be read")
    return 0


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    sys.exit(run_task(predict, cfg))


if __name__ == "__main__":
    exit_on_error(check_command_line, "predict", sys.argv[1:])
    main()
