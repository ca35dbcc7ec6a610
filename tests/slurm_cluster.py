"""A real one-node SLURM cluster for tests: munged, MariaDB, slurmdbd, slurmctld and slurmd of
Debian's packages, all on 127.0.0.1 with their configuration, state and logs under one folder.

Every daemon runs in the foreground as a child of this process, so stopping one is: signal the
pid, wait for it (which also reaps it: PID 1 of a container may never do), and ask the daemon's
own tool that it is gone. Ports are picked free so a second cluster, or another worker's, never
collides. Accounting goes through slurmdbd because `sacct`, which the SLURM executor plugin
polls by default, answers nothing without it (SLURM 22.05 has no file-based accounting).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge", "slurmdbd", "mariadb-server")
DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")
APT_SECONDS = 600
START_SECONDS = 60
CLUSTER_NAME = "asvptest"


class ClusterError(RuntimeError):
    """A daemon did not come up; the message names it and ends with its log tail."""


def missing_requirement() -> str | None:
    """Why no cluster can be started here (None: it can), installing the packages if needed."""
    if all(shutil.which(name) or Path("/usr/sbin", name).exists() for name in DAEMONS):
        return None
    if os.geteuid() != 0:
        return f"SLURM is not installed and installing it needs root: apt-get install {' '.join(PACKAGES)}"
    if shutil.which("apt-get") is None:
        return f"SLURM is not installed and there is no apt-get to install {', '.join(PACKAGES)}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *PACKAGES]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=APT_SECONDS)
            if done.returncode != 0:
                return f"{' '.join(command)} failed: {(done.stdout + done.stderr)[-800:]}"
    except subprocess.TimeoutExpired:
        return f"apt-get did not finish installing {', '.join(PACKAGES)} within {APT_SECONDS} s"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def machine_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ClusterError("no MemTotal line in /proc/meminfo")


def log_tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return f"({path} was never written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class SlurmCluster:
    """One node named after this host in partitions `cpu` (default) and `gpu`, as in
    profiles/slurm/partitions.yaml; no cgroups (tests run as root without delegation)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.chmod(0o755)  # munged runs as the munge user and must reach its folder
        self.node = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        # Leave the system some room; a job asks mem_mb of its rule, DefMemPerCPU otherwise.
        self.memory_mb = max(1000, int(machine_memory_mb() * 0.8))
        self.ports = {name: free_port() for name in ("slurmctld", "slurmd", "slurmdbd", "mariadb")}
        self.conf = root / "etc" / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.bin = root / "bin"
        self.processes: dict[str, subprocess.Popen] = {}

    # -- configuration -------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment of a client: SLURM_CONF, and `srun` wrapped to keep it (the plugin's
        job step drops SLURM_CONF before calling srun, which then finds no configuration)."""
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}"}

    def write_slurm_conf(self, accounting: bool) -> None:
        storage = (f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\n"
                   f"AccountingStoragePort={self.ports['slurmdbd']}\n"
                   # For slurmdbd over munge this "password" names the munge socket.
                   f"AccountingStoragePass={self.munge_socket}\n"
                   if accounting else "AccountingStorageType=accounting_storage/none\n")
        state = self.root / "state"
        self.conf.write_text(
            f"ClusterName={CLUSTER_NAME}\nSlurmctldHost={self.node}(127.0.0.1)\nSlurmUser=root\nSlurmdUser=root\n"
            f"SlurmctldPort={self.ports['slurmctld']}\nSlurmdPort={self.ports['slurmd']}\n"
            f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}\nCredType=cred/munge\n"
            "MpiDefault=none\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nReturnToService=2\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\nDefMemPerCPU=1000\n"
            "JobAcctGatherType=jobacct_gather/linux\n" + storage +
            f"StateSaveLocation={state}/ctld\nSlurmdSpoolDir={state}/d\n"
            f"SlurmctldPidFile={state}/slurmctld.pid\nSlurmdPidFile={state}/slurmd.pid\n"
            f"SlurmctldLogFile={self.root}/log/slurmctld.log\nSlurmdLogFile={self.root}/log/slurmd.log\n"
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} Boards=1 SocketsPerBoard=1 "
            f"CoresPerSocket={self.cpus} ThreadsPerCore=1 RealMemory={self.memory_mb} State=UNKNOWN\n"
            f"PartitionName=cpu Nodes={self.node} Default=YES MaxTime=INFINITE State=UP\n"
            f"PartitionName=gpu Nodes={self.node} MaxTime=INFINITE State=UP\n")

    def write_configuration(self) -> None:
        for folder in ("etc", "log", "state/ctld", "state/d", "db", "bin"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        munge_dir = self.munge_socket.parent
        munge_dir.mkdir(exist_ok=True)
        shutil.chown(munge_dir, "munge", "munge")
        munge_dir.chmod(0o755)
        self.write_slurm_conf(accounting=True)
        dbd = self.conf.parent / "slurmdbd.conf"  # slurmdbd reads it beside SLURM_CONF, mode 600
        dbd.write_text(
            f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}\nDbdHost=localhost\nDbdAddr=127.0.0.1\n"
            f"DbdPort={self.ports['slurmdbd']}\nSlurmUser=root\nPidFile={self.root}/state/slurmdbd.pid\n"
            f"LogFile={self.root}/log/slurmdbd.log\nStorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\n"
            f"StoragePort={self.ports['mariadb']}\nStorageUser=root\nStorageLoc=slurm_acct_db\n")
        dbd.chmod(0o600)
        srun = self.bin / "srun"
        srun.write_text(f"#!/bin/sh\nSLURM_CONF={self.conf} exec /usr/bin/srun \"$@\"\n")
        srun.chmod(0o755)

    # -- daemons -------------------------------------------------------------------------
    def spawn(self, name: str, command: list[str], user: str | None = None) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        # user= (not runuser): the daemon stays this process's child, so waiting on it reaps it.
        self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                                start_new_session=True, user=user, group=user)
        log.close()

    def wait_until(self, name: str, ready: Callable[[], bool], log: Path) -> float:
        start = time.monotonic()
        while time.monotonic() - start < START_SECONDS:
            process = self.processes.get(name)
            if process is not None and process.poll() is not None:
                raise ClusterError(f"{name} exited with status {process.returncode} while starting; "
                                   f"{log}:\n{log_tail(log)}\n{log_tail(self.root / 'log' / f'{name}.out')}")
            if ready():
                return time.monotonic() - start
            time.sleep(0.2)
        raise ClusterError(f"{name} was not ready within {START_SECONDS} s; {log}:\n{log_tail(log)}\n"
                           f"{log_tail(self.root / 'log' / f'{name}.out')}")

    def answers(self, *command: str) -> str | None:
        """stdout of a client command, None when it fails or hangs."""
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10, env=self.env())
        except subprocess.TimeoutExpired:
            return None
        return done.stdout if done.returncode == 0 else None

    def port_open(self, port: int) -> bool:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            return probe.connect_ex(("127.0.0.1", port)) == 0

    def munge_works(self) -> bool:
        encoded = self.answers("munge", "-n", f"--socket={self.munge_socket}")
        if encoded is None:
            return False
        done = subprocess.run(["unmunge", f"--socket={self.munge_socket}"], input=encoded, capture_output=True,
                              text=True, timeout=10)
        return done.returncode == 0

    def controller_up(self) -> bool:
        return "UP" in (self.answers("scontrol", "ping") or "")

    def node_idle(self) -> bool:
        return (self.answers("sinfo", "-h", "-n", self.node, "-o", "%T") or "").strip().startswith(("idle", "mix", "alloc"))

    def start(self) -> dict[str, float]:
        """Start every daemon; seconds each took to answer. Raises ClusterError naming the one
        that did not, with its log tail (the daemons already started are stopped)."""
        self.write_configuration()
        log = self.root / "log"
        seconds: dict[str, float] = {}
        try:
            self.spawn("munged", ["/usr/sbin/munged", "-F", f"--socket={self.munge_socket}",
                                  f"--pid-file={self.munge_socket.parent}/munged.pid",
                                  f"--log-file={self.munge_socket.parent}/munged.log",
                                  f"--seed-file={self.munge_socket.parent}/munged.seed"], user="munge")
            seconds["munged"] = self.wait_until("munged", self.munge_works, self.munge_socket.parent / "munged.log")
            datadir = self.root / "db"
            install = subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={datadir}", "--user=root",
                                      "--auth-root-authentication-method=normal", "--skip-test-db"],
                                     capture_output=True, text=True, timeout=START_SECONDS)
            if install.returncode != 0:
                raise ClusterError(f"mariadb-install-db failed:\n{(install.stdout + install.stderr)[-2000:]}")
            self.spawn("mariadbd", ["mariadbd", "--no-defaults", f"--datadir={datadir}", "--user=root",
                                    f"--port={self.ports['mariadb']}", "--bind-address=127.0.0.1",
                                    f"--socket={self.root}/state/mariadb.sock", f"--pid-file={self.root}/state/mariadb.pid",
                                    "--skip-grant-tables", "--skip-name-resolve"])
            seconds["mariadbd"] = self.wait_until("mariadbd", lambda: self.port_open(self.ports["mariadb"]),
                                                  log / "mariadbd.out")
            self.spawn("slurmdbd", ["slurmdbd", "-D"])
            seconds["slurmdbd"] = self.wait_until("slurmdbd", lambda: self.port_open(self.ports["slurmdbd"]),
                                                  log / "slurmdbd.log")
            seconds.update(self.start_slurm())
        except Exception:
            self.stop()
            raise
        return seconds

    def start_slurm(self) -> dict[str, float]:
        log = self.root / "log"
        self.spawn("slurmctld", ["slurmctld", "-D", "-i"])
        seconds = {"slurmctld": self.wait_until("slurmctld", self.controller_up, log / "slurmctld.log")}
        self.spawn("slurmd", ["slurmd", "-D", "-N", self.node])
        seconds["slurmd"] = self.wait_until("slurmd", self.node_idle, log / "slurmd.log")
        return seconds

    def restart_slurm(self, accounting: bool) -> dict[str, float]:
        """Restart controller and node daemon with accounting through slurmdbd, or none."""
        for name in ("slurmd", "slurmctld"):
            self.stop_daemon(name)
        self.write_slurm_conf(accounting)
        return self.start_slurm()

    def stop_daemon(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
        # Whatever the daemon forked is in its session: gone with it.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> list[str]:
        """Stop every daemon, last started first; the daemons that still answer (none)."""
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
            self.stop_daemon(name)
        still = []
        if self.controller_up():
            still.append("slurmctld")
        if self.port_open(self.ports["slurmdbd"]):
            still.append("slurmdbd")
        if self.port_open(self.ports["mariadb"]):
            still.append("mariadbd")
        if self.munge_socket.exists() and self.munge_works():
            still.append("munged")
        return still
