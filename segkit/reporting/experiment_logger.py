"""The interface every experiment logger (TensorBoard, MLflow, W&B) implements, and what a
logger learns at run time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class RunContext:
    """What a logger learns at run time (the rest comes from its ``conf/logger`` node).

    ``run_id``: this logger's run from the checkpoint a run resumes (None: a new run);
    ``group``: the sweep a multirun job belongs to (its sweep folder), else None; ``name``:
    the run's name (the run folder's name); ``tags``: plain strings shown beside the run."""

    run_dir: Path
    start_step: int = 0
    run_id: str | None = None
    group: str | None = None
    name: str = ""
    tags: dict[str, str] = field(default_factory=dict)


class ExperimentLogger(Protocol):
    """The one interface the Tracker talks to; one module per backend implements it.

    Names are TensorBoard's (``train/loss``, ``val/mIoU``, ``val_iou/<class>``) for every
    backend. No method raises because a server is unreachable: the backend warns once, keeps
    what it could not send, and :meth:`close` returns how to send it."""

    name: str  # "tensorboard", "mlflow", "wandb": the key in ``logger`` and in the checkpoint
    run_id: str | None  # kept in the checkpoint, so a resumed run continues this run

    def log_params(self, params: dict[str, Any]) -> None:
        """The resolved config (flat ``a.b`` keys) and the overridden keys, once at the start."""

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None: ...

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """A picture (a drawn figure: sample grid, confusion matrix), ``(H, W, 3)`` uint8 RGB."""

    def log_table(self, tag: str, columns: list[str], rows: list[list[Any]], step: int) -> None: ...

    def log_hparams(self, hparams: dict[str, Any], varied: Sequence[str], metrics: Sequence[str]):
        """At the end: the run's hyperparameters (``hparams_of``), ``varied`` ones first, and
        the scalar tags that score the run."""

    def log_artifact(self, path: Path) -> None: ...

    def flush(self, step: int) -> None:
        """End of an epoch or a validation: send what is buffered."""

    def close(self, finished: bool) -> list[str]:
        """End the run (``finished``: done, else interrupted); returns one line per thing
        that was not logged, with the command that sends it (none when all was sent)."""
