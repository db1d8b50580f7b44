"""Test-only components that inject faults, selected with ``_target_`` from the tests (never
shipped in ``conf/``): ``loss._target_=tests.faults.FailingCrossEntropy +loss.fail_at_step=9``.

Subprocesses find this module because the tests put the repository root on PYTHONPATH.
"""

from __future__ import annotations

import torch

from segkit.losses import CrossEntropyLoss


class FailingCrossEntropy(CrossEntropyLoss):
    """Cross-entropy that raises on training call ``fail_at_step`` (1-based; validation calls,
    made under inference mode, are not counted). ``None`` never fails."""

    def __init__(self, *args, fail_at_step: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fail_at_step, self.calls = fail_at_step, 0

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        if not torch.is_inference_mode_enabled():
            self.calls += 1
            if self.fail_at_step is not None and self.calls >= self.fail_at_step:
                raise RuntimeError(f"injected failure at training step {self.calls}")
        return super().forward(outputs, target)


def failing(step: int | None) -> list[str]:
    """Overrides that make a run fail at training step ``step``."""
    return ["loss._target_=tests.faults.FailingCrossEntropy", f"+loss.fail_at_step={step}"]
