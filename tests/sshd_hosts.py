"""Loopback SSH hosts for multi-host tests: one ``sshd`` per 127.0.0.N address.

Each host gets its own port, host key, config and log; one client key (generated per use) is
authorised for root on all of them. The daemons run as root in the foreground (``sshd -D``) with
``PermitRootLogin prohibit-password``, ``UsePAM no`` and ``StrictModes no`` so that a temporary
directory can hold the keys. ``SshdHosts`` is a context manager; the pytest fixture
``loopback_ssh_hosts`` (tests/conftest.py) wraps it.

    with SshdHosts(tmp_path, count=2) as hosts:
        inventory = hosts.inventory(hostvars=lambda h: {"dlrm_root": f"/tmp/{h.name}"})
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SSHD = "/usr/sbin/sshd"
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")


def unavailable_reason() -> str | None:
    """Why loopback sshd hosts cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return "loopback sshd hosts need root"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} missing (apt-get install openssh-server)"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} missing (apt-get install openssh-client)"
    return None


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(x) for x in children.read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)


@dataclass
class SshHost:
    """One loopback host: its inventory name, address, port and the client key to reach it."""

    name: str
    address: str
    port: int
    key_file: Path
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def ssh_args(self) -> list[str]:
        return ["ssh", "-i", str(self.key_file), "-p", str(self.port),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
                f"root@{self.address}"]

    def run(self, command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the host over SSH."""
        return subprocess.run([*self.ssh_args(), command], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def ansible_vars(self, python: str) -> dict[str, Any]:
        return {
            "ansible_host": self.address,
            "ansible_port": self.port,
            "ansible_user": "root",
            "ansible_connection": "ssh",
            "ansible_ssh_private_key_file": str(self.key_file),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                                       "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            "ansible_python_interpreter": python,
        }


class SshdHosts:
    """Start ``count`` sshd daemons on 127.0.0.<first>... and stop them (by pid) on exit."""

    def __init__(self, workdir: Path, count: int = 2, first: int = 2, prefix: str = "node") -> None:
        self.workdir = Path(workdir)
        self.count = count
        self.first = first
        self.prefix = prefix
        self.hosts: list[SshHost] = []

    def __enter__(self) -> SshdHosts:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.workdir.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        client_key = self.workdir / "client_key"
        _keygen(client_key)
        authorized = self.workdir / "authorized_keys"
        authorized.write_text((self.workdir / "client_key.pub").read_text())
        sftp = next((p for p in SFTP_SERVERS if os.path.exists(p)), "internal-sftp")
        for index in range(self.count):
            address = f"127.0.0.{self.first + index}"
            hostdir = self.workdir / f"{self.prefix}{self.first + index}"
            hostdir.mkdir()
            _keygen(hostdir / "ssh_host_ed25519_key")
            port = _free_port(address)
            config = hostdir / "sshd_config"
            config.write_text("\n".join([
                f"Port {port}",
                f"ListenAddress {address}",
                f"HostKey {hostdir / 'ssh_host_ed25519_key'}",
                f"PidFile {hostdir / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "MaxStartups 200",
                "MaxSessions 50",
                "LogLevel ERROR",
                # hermetic sessions: with SHLVL set, bash does not source root's ~/.bashrc for an
                # ssh command (a pyenv init there can block a minute on a stale rehash lock)
                "SetEnv SHLVL=1",
                f"Subsystem sftp {sftp}",
                "",
            ]))
            log = hostdir / "sshd.log"
            host = SshHost(f"{self.prefix}{self.first + index}", address, port, client_key,
                           config, log)
            with open(log, "wb") as out:
                host.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                                stdout=out, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL)
            self.hosts.append(host)
        for host in self.hosts:
            self._wait_ready(host)

    def _wait_ready(self, host: SshHost, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if host.process is not None and host.process.poll() is not None:
                raise RuntimeError(f"sshd for {host.address}:{host.port} exited: "
                                   f"{host.log.read_text(errors='replace')}")
            try:
                result = host.run("true", timeout=15)
            except subprocess.TimeoutExpired:  # a loaded machine: try again until the deadline
                last = "ssh timed out"
                continue
            if result.returncode == 0:
                return
            last = result.stderr.strip()
            time.sleep(0.2)
        raise RuntimeError(f"sshd on {host.address}:{host.port} not reachable: {last}")

    def stop(self) -> None:
        """Terminate each daemon and its session processes (SSH control masters on the client
        side would otherwise keep those alive for a while)."""
        for host in self.hosts:
            proc = host.process
            if proc is None or proc.poll() is not None:
                continue
            sessions = _descendants(proc.pid)
            proc.terminate()
            for pid in sessions:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def inventory(self, group: str = "dlrm_hosts", python: str | None = None,
                  hostvars: Callable[[SshHost], dict[str, Any]] | None = None) -> dict[str, Any]:
        """An Ansible YAML inventory (as a dict) with every host in ``group``."""
        import sys

        interpreter = python or sys.executable
        hosts = {}
        for host in self.hosts:
            values = host.ansible_vars(interpreter)
            if hostvars is not None:
                values.update(hostvars(host))
            hosts[host.name] = values
        return {group: {"hosts": hosts}}
