"""The MLflow logger on the real mlflow client whose server is down: everything is kept in
``unsent/``, one warning, and the command that sends it (the server itself:
tests/e2e/test_loggers.py)."""

from __future__ import annotations

import logging
import socket

import numpy as np
import pytest

from segkit.reporting.experiment_logger import RunContext
from segkit.reporting.unsent import read_unsent


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def test_mlflow_with_its_server_down_keeps_everything_and_warns_once(tmp_path, caplog, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from segkit.reporting.mlflow_logger import MLflowLogger

    for var in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.setenv(var, "")  # restored after the test (the logger sets them)
    uri = f"http://127.0.0.1:{_closed_port()}"
    with caplog.at_level(logging.INFO, logger="segkit"):
        lg = MLflowLogger(RunContext(tmp_path, name="run-a"), tracking_uri=uri, request_retries=0)
        lg.log_params({"optimizer.lr": 0.01, "model.base_channels": 4})
        lg.log_scalars(5, {"train/loss": 1.25, "train/lr": 0.01})
        lg.flush(5)
        lg.log_image("val/image|label|pred", np.full((4, 6, 3), 200, np.uint8), 5)
        lg.log_table("val/per_class_iou", ["class", "iou"], [["a", 0.5], ["b", None]], 5)
        lg.log_scalars(10, {"train/loss": 1.0})
        lines = lg.close(finished=True)
    assert caplog.text.count("mlflow: could not open the run") == 1
    assert caplog.text.count("WARNING") == 1  # one warning, however many records follow
    assert lg.run_id is None  # the server never made one
    records = read_unsent(tmp_path / "unsent" / "mlflow.jsonl")
    assert [r["kind"] for r in records] == [
        "run",
        "params",
        "metrics",
        "file",
        "table",
        "metrics",
        "end",
    ]
    assert records[0]["tracking_uri"] == uri and records[0]["run_name"] == "run-a"
    assert records[1]["params"] == {"optimizer.lr": "0.01", "model.base_channels": "4"}
    assert [m[:3] for m in records[2]["metrics"]] == [
        ["train/loss", 1.25, 5],
        ["train/lr", 0.01, 5],
    ]
    assert records[4]["data"] == {"class": ["a", "b"], "iou": [0.5, None]}
    from PIL import Image

    picture = np.asarray(Image.open(tmp_path / "unsent" / "mlflow" / records[3]["file"]))
    assert picture.shape == (4, 6, 3) and (picture == 200).all()
    assert records[6] == {"kind": "end", "status": "FINISHED"}
    assert len(lines) == 1 and lines[0].startswith(f"not logged to {uri} (")
    for kept in ("3 metric values", "2 params", "1 files", "1 table"):
        assert kept in lines[0]
    assert lines[0].endswith(f"send it with: python scripts/send_unsent.py {tmp_path}")
