"""A real one-node SLURM cluster on localhost for the tests (munged + slurmctld + slurmd, Debian's slurm 22.05).

Everything lives in one scratch directory: munge key and socket, slurm.conf, state, spool, logs and pid files;
ports are picked free, so it does not clash with a cluster already running on the machine. Needs root (slurmd
starts job steps as the submitting user) and the packages ``slurmctld slurmd slurm-client munge``.
Client commands find the cluster through ``SLURM_CONF`` (set in ``env``; jobs inherit it from sbatch).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "sinfo", "scontrol", "squeue")
PACKAGES = "slurmctld slurmd slurm-client munge"


def unavailable_reason() -> str | None:
    """Why a local cluster cannot start here (None when it can)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd runs job steps as the submitting user)"
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).is_file()]
    if missing:
        return f"SLURM binaries missing ({', '.join(missing)}): apt-get install {PACKAGES}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class LocalSlurm:
    """Start with :meth:`start`, stop with :meth:`stop`; ``env`` is the environment for client commands."""

    def __init__(self, root: Path, partition: str = "debug", kill_wait_s: int = 5) -> None:
        self.root = Path(root)
        self.partition = partition
        self.kill_wait_s = kill_wait_s
        self.node = socket.gethostname()
        self.cpus = os.cpu_count() or 1
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._procs: list[subprocess.Popen] = []

    def _write_config(self) -> None:
        r = self.root
        for sub in ("ctld", "spool", "munge"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        self.munge_socket = r / "munge" / "munge.socket"
        self.conf.write_text(f"""\
ClusterName=physicstf
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r / 'ctld'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'slurmctld.log'}
SlurmdLogFile={r / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait={self.kill_wait_s}
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, cmd: list[str], log: str) -> None:
        out = open(self.root / log, "ab")  # noqa: SIM115 - kept open for the daemon's lifetime
        self._procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True))

    def start(self, timeout_s: float = 60.0) -> LocalSlurm:
        self._write_config()
        m = self.root / "munge"
        self._spawn([_binary("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                     f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                     f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"], "munged.out")
        self._wait(lambda: self.munge_socket.exists(), timeout_s, "munged did not create its socket")
        self._spawn([_binary("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld.out")
        self._spawn([_binary("slurmd"), "-D", "-f", str(self.conf)], "slurmd.out")
        self._wait(self._node_idle, timeout_s, "the node did not become idle")
        return self

    def _node_idle(self) -> bool:
        res = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=self.env, capture_output=True, text=True)
        return res.returncode == 0 and res.stdout.strip() == "idle"

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if ready():
                return
            for p in self._procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode} while starting: {self.logs()}")
            time.sleep(0.5)
        raise RuntimeError(f"local SLURM: {what} within {timeout_s:.0f} s: {self.logs()}")

    def logs(self, tail: int = 15) -> str:
        parts = []
        for name in ("munged.out", "slurmctld.out", "slurmd.out", "slurmctld.log", "slurmd.log"):
            path = self.root / name
            if path.is_file():
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"--- {name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def run(self, *cmd: str, check: bool = True) -> str:
        res = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=60)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout

    def job_field(self, job_id: str, field: str) -> str | None:
        """A field of ``scontrol show job`` (e.g. JobState, Restarts); None once the job is forgotten."""
        res = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=self.env, capture_output=True, text=True)
        for item in res.stdout.split():
            key, _, value = item.partition("=")
            if key == field:
                return value
        return None

    def release_requeued(self, job_id: str, timeout_s: float = 120.0) -> None:
        """Start a requeued job now: Slurm holds every requeued job for 120 s (its BeginTime), a fixed delay that
        only slows the tests down."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.job_field(job_id, "JobState") == "PENDING" and int(self.job_field(job_id, "Restarts") or 0) > 0:
                self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
                return
            time.sleep(0.3)
        raise RuntimeError(f"job {job_id} was not requeued within {timeout_s:.0f} s: {self.logs()}")

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--partition", self.partition], env=self.env, capture_output=True)
        for p in reversed(self._procs):  # slurmd, slurmctld, then munged
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self._procs.clear()
