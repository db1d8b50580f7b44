"""Export a trained model to ONNX, run the exported file, and check it against PyTorch.

The exported graph maps ``images (N,C_in,H,W)`` float32 (normalised as in training; C_in the
run's ``in_channels``, 1 for gray) to ``logits (N,C,H,W)``, with N, H and W dynamic.
``exporter="dynamo"`` goes through ``torch.export``; ``"legacy"`` through the TorchScript
tracer. Either way a model that tests a size in Python (``if h % 16: pad``) is silently frozen
at the example's size, so every export is followed by :func:`parity_check` on real images at
several sizes, the export size among them and others that are not multiples of 32. The label
space and input size travel in the file's metadata (``segkit.*`` keys), so
``scripts/predict.py ckpt=model.onnx`` needs nothing else.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from segkit.data.base import LabelSpace
from segkit.errors import CheckpointError, ConfigError
from segkit.evaluation.predictors import full_input

log = logging.getLogger("segkit")

EXPORTERS = ("dynamo", "legacy")
EXAMPLE_BATCH = 2  # torch.export specialises dimensions of size 0 and 1: use 2
INPUT, OUTPUT = "images", "logits"
META_LABELS, META_SHAPE, META_MODEL = "segkit.labels", "segkit.input_shape", "segkit.model"
META_WINDOW = "segkit.window"  # the default sliding window: the training crop
ONNX_HINT = 'needs onnxruntime and onnx: pip install -e ".[onnx]"'


class LogitsOnly(nn.Module):
    """``model(images)["out"]``: a graph returns tensors, not dicts."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["out"]


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example_hw: Sequence[int],
    *,
    exporter: str = "dynamo",
    dynamic: bool = True,
    opset: int = 18,
    in_channels: int = 3,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model`` (eval mode, CPU) as one ONNX file traced on a random
    ``(EXAMPLE_BATCH, in_channels, *example_hw)`` input; batch, height and width dynamic unless
    ``dynamic=False`` (a static export, only right at ``example_hw``). Returns ``path``."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter={exporter!r}: choose one of {list(EXPORTERS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = LogitsOnly(model).eval().cpu()
    example = torch.randn(EXAMPLE_BATCH, in_channels, *(int(v) for v in example_hw))
    names = dict(input_names=[INPUT], output_names=[OUTPUT], opset_version=opset)
    for chatty in ("onnx_ir", "onnxscript", "torch.onnx"):  # pass-by-pass INFO lines
        logging.getLogger(chatty).setLevel(logging.WARNING)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer / deprecation chatter; parity is the judge
        if exporter == "dynamo":
            dim = torch.export.Dim.DYNAMIC
            shapes = {INPUT: {0: dim, 2: dim, 3: dim}} if dynamic else None
            torch.onnx.export(
                wrapped, (example,), str(path), dynamo=True, dynamic_shapes=shapes,
                external_data=False, verbose=False, **names,
            )  # fmt: skip
        else:
            axes = {n: {0: "batch", 2: "height", 3: "width"} for n in (INPUT, OUTPUT)}
            torch.onnx.export(
                wrapped, (example,), str(path), dynamo=False,
                dynamic_axes=axes if dynamic else None, **names,
            )  # fmt: skip
    if metadata:
        set_metadata(path, metadata)
    return path


def export_metadata(
    labels: LabelSpace,
    input_shape: Sequence[int],
    model_target: str,
    window: Sequence[int] | None = None,
) -> dict:
    """The ``segkit.*`` metadata entries of an exported file (JSON strings): the label space,
    the input size of ``whole`` and the default ``slide`` window (when given)."""
    meta = {
        META_LABELS: json.dumps(labels.to_dict()),
        META_SHAPE: json.dumps([int(v) for v in input_shape]),
        META_MODEL: str(model_target),
    }
    if window is not None:
        meta[META_WINDOW] = json.dumps([int(v) for v in window])
    return meta


def set_metadata(path: Path, metadata: Mapping[str, str]) -> None:
    """Add string entries to an ONNX file's ``metadata_props`` (rewrites the file)."""
    onnx = _import("onnx")
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {str(k): str(v) for k, v in metadata.items()})
    onnx.save(proto, str(path))


def _import(name: str):
    try:
        return __import__(name)
    except ImportError as e:
        raise ConfigError(f"ONNX export / backend=onnx {ONNX_HINT} ({e})") from e


# --------------------------------------------------------------------------- running a file
class OnnxModel(nn.Module):
    """An exported ``.onnx`` file under ONNX Runtime (CPU) with the model contract:
    ``forward(x (N,C_in,H,W)) -> {"out": (N,C,H,W) logits}`` on x's device. ``labels``,
    ``input_shape`` and ``window`` come from the file's ``segkit.*`` metadata (None when
    absent; files exported before the window was stored lack it)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        ort = _import("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"ONNX file not found: {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own types for bad files
            raise CheckpointError(f"{self.path} is not a readable ONNX model: {e}") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        self.labels = (
            LabelSpace.from_dict(json.loads(meta[META_LABELS])) if META_LABELS in meta else None
        )
        self.input_shape = tuple(json.loads(meta[META_SHAPE])) if META_SHAPE in meta else None
        self.window = tuple(json.loads(meta[META_WINDOW])) if META_WINDOW in meta else None
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feed = {self.input_name: x.detach().float().cpu().numpy()}
        out = self.session.run(None, feed)[0]
        return {"out": torch.from_numpy(out).to(x.device)}


# --------------------------------------------------------------------------- parity
@dataclass
class ParityRow:
    """One input size: ``max_abs`` logit difference, the largest reference ``|logit|``, the
    share of pixels whose argmax differs, and the error when the export could not run."""

    size: tuple[int, int]
    max_abs: float = math.inf
    scale: float = 0.0
    argmax_share: float = 1.0
    error: str = ""

    @property
    def relative(self) -> float:
        """max_abs relative to the logits' range (floor 1, so tiny logits use absolute)."""
        return self.max_abs / max(1.0, self.scale)


@dataclass
class ParityReport:
    """Parity of an export at several sizes; ``passed`` when every size is within both
    tolerances (relative logit difference, share of changed pixels)."""

    rows: list[ParityRow] = field(default_factory=list)
    logit_tol: float = 1e-3
    pixel_tol: float = 1e-3
    export_hw: tuple[int, int] | None = None

    def row_ok(self, row: ParityRow) -> bool:
        return (
            not row.error and row.relative <= self.logit_tol and row.argmax_share <= self.pixel_tol
        )

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(self.row_ok(r) for r in self.rows)

    def format(self) -> str:
        """A table: size, max |diff|, max |logit|, relative diff, % pixels changed, verdict."""
        lines = [
            f"{'size (HxW)':>14} {'max|diff|':>10} {'max|logit|':>10} {'relative':>9} "
            f"{'pixels changed':>15}  verdict"
        ]
        for r in self.rows:
            tag = " (export size)" if r.size == self.export_hw else ""
            size = f"{r.size[0]}x{r.size[1]}"
            verdict = "ok" if self.row_ok(r) else "FAIL"
            if r.error:
                lines.append(f"{size:>14} {'-':>10} {'-':>10} {'-':>9} {'-':>15}  FAIL: {r.error}")
                continue
            lines.append(
                f"{size:>14} {r.max_abs:10.2e} {r.scale:10.2f} {r.relative:9.1e} "
                f"{100 * r.argmax_share:14.4f}%  {verdict}{tag}"
            )
        lines.append(
            f"tolerance: relative logit difference <= {self.logit_tol:g}, "
            f"pixels changed <= {100 * self.pixel_tol:g}%"
        )
        return "\n".join(lines)


def parity_inputs(
    images: Sequence[np.ndarray], hw: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(N,3,h,w) normalised batch: every (H,W,3) uint8 image resized to ``hw`` (bilinear)."""
    h, w = int(hw[0]), int(hw[1])
    resized = [cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR) for img in images]
    return torch.stack([full_input(img, mean, std) for img in resized])


@torch.no_grad()
def compare_at(reference: nn.Module, candidate: nn.Module, x: torch.Tensor) -> ParityRow:
    """Run both on ``x``; a candidate that fails or returns another shape is a failed row."""
    size = (int(x.shape[-2]), int(x.shape[-1]))
    ref = reference(x)["out"].float()
    try:
        got = candidate(x)["out"].float()
    except Exception as e:  # e.g. ONNX Runtime refusing a size a static export does not take
        return ParityRow(size, error=f"the export cannot run at this size: {str(e)[:200]}")
    if got.shape != ref.shape:
        return ParityRow(size, error=f"output {tuple(got.shape)}, PyTorch {tuple(ref.shape)}")
    max_abs = float((got - ref).abs().max())
    share = float((got.argmax(1) != ref.argmax(1)).float().mean())
    return ParityRow(size, max_abs, float(ref.abs().max()), share)


def parity_check(
    reference: nn.Module,
    candidate: nn.Module,
    images: Sequence[np.ndarray],
    sizes: Sequence[Sequence[int]],
    labels: LabelSpace,
    *,
    logit_tol: float = 1e-3,
    pixel_tol: float = 1e-3,
    export_hw: Sequence[int] | None = None,
) -> ParityReport:
    """Compare ``candidate`` (e.g. `OnnxModel`) with the PyTorch ``reference`` on ``images``
    ((H,W,3) uint8 RGB, normalised with ``labels.mean/std``) resized to each of ``sizes``."""
    if not images:
        raise ConfigError("parity check: no images to compare on")
    report = ParityReport(logit_tol=float(logit_tol), pixel_tol=float(pixel_tol))
    report.export_hw = tuple(int(v) for v in export_hw) if export_hw is not None else None
    reference.eval()
    for hw in sizes:
        x = parity_inputs(images, hw, labels.mean, labels.std)
        report.rows.append(compare_at(reference, candidate, x))
    return report


def default_parity_sizes(export_hw: Sequence[int]) -> list[tuple[int, int]]:
    """The export size, then sizes that are neither it nor multiples of 32 (odd ones too)."""
    h, w = int(export_hw[0]), int(export_hw[1])
    sizes = [(h, w), (200, 300), (97, 61), (h + 45, w + 75)]
    return list(dict.fromkeys(sizes))


def model_target(config: Mapping[str, Any]) -> str:
    """The ``_target_`` of a run config's model (for the metadata)."""
    return str(config.get("model", {}).get("_target_", "?"))
