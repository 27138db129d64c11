"""Shared pytest fixtures. Sections are owned by their areas; append, keep fixture names unique."""

from __future__ import annotations

# ---------------------------------------------------- Ansible (tests/test_ansible_*.py)
import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# torch._dynamo registers replacements for builtins such as sys.intern when first imported; Ansible
# (imported in-process by the orchestration and role tests) replaces sys.intern with a callable
# object, after which that registration raises TypeError. Import dynamo before any Ansible code.
import torch._dynamo  # noqa: F401

ANSIBLE_REPO = Path(__file__).resolve().parent.parent
ANSIBLE_BIN = Path(sys.executable).parent
HUGEPAGES_NR = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")


@dataclass
class PlaybookRun:
    """One ``ansible-playbook`` run: exit status, output and the PLAY RECAP counters per host."""

    args: list[str]
    returncode: int
    stdout: str
    seconds: float

    @property
    def recaps(self) -> list[dict[str, dict[str, int]]]:
        """Every PLAY RECAP block (one per playbook file), host -> {ok, changed, failed, ...}."""
        blocks: list[dict[str, dict[str, int]]] = []
        for block in self.stdout.split("PLAY RECAP")[1:]:
            hosts: dict[str, dict[str, int]] = {}
            for line in block.splitlines()[1:]:
                match = re.match(r"^(\S+)\s+:\s+(.*)$", line)
                if not match:
                    if hosts:
                        break
                    continue
                hosts[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)",
                                                                          match.group(2))}
            blocks.append(hosts)
        return blocks

    def changed(self) -> int:
        return sum(h.get("changed", 0) for recap in self.recaps for h in recap.values())

    def explain(self) -> str:
        return f"ansible-playbook {' '.join(self.args)} -> {self.returncode}\n{self.stdout[-6000:]}"


def _ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PATH": f"{ANSIBLE_BIN}{os.pathsep}{env.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(ANSIBLE_REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PYTHONUNBUFFERED": "1",
    })
    return env


@pytest.fixture(scope="session")
def ansible_playbook() -> Callable[..., PlaybookRun]:
    """Run ``ansible-playbook`` from the repository root: ``ansible_playbook("run.yml", "-e",
    "precision=amx_int8", extra={"steps": 5})``; ``extra`` goes in as one JSON ``-e``."""

    def run(*args: str, extra: dict[str, Any] | None = None, timeout: float = 900) -> PlaybookRun:
        argv = [str(ANSIBLE_BIN / "ansible-playbook"), *args]
        if extra:
            argv += ["-e", json.dumps(extra)]
        started = time.monotonic()
        proc = subprocess.run(argv, cwd=ANSIBLE_REPO, env=_ansible_env(), capture_output=True,
                              text=True, timeout=timeout, check=False)
        return PlaybookRun(argv[1:], proc.returncode, proc.stdout + proc.stderr,
                           time.monotonic() - started)

    return run


@pytest.fixture(scope="session")
def ansible_fast_vars() -> dict[str, Any]:
    """Extra vars that keep a localhost run short: the tiny preset, a few steps, the venv's own
    torch shared with the host venv (no torch install), a short common start delay."""
    import site

    return {
        "preset": "tiny",
        "steps": 8,
        "warmup_steps": 2,
        "dlrm_venv_base_site": site.getsitepackages()[0],
        "dlrm_benchmark_start_delay_s": 1,
        "dlrm_benchmark_poll_s": 1,
    }


@pytest.fixture(scope="session")
def ansible_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One install root and results dir shared by the localhost runs (deploy once, reuse)."""
    return tmp_path_factory.mktemp("ansible-workspace")


HUGEPAGES_LOCK = Path("/tmp/dlrm-bench-tests-hugepages.lock")


@contextlib.contextmanager
def host_tuning_lock() -> Iterator[None]:
    """Serialise tests that change this machine's hugepages (sysfs is global: two test sessions
    tuning it at once would each see the other's value)."""
    with open(HUGEPAGES_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture
def hugepages_guard() -> Iterator[int]:
    """The 2 MiB hugepage count before the test (taken under ``host_tuning_lock``); put back
    afterwards whatever happened."""
    if not HUGEPAGES_NR.exists():
        pytest.skip("no 2 MiB hugepage pool")
    with host_tuning_lock():
        before = int(HUGEPAGES_NR.read_text())
        yield before
        if int(HUGEPAGES_NR.read_text()) != before:
            HUGEPAGES_NR.write_text(str(before))


@pytest.fixture
def host_tuning_serialised() -> Iterator[None]:
    """Hold ``host_tuning_lock`` for the test (e.g. the tune role's molecule scenario)."""
    with host_tuning_lock():
        yield


@pytest.fixture
def loopback_ssh_hosts(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Loopback sshd hosts (tests/sshd_hosts.py): 2 by default, or
    ``@pytest.mark.parametrize("loopback_ssh_hosts", [3], indirect=True)``."""
    sys.path.insert(0, str(Path(__file__).parent))
    from sshd_hosts import SshdHosts, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    count = getattr(request, "param", 2)
    with SshdHosts(tmp_path / "sshd", count=count) as hosts:
        yield hosts
