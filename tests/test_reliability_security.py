"""Security: checkpoints never execute code (also through the CLI), privilege escalation only for
tuning, no secrets in tasks' logs, and user-supplied names and paths that could point a delete or an
overwrite outside the project's directories are refused before anything runs.

(The multi-host run that is searched for the SSH private key is in test_reliability_faults.py:
``test_no_private_key_in_output_or_results``.)"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from dlrm_bench import safety
from dlrm_bench.errors import UserError
from dlrm_bench.model import build_model
from dlrm_bench.presets import get_preset

REPO = Path(__file__).resolve().parent.parent
ANSIBLE_DIRS = ("roles", "playbooks")


def dlrm(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "dlrm_bench", *args], capture_output=True,
                          text=True, env=env, timeout=300, check=False, cwd=cwd)


def one_line(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("dlrm-bench: error:")]
    assert errors and needle in errors[-1], proc.stderr
    assert "Traceback" not in proc.stderr


# -- checkpoints: weights_only, through the CLI ---------------------------------------------------

class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def evil_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A checkpoint in the reference layout whose pickle also runs ``touch MARKER``."""
    tmp = tmp_path_factory.mktemp("evil")
    marker = tmp / "code-ran"
    model = build_model(get_preset("tiny"), seed=0)
    path = tmp / "tb00_40M.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 1, "x": _Payload(str(marker))}, path)
    return path, marker


@pytest.mark.parametrize("command", ["run", "launch"])
def test_a_checkpoint_carrying_code_is_refused_by_the_cli(evil_checkpoint, tmp_path: Path,
                                                          command: str) -> None:
    path, marker = evil_checkpoint
    extra = ["--instances", "1", "--cores-per-instance", "1"] if command == "launch" else []
    proc = dlrm(command, *extra, "--checkpoint", str(path), "--steps", "1", "--warmup-steps",
                "0", "--output", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert "was refused" in proc.stderr and "weights_only" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists(), "the checkpoint's code ran"
    assert not (tmp_path / "out" / "result.json").exists()


def test_every_torch_load_is_weights_only() -> None:
    """Static check: no ``torch.load`` in the package without ``weights_only=True``."""
    calls = []
    for path in (REPO / "dlrm_bench").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "load" and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id == "torch":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                           and k.value.value is True for k in node.keywords)
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", safe))
    assert calls, "no torch.load found at all"
    assert [where for where, safe in calls if not safe] == []


# -- Ansible: privilege escalation and secrets ----------------------------------------------------

def _yaml_files() -> list[Path]:
    files = [REPO / "run.yml"]
    for top in ANSIBLE_DIRS:
        files += [p for p in (REPO / top).rglob("*.yml") if "molecule" not in p.parts]
    return files


def _walk(node: Any, path: list[str]) -> Any:
    if isinstance(node, dict):
        yield node, path
        for key, value in node.items():
            yield from _walk(value, [*path, str(key)])
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, [*path, str(index)])


def test_privilege_escalation_only_for_the_tuning_tasks() -> None:
    """``become`` appears only on tasks of the tune role that run its dlrm_tune module (sysfs
    writes need root); no play, playbook or other role escalates, nor does ansible.cfg."""
    escalating = []
    for file in _yaml_files():
        for node, path in _walk(yaml.safe_load(file.read_text()) or [], []):
            if "become" in node and node["become"] not in (False, "false", "no"):
                escalating.append((file.relative_to(REPO), "/".join(path), node))
    assert escalating, "the tuning tasks should escalate"
    for file, where, task in escalating:
        assert file.parts[:2] == ("roles", "tune"), f"{file}:{where} escalates"
        assert "dlrm_tune" in task, f"{file}:{where} escalates a task that is not dlrm_tune"
    cfg = (REPO / "ansible.cfg").read_text()
    assert "become" not in cfg.replace("# ", ""), "ansible.cfg turns on privilege escalation"


SECRET_WORDS = ("password", "passwd", "secret", "token", "private_key", "ssh_key", "api_key")


def test_tasks_handling_secrets_are_no_log() -> None:
    """Any task whose arguments mention a password, token or key variable hides its log."""
    for file in _yaml_files():
        for node, path in _walk(yaml.safe_load(file.read_text()) or [], []):
            if "name" not in node or {"hosts", "block", "import_playbook"} & set(node) \
                    or "ansible.builtin.import_playbook" in node:  # tasks only, not plays/blocks
                continue
            text = yaml.safe_dump({k: v for k, v in node.items() if k != "name"}).lower()
            if any(word in text for word in SECRET_WORDS):
                assert node.get("no_log") in (True, "true"), \
                    f"{file.relative_to(REPO)}:{'/'.join(path)} handles a secret without no_log"


# -- names and paths ------------------------------------------------------------------------------

def test_python_and_preflight_share_the_path_rules() -> None:
    defaults = yaml.safe_load((REPO / "roles/preflight/defaults/main.yml").read_text())
    assert tuple(defaults["dlrm_preflight_forbidden_roots"]) == safety.FORBIDDEN_ROOTS
    assert defaults["dlrm_preflight_name_pattern"] == safety.NAME_PATTERN
    assert defaults["dlrm_preflight_name_max"] == safety.NAME_MAX


@pytest.mark.parametrize("value", ["../../etc", "..", ".", "a/b", "x y", "", "$(id)", "a" * 129])
def test_bad_run_ids_are_refused(value: str) -> None:
    with pytest.raises(UserError, match="is not a plain name"):
        safety.check_name("run_id", value)


@pytest.mark.parametrize("value,message", [
    ("/", "system directory"), ("/usr", "system directory"), ("/etc/", "system directory"),
    ("//var//lib", "system directory"), ("relative/dir", "absolute"),
    ("/tmp/x/../../etc", "'.' or '..'"), ("/opt/./dlrm", "'.' or '..'"), ("", "empty"),
])
def test_bad_roots_are_refused(value: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        safety.check_root("dlrm_root", value)


def test_good_names_and_roots_pass() -> None:
    assert safety.check_name("run_id", "20260101T000000Z-ab12") == "20260101T000000Z-ab12"
    assert safety.check_name("run_id", "nightly_v1.2") == "nightly_v1.2"
    assert safety.check_root("dlrm_root", "/opt/dlrm-bench") == "/opt/dlrm-bench"
    assert safety.check_root("--output", "runs/x", resolve=True).endswith("/runs/x")


@pytest.mark.parametrize("args,needle", [
    (["launch", "--host-label", "../../etc", "--preset", "tiny"], "--host-label '../../etc'"),
    (["launch", "--output", "/etc", "--preset", "tiny"], "--output '/etc' is a system"),
    (["run", "--output", "/usr", "--preset", "tiny", "--steps", "1"], "'/usr' is a system"),
    (["cluster", "run", "--run-id", "../../etc"], "run_id '../../etc' is not a plain name"),
    (["cluster", "run", "--run-id", "x", "-e", "dlrm_root=/"], "dlrm_root '/' is a system"),
    (["cluster", "run", "--results-dir", "/var"], "results_dir '/var' is a system"),
])
def test_cli_refuses_unsafe_paths_before_anything_runs(args: list[str], needle: str,
                                                       tmp_path: Path) -> None:
    proc = dlrm(*args, cwd=tmp_path)
    one_line(proc, needle)
    assert list(tmp_path.iterdir()) == [], "something was written before the refusal"


def test_python_api_refuses_unsafe_paths() -> None:
    from dlrm_bench.orchestrate import run_benchmark, run_benchmark_async

    with pytest.raises(UserError, match=r"run_id '\.\.' is not a plain name"):
        run_benchmark(run_id="..")
    with pytest.raises(UserError, match="dlrm_root '/' is a system directory"):
        run_benchmark_async(dlrm_root="/")
    with pytest.raises(UserError, match="dlrm_root 'opt/x' must be an absolute path"):
        run_benchmark(dlrm_root="opt/x")


@pytest.mark.ansible
@pytest.mark.timeout(300)
@pytest.mark.parametrize("flag,needle", [
    ("run_id=../../etc", 'run_id "../../etc" is not a plain name'),
    ("dlrm_root=/", 'dlrm_root "/" must be an absolute path without'),
], ids=["run_id", "dlrm_root"])
def test_playbook_refuses_unsafe_paths_before_anything_runs(ansible_playbook, ansible_fast_vars,
                                                            tmp_path: Path, flag: str,
                                                            needle: str) -> None:
    extra = {**ansible_fast_vars, "results_dir": str(tmp_path / "results")}
    if not flag.startswith("dlrm_root"):
        extra["dlrm_root"] = str(tmp_path / "root")
    run = ansible_playbook("run.yml", "-e", flag, extra=extra)
    assert run.returncode != 0, run.explain()
    assert f"localhost: {needle}" in run.stdout, run.explain()
    assert "Gather the host facts" not in run.stdout  # refused before anything was looked at
    assert "TASK [tune" not in run.stdout and "PLAY [Deploy" not in run.stdout
    assert not (tmp_path / "root").exists() and not (tmp_path / "results").exists()
