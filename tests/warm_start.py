"""A warm interpreter for the end-to-end tests: the entry points run in real, separate processes
without paying the torch + Hydra + segkit imports (3-5 CPU-seconds) once per process.

``python tests/warm_start.py SOCKET`` imports what every entry point imports, then waits on a
Unix socket. Each request (argv, cwd, environment, new session, and the stdin/stdout/stderr file
descriptors passed over the socket) is served by ``os.fork()``: the child takes the descriptors,
the folder and the environment, and runs the script as ``__main__`` (``runpy``), exactly as
``python script.py args`` would after its imports; it ends as a Python process ends (exit
status, tracebacks, atexit). The server reports each child's pid and, when it ends, its exit
status. The child is a real process: signals, process groups, DataLoader workers, spawned
DDP ranks and torchrun behave as with a fresh interpreter.

Forking is safe here because the server starts no thread and runs no torch op before forking
(it checks its thread count). ``WarmStarter`` is the test side: ``run(...)`` returns a
``subprocess.CompletedProcess`` like ``subprocess.run(capture_output=True, text=True)``, and
``start(...)`` returns at once a ``WarmProcess``, the part of ``subprocess.Popen`` tests use.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

HEADER = struct.Struct("!I")  # the byte length of the JSON request that follows
AT_START = ("PYTHON", "OMP_", "MKL_")  # environment read before the first line of a script


# --------------------------------------------------------------------------- server
def _preload() -> None:
    """Everything ``train.py``, ``eval.py`` and the scripts import before their first line of
    work (the optimiser's import of torch._dynamo included)."""
    import cv2  # noqa: F401
    import hydra  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import torch
    import torch.distributed.run  # noqa: F401
    import torch.optim
    import torch.utils.tensorboard  # noqa: F401
    import torchvision  # noqa: F401
    from matplotlib.backends import backend_agg  # noqa: F401

    import segkit.config.checks  # noqa: F401
    import segkit.evaluation.onnx  # noqa: F401
    import segkit.run.evaluation  # noqa: F401
    import segkit.run.training  # noqa: F401

    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)  # imports torch._dynamo


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    head, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
    while len(head) < HEADER.size:
        head += conn.recv(HEADER.size - len(head))
    (size,) = HEADER.unpack(head)
    body = b""
    while len(body) < size:
        body += conn.recv(size - len(body))
    return json.loads(body), fds


def _serve(path: str) -> tuple[dict, list[int]]:
    """Fork a child per request; returns only in a child, with its request."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise SystemExit(f"warm_start: {threads} threads after the imports; forking is unsafe")
    print("ready", flush=True)
    waiting: dict[int, socket.socket] = {}  # child pid -> the connection that asked for it
    while True:
        readable, _, _ = select.select([server], [], [], 0.02)
        _reap(waiting)
        if not readable:
            continue
        conn, _ = server.accept()
        request, fds = _read_request(conn)
        pid = os.fork()
        if pid == 0:
            server.close()
            conn.close()
            for other in waiting.values():
                other.close()
            return request, fds
        for fd in fds:
            os.close(fd)
        conn.sendall(f"{pid}\n".encode())
        waiting[pid] = conn


def _reap(waiting: dict[int, socket.socket]) -> None:
    while waiting:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        conn = waiting.pop(pid, None)
        if conn is not None:
            conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
            conn.close()


def _become(request: dict, fds: list[int]) -> None:
    """Turn this forked child into ``python argv...`` started in ``cwd`` with ``env``."""
    import random

    import numpy as np

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    if request["new_session"]:
        os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    random.seed()  # a fresh interpreter seeds these from the OS
    np.random.seed()
    argv = request["argv"]
    if argv[0] == "-m":
        sys.argv = argv[1:]
        sys.path[0] = os.getcwd()
    else:
        sys.argv = argv
        sys.path[0] = str(Path(argv[0]).resolve().parent)


def _main() -> None:
    import runpy

    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (the children get their own)
    _preload()
    sys.stdout = sys.__stdout__
    request, fds = _serve(sys.argv[1])
    _become(request, fds)
    if request["argv"][0] == "-m":
        runpy.run_module(request["argv"][1], run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(request["argv"][0], run_name="__main__")


# --------------------------------------------------------------------------- test side
class WarmStarter:
    """A server started once (per test process); ``run()`` serves each entry-point command."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.path = str(folder / "warm.sock")
        self.env = env
        self.server = subprocess.Popen(
            [sys.executable, __file__, self.path],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a test's Ctrl-C to its own group does not reach it
        )
        line = self.server.stdout.readline()
        if line.strip() != "ready":
            self.server.kill()
            raise RuntimeError(f"warm_start did not start (exit {self.server.wait()})")

    def serves(self, env: dict[str, str]) -> bool:
        """Whether a command with ``env`` can run warm: variables read at interpreter or torch
        start (``PYTHON*``: the path, site hooks; thread counts) must equal the server's."""
        keys = {k for k in {*env, *self.env} if k.startswith(AT_START)}
        return self.server.poll() is None and all(env.get(k) == self.env.get(k) for k in keys)

    def start(
        self, argv: list[str], cwd: Path, env: dict[str, str], new_session: bool, fds: list[int]
    ) -> WarmProcess:
        """Fork ``python argv...`` with ``fds`` as its stdin, stdout and stderr (closed here once
        sent); returns at once, with the child's pid."""
        request = {"argv": argv, "cwd": str(cwd), "env": env, "new_session": new_session}
        body = json.dumps(request).encode()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.path)
        try:
            socket.send_fds(conn, [HEADER.pack(len(body))], fds)
            conn.sendall(body)
        finally:
            for fd in fds:
                os.close(fd)
        return WarmProcess([sys.executable, *argv], conn)

    def run(
        self, argv: list[str], cwd: Path, env: dict[str, str], timeout: float, new_session: bool
    ) -> subprocess.CompletedProcess:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        stdin = os.open(os.devnull, os.O_RDONLY)
        proc = self.start(argv, cwd, env, new_session, [stdin, out_w, err_w])
        deadline = time.monotonic() + timeout
        try:
            out, err = _drain({out_r: [], err_r: []}, deadline)
            code = proc.wait(max(deadline - time.monotonic(), 0.001))
        except subprocess.TimeoutExpired:
            proc.kill()
            raise subprocess.TimeoutExpired(proc.args, timeout) from None
        return subprocess.CompletedProcess(proc.args, code, out, err)

    def close(self) -> None:
        self.server.terminate()
        self.server.wait()
        Path(self.path).unlink(missing_ok=True)


class WarmProcess:
    """A forked command as much of ``subprocess.Popen`` as the tests use: ``pid``, ``poll()``,
    ``wait(timeout)``, ``kill()`` and ``returncode`` (the server sends the exit status)."""

    def __init__(self, args: list[str], conn: socket.socket) -> None:
        self.args, self.conn, self.returncode = args, conn, None
        self.pid = int(_read_line(conn, time.monotonic() + 30))

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            deadline = time.monotonic() + (1e9 if timeout is None else timeout)
            try:
                self.returncode = int(_read_line(self.conn, deadline))
            except subprocess.TimeoutExpired:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
            self.conn.close()
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self.conn], [], [], 0)[0]:
            self.wait()
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            _kill(self.pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _drain(chunks: dict[int, list[bytes]], deadline: float) -> tuple[str, str]:
    """Read both pipes to their end (as ``communicate`` does) by ``deadline``."""
    fds = list(chunks)
    open_fds = set(fds)
    try:
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired("warm_start", left)
            readable, _, _ = select.select(list(open_fds), [], [], left)
            for fd in readable:
                data = os.read(fd, 1 << 16)
                if data:
                    chunks[fd].append(data)
                else:
                    open_fds.discard(fd)
    finally:
        for fd in fds:
            os.close(fd)
    # as subprocess's text mode: universal newlines
    out, err = (
        b"".join(chunks[fd]).decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n")
        for fd in fds
    )
    return out, err


def _read_line(conn: socket.socket, deadline: float) -> str:
    data = b""
    while not data.endswith(b"\n"):
        conn.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            part = conn.recv(64)
        except TimeoutError:
            raise subprocess.TimeoutExpired("warm_start", 0) from None
        if not part:
            raise RuntimeError("warm_start: the server closed the connection")
        data += part
    return data.decode().strip()


if __name__ == "__main__":
    _main()
