"""Shared fixtures and helpers: a tiny demo dataset in a per-session cache, config composition,
the tiny trained runs several test files read, and running the real entry points in
subprocesses.

``tests/unit``: in-process tests, seconds each (marker ``unit``: ``pytest tests/unit`` or
``pytest -m unit``). ``tests/integration``: in-process too, segkit with the heavy libraries
it drives (torch.compile, torch.export, timm, the MLflow client, reference implementations) and
the benchmark scripts. ``tests/contracts``: every shipped config. ``tests/e2e``: the entry
points as users run them, in subprocesses: real signals, DDP, torchrun, sweeps, submitit
(marker ``e2e``). The markers follow the folder."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from filelock import FileLock

from tests.warm_start import WarmProcess, WarmStarter

if TYPE_CHECKING:  # imported where used: xdist's controller loads this file and runs no test
    import torch
    from omegaconf import DictConfig

pytest_plugins = ["tests.crafted"]  # the crafted-checkpoint fixture of the safety tests

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED = REPO.parent / "shared"
TESTS = Path(__file__).resolve().parent

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
    "launch.accelerator=cpu",
    "trainer.num_vis=2",
    "trainer.figures=false",  # no matplotlib: FIGURES turns the pictures on where a test reads them
]
# the pictures of a run (sample grid and confusion matrix per validation, plots/*.png)
FIGURES = "trainer.figures=true"

# Model configs that only scale another one up (SegFormer B1-B5 are segformer_b0 with a larger
# MiT): the per-model contract tests run the smallest; test_models_segformer.py checks these
# on the meta device (names, shapes, sizes), results/models.md has their export parity.
SIZE_VARIANTS = frozenset(f"segformer_b{i}" for i in range(1, 6))
MODEL_NAMES = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem not in SIZE_VARIANTS)


def load_script(name: str) -> types.ModuleType:
    """Import ``scripts/<name>.py`` as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_from_config(name: str, *overrides: str, num_classes: int = 3) -> torch.nn.Module:
    """``conf/model/<name>.yaml`` built with random weights (``overrides``: ``model.KEY=V``)."""
    from segkit.run import compose_model_config, instantiate_model

    cfg = compose_model_config(name, num_classes, ["model.pretrained=false", *overrides])
    return instantiate_model(cfg)


def root_error(excinfo: pytest.ExceptionInfo) -> BaseException:
    """Hydra wraps constructor errors in InstantiationException; return the original."""
    err = excinfo.value
    while err.__cause__ is not None:
        err = err.__cause__
    return err


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> None:
    """One torch thread per test process: the box has 2 cores and tests often run beside other
    work (a session fixture, not an import-time call: see the imports above)."""
    import torch

    torch.set_num_threads(1)


# --------------------------------------------------------------------------- markers, order
def pytest_collection_modifyitems(config, items) -> None:
    """Marker by folder (``unit`` / ``integration`` / ``contract`` / ``e2e``); then the order:
    the e2e tests marked ``slow`` (multi-process), the other e2e tests, the integration tests and
    the contracts, the unit tests. With xdist the long tests start first and the short ones fill
    the workers' gaps at the end (a stable sort: the collection order otherwise)."""
    folders = {"unit": pytest.mark.unit, "integration": pytest.mark.integration}
    folders |= {"contracts": pytest.mark.contract, "e2e": pytest.mark.e2e}
    for item in items:
        parents = Path(str(item.path)).parents
        for folder, marker in folders.items():
            if TESTS / folder in parents:
                item.add_marker(marker)

    def rank(item) -> int:
        if item.get_closest_marker("e2e") is None:
            return 3 if item.get_closest_marker("unit") else 2
        return 0 if item.get_closest_marker("slow") else 1

    items.sort(key=rank)


# --------------------------------------------------------------------------- shared folders
def _session_dir(tmp_path_factory) -> Path:
    """A folder of this test session that every xdist worker sees (each worker's own base
    temp is ``<session>/popen-gwN``); without xdist, the session's base temp itself."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(folder)`` once per test session, whichever xdist worker asks first (the others
    wait on a file lock, then reuse the folder). A failed build leaves no marker: the next
    request builds again (and fails with the same error). Treat the folder as read-only."""
    base = _session_dir(tmp_path_factory)
    folder, done = base / name, base / f"{name}.done"
    with FileLock(str(base / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session", autouse=True)
def segkit_cache(tmp_path_factory) -> Path:
    """Demo data goes to a session folder, shared with the other xdist workers (the demo
    builder is safe to run concurrently: it builds once) and with subprocesses through the env.
    """
    cache = _session_dir(tmp_path_factory) / "segkit-cache"
    cache.mkdir(exist_ok=True)
    os.environ["SEGKIT_CACHE"] = str(cache)
    return cache


def compose_train(*overrides: str) -> DictConfig:
    """The real ``conf/train.yaml`` with overrides (no Hydra run directory involved)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


# --------------------------------------------------------------------------- trained runs
LOGGED = "logged.txt"  # in tiny_run: what the run logged (segkit logger, INFO), one per line


def _train_logging(cfg: DictConfig, run_dir: Path) -> None:
    """``train_rank(cfg, run_dir)`` in this process; the segkit log records (INFO and up) go to
    ``run_dir / LOGGED``."""
    from segkit.run import train_rank

    logger = logging.getLogger("segkit")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        train_rank(cfg, run_dir)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    (run_dir / LOGGED).write_text("\n".join(records))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, segkit_cache) -> Path:
    """The run directory of ``TINY`` trained in-process (2 epochs of 6 steps, 24 train / 7 val
    images of 32x32), once per test session for every file that reads a trained run: its
    checkpoints (last.pt, best.pt, best.safetensors), events, metrics.csv, plots (with
    ``FIGURES``), and ``LOGGED``. Identical, weight for weight, to ``python train.py`` with
    ``TINY``. Read-only: copy what a test changes."""
    return built_once(
        tmp_path_factory,
        "tiny-run",
        lambda run_dir: _train_logging(compose_train(*TINY, FIGURES), run_dir),
    )


# calibrate.enabled: a run whose best checkpoint holds logit biases for the recipe's modes
CALIBRATED = [
    *TINY,
    "dataset.val_original_size=true",
    "calibrate.enabled=true",
    "eval.modes=[whole+flip,whole]",  # the recipe's modes: whole+flip gets its own biases
]


@pytest.fixture(scope="session")
def calibrated_run(tmp_path_factory, segkit_cache) -> Path:
    """The run directory of ``CALIBRATED`` trained in-process, once per session. Read-only."""
    from segkit.run import train_rank

    return built_once(
        tmp_path_factory,
        "calibrated-run",
        lambda run_dir: train_rank(compose_train(*CALIBRATED), run_dir),
    )


# --------------------------------------------------------------------------- subprocesses
_WARM: list[WarmStarter] = []  # this test process's warm interpreter, started on first use


def _cli_env(env: dict | None) -> dict[str, str]:
    # the repository root on PYTHONPATH: runs may name test-only components (tests.faults)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    full_env.update(env or {})
    return full_env


def _warm_starter() -> WarmStarter | None:
    if os.environ.get("SEGKIT_TESTS_COLD"):
        return None
    if not _WARM:
        _WARM.append(WarmStarter(Path(tempfile.mkdtemp(prefix="segkit-warm-")), _cli_env(None)))
    return _WARM[0]


def pytest_sessionfinish(session, exitstatus) -> None:
    while _WARM:
        _WARM.pop().close()


def _command(script: str, env: dict | None, cold: bool) -> tuple[list, dict, WarmStarter | None]:
    """``python <script>``'s argv (after the interpreter), its environment, and the warm
    interpreter that can serve it (None: start a fresh ``python``)."""
    full_env = _cli_env(env)
    argv = [str(REPO / script)] if script.endswith(".py") else ["-m", script]
    warm = None if cold else _warm_starter()
    return argv, full_env, warm if warm is not None and warm.serves(full_env) else None


def start_cli(
    script: str, *args: str, cwd: Path, output: Path, env: dict | None = None
) -> subprocess.Popen | WarmProcess:
    """Start ``python <script> args`` and return at once (``pid``, ``poll()``, ``wait()``,
    ``kill()``, ``returncode``), its stdout and stderr going to the file ``output``; warm as
    :func:`run_cli` where it can be."""
    argv, full_env, warm = _command(script, env, cold=False)
    with open(output, "wb") as out:
        if warm is not None:
            stdin = os.open(os.devnull, os.O_RDONLY)
            fds = [stdin, os.dup(out.fileno()), os.dup(out.fileno())]
            return warm.start([*argv, *args], cwd, full_env, False, fds)
        return subprocess.Popen(
            [sys.executable, *argv, *args], cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def run_cli(
    script: str,
    *args: str,
    cwd: Path,
    timeout: int = 300,
    env: dict | None = None,
    new_session: bool = False,
    cold: bool = False,
):
    """Run ``python <script> args`` the way a user does; returns the CompletedProcess.
    ``new_session``: in its own session and process group (one that a test may signal whole).

    The process is forked from a warm interpreter that has done the imports already
    (tests/warm_start.py); ``cold=True``, an ``env`` that changes what is read at interpreter
    start (``PYTHONPATH``...), or ``SEGKIT_TESTS_COLD=1`` start a fresh ``python`` instead."""
    argv, full_env, warm = _command(script, env, cold)
    if warm is not None:
        return warm.run([*argv, *args], cwd, full_env, timeout, new_session)
    return subprocess.run(
        [sys.executable, *argv, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=new_session,
    )
