"""Experiment loggers against the real thing: one ``mlflow server`` (SQLite backend store, a
temporary artifact root) on 127.0.0.1 for every test here, W&B in offline mode.

- a run killed by SIGTERM and resumed is ONE MLflow run whose every metric equals metrics.csv
  row by row, with the config as params and best.safetensors as an artifact;
- a run whose server goes away mid-run finishes, says what was not logged and how to send it;
  the printed command sends it, after which MLflow holds what metrics.csv holds; the W&B
  offline run of the same training, read back from its run file, holds the same metrics.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from segkit.io import checkpoint as ck
from segkit.losses import CrossEntropyLoss
from tests.conftest import FIGURES, TINY, compose_train, run_cli

pytestmark = pytest.mark.xdist_group("mlflow_server")  # one server: one worker runs them all

BASE = [*TINY, FIGURES, "trainer.log_every=1", "dataset.check=off"]  # 2 epochs of 6 steps


class Server:
    def __init__(self, folder: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--workers", "1"]
        cmd += ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
        cmd += ["--artifacts-destination", str(folder / "artifacts")]
        self.log = open(folder / "server.log", "w")
        self.proc = subprocess.Popen(  # its own process group: gunicorn's workers stop with it
            cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True
        )

    def wait(self, timeout: float = 180) -> None:
        end = time.time() + timeout
        while time.time() < end:
            assert self.proc.poll() is None, "mlflow server exited (see server.log)"
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("mlflow server did not start")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    server = Server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        server.wait()
        yield server
    finally:
        server.stop()


def client(server: Server):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(server.uri)  # artifact downloads find the server by the global URI
    return MlflowClient(server.uri)


def history(c, run_id: str, key: str) -> dict[int, float]:
    """``{step: value}`` of one metric; every step at most once."""
    points = c.get_metric_history(run_id, key)
    steps = [m.step for m in points]
    assert len(steps) == len(set(steps)), f"{key}: a step logged twice: {sorted(steps)}"
    return {m.step: m.value for m in points}


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_metrics_equal_csv(c, run_id: str, run_dir: Path) -> None:
    """Every metrics.csv value, row by row, is the MLflow metric of the same name at the
    row's step (``iou/<class>`` -> ``val_iou/<class>``), exactly."""
    rows = csv_rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    pairs = {"train_loss": "train/loss_epoch", "val_loss": "val/loss", "miou": "val/mIoU"}
    pairs["pixel_acc"] = "val/pixel_acc"
    pairs.update({k: f"val_iou/{k[4:]}" for k in rows[0] if k.startswith("iou/")})
    for column, key in pairs.items():
        logged = history(c, run_id, key)
        expected = {int(r["step"]): float(r[column]) for r in rows if r[column] not in ("", "nan")}
        assert logged == expected, key


# --------------------------------------------------------------------------- SIGTERM + resume
def test_sigterm_then_resume_is_one_mlflow_run_equal_to_metrics_csv(mlflow_server, tmp_path):
    mlflow = [
        "logger=[tensorboard,mlflow]",
        f"logger.mlflow.tracking_uri={mlflow_server.uri}",
        "logger.mlflow.experiment_name=sigterm",
        "logger.mlflow.log_model=true",
    ]
    signal = ["loss._target_=tests.faults.SignalingCrossEntropy", "+loss.signal_at_step=8"]
    args = [*BASE, *mlflow, *signal, "hydra.run.dir=run"]
    first = run_cli("train.py", *args, cwd=tmp_path, timeout=600)
    assert first.returncode == 143, first.stderr[-3000:]
    run_dir = tmp_path / "run"
    run_id = ck.load(run_dir / "checkpoints" / "interrupt.pt")["tracking"]["mlflow"]
    c = client(mlflow_server)
    assert c.get_run(run_id).info.status == "KILLED"
    again = run_cli("train.py", *args, "resume=auto", cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "not logged" not in again.stderr + again.stdout

    experiment = c.get_experiment_by_name("sigterm")
    runs = c.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # one run, not two
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert ck.load(run_dir / "checkpoints" / "last.pt")["tracking"] == {"mlflow": run_id}
    assert_metrics_equal_csv(c, run_id, run_dir)
    assert sorted(history(c, run_id, "train/loss")) == list(range(1, 13))  # every step, once
    params = run.data.params
    assert params["model.base_channels"] == "4" and params["loader.batch_size"] == "4"
    assert params["model.class"] == "UNet" and params["trainer.max_epochs"] == "2"
    assert params["loss._target_"] == "tests.faults.SignalingCrossEntropy"
    assert float(params["params_M"]) > 0  # logged at the end of the resumed run
    assert "loss.signal_at_step=8" in run.data.tags["segkit.overrides"]
    artifacts = {a.path for a in c.list_artifacts(run_id, "model")}
    assert artifacts == {"model/best.safetensors"}
    local = Path(c.download_artifacts(run_id, "model/best.safetensors", str(tmp_path)))
    assert local.read_bytes() == (run_dir / "checkpoints" / "best.safetensors").read_bytes()
    pictures = {a.path for a in c.list_artifacts(run_id, "val/confusion")}
    assert pictures == {"val/confusion/step_0000006.png", "val/confusion/step_0000012.png"}
    table = c.list_artifacts(run_id, "val/per_class_iou")
    assert len(table) == 2


# --------------------------------------------------------------------------- server gone mid-run
class Proxy:
    """A TCP forwarder to the server: the address the run logs to. ``cut()`` closes it and
    every connection through it: from the run's side the server is gone (connection refused)."""

    def __init__(self, port: int) -> None:
        self.target, self.conns = port, []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        for s in [self.sock, *self.conns]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


PROXIES: list[Proxy] = []


class CutAtStep(CrossEntropyLoss):
    """Cross-entropy that cuts the newest :class:`Proxy` on training call ``cut_at_step``."""

    def __init__(self, *args, cut_at_step: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cut_at_step, self.calls = cut_at_step, 0

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        if not torch.is_inference_mode_enabled():
            self.calls += 1
            if self.calls == self.cut_at_step:
                PROXIES[-1].cut()
        return super().forward(outputs, target)


def wandb_records(path: Path) -> list:
    """The protobuf records of a W&B ``.wandb`` file, read without the wandb SDK's reader: a
    7-byte header, then LevelDB-log chunks (crc32, length, type) in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, block = path.read_bytes(), 32768
    assert raw[:4] == b":W&B"
    pos, parts, out = 7, b"", []
    while pos + 7 <= len(raw):
        space = block - pos % block
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if space < 7 or (length == 0 and kind == 0):  # block trailer / padding
            pos += space
            continue
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        parts = data if kind in (1, 2) else parts + data  # full / first; middle / last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            out.append(record)
    return out


def wandb_history(run_file: Path) -> tuple[dict[int, dict], dict]:
    """``({step: {key: value}}, config)`` of a W&B run file."""
    steps: dict[int, dict] = {}
    config: dict = {}
    for r in wandb_records(run_file):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            items = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item
            }
            steps.setdefault(int(items["_step"]), {}).update(items)
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
    return steps, config


def test_server_gone_mid_run_then_sent_and_wandb_offline(
    mlflow_server, tmp_path, caplog, monkeypatch, segkit_cache
):
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    from segkit.run import train_rank

    for var in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.setenv(var, "")  # the logger sets them; restored after the test
    PROXIES.append(Proxy(mlflow_server.port))
    cfg = compose_train(
        *BASE,
        "logger=[tensorboard,mlflow,wandb]",
        f"logger.mlflow.tracking_uri={PROXIES[-1].uri}",
        "logger.mlflow.experiment_name=cut",
        "logger.mlflow.request_retries=0",
        "logger.wandb.mode=offline",
        f"loss._target_={__name__}.CutAtStep",
        "+loss.cut_at_step=8",  # epoch 2: epoch 1 reached the server
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with caplog.at_level("INFO", logger="segkit"):
        train_rank(cfg, run_dir)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "finished" and len(csv_rows(run_dir)) == 2
    assert (run_dir / "checkpoints" / "best.safetensors").is_file()
    assert caplog.text.count("mlflow: could not") == 1  # warned once
    [end] = [r.getMessage() for r in caplog.records if "not logged to" in r.getMessage()]
    command = f"python scripts/send_unsent.py {run_dir}"
    assert end.startswith(f"mlflow: not logged to {PROXIES[-1].uri}") and end.endswith(command)
    assert "metric values" in end and "files" in end

    c = client(mlflow_server)
    run_id = ck.load(run_dir / "checkpoints" / "last.pt")["tracking"]["mlflow"]
    assert sorted(history(c, run_id, "val/mIoU")) == [6]  # epoch 1 only, before the cut
    sent = run_cli(
        command.split()[1], str(run_dir), "--tracking-uri", mlflow_server.uri, cwd=tmp_path
    )
    assert sent.returncode == 0, sent.stderr[-3000:]
    assert f"to run {run_id}" in sent.stdout
    assert_metrics_equal_csv(c, run_id, run_dir)
    assert sorted(history(c, run_id, "train/loss")) == list(range(1, 13))
    assert c.get_run(run_id).info.status == "FINISHED"
    again = run_cli(
        command.split()[1], str(run_dir), "--tracking-uri", mlflow_server.uri, cwd=tmp_path
    )
    assert again.returncode == 0 and "already" in again.stdout  # sending twice: no duplicates

    # the W&B offline run of the same training, read back from its own run file
    [run_file] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    tracking = ck.load(run_dir / "checkpoints" / "last.pt")["tracking"]
    assert run_file.name == f"run-{tracking['wandb']}.wandb"  # the id a resume continues
    steps, config = wandb_history(run_file)
    assert sorted(steps) == list(range(1, 13))
    for row in csv_rows(run_dir):
        logged = steps[int(row["step"])]
        assert logged["train/loss_epoch"] == float(row["train_loss"])
        assert logged["val/mIoU"] == float(row["miou"]) and logged["val/loss"] == float(
            row["val_loss"]
        )
        for key in (k for k in row if k.startswith("iou/") and row[k] != "nan"):
            assert logged[f"val_iou/{key[4:]}"] == float(row[key]), key
        assert logged["val/confusion/_type"] == "image-file"
        assert logged["val/per_class_iou/_type"] == "table-file"
    assert config["model.base_channels"] == 4 and config["loader.batch_size"] == 4


# --------------------------------------------------------------------------- sweeps
def test_sweep_jobs_are_children_of_one_parent_run(mlflow_server, tmp_path, monkeypatch):
    from segkit.reporting.experiment_logger import RunContext
    from segkit.reporting.mlflow_logger import MLflowLogger

    for var in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.setenv(var, "")
    sweep = tmp_path / "multirun"
    jobs = []
    for num, lr in enumerate((0.1, 0.01)):
        (sweep / str(num)).mkdir(parents=True)  # Hydra made the job folders
        context = RunContext(sweep / str(num), group=str(sweep), name=str(num))
        job = MLflowLogger(context, tracking_uri=mlflow_server.uri, experiment_name="sweep")
        job.log_params({"optimizer.lr": lr})
        job.log_hparams({}, ["optimizer.lr"], [])
        assert job.close(finished=True) == []
        jobs.append(job.run_id)
    c = client(mlflow_server)
    runs = {
        r.info.run_id: r for r in c.search_runs([c.get_experiment_by_name("sweep").experiment_id])
    }
    parents = {runs[j].data.tags["mlflow.parentRunId"] for j in jobs}
    assert len(runs) == 3 and len(parents) == 1  # two jobs, one parent
    parent = runs[parents.pop()]
    assert (
        parent.data.tags["segkit.sweep"] == str(sweep) and parent.info.run_name == "sweep multirun"
    )
    assert [runs[j].data.params["optimizer.lr"] for j in jobs] == ["0.1", "0.01"]
    assert {runs[j].data.tags["segkit.varied"] for j in jobs} == {"optimizer.lr"}
