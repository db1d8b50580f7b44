"""A throwaway one-node SLURM cluster on localhost (as root): a munge key, a generated
``slurm.conf`` in a temporary folder, ``munged``, ``slurmctld`` and ``slurmd``; the test fixture
of ``tests/e2e/test_slurm.py``, and a command a user can run to try ``hydra/launcher=slurm``::

    python tests/e2e/slurm_cluster.py            # prints `export SLURM_CONF=...`; Ctrl-C stops it

Needs Debian's ``slurm-wlm`` and ``munge`` (``apt-get install -y slurm-wlm munge``). No cgroups
(``proctrack/linuxproc``, ``task/none``), no accounting database (``sacct`` has nothing: submitit
then tells a finished job by its result file). The node advertises ``cpus`` CPUs whatever the
machine has (``config_overrides``), so several tiny jobs run at once."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
PACKAGES = ("slurm-wlm", "munge")  # Debian's


def missing_programs() -> list[str]:
    """The daemons and client commands of the cluster that are not installed."""
    return [p for p in (*DAEMONS, *CLIENTS) if shutil.which(p) is None]


def install_packages() -> str | None:
    """``apt-get install slurm-wlm munge`` where that can work (root, apt-get present); returns
    why the programs are still missing, None once they are there."""
    if not missing_programs():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{', '.join(missing_programs())} not installed (apt-get install slurm-wlm munge)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            return f"{' '.join(cmd)} failed: {proc.stderr.strip()[-300:]}"
    return None if not missing_programs() else f"{missing_programs()} still missing"


def node_name() -> str:
    """The one node's name: this machine's short host name, which resolves (torch's ranks
    meet at the job's first node, by name)."""
    return socket.gethostname().split(".")[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(folder: Path, cpus: int, memory_mb: int) -> str:
    """The cluster's ``slurm.conf``: everything under ``folder``, free ports, one node (this
    machine) on 127.0.0.1 in the default partition ``debug``. A requeued job may start again
    ``cred_expire`` seconds later (SLURM's default: 120) and the scheduler runs every 2 s."""
    host = node_name()
    return f"""\
ClusterName=segkit-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.socket,cred_expire=10
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1,sched_min_interval=100000
JobRequeue=1
KillWait=10
MinJobAge=600
InactiveLimit=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


class SlurmCluster:
    """``start()`` writes the folder and starts the daemons; ``stop()`` ends every daemon it
    started (by pid) and leaves the folder (its logs) in place. ``env`` is what a client needs
    (``SLURM_CONF``)."""

    def __init__(self, folder: Path, cpus: int = 16, memory_mb: int = 64000) -> None:
        self.folder, self.cpus, self.memory_mb = folder, cpus, memory_mb
        self.procs: list[subprocess.Popen] = []

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def start(self, timeout_s: float = 60.0) -> SlurmCluster:
        f = self.folder
        for d in ("state", "spool"):
            (f / d).mkdir(parents=True, exist_ok=True)
        key = f / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.conf.write_text(slurm_conf(f, self.cpus, self.memory_mb))
        munge = ["munged", "-F", "-f", f"--key-file={key}", f"--socket={f}/munge.socket"]
        munge += [f"--pid-file={f}/munged.pid", f"--log-file={f}/munged.log"]
        munge += [f"--seed-file={f}/munged.seed"]
        self._daemon(munge, "munged")
        self._wait(lambda: (f / "munge.socket").exists(), timeout_s, "munged's socket")
        self._daemon(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld")
        self._daemon(["slurmd", "-D", "-N", node_name(), "-f", str(self.conf)], "slurmd")
        self._wait(self.node_idle, timeout_s, "the node idle in sinfo")
        return self

    def _daemon(self, cmd: list[str], name: str) -> None:
        out = open(self.folder / f"{name}.out", "ab")
        self.procs.append(
            subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
            )
        )

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                self.stop()
                why = f"{', '.join(dead)} exited" if dead else f"no {what} after {timeout_s:.0f} s"
                raise RuntimeError(f"SLURM cluster in {self.folder}: {why}; see its *.log/*.out")
            time.sleep(0.2)

    def node_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-n", node_name(), "-o", "%t", check=False)
        return out.strip() == "idle"

    def run(self, *cmd: str, check: bool = True) -> str:
        """A client command (``squeue``, ``scontrol``, ...) against this cluster; its stdout."""
        proc = subprocess.run(
            cmd, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
        return proc.stdout

    def stop(self) -> None:
        """Cancel the jobs still there (their processes outlive slurmd), then end the daemons."""
        if self.procs and all(p.poll() is None for p in self.procs):
            self.run("scancel", f"--user={os.getuid()}", check=False)
            deadline = time.monotonic() + 30
            while self.run("squeue", "-h", check=False).strip():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        for p in reversed(self.procs):  # slurmd, slurmctld, then munged
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="the cluster's folder (default: a new temp one)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--memory-mb", type=int, default=16000)
    args = parser.parse_args()
    why = install_packages()
    if why:
        raise SystemExit(f"error: {why}")
    folder = args.dir or Path(tempfile.mkdtemp(prefix="segkit-slurm-"))
    cluster = SlurmCluster(folder.resolve(), args.cpus, args.memory_mb).start()
    print(f"SLURM cluster up (logs in {folder}); in another shell:\n")
    print(f"  export SLURM_CONF={cluster.conf}")
    print(
        "  python train.py -m hydra/launcher=slurm hydra.launcher.gpus_per_node=0 "
        "hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=1 launch.accelerator=cpu seed=1,2\n"
    )
    print("Ctrl-C stops it.")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
