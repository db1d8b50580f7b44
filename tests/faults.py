"""Test-only components that inject faults, selected with ``_target_`` from the tests (never
shipped in ``conf/``): ``loss._target_=tests.faults.FailingCrossEntropy +loss.fail_at_step=9``.

Subprocesses find this module because the tests put the repository root on PYTHONPATH.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch

from segkit.losses import CELovaszLoss, CrossEntropyLoss


class FailAt:
    """Mixin for a loss: raises on training call ``fail_at_step`` (1-based; validation calls,
    made under inference mode, are not counted). ``None`` never fails. ``first_attempt_only``:
    fail only before torchrun's first restart (TORCHELASTIC_RESTART_COUNT=0)."""

    def __init__(
        self, *args, fail_at_step: int | None = None, first_attempt_only: bool = False, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fail_at_step, self.calls = fail_at_step, 0
        restarted = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"
        if first_attempt_only and restarted:
            self.fail_at_step = None

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        if not torch.is_inference_mode_enabled():
            self.calls += 1
            if self.fail_at_step is not None and self.calls >= self.fail_at_step:
                raise RuntimeError(f"injected failure at training step {self.calls}")
        return super().forward(outputs, target)


class FailingCrossEntropy(FailAt, CrossEntropyLoss):
    """Cross-entropy that fails at a training step (see :class:`FailAt`)."""


class FailingCELovasz(FailAt, CELovaszLoss):
    """CE + Lovasz-softmax that fails at a training step (see :class:`FailAt`)."""


def failing(step: int | None) -> list[str]:
    """Overrides that make a run fail at training step ``step``."""
    return ["loss._target_=tests.faults.FailingCrossEntropy", f"+loss.fail_at_step={step}"]


class NaNCrossEntropy(CrossEntropyLoss):
    """Cross-entropy whose value is NaN from training call ``nan_from_step`` on (1-based;
    validation calls are not counted): a run that diverged through its loss."""

    def __init__(self, *args, nan_from_step: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nan_from_step, self.calls = nan_from_step, 0

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        loss = super().forward(outputs, target)
        if not torch.is_inference_mode_enabled():
            self.calls += 1
            if self.calls >= self.nan_from_step:
                return loss * float("nan")
        return loss


class ExplodingSGD(torch.optim.SGD):
    """SGD whose update at call ``explode_at_step`` (1-based) drives every weight to +Inf:
    what a finite loss with an exploding step does to a model."""

    def __init__(self, params, *args, explode_at_step: int = 1, **kwargs) -> None:
        super().__init__(params, *args, **kwargs)
        self.explode_at_step, self.calls = explode_at_step, 0

    @torch.no_grad()
    def step(self, closure=None):
        out = super().step(closure)
        self.calls += 1
        if self.calls == self.explode_at_step:
            for group in self.param_groups:
                for p in group["params"]:
                    p.fill_(float("inf"))
        return out


class ConfigEditingLoss(CrossEntropyLoss):
    """Records its ``label_smoothing`` in ``record`` (one line per job) and then rewrites the
    YAML file ``path`` it was composed from to ``label_smoothing: 0.3``: a later job of the same
    sweep must not see the edit."""

    def __init__(self, path: str, record: str, **kwargs) -> None:
        super().__init__(**kwargs)
        with open(record, "a") as f:
            f.write(f"{self.label_smoothing}\n")
        text = open(path).read().replace("label_smoothing: 0.0", "label_smoothing: 0.3")
        with open(path, "w") as f:
            f.write(text)


def launcher_pid() -> int:
    """The process that started this rank of ``launch.devices=N``: the parent of its parent, the
    rank server (segkit.engine.spawn) that forked it; else this process's parent."""
    parent = os.getppid()
    with open(f"/proc/{parent}/cmdline", "rb") as f:
        if b"multiprocessing.forkserver" not in f.read():
            return parent
    with open(f"/proc/{parent}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("PPid:")))


class SignalingCrossEntropy(CrossEntropyLoss):
    """Cross-entropy that sends a real ``SIGTERM`` on training call ``signal_at_step``: to its
    own process (``to_parent=False``) or to its parent (the launcher of ``launch.devices=N``,
    which passes it on to every rank), like a cluster scheduler would; ``to_group``: to every
    process of its process group, DataLoader workers included, from another process
    (``kill -- -PGID``, SLURM's ``scancel``, ``pkill -f train.py``; torch's workers take a
    SIGTERM from their own main process as a request to exit quietly)."""

    def __init__(
        self, *args, signal_at_step: int, to_parent: bool = False, to_group: bool = False, **kw
    ) -> None:
        super().__init__(*args, **kw)
        self.signal_at_step, self.to_parent, self.to_group = signal_at_step, to_parent, to_group
        self.calls = 0

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        if not torch.is_inference_mode_enabled():
            self.calls += 1
            if self.calls == self.signal_at_step and os.environ.get("RANK", "0") == "0":
                if self.to_group:  # from another process, as a shell's does
                    kill = f"import os, signal; os.killpg({os.getpgid(0)}, signal.SIGTERM)"
                    subprocess.run([sys.executable, "-c", kill])
                    time.sleep(0.5)  # the DataLoader workers would be dead by the next batch
                else:
                    os.kill(launcher_pid() if self.to_parent else os.getpid(), signal.SIGTERM)
        return super().forward(outputs, target)


class PreemptedCrossEntropy(CrossEntropyLoss):
    """Cross-entropy that sends the ``signals`` (names, in order) on training call
    ``signal_at_step``, once per ``marker`` file (created then): a submitit job that the
    scheduler preempts (``["SIGTERM", "SIGUSR2"]``, as ``SlurmJob._interrupt()`` does) or
    signals before its time limit (``["SIGUSR2"]``) on its first attempt only. ``None``:
    never. To its own process, or (``to_parent``, rank 0) to the launcher of
    ``launch.devices=N``, the process submitit signals."""

    def __init__(
        self,
        *args,
        signal_at_step: int | None,
        signals: list[str],
        marker: str,
        to_parent: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.signal_at_step, self.signals, self.marker = signal_at_step, list(signals), marker
        self.to_parent, self.calls = to_parent, 0

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        if not torch.is_inference_mode_enabled():
            self.calls += 1
            first = not os.path.exists(self.marker) and os.environ.get("RANK", "0") == "0"
            if self.calls == self.signal_at_step and first:
                open(self.marker, "w").close()
                for name in self.signals:
                    pid = launcher_pid() if self.to_parent else os.getpid()
                    os.kill(pid, getattr(signal, name))
        return super().forward(outputs, target)


class GatedCrossEntropy(CrossEntropyLoss):
    """Cross-entropy that, on training call ``wait_at_step``, creates ``gate + ".reached"`` and
    waits until ``gate`` exists (at most ``max_wait_s``): a run a test holds live while it starts
    another one beside it."""

    def __init__(self, *args, gate: str, wait_at_step: int = 1, max_wait_s: float = 300, **kw):
        super().__init__(*args, **kw)
        self.gate, self.wait_at_step, self.max_wait_s = gate, wait_at_step, max_wait_s
        self.calls = 0

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        if not torch.is_inference_mode_enabled():
            self.calls += 1
            if self.calls == self.wait_at_step:
                open(self.gate + ".reached", "w").close()
                deadline = time.monotonic() + self.max_wait_s
                while not os.path.exists(self.gate) and time.monotonic() < deadline:
                    time.sleep(0.1)
        return super().forward(outputs, target)


class SignalAwaitingCrossEntropy(CrossEntropyLoss):
    """Cross-entropy that, on training call ``wait_at_step`` of a job's first attempt (no
    ``marker`` file yet; rank 0), writes ``marker`` (the SLURM job id, else the pid) and blocks
    until the process gets SIGTERM or SIGUSR2 from outside (``scancel --signal``, ``scontrol
    requeue``, a time limit), at most ``max_wait_s``: a job signalled mid-training, whatever
    the scheduler's timing. segkit's own handlers still get the signal."""

    def __init__(self, *args, wait_at_step: int, marker: str, max_wait_s: float = 300, **kw):
        super().__init__(*args, **kw)
        self.wait_at_step, self.marker, self.max_wait_s = wait_at_step, marker, max_wait_s
        self.calls = 0

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        if not torch.is_inference_mode_enabled():
            self.calls += 1
            first = not os.path.exists(self.marker) and os.environ.get("RANK", "0") == "0"
            if self.calls == self.wait_at_step and first:
                self._wait_for_signal()
        return super().forward(outputs, target)

    def _wait_for_signal(self) -> None:
        got: list[int] = []
        sigs = (signal.SIGTERM, signal.SIGUSR2)
        previous = {sig: signal.getsignal(sig) for sig in sigs}

        def note(signum, frame) -> None:
            got.append(signum)
            if callable(previous[signum]):
                previous[signum](signum, frame)

        for sig in sigs:
            signal.signal(sig, note)
        with open(self.marker + ".tmp", "w") as f:
            f.write(os.environ.get("SLURM_JOB_ID", str(os.getpid())))
        os.replace(self.marker + ".tmp", self.marker)
        deadline = time.monotonic() + self.max_wait_s
        try:
            while not got and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
