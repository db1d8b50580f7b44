"""The local launcher of segkit sweeps: Hydra's basic launcher, except that every job's config
is composed when the batch is launched, so a YAML file edited while the sweep runs does not
change the jobs that were already launched."""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn, JobStatus

log = logging.getLogger(__name__)


class _LaunchTimeConfigs:
    """A config loader that answers ``load_sweep_config`` with the configs composed up front,
    in launch order (two jobs may have the same overrides)."""

    def __init__(self, loader: Any, configs: list[Any]) -> None:
        self._loader, self._configs = loader, collections.deque(configs)

    def load_sweep_config(self, master_config: Any, sweep_overrides: list[str]) -> Any:
        return self._configs.popleft()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class SegkitLauncher(BasicLauncher):
    """``hydra/launcher=segkit`` (the default of ``conf/train.yaml``). ``fail_fast``: stop at
    the first failed job instead of running the rest. An interrupted job (SIGINT / SIGTERM)
    always stops the sweep; relaunching it resumes."""

    def __init__(self, fail_fast: bool = False) -> None:
        super().__init__()
        self.fail_fast = bool(fail_fast)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.hydra_context is not None and self.config is not None
        loader = self.hydra_context.config_loader
        configs = [loader.load_sweep_config(self.config, list(o)) for o in job_overrides]
        context = self.hydra_context
        self.hydra_context = dataclasses.replace(
            context, config_loader=_LaunchTimeConfigs(loader, configs)
        )
        try:
            runs: list[JobReturn] = []
            for i, overrides in enumerate(job_overrides):
                runs += super().launch([overrides], initial_job_idx + i)
                if runs[-1].status != JobStatus.FAILED:
                    continue
                error = runs[-1]._return_value  # segkit's errors come as JobFailed(kind=...)
                if getattr(error, "kind", type(error).__name__) == "Interrupted":
                    log.error("job %d was interrupted: stopping the sweep", initial_job_idx + i)
                    break
                if self.fail_fast:
                    log.error("job %d failed: stopping the sweep (fail_fast)", initial_job_idx + i)
                    break
            return runs
        finally:
            self.hydra_context = context
