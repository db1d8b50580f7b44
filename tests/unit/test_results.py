"""The measured results are data (results/*.csv, one row per run, each shown in the .md beside
it): every row has the header's columns, and every run named in a CSV is in its table."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "results"


@pytest.mark.parametrize("table", sorted(RESULTS.glob("*.csv")), ids=lambda p: p.name)
def test_every_row_has_the_header_columns_and_is_in_the_markdown(table: Path):
    rows = list(csv.reader(table.open(newline="")))
    header, body = rows[0], rows[1:]
    assert body, table
    bad = [(n + 2, len(row)) for n, row in enumerate(body) if len(row) != len(header)]
    assert not bad, f"{table.name}: rows (line, fields) not of {len(header)} fields: {bad}"
    markdown = table.with_suffix(".md").read_text()
    missing = [row[0] for row in body if row[0] not in markdown]
    assert not missing, f"{table.name}: runs not in {table.with_suffix('.md').name}: {missing}"
