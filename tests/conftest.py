"""Shared fixtures: a tiny demo dataset in a per-session cache, config composition, and
running the real entry points in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED = REPO.parent / "shared"

# A run small enough for a test: 24 train / 7 val images of 32x32 (7 is odd on purpose:
# the DDP test needs a val set that 2 processes cannot split evenly).
TINY = [
    "dataset.num_train=24",
    "dataset.num_val=7",
    "dataset.image_size=[32,32]",
    "model=unet",
    "model.base_channels=4",
    "loader.batch_size=4",
    "loader.num_workers=0",
    "trainer.max_epochs=2",
    "trainer.progress_bar=false",
    "trainer.accelerator=cpu",
    "trainer.num_vis=2",
]

torch.set_num_threads(1)  # the box has 2 cores and tests often run beside other work


@pytest.fixture(scope="session", autouse=True)
def segkit_cache(tmp_path_factory) -> Path:
    """Demo data goes to a session folder, shared with subprocesses through the env."""
    cache = tmp_path_factory.mktemp("segkit-cache")
    os.environ["SEGKIT_CACHE"] = str(cache)
    return cache


def compose_train(*overrides: str) -> DictConfig:
    """The real ``conf/train.yaml`` with overrides (no Hydra run directory involved)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def run_cli(
    script: str,
    *args: str,
    cwd: Path,
    timeout: int = 300,
    env: dict | None = None,
    new_session: bool = False,
):
    """Run ``python <script> args`` the way a user does; returns the CompletedProcess.
    ``new_session``: in its own session and process group (one that a test may signal whole)."""
    # the repository root on PYTHONPATH: runs may name test-only components (tests.faults)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    full_env.update(env or {})
    cmd = [sys.executable, *([str(REPO / script)] if script.endswith(".py") else ["-m", script])]
    return subprocess.run(
        [*cmd, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=new_session,
    )
