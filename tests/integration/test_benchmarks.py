"""The benchmark scripts end to end in this process: ``scripts/benchmark.py`` training steps in two
memory formats and two precisions side by side, and its activation-memory mode per batch size
(what the numbers mean, with timings never asserted: tests/unit/test_complexity.py)."""

from __future__ import annotations

import json

import pytest

from tests.unit.test_complexity import run_script


def test_training_benchmark_compares_memory_formats_and_precisions(tmp_path, monkeypatch, capsys):
    """scripts/benchmark.py --channels-last compare --compare-precision bf16: the same model
    timed with channels-last and contiguous tensors and in bf16, side by side, and the ratios
    printed and written."""
    out = tmp_path / "bench.json"
    args = ["--skip", "data", "confusion", "val", "--models", "stdc1", "--train-size", "32",
            "--train-steps", "1", "--batch-size", "2", "--workers", "0", "--slow-repeats", "1",
            "--precision", "fp32", "--channels-last", "compare", "--compare-precision", "bf16",
            "--out", str(out)]  # fmt: skip
    with pytest.raises(SystemExit) as done:
        run_script("benchmark.py", *args, monkeypatch=monkeypatch)
    assert done.value.code == 0
    r = json.loads(out.read_text())["train"]["stdc1"]
    assert r["channels_last"] == "true" and r["in_memory"] > 0 and r["in_memory_contiguous"] > 0
    assert r["channels_last_speedup"] == pytest.approx(r["in_memory"] / r["in_memory_contiguous"])
    assert r["precision"] == "fp32" and r["compare_precision"] == "bf16"
    assert r["precision_speedup"] == pytest.approx(r["in_memory"] / r["in_memory_bf16"])
    printed = capsys.readouterr().out
    assert "stdc1 in-memory: contiguous | channels-last" in printed
    assert "stdc1 in-memory: bf16 | fp32" in printed


def test_benchmark_memory_mode_reports_each_batch_size(tmp_path, monkeypatch, capsys):
    out = tmp_path / "mem.json"
    args = ["--memory", "--memory-model", "unet_resnet18", "--memory-size", "64",
            "--memory-batches", "1", "2", "--workers", "0", "--precision", "fp32",
            "--out", str(out)]  # fmt: skip
    with pytest.raises(SystemExit) as done:
        run_script("benchmark.py", *args, monkeypatch=monkeypatch)
    assert done.value.code == 0
    rows = json.loads(out.read_text())["memory"]
    saved = {
        (r["batch_size"], r["activation_checkpointing"]): r["saved_activations_mb"] for r in rows
    }
    assert set(saved) == {(1, False), (2, False), (1, True), (2, True)}
    assert saved[(2, False)] == pytest.approx(2 * saved[(1, False)], rel=0.02)  # per image
    assert saved[(1, True)] < saved[(1, False)]  # the encoder's blocks keep nothing
    assert "| size | batch_size | activation_checkpointing |" in capsys.readouterr().out
