"""MLflow runs (``logger=mlflow``, the ``mlflow`` extra): scalars, params, figures, tables and
the best weights on a tracking server; what the server did not take is kept and sent later
(:func:`send_unsent`, ``scripts/send_unsent.py``)."""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segkit.reporting.experiment_logger import RunContext
from segkit.reporting.unsent import UnsentLog, digest, read_unsent

log = logging.getLogger("segkit")

PARAM_MAX_CHARS = 6000  # MLflow's limit on a param value
METRICS_PER_REQUEST, PARAMS_PER_REQUEST = 1000, 100  # log_batch's limits
SENT_TAG = "segkit.unsent_sent"  # the digest of an unsent file this run has received
SEND_COMMAND = "python scripts/send_unsent.py {run_dir}"


class MLflowLogger:
    """One MLflow run per training run, in experiment ``experiment_name`` on ``tracking_uri``.

    A resumed run (``context.run_id`` from the checkpoint) continues its run; values it logs
    again for steps the run already holds are skipped, as W&B does. A sweep job's run is a
    child of one parent run per sweep. Scalars are buffered and sent once per epoch and per
    validation (one request each). The first request that fails (server down) logs one
    warning; from then on everything is appended to ``run_dir/unsent/mlflow.jsonl`` and
    :meth:`close` says how to send it.

    Args:
        tracking_uri: ``http://host:port`` of an ``mlflow server`` (or any MLflow store URI).
        experiment_name: created when missing.
        run_name: None -> the run folder's name.
        tags: extra run tags.
        log_model: log the best checkpoint's ``.safetensors`` file as an artifact at the end.
        request_timeout_s, request_retries: per HTTP request; few, so a server that is down
            costs seconds once, not minutes per call (MLflow's own default retries 7 times).
    """

    name = "mlflow"
    requires = ("mlflow", "mlflow")  # (python package, segkit extra)

    def __init__(
        self,
        context: RunContext,
        *,
        tracking_uri: str,
        experiment_name: str = "segkit",
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        log_model: bool = False,
        request_timeout_s: float = 10.0,
        request_retries: int = 2,
    ) -> None:
        import mlflow  # the optional extra, checked before the run
        from mlflow.tracking import MlflowClient

        # mlflow reads these at each request; the config states them (see the docstring)
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(request_timeout_s, 1)))
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(int(request_retries))
        self.uri, self.context, self.log_model = tracking_uri, context, log_model
        # artifact uploads through the server (mlflow-artifacts:/) find it by the global URI
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        self.unsent = UnsentLog(context.run_dir, self.name)
        self.run_id: str | None = context.run_id
        self.down: str | None = None  # why the server was given up on
        self._metrics: list[tuple[str, float, int, int]] = []  # (key, value, step, ms)
        self._last_step: dict[str, int] = {}  # of a resumed run: steps it holds already
        self._header = {
            "kind": "run",
            "tracking_uri": tracking_uri,
            "experiment": experiment_name,
            "run_name": run_name or context.name,
            "tags": {**context.tags, **(tags or {}), "segkit.run_dir": str(context.run_dir)},
            "group": context.group,
        }
        self._send(lambda: self._open(), lambda: None, "open the run")

    # ----------------------------------------------------------------- the run
    def _open(self) -> None:
        experiment_id = experiment_for(self.client, self._header["experiment"])
        if self.run_id is not None:  # a resume: the same run goes on
            self.client.update_run(self.run_id, status="RUNNING")
            self._last_step = last_steps(self.client, self.run_id)
            return
        tags = dict(self._header["tags"])
        if self._header["group"]:
            tags["segkit.sweep"] = self._header["group"]
            tags["mlflow.parentRunId"] = sweep_parent(self.client, experiment_id, self._header)
        run = self.client.create_run(experiment_id, run_name=self._header["run_name"], tags=tags)
        self.run_id = run.info.run_id
        log.info("mlflow: run %s in experiment %s at %s", self.run_id, experiment_id, self.uri)

    def _send(self, send: Callable[[], None], keep: Callable[[], dict | None], what: str) -> None:
        """``send()`` unless the server is down; on failure (or when down) ``keep()`` returns
        the record to append to the unsent file (None: nothing to keep)."""
        if self.down is None:
            try:
                send()
                return
            except Exception as e:  # any failure of a tracking call must not stop training
                self._went_down(e, what)
        record = keep()
        if record is not None:
            self.unsent.add(record, record.pop("_count", 1))

    def _went_down(self, error: Exception, what: str) -> None:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        self.down = f"{type(error).__name__}: {first}"
        log.warning(
            "mlflow: could not %s on %s (%s); training goes on and keeps what MLflow did not "
            "get in %s; the end of the run says how to send it",
            what,
            self.uri,
            self.down,
            self.unsent.path,
        )
        self.unsent.add({**self._header, "run_id": self.run_id}, 0)

    # ----------------------------------------------------------------- records
    def log_params(self, params: dict[str, Any]) -> None:
        if self.context.run_id is None:  # a resumed run has them (params cannot change)
            self._log_params(params)

    def _log_params(self, params: dict[str, Any]) -> None:
        plain = {k: str(v)[:PARAM_MAX_CHARS] for k, v in params.items()}
        if not plain:
            return
        self._send(
            lambda: self._send_params(plain),
            lambda: {"kind": "params", "params": plain, "_count": len(plain)},
            "log the params",
        )

    def _send_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_REQUEST):
            self.client.log_batch(self.run_id, params=items[i : i + PARAMS_PER_REQUEST])

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        ms = int(time.time() * 1000)
        for key, value in scalars.items():
            if step > self._last_step.get(key, -1):
                self._metrics.append((key, float(value), int(step), ms))

    def flush(self, step: int) -> None:
        batch, self._metrics = self._metrics, []
        if batch:
            self._send(
                lambda: self._send_metrics(batch),
                lambda: {"kind": "metrics", "metrics": batch, "_count": len(batch)},
                "log metrics",
            )

    def _send_metrics(self, batch: list[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric

        items = [Metric(k, v, ms, s) for k, v, s, ms in batch]
        for i in range(0, len(items), METRICS_PER_REQUEST):
            self.client.log_batch(self.run_id, metrics=items[i : i + METRICS_PER_REQUEST])

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        name = f"{tag.replace('|', '_')}/step_{step:07d}.png"  # val/confusion/step_0000012.png

        def keep() -> dict:
            path = self.unsent.files / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
            return {"kind": "file", "file": name, "artifact_path": str(Path(name).parent)}

        send = lambda: self.client.log_image(self.run_id, image, artifact_file=name)  # noqa: E731
        self._send(send, keep, "log an image")

    def log_table(self, tag: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        data = {c: [row[i] for row in rows] for i, c in enumerate(columns)}
        name = f"{tag}/step_{step:07d}.json"
        self._send(
            lambda: self.client.log_table(self.run_id, data, name),
            lambda: {"kind": "table", "data": data, "artifact_file": name},
            "log a table",
        )

    def log_hparams(
        self, hparams: dict[str, Any], varied: Sequence[str], metrics: Sequence[str]
    ) -> None:
        """The hparams not yet params (params_M, gflops) as params; ``varied`` as a tag."""
        self._log_params({k: v for k, v in hparams.items() if k in ("params_M", "gflops")})
        tag = ",".join(varied)
        if tag:
            self._send(
                lambda: self.client.set_tag(self.run_id, "segkit.varied", tag),
                lambda: {"kind": "tags", "tags": {"segkit.varied": tag}},
                "set a tag",
            )

    def log_artifact(self, path: Path) -> None:
        if not self.log_model or path.suffix != ".safetensors":
            return
        self._send(
            lambda: self.client.log_artifact(self.run_id, str(path), "model"),
            lambda: {"kind": "file", "file": str(path.resolve()), "artifact_path": "model"},
            "log an artifact",
        )

    def close(self, finished: bool) -> list[str]:
        """Send the buffered scalars and end the run (FINISHED, or KILLED when interrupted:
        a resume sets it running again)."""
        self.flush(-1)
        status = "FINISHED" if finished else "KILLED"
        self._send(
            lambda: self.client.set_terminated(self.run_id, status),
            lambda: {"kind": "end", "status": status},
            "end the run",
        )
        if self.down is None:
            return []
        run_dir = self.context.run_dir
        return [
            f"not logged to {self.uri} ({self.down}): {self.unsent.summary()}; kept in "
            f"{self.unsent.path}; send it with: {SEND_COMMAND.format(run_dir=run_dir)}"
        ]


# --------------------------------------------------------------------------- helpers
def experiment_for(client: Any, name: str) -> str:
    """The id of experiment ``name``, created when missing (another job may create it first)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # RESOURCE_ALREADY_EXISTS: a parallel job created it
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def sweep_parent(client: Any, experiment_id: str, header: dict) -> str:
    """The parent run of the sweep ``header["group"]`` (one per sweep), made by the first job;
    a lock file in the sweep folder keeps parallel jobs from making two."""
    group = header["group"]
    lock = Path(group) / ".mlflow-parent.lock"
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        quoted = group.replace("'", "\\'")
        query = f"tags.`segkit.sweep` = '{quoted}' and tags.`segkit.sweep_parent` = 'true'"
        found = client.search_runs([experiment_id], filter_string=query, max_results=1)
        if found:
            return found[0].info.run_id
        tags = {"segkit.sweep": group, "segkit.sweep_parent": "true"}
        run = client.create_run(experiment_id, run_name=f"sweep {Path(group).name}", tags=tags)
        client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id


def last_steps(client: Any, run_id: str) -> dict[str, int]:
    """``{metric: last step}`` a run holds (one request per metric, once per resume)."""
    keys = client.get_run(run_id).data.metrics
    return {k: max(m.step for m in client.get_metric_history(run_id, k)) for k in keys}


def send_unsent(run_dir: Path, tracking_uri: str | None = None) -> str:
    """Send ``run_dir/unsent/mlflow.jsonl`` to its server (or ``tracking_uri``): into the
    run it belonged to, or a new run when the server was down from the start. A run that got
    this file already is left alone. Returns what was done, in words."""
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    path = Path(run_dir) / "unsent" / "mlflow.jsonl"
    records = read_unsent(path)
    header = next(r for r in records if r["kind"] == "run")
    mlflow.set_tracking_uri(tracking_uri or header["tracking_uri"])  # for artifact uploads
    client = MlflowClient(tracking_uri or header["tracking_uri"])
    run_id, mark = header.get("run_id"), digest(path)
    if run_id is None:
        tags = dict(header["tags"])
        experiment_id = experiment_for(client, header["experiment"])
        run = client.create_run(experiment_id, run_name=header["run_name"], tags=tags)
        run_id = run.info.run_id
    elif client.get_run(run_id).data.tags.get(SENT_TAG) == mark:
        return f"{path} was sent to run {run_id} already; nothing to do"
    files = path.with_suffix("")
    for r in records:
        if r["kind"] == "params":
            items = [Param(k, v) for k, v in r["params"].items()]
            for i in range(0, len(items), PARAMS_PER_REQUEST):
                client.log_batch(run_id, params=items[i : i + PARAMS_PER_REQUEST])
        elif r["kind"] == "metrics":
            items = [Metric(k, v, ms, s) for k, v, s, ms in r["metrics"]]
            for i in range(0, len(items), METRICS_PER_REQUEST):
                client.log_batch(run_id, metrics=items[i : i + METRICS_PER_REQUEST])
        elif r["kind"] == "file":
            client.log_artifact(run_id, str(files / r["file"]), r["artifact_path"])
        elif r["kind"] == "table":
            client.log_table(run_id, r["data"], r["artifact_file"])
        elif r["kind"] == "tags":
            for key, value in r["tags"].items():
                client.set_tag(run_id, key, value)
        elif r["kind"] == "end":
            client.set_terminated(run_id, r["status"])
    client.set_tag(run_id, SENT_TAG, mark)
    return f"sent {len(records)} records of {path} to run {run_id} on {client.tracking_uri}"
