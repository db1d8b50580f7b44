"""The run directory's files: ``config.yaml``, ``metrics.csv`` (one row per epoch),
``result.json``, ``status.json`` (running / finished / failed / interrupted / diverged, with
pid, host and restarts), the command line's overrides (``.hydra/overrides.yaml``) and the
hyperparameters they name. Every write is atomic."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from segkit.io.checkpoint import write_file_atomic

log = logging.getLogger("segkit")

RESULT_FILE = "result.json"
METRICS_CSV = "metrics.csv"
CONFIG_FILE = "config.yaml"
STATUS_FILE = "status.json"
PLOTS_DIR = "plots"
REPLACED_DIR = "replaced"  # overwrite=true moves an earlier run's files there (run_ownership)
STATUSES = ("running", "finished", "failed", "interrupted", "diverged")


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows as dicts of strings) of a CSV file; ([], []) when it does not exist."""
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def write_table(path: Path, header: list[str], rows: list[dict[str, Any]]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, out.getvalue())


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` (None -> empty cell); the first row, or one with new columns, (re)writes
    the file with the union of the columns, so the header always matches the rows."""
    row = {k: "" if v is None else v for k, v in row.items()}
    header, rows = read_table(path)
    if header == list(row):
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=header, lineterminator="\n").writerow(row)
    else:
        write_table(path, [*header, *(k for k in row if k not in header)], [*rows, row])


def keep_rows(path: Path, max_step: int) -> list[dict[str, str]]:
    """Drop the rows with ``step > max_step`` (written after the checkpoint a run resumes
    from); returns the rows kept."""
    header, rows = read_table(path)
    kept = [r for r in rows if int(r["step"]) <= max_step]
    if len(kept) < len(rows):
        write_table(path, header, kept)
    return kept


def write_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` the way checkpoints are written (temp file, fsync, rename): a
    reader (or a crash) sees the old file or the new one, never a partial one."""

    data = text.encode("utf-8")
    write_file_atomic(Path(path), lambda f: f.write(data), len(data))


# --------------------------------------------------------------------------- config, hparams
def hparams_of(run_config: dict, overrides: list[str] | None = None) -> dict[str, Any]:
    """The hyperparameters of a run for TensorBoard's HParams tab: the model / loss /
    optimizer classes, the main numbers, and every ``key=value`` of ``overrides`` (Hydra's task
    overrides: the keys a sweep varies). An override's value is the run config's value at that
    key path when it is a plain value (``optimizer.weight_decay=0.01`` -> 0.01), else the
    override's own text (``loss=focal`` -> "focal": a config group choice)."""
    model, optim = run_config["model"], run_config["optimizer"]
    flat: dict[str, Any] = {
        "model.class": model["_target_"].rsplit(".", 1)[-1],
        "loss.class": run_config["loss"]["_target_"].rsplit(".", 1)[-1],
        "optimizer.class": optim["_target_"].rsplit(".", 1)[-1],
        "optimizer.lr": optim["lr"],
        "loader.batch_size": run_config["loader"]["batch_size"],
        "trainer.max_epochs": run_config["trainer"]["max_epochs"],
        "trainer.precision": run_config["trainer"]["precision"],
        "seed": run_config["seed"],
    }
    flat.update({f"model.{k}": model[k] for k in ("backbone", "base_channels") if k in model})
    if optim.get("weight_decay") is not None:
        flat["optimizer.weight_decay"] = optim["weight_decay"]
    for key, text in override_items(overrides or []):
        value = lookup(run_config, key)
        flat[key] = value if isinstance(value, int | float | str | bool) else text
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in flat.items()}


def override_items(overrides: Iterable[str]) -> list[tuple[str, str]]:
    """``(key, value text)`` of each ``key=value`` / ``+key=value`` override; deletions
    (``~key``) and ``hydra.*`` keys are skipped."""
    items = []
    for override in overrides:
        key, sep, text = override.partition("=")
        key = key.lstrip("+")
        if sep and not key.startswith(("~", "hydra.")):
            items.append((key, text))
    return items


def task_overrides(run_dir: Path) -> list[str]:
    """The job's command-line overrides as Hydra saved them (``.hydra/overrides.yaml`` in the
    run directory, in every process of a job); [] when there is none (a run outside Hydra)."""

    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The hparam names :func:`hparams_of` gives the overrides (for ``Tracker.finish``)."""
    return [key for key, _ in override_items(overrides)]


def lookup(config: dict, key: str) -> Any:
    """``config`` at a dotted key path (``optimizer.lr``); None where the path does not exist."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def log_config(run_config: dict) -> None:
    """The resolved run config, once, as YAML in the log."""

    log.info("resolved config:\n%s", OmegaConf.to_yaml(OmegaConf.create(run_config)).rstrip())


def write_config(run_config: dict, run_dir: Path) -> None:
    """The resolved run config (plain containers) as ``config.yaml`` in the run directory;
    also logged once (:func:`log_config`)."""

    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(run_config), run_dir / CONFIG_FILE)
    log_config(run_config)


# --------------------------------------------------------------------------- result, status
def run_result(state, duration_s: float, complexity: dict | None) -> dict:
    """What ``result.json`` holds: best and last values of a finished run (``TrainState``)."""
    return {
        "best_miou": state.best_miou,
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "steps": state.step,
        "duration_s": round(duration_s, 2),
        "status": "completed",
        "last": state.history[-1] if state.history else None,
        "complexity": complexity,
    }


def log_to_files(text: str) -> None:
    """``text`` into the log files only (it was just printed to the console)."""
    record = logging.LogRecord("segkit", logging.INFO, "", 0, "%s", (text,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def read_result(run_dir: Path) -> dict:
    """``result.json`` of a finished run."""
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        raise RuntimeError(f"training finished without writing {path}; see {run_dir}/train.log")
    return json.loads(path.read_text())


def write_status(run_dir: Path, status: str, **fields: Any) -> dict[str, Any]:
    """Write ``status.json`` atomically (:func:`write_atomic`); returns what it holds.

    ``running`` records pid, host, start time and the command line; a later status keeps
    those and adds ``ended_at``. ``fields`` (epoch, step, best_miou, best checkpoint, reason,
    ...) are stored as given (paths as strings)."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r}: expected one of {', '.join(STATUSES)}")
    run_dir = Path(run_dir)
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if status == "running":
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": now}
        info["command"] = " ".join([sys.executable, *sys.argv])
    else:
        keep = ("pid", "host", "started_at", "command", "restarts", "restart_cause")
        info = {k: v for k, v in (read_status(run_dir) or {}).items() if k in keep}
        info["ended_at"] = now
    data = {"status": status, **info, "updated_at": now, **fields}
    text = json.dumps(data, indent=2, default=str)
    write_atomic(run_dir / STATUS_FILE, text + "\n")
    return json.loads(text)


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """``status.json`` of a run directory, or None when the run wrote none."""
    path = Path(run_dir) / STATUS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- file list
def log_run_files(run_dir: Path) -> list[Path]:
    """Log where every file of the run is (all but the event files, Hydra's ``.hydra/`` and an
    earlier run's ``replaced/``) and how to open TensorBoard; returns the files listed."""
    files = sorted(
        p
        for p in run_dir.rglob("*")
        if p.is_file()
        and (top := p.relative_to(run_dir).parts[0]) not in ("tb", REPLACED_DIR)
        and top[0] != "."
    )
    lines = [f"  {p}" for p in files] + [f"  tensorboard --logdir {run_dir / 'tb'}"]
    log.info("run files:\n%s", "\n".join(lines))
    return files
