"""How a run is shown: coloured masks and overlays, the validation sample grid, the labelled
confusion matrix, per-class IoU bars, training curves, the evaluation report
(:func:`write_eval_report`), palette PNGs; and the TensorBoard layouts (custom-scalars charts,
the HParams experiment). :mod:`segkit.reporting.tracker` decides when and where they are written.

:class:`SampleCollector` keeps a few validation samples as numpy arrays for the pictures.
Figures are matplotlib ``Figure`` objects on the Agg canvas (no pyplot state, no display):
``SummaryWriter.add_figure`` renders them, :func:`save_figure` writes them as PNG.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from PIL import Image

from segkit.data.transforms import letterbox_geometry
from segkit.evaluation.metrics import format_table

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn (trainer.figures=false: never)
    from matplotlib.figure import Figure

IGNORE_COLOUR = (255, 255, 255)
DPI = 100
PANEL_PX = 288  # the shorter side of one sample picture in the grid: small inputs are upscaled
MAX_ANNOTATED = 30  # classes up to which the confusion matrix shows its values in the cells

# the metrics the HParams tab shows per run: the last value of each of these scalar tags
# (val/calibrated_mIoU: best.pt with its class priors calibrated, once at the end)
CALIBRATED_TAG = "val/calibrated_mIoU"
HPARAM_METRICS = (
    "val/best_mIoU",
    CALIBRATED_TAG,
    "val/mIoU",
    "val/pixel_acc",
    "val/loss",
    "train/loss_epoch",
)
# custom-scalars charts (category, title, tag regexes); other tags get one chart each
LAYOUT = (
    ("loss", "train vs val loss", (r"^train/loss$", r"^train/loss_epoch$", r"^val/loss$")),
    ("loss", "learning rate", (r"^train/lr$",)),
    (
        "val",
        "mIoU and pixel accuracy",
        (r"^val/mIoU$", r"^val/best_mIoU$", r"^val/calibrated_mIoU$", r"^val/pixel_acc$"),
    ),
    ("val", "per-class IoU", (r"^val_iou/",)),
)


class SampleCollector:
    """Keeps the first ``limit`` validation samples of a pass on the CPU for pictures.

    Called by :func:`segkit.evaluation.metrics.evaluate` as ``on_batch(images, masks, pred)``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __call__(self, images: torch.Tensor, masks, pred) -> None:
        for img, m, p in zip(images, masks, pred):
            if len(self.samples) >= self.limit:
                return
            image = img.float().cpu().numpy()
            if image.shape[1:] != tuple(m.shape):  # original-size mask: undo the letterbox
                image = unletterbox(image, tuple(m.shape))
            self.samples.append((image, m.cpu().numpy(), p.cpu().numpy()))


def unletterbox(image: np.ndarray, orig_hw: tuple[int, int]) -> np.ndarray:
    """(C,h,w) letterboxed model input -> (C,H0,W0): the padding cropped, resized back."""
    nh, nw, top, left = letterbox_geometry(orig_hw, image.shape[1:])
    crop = image[:, top : top + nh, left : left + nw].transpose(1, 2, 0)
    back = cv2.resize(crop, (orig_hw[1], orig_hw[0]), interpolation=cv2.INTER_LINEAR)
    return back.reshape(*orig_hw, -1).transpose(2, 0, 1)


def colorize(mask: np.ndarray, palette: list[list[int]], ignore_index: int = 255) -> np.ndarray:
    """(H,W) integer ids -> (H,W,3) uint8 RGB; ids outside the palette (ignore) are white."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:] = IGNORE_COLOUR
    for i, colour in enumerate(palette[:256]):
        lut[i] = colour
    lut[ignore_index % 256] = IGNORE_COLOUR
    return lut[np.clip(mask, 0, 255).astype(np.uint8)]


def denormalize(image: np.ndarray, mean, std) -> np.ndarray:
    """(3,H,W) or (1,H,W) float normalised as (x/255 - mean)/std -> (H,W,3) uint8 RGB (a
    single channel is repeated)."""
    img = image.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    img = np.broadcast_to(img, (*img.shape[:2], 3))
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def overlay(
    image: np.ndarray, mask: np.ndarray, palette: list[list[int]], ignore_index: int = 255
) -> np.ndarray:
    """(H,W,3) uint8 image + (H,W) ids -> the image blended 50/50 with the class colours;
    ``ignore_index`` pixels white."""
    blend = 0.5 * image.astype(np.float32) + 0.5 * colorize(mask, palette, ignore_index)
    out = blend.astype(np.uint8)
    out[mask == ignore_index] = IGNORE_COLOUR
    return out


def new_figure(width_in: float, height_in: float) -> Figure:
    """A pyplot-free figure on the Agg canvas (``width_in`` x ``height_in`` inches at DPI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """``fig`` as a PNG at ``path`` (parents made); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def class_legend(fig: Figure, class_names: Sequence[str], palette: list[list[int]]) -> None:
    """Class-colour swatches (and white = ignore) under the axes of ``fig``."""
    from matplotlib.patches import Patch

    colours = [*(np.asarray(c) / 255.0 for c in palette), np.asarray(IGNORE_COLOUR) / 255.0]
    names = [*class_names, "ignore"]
    handles = [Patch(facecolor=c, edgecolor="black", label=n) for n, c in zip(names, colours)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False)


def sample_grid(
    samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    palette: list[list[int]],
    ignore_index: int = 255,
) -> Figure:
    """One row per sample: image | ground truth over the image | prediction over the image,
    each drawn with its shorter side at about ``PANEL_PX`` pixels (nearest-neighbour upscale,
    so small inputs stay sharp), column titles on top and a class-colour legend underneath.

    ``samples``: (image (H,W,3) uint8 RGB, label (H,W) ids, prediction (H,W) ids) triples.
    """
    h, w = samples[0][0].shape[:2]
    scale = PANEL_PX / min(h, w)
    panel_w, panel_h = w * scale / DPI, h * scale / DPI
    shown = legend_classes(samples, len(class_names), ignore_index)
    legend_rows = math.ceil((len(shown) + 1) / 6)
    top, bottom = 0.4, 0.3 + 0.3 * legend_rows  # inches for the titles and the legend
    fig = new_figure(3 * panel_w + 0.4, len(samples) * (panel_h + 0.1) + top + bottom)
    axes = fig.subplots(len(samples), 3, squeeze=False)
    height = fig.get_figheight()
    fig.subplots_adjust(0.02, bottom / height, 0.98, 1 - top / height, wspace=0.04, hspace=0.04)
    for row, (image, label, pred) in zip(axes, samples):
        over = [overlay(image, m, palette, ignore_index) for m in (label, pred)]
        for ax, picture in zip(row, (image, *over)):
            # nearest keeps upscaled class borders sharp; antialiased for large inputs shrunk
            ax.imshow(picture, interpolation="nearest" if scale >= 1 else "antialiased")
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, title in zip(axes[0], ("image", "ground truth", "prediction")):
        ax.set_title(title, fontsize=12)
    class_legend(fig, [class_names[i] for i in shown], [palette[i] for i in shown])
    return fig


def legend_classes(
    samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], n: int, ignore_index: int
) -> list[int]:
    """The classes the legend lists: all of them up to ``MAX_ANNOTATED`` classes; beyond
    (ADE20K's 150, COCO-Stuff's 171) those that appear in the shown labels or predictions."""
    if n <= MAX_ANNOTATED:
        return list(range(n))
    ids = np.unique(np.concatenate([np.unique(m) for _, *masks in samples for m in masks]))
    return [int(i) for i in ids if i != ignore_index and 0 <= i < n]


def normalize_rows(mat: np.ndarray) -> np.ndarray:
    """(C,C) counts -> each row divided by its sum (rows without pixels stay 0)."""
    mat = np.asarray(mat, np.float64)
    rows = mat.sum(axis=1, keepdims=True)
    return np.divide(mat, rows, out=np.zeros_like(mat), where=rows > 0)


def confusion_figure(mat: np.ndarray, class_names: Sequence[str], title: str = "") -> Figure:
    """(C,C) counts (rows = label, cols = prediction) -> the row-normalised matrix: each row
    shows where the pixels of one true class went. Class names on both axes, the share in each
    cell (up to ``MAX_ANNOTATED`` classes) and a colour bar."""
    norm = normalize_rows(mat)
    n = len(class_names)
    side = min(4.0 + 0.45 * n, 24.0)
    fig = new_figure(side + 1.5, side)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's pixels")
    font = max(5.0, min(10.0, 160.0 / n))
    ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right", fontsize=font)
    ax.set_yticks(range(n), labels=list(class_names), fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix (row-normalised)")
    if n <= MAX_ANNOTATED:
        for i in range(n):
            for j in range(n):
                colour = "white" if norm[i, j] > 0.5 else "black"
                text = f"{norm[i, j]:.2f}"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=0.9 * font)
    fig.tight_layout()
    return fig


def iou_bar_figure(
    iou: Sequence[float], class_names: Sequence[str], palette: list[list[int]], title: str = ""
) -> Figure:
    """Per-class IoU as horizontal bars in the class colours, the value at the end of each bar
    (``n/a`` for a class absent from labels and predictions, NaN); the mIoU as a dashed line."""
    values = np.asarray(iou, np.float64)
    n = len(class_names)
    fig = new_figure(7.0, 1.2 + 0.35 * n)
    ax = fig.add_subplot()
    y = np.arange(n)
    colours = [np.asarray(c) / 255.0 for c in palette]
    ax.barh(y, np.nan_to_num(values), color=colours, edgecolor="black")
    for yi, v in zip(y, values):
        missing = math.isnan(v)
        ax.text(0.01 if missing else v + 0.01, yi, "n/a" if missing else f"{v:.3f}", va="center")
    if np.isfinite(values).any():
        miou = float(np.nanmean(values))
        ax.axvline(miou, color="grey", linestyle="--", label=f"mIoU {miou:.3f}")
        ax.legend(loc="lower right")
    ax.set_yticks(y, labels=list(class_names))
    ax.invert_yaxis()  # class 0 on top, as in the tables
    ax.set_xlim(0.0, 1.1)
    ax.set_xlabel("IoU")
    ax.set_title(title or "per-class IoU")
    fig.tight_layout()
    return fig


def curves_figure(rows: Sequence[dict]) -> Figure:
    """Training curves over epochs from ``metrics.csv`` rows (values as numbers, strings or
    empty): train / val loss, val mIoU and pixel accuracy, learning rate."""
    from matplotlib.ticker import MaxNLocator

    def column(key: str) -> np.ndarray:
        return np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])

    epochs = column("epoch")
    fig = new_figure(13.0, 4.0)
    loss_ax, score_ax, lr_ax = fig.subplots(1, 3)
    panels = (
        (loss_ax, "loss", (("train_loss", "train"), ("val_loss", "val"))),
        (score_ax, "val score", (("miou", "mIoU"), ("pixel_acc", "pixel accuracy"))),
        (lr_ax, "learning rate (epoch start)", (("lr", "lr"),)),
    )
    for ax, title, series in panels:
        for key, label in series:
            values = column(key)
            seen = ~np.isnan(values)
            ax.plot(epochs[seen], values[seen], marker="o", label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend()
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    fig.tight_layout()
    return fig


def write_eval_report(
    out_dir: Path,
    metrics: dict,
    class_names: list[str],
    palette: list[list[int]],
    *,
    epoch: int | None = None,
) -> list[Path]:
    """confusion_matrix.png (row-normalised, labelled), per_class_iou.png and metrics.txt
    (:func:`segkit.evaluation.metrics.format_table`) into ``out_dir``. ``metrics``:
    ``ConfusionMatrix.compute()`` plus ``"confusion"`` ((C,C) counts). Returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    when = f", epoch {epoch}" if epoch is not None else ""
    conf = confusion_figure(metrics["confusion"], class_names, f"confusion (row-normalised){when}")
    bars = iou_bar_figure(metrics["iou"], class_names, palette, f"per-class IoU{when}")
    return [
        save_figure(conf, out_dir / "confusion_matrix.png"),
        save_figure(bars, out_dir / "per_class_iou.png"),
        write_metrics_text(out_dir, metrics, class_names),
    ]


def write_metrics_text(out_dir: Path, metrics: dict, class_names: list[str]) -> Path:
    """``out_dir/metrics.txt``: the per-class table and the means
    (:func:`segkit.evaluation.metrics.format_table`). Returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = out_dir / "metrics.txt"
    text.write_text(format_table(metrics, class_names) + "\n")
    return text


# --------------------------------------------------------------------------- TensorBoard layout
def hparams_summaries(
    hp: dict[str, Any], varied: Iterable[str], metrics: Sequence[str] = HPARAM_METRICS
) -> list:
    """The HParams plugin's experiment, session start and session end summaries. The metrics
    are the last values of the ``metrics`` scalar tags (no single-point hparam/ charts);
    ``varied`` hparams are marked as differing, which the tab sorts first and shows."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from torch.utils.tensorboard.summary import hparams

    _, start, end = hparams(hp, dict.fromkeys(metrics, 0.0))  # metric values unused

    def kind(v: Any) -> int:
        if isinstance(v, bool):
            return api_pb2.DATA_TYPE_BOOL
        return api_pb2.DATA_TYPE_FLOAT64 if isinstance(v, int | float) else api_pb2.DATA_TYPE_STRING

    varied = set(varied)
    infos = [api_pb2.HParamInfo(name=k, type=kind(v), differs=k in varied) for k, v in hp.items()]
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t)) for t in metrics]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos)
    data = plugin_data_pb2.HParamsPluginData(
        experiment=experiment, version=metadata.PLUGIN_DATA_VERSION
    )
    plugin = SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=data.SerializeToString()
    )
    value = Summary.Value(tag=metadata.EXPERIMENT_TAG, metadata=SummaryMetadata(plugin_data=plugin))
    return [Summary(value=[value]), start, end]


def custom_layout(tags: Iterable[str]) -> dict[str, dict[str, list]]:
    """The custom-scalars layout ``{category: {chart: ["Multiline", [regex, ...]]}}`` of the
    charts in ``LAYOUT`` whose tags exist, then one chart per remaining tag, grouped by its
    prefix (throughput, timings, ... logged by the trainer)."""
    tags = set(tags) - {"val/epoch"}
    layout: dict[str, dict[str, list]] = {}
    covered: set[str] = set()
    for category, title, patterns in LAYOUT:
        hits = {t for t in tags if any(re.search(p, t) for p in patterns)}
        if hits:
            layout.setdefault(category, {})[title] = ["Multiline", list(patterns)]
            covered |= hits
    for tag in sorted(tags - covered):
        category = tag.split("/")[0] if "/" in tag else "other"
        layout.setdefault(category, {})[tag] = ["Multiline", [f"^{re.escape(tag)}$"]]
    return layout


def save_palette_png(ids: np.ndarray, palette: list[list[int]], path: Path) -> None:
    """(H,W) class ids -> a palette ("P" mode) PNG: pixel values are the ids, colours the
    palette (ids past the palette are white)."""
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    flat = [v for colour in palette for v in colour]
    im.putpalette(flat + [255, 255, 255] * (256 - len(palette)))
    im.save(path)


class PredictionWriter:
    """``on_batch`` hook of :func:`segkit.evaluation.metrics.evaluate`: saves each prediction as a
    palette PNG named after its image (``files[i][0]``), in dataset order, into ``folder``."""

    def __init__(self, files: list, palette: list[list[int]], folder: Path) -> None:
        self.files, self.palette, self.folder, self.index = files, palette, folder, 0
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, images, masks, preds) -> None:
        for pred in preds:
            stem = Path(self.files[self.index][0]).stem
            save_palette_png(pred.cpu().numpy(), self.palette, self.folder / f"{stem}.png")
            self.index += 1
