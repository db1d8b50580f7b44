"""Weights & Biases runs (``logger=wandb``, the ``wandb`` extra), online or offline: scalars,
config, figures, tables and the best weights; an offline run is sent with ``wandb sync``."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segkit.reporting.experiment_logger import RunContext

log = logging.getLogger("segkit")


class WandbLogger:
    """One W&B run per training run, its files in ``run_dir/wandb``.

    The run id is chosen here and kept in the checkpoint, so a resume continues the run
    (``resume="allow"``); a sweep job's run joins the sweep's group. W&B itself keeps every
    record in the run's ``.wandb`` file and retries a server that is down; when the server
    cannot be reached at the start, the run goes on offline (one warning) and :meth:`close`
    names the ``wandb sync`` command that sends it.

    Args:
        project, entity: where the run goes (entity None: the account's default).
        mode: ``online`` | ``offline`` (no account needed; ``wandb sync`` later).
        tags: run tags.
        log_model: log the best checkpoint's ``.safetensors`` file as a model artifact.
        init_timeout_s: how long the start may wait for the server before going offline.
    """

    name = "wandb"
    requires = ("wandb", "wandb")  # (python package, segkit extra)

    def __init__(
        self,
        context: RunContext,
        *,
        project: str = "segkit",
        entity: str | None = None,
        mode: str = "online",
        tags: Sequence[str] = (),
        log_model: bool = False,
        init_timeout_s: float = 60.0,
    ) -> None:
        import wandb  # the optional extra, checked before the run

        self.wandb, self.log_model, self.mode = wandb, log_model, mode
        # our own id (secrets: the run's RNG streams stay untouched), so the checkpoint holds it
        self.run_id = context.run_id or secrets.token_hex(4)
        self.problem: str | None = None  # why the run went offline
        settings = wandb.Settings(init_timeout=init_timeout_s, console="off", quiet=True)
        kwargs = dict(
            project=project,
            entity=entity,
            dir=str(context.run_dir),
            id=self.run_id,
            resume="allow",
            group=Path(context.group).name if context.group else None,
            name=context.name or None,
            job_type="train",
            tags=list(tags),
            config={"segkit": context.tags},
            settings=settings,
            reinit="create_new",
        )
        try:
            self.run = wandb.init(mode=mode, **kwargs)
        except Exception as e:  # no server, no login: go on offline
            self.problem = f"{type(e).__name__}: {str(e).strip()[:300]}"
            log.warning("wandb: could not start the run online (%s); it goes on offline", e)
            self.mode = "offline"
            self.run = wandb.init(mode="offline", **kwargs)

    @property
    def sync_dir(self) -> Path:
        """The folder ``wandb sync`` sends (``run_dir/wandb/offline-run-...``)."""
        return Path(self.run.dir).parent

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.run.log({tag: self.wandb.Image(image)}, step=step)

    def log_table(self, tag: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        self.run.log({tag: self.wandb.Table(columns=columns, data=rows)}, step=step)

    def log_hparams(
        self, hparams: dict[str, Any], varied: Sequence[str], metrics: Sequence[str]
    ) -> None:
        self.run.config.update({**hparams, "segkit.varied": list(varied)}, allow_val_change=True)

    def log_artifact(self, path: Path) -> None:
        if self.log_model and path.suffix == ".safetensors":
            artifact = self.wandb.Artifact(f"model-{self.run_id}", type="model")
            artifact.add_file(str(path))
            self.run.log_artifact(artifact)

    def flush(self, step: int) -> None:
        pass  # W&B sends in the background

    def close(self, finished: bool) -> list[str]:
        sync_dir = self.sync_dir
        self.run.finish(exit_code=0 if finished else 1)
        send = f"send it with: wandb sync {sync_dir}"
        if self.problem is not None:
            return [f"the run could not reach the server ({self.problem}) and is offline; {send}"]
        if self.mode == "offline":
            log.info("wandb: offline run %s in %s; %s", self.run_id, sync_dir, send)
        return []
