"""TensorBoard events in ``run_dir/tb`` (``logger=tensorboard``, the default): scalars with a
custom-scalars layout, figures, the per-class IoU table as text, the HParams tab."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segkit.reporting.experiment_logger import RunContext
from segkit.reporting.figures import custom_layout, hparams_summaries


class TensorBoardLogger:
    """A ``SummaryWriter`` in ``run_dir/<subdir>``. A resumed run purges the events a killed
    run wrote after its last checkpoint, so the curves continue without overlap. Local files
    only: nothing is ever left unsent."""

    name = "tensorboard"
    run_id = None  # the run folder is the run

    def __init__(self, context: RunContext, *, subdir: str = "tb") -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = context.start_step + 1 if context.start_step > 0 else None
        self.writer = SummaryWriter(str(Path(context.run_dir) / subdir), purge_step=purge)
        self._tags: set[str] = set()
        self._layout: dict | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass  # the HParams tab gets the run's hparams at the end (log_hparams)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self._tags.update(scalars)

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def log_table(self, tag: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        """A markdown table in the Text tab."""
        lines = [" | ".join(columns), " | ".join("---" for _ in columns)]
        lines += [
            " | ".join(
                "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row
            )
            for row in rows
        ]
        self.writer.add_text(tag, "\n".join(lines), step)

    def log_hparams(
        self, hparams: dict[str, Any], varied: Sequence[str], metrics: Sequence[str]
    ) -> None:
        for summary in hparams_summaries(hparams, varied, metrics):
            self.writer.file_writer.add_summary(summary)

    def log_artifact(self, path: Path) -> None:
        pass  # the file is in the run folder already

    def flush(self, step: int) -> None:
        """Write the custom-scalars layout again whenever a new tag appeared, then flush."""
        layout = custom_layout(self._tags)
        if layout != self._layout:
            from torch.utils.tensorboard.summary import custom_scalars

            self.writer.file_writer.add_summary(custom_scalars(layout), step)
            self._layout = layout
        self.writer.flush()

    def close(self, finished: bool) -> list[str]:
        self.writer.flush()
        self.writer.close()
        return []
