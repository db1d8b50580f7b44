"""Sweep summary: a Hydra callback that keeps a table of every multirun job.

After each job (and so also when a later job fails or the sweep is interrupted) the
sweep folder holds ``summary.csv`` and ``summary.md``: one row per job with its overrides,
best val mIoU (and, with ``calibrate.enabled``, the calibrated one), epoch of best, duration
and status (and the error of a failed job). A relaunched sweep (same ``hydra.sweep.dir``)
keeps one row per job: the job's latest.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from segkit.dist import launcher_rank

log = logging.getLogger(__name__)

COLUMNS = ("job", "overrides", "status", "best_miou", "best_epoch", "duration_s", "error")
CALIBRATED = "calibrated_miou"  # calibrate.enabled: shown after best_miou when a job has it
ROWS_FILE = "summary_rows.jsonl"


def job_row(config: DictConfig, job_return: JobReturn, duration_s: float) -> dict[str, Any]:
    """One summary row from a finished job's Hydra config, its return and its result.json."""
    out_dir = Path(config.hydra.runtime.output_dir)
    row: dict[str, Any] = {
        "job": config.hydra.job.num,
        "overrides": " ".join(job_return.overrides or []),
        "status": "completed" if job_return.status == JobStatus.COMPLETED else "failed",
        "best_miou": None,
        "best_epoch": None,
        "duration_s": round(duration_s, 1),
        "error": "",
    }
    result = out_dir / "result.json"
    if result.is_file():
        data = json.loads(result.read_text())
        row.update(best_miou=round(data["best_miou"], 4), best_epoch=data["best_epoch"])
        if data.get("calibrated_val_miou") is not None:
            row[CALIBRATED] = round(data["calibrated_val_miou"], 4)
    if row["status"] == "failed":
        row["error"] = error_line(getattr(job_return, "_return_value", None))
    return row


def error_line(err: BaseException | None) -> str:
    """``Type: message`` of an exception on one line (its last line, where the cause is)."""
    if err is None:
        return "failed"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if re.match(r"^[\w.]+(Error|Exception)\b", last):  # already "Type: message"
        return last[:300]
    return f"{type(err).__name__}: {last}"[:300]


def varying_overrides(rows: list[dict[str, Any]]) -> list[str]:
    """Each row's overrides minus those shared by every job (what the sweep varies)."""
    tokens = [r["overrides"].split() for r in rows]
    common = set.intersection(*map(set, tokens)) if len(rows) > 1 else set()
    return [" ".join(t for t in ts if t not in common) for ts in tokens]


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """``COLUMNS``, with ``calibrated_miou`` after ``best_miou`` when any job calibrated."""
    if not any(r.get(CALIBRATED) is not None for r in rows):
        return list(COLUMNS)
    at = COLUMNS.index("best_miou") + 1
    return [*COLUMNS[:at], CALIBRATED, *COLUMNS[at:]]


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows as an aligned plain-text table (also valid markdown); the overrides column
    shows only what differs between jobs (summary.csv keeps them whole)."""
    names = columns(rows)
    shown = [{**r, "overrides": o} for r, o in zip(rows, varying_overrides(rows))]
    cells = [[str(r.get(c) if r.get(c) is not None else "-") for c in names] for r in shown]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(names)]

    def line(values):
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(names), sep, *(line(r) for r in cells)])


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]]) -> str:
    rows = sorted(rows, key=lambda r: r["job"])
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns(rows))
        w.writeheader()
        w.writerows(rows)
    table = format_table(rows)
    (sweep_dir / "summary.md").write_text(table + "\n")
    return table


def read_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job: a relaunched sweep appends rows again; the last one of a job wins."""
    path = sweep_dir / ROWS_FILE
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return list({row["job"]: row for row in rows}.values())


def finished_result(job_dir: Path) -> dict[str, Any] | None:
    """``result.json`` of a job that completed in ``job_dir`` (a relaunched sweep skips it)."""
    path = Path(job_dir) / "result.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if result.get("status") == "completed" else None


class SweepSummary(Callback):
    """Registered in ``conf/hydra/default.yaml``; does nothing outside ``-m`` runs."""

    def __init__(self) -> None:
        self._start = time.time()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._start = time.time()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or launcher_rank() != 0:
            return  # a job's other ranks ran Hydra too (a SLURM job's tasks): rank 0 reports
        sweep_dir = Path(config.hydra.sweep.dir)
        row = job_row(config, job_return, time.time() - self._start)
        with open(sweep_dir / ROWS_FILE, "a") as f:  # append: jobs may run in other processes
            f.write(json.dumps(row) + "\n")
        table = write_summary(sweep_dir, read_rows(sweep_dir))
        print(f"\nSweep so far ({sweep_dir / 'summary.md'}):\n{table}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = read_rows(sweep_dir)
        if rows:
            table = write_summary(sweep_dir, rows)
            log.info("sweep summary (%s):\n%s", sweep_dir / "summary.md", table)
            print(f"\nSweep summary ({sweep_dir}):\n{table}", flush=True)
