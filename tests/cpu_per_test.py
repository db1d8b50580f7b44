"""Where the suite's CPU goes, test by test: ``python -m pytest -n 0 -p tests.cpu_per_test [paths]``
(``python -m``: the repository root on the path, where ``-p`` looks for the plugin).

With one process (``-n 0``) the machine's busy CPU-seconds while a test runs (``/proc/stat``:
user, nice, system, irq, softirq of every core) are that test's own, its subprocesses, servers
and daemons included, which ``--durations`` (wall time) does not show. The 25 largest are
printed at the end; ``CPU_PER_TEST_JSON=path`` writes every test's ``{"busy", "wall"}``.
Run it on an otherwise idle machine: other work counts too."""

from __future__ import annotations

import json
import os
import time

import pytest

_STATS: dict[str, dict[str, float]] = {}


def _busy_s() -> float:
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    busy, wall = _busy_s(), time.monotonic()
    yield
    _STATS[item.nodeid] = {"busy": _busy_s() - busy, "wall": time.monotonic() - wall}


def pytest_terminal_summary(terminalreporter) -> None:
    if not _STATS:
        return
    total = sum(s["busy"] for s in _STATS.values())
    terminalreporter.section(f"busy CPU-seconds per test ({total:.0f} in all)")
    for nodeid, s in sorted(_STATS.items(), key=lambda kv: -kv[1]["busy"])[:25]:
        terminalreporter.write_line(f"{s['busy']:7.1f} CPU-s {s['wall']:7.1f} s  {nodeid}")
    if path := os.environ.get("CPU_PER_TEST_JSON"):
        with open(path, "w") as f:
            json.dump(_STATS, f, indent=1)
