"""Each role's molecule scenario (driver "default": this machine, no docker, no galaxy) and
ansible-lint over the playbooks and roles."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ansible, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ROLES = sorted(p.parts[-4] for p in REPO.glob("roles/*/molecule/default/molecule.yml"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update({"ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1",
                "PY_COLORS": "0"})
    env.pop("ANSIBLE_CONFIG", None)  # molecule writes its own
    return env


def test_every_role_has_a_scenario() -> None:
    roles = sorted(p.name for p in (REPO / "roles").iterdir() if p.is_dir())
    assert roles == ROLES


@pytest.mark.parametrize("role", ROLES)
def test_molecule(role: str, request: pytest.FixtureRequest) -> None:
    if role == "tune":  # it changes this machine's hugepages
        request.getfixturevalue("host_tuning_serialised")
    proc = subprocess.run([str(BIN / "molecule"), "test", "-s", "default"],
                          cwd=REPO / "roles" / role, env=_env(), capture_output=True, text=True,
                          timeout=840, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-8000:]
    assert "Executed: Failed" not in output and "Missing playbook" not in output, output[-8000:]


def test_ansible_lint_offline() -> None:
    proc = subprocess.run([str(BIN / "ansible-lint"), "--offline", "--nocolor"], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=840, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-8000:]
