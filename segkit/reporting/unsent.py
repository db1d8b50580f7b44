"""What a logger could not send to its server: records kept in the run folder, to send later.

``run_dir/unsent/<logger>.jsonl`` holds one JSON record per line, in the order they were
logged; the files they name (figures, tables) lie in ``run_dir/unsent/<logger>/``. A line cut
short by a crash is skipped when the file is read back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger("segkit")

UNSENT_DIR = "unsent"


class UnsentLog:
    """Appends records to ``<run_dir>/unsent/<name>.jsonl`` and counts them by kind."""

    def __init__(self, run_dir: Path, name: str) -> None:
        self.path = Path(run_dir) / UNSENT_DIR / f"{name}.jsonl"
        self.files = self.path.with_suffix("")  # figures and tables to send
        self.counts: Counter[str] = Counter()

    def add(self, record: dict[str, Any], count: int = 1) -> None:
        """Append ``record`` (plain JSON data with a ``kind``); ``count`` items of that kind."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:  # a line at a time: a crash loses at most that line
            f.write(json.dumps(record, default=str) + "\n")
        self.counts[record["kind"]] += count

    def summary(self) -> str:
        """``12 metric values, 40 params, 3 files`` (what was kept)."""
        names = {"metrics": "metric values", "params": "params", "file": "files", "end": ""}
        parts = [f"{n} {names.get(k, k)}" for k, n in self.counts.items() if n and names.get(k, k)]
        return ", ".join(parts) or "nothing"


def read_unsent(path: Path) -> list[dict[str, Any]]:
    """The records of an unsent file; a last line cut short by a crash is skipped."""
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is incomplete (killed while writing it): skipped", path, number)
    return records


def digest(path: Path) -> str:
    """A short hash of an unsent file: a run marked with it has received the file already."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
