"""Parameter and FLOP counts against hand-computed values; the scripts on a tiny model (the
training benchmark's comparisons and memory mode: tests/integration/test_benchmarks.py)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from segkit.errors import ConfigError
from segkit.models import BiSeNetV2
from segkit.reporting.complexity import (
    complexity_report,
    count_flops,
    count_parameters,
    format_report,
)
from tests.conftest import load_script

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def tiny_net() -> nn.Sequential:
    # conv: 3*8*3*3 + 8 = 224 params; linear: 8*8*8*10 + 10 = 5130 params
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


def test_count_parameters_exact():
    net = tiny_net()
    assert count_parameters(net) == (5354, 5354)
    net[0].requires_grad_(False)
    assert count_parameters(net) == (5354, 5130)


def test_shared_parameters_counted_once():
    layer = nn.Linear(4, 4)  # 20 params
    assert count_parameters(nn.Sequential(layer, nn.ReLU(), layer)) == (20, 20)


def test_count_flops_by_hand():
    # conv: 2 * (3*3*3 MACs per output) * 8 channels * 8*8 positions = 27648
    # linear: 2 * 512 * 10 = 10240; bias adds and activations are not counted
    assert count_flops(tiny_net(), (1, 3, 8, 8)) == 27648 + 10240
    assert count_flops(tiny_net(), (2, 3, 8, 8)) == 2 * (27648 + 10240)
    # depthwise 3x3 on 4x5x5, no padding -> 3x3 output: 2 * 9 * 4 * 9 = 648
    assert count_flops(nn.Conv2d(4, 4, 3, groups=4), (1, 4, 5, 5)) == 648


def test_count_flops_restores_mode_and_uses_eval():
    net = tiny_net().train()
    count_flops(net, (1, 3, 8, 8))
    assert net.training
    net.eval()
    count_flops(net, (1, 3, 8, 8))
    assert not net.training
    # eval mode: the aux heads (training only) cost nothing
    with_aux, without = BiSeNetV2(3, aux=True).train(), BiSeNetV2(3, aux=False)
    assert count_flops(with_aux, (1, 3, 32, 32)) == count_flops(without, (1, 3, 32, 32))
    assert with_aux.training


def test_complexity_report_and_format():
    report = complexity_report(tiny_net(), (8, 8))
    assert report == {
        "params_total": 5354,
        "params_trainable": 5354,
        "flops": 37888,
        "macs": 18944,
        "input_size": [8, 8],
    }
    text = format_report(report)
    assert "params 0.01 M" in text and "GFLOPs" in text and "8x8" in text


def run_script(name: str, *args: str, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(SCRIPTS / name), run_name="__main__")


def test_complexity_script(tmp_path, monkeypatch, capsys):
    out = tmp_path / "c.json"
    run_script("complexity.py", "--model", "unet", "--size", "32", "32", "--json", str(out),
               monkeypatch=monkeypatch)  # fmt: skip
    assert "unet" in capsys.readouterr().out
    report = json.loads(out.read_text())["unet"]
    assert report["input_size"] == [32, 32] and report["flops"] == 2 * report["macs"] > 0


def test_benchmark_script_writes_json(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    args = ["--model", "unet", "--size", "32", "32", "--batch-sizes", "1", "--warmup", "0",
            "--iters", "2", "--precisions", "fp32", "fp16", "--out", str(out)]  # fmt: skip
    run_script("benchmark_latency.py", *args, monkeypatch=monkeypatch)
    result = json.loads(out.read_text())
    assert result["device_type"] == "cpu" and result["torch"] == torch.__version__
    fp32, fp16 = result["results"]
    assert fp32["model"] == "unet" and fp32["iters"] == 2
    assert 0 < fp32["median_ms"] <= fp32["p90_ms"]
    assert "skipped" in fp16  # fp16 is not benchmarked on CPU


@pytest.mark.parametrize("bad", [["--model", "nope"]])
def test_complexity_script_unknown_model(bad, monkeypatch):
    with pytest.raises(ConfigError, match="choose one of"):
        run_script("complexity.py", *bad, monkeypatch=monkeypatch)


def test_saved_activations_count_what_autograd_keeps_by_hand():
    """conv(3->4) then ReLU on 1x3x8x8 float32: the conv keeps its input (3*64*4 = 768 B; its
    weight is a parameter, not counted), the ReLU its output (4*64*4 = 1024 B)."""
    bench = load_script("benchmark")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU())
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    with bench.SavedActivations(model.parameters()) as saved:
        model(x).sum().backward()
    assert sum(saved.storages.values()) == 768 + 1024
