"""Static checks of the Ansible side (fast): parameters, argument specs, role metadata, molecule
scenarios, syntax, and the shipped modules' logic."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from dlrm_bench import config, cpu

pytestmark = pytest.mark.ansible

REPO = Path(__file__).resolve().parent.parent
ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if p.is_dir())
STAGES = ("provision", "deploy", "benchmark", "collect", "restore", "report")
SEED_PARAMETERS = ("function", "mode", "precision", "data_type", "case_type", "batch_size",
                   "warmup_steps", "steps", "cores_per_instance", "instance_number",
                   "weight_sharing", "onednn_verbose")
CHOICES = {
    "function": config.FUNCTIONS,
    "mode": config.MODES,
    "precision": config.PRECISIONS,
    "data_type": config.DATA_TYPES,
    "case_type": config.CASE_TYPES,
}


def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


def _module(role: str, name: str) -> ModuleType:
    path = REPO / "roles" / role / "library" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_ansible_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layout() -> None:
    assert ROLES == ["benchmark", "collect", "deploy", "preflight", "report", "tune"]
    for stage in STAGES:
        assert (REPO / "playbooks" / f"{stage}.yml").is_file()
    imported = [entry["ansible.builtin.import_playbook"] for entry in _yaml(REPO / "run.yml")
                if "ansible.builtin.import_playbook" in entry]
    assert imported == [f"playbooks/{stage}.yml" for stage in STAGES]
    cfg = (REPO / "ansible.cfg").read_text()
    assert "inventory = inventory/localhost.yml" in cfg and "roles_path = roles" in cfg
    assert (REPO / "playbooks" / "group_vars").resolve() == (REPO / "group_vars").resolve()
    local = _yaml(REPO / "inventory" / "localhost.yml")
    host = local["dlrm_hosts"]["hosts"]["localhost"]
    assert host["ansible_connection"] == "local"
    assert host["ansible_python_interpreter"] == "{{ ansible_playbook_python }}"
    assert "dlrm_hosts" in _yaml(REPO / "inventory" / "example-cluster.yml")


def test_group_vars_hold_every_parameter() -> None:
    defaults = _yaml(REPO / "group_vars" / "all.yml")
    for name in SEED_PARAMETERS:
        assert name in defaults, f"group_vars/all.yml lacks {name}"
    for name, choices in CHOICES.items():
        assert defaults[name] in choices
    assert defaults["onednn_verbose"] == 0
    for name in ("preset", "data_source", "dlrm_root", "hugepages", "thp", "governor",
                 "results_dir", "run_id", "dlrm_venv_site_packages", "dlrm_cpu_flags_override",
                 "dlrm_required_disk_gb"):
        assert name in defaults, f"group_vars/all.yml lacks {name}"


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_validate_the_shared_parameters(role: str) -> None:
    specs = _yaml(REPO / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"]
    options = specs["main"]["options"]
    for name, choices in CHOICES.items():
        assert name in options, f"{role} does not validate {name}"
        assert tuple(options[name]["choices"]) == tuple(choices), f"{role}: {name} choices"
    for name, option in options.items():
        assert option.get("description"), f"{role}: {name} undocumented"


@pytest.mark.parametrize("role", ROLES)
def test_role_metadata_and_molecule_scenario(role: str) -> None:
    meta = _yaml(REPO / "roles" / role / "meta" / "main.yml")
    assert meta["galaxy_info"]["role_name"] == role
    assert meta["galaxy_info"]["namespace"] == "dlrm_bench"
    scenario = REPO / "roles" / role / "molecule" / "default"
    molecule = _yaml(scenario / "molecule.yml")
    assert molecule["driver"]["name"] == "default"
    assert molecule["dependency"]["enabled"] is False
    assert "ANSIBLE_ROLES_PATH" in molecule["provisioner"]["env"]
    host_vars = molecule["provisioner"]["inventory"]["host_vars"]["instance"]
    assert host_vars["ansible_python_interpreter"]
    for step in molecule["scenario"]["test_sequence"]:
        if step in ("converge", "verify", "prepare", "cleanup", "destroy"):
            assert (scenario / f"{step}.yml").is_file(), f"{role}: {step}.yml missing"


def test_preflight_precision_rules_match_the_package() -> None:
    defaults = _yaml(REPO / "roles" / "preflight" / "defaults" / "main.yml")
    flags = {k: tuple(v) for k, v in defaults["dlrm_preflight_precision_flags"].items()}
    assert flags == cpu.REQUIRED_FLAGS
    assert tuple(defaults["dlrm_preflight_training_precisions"]) == cpu.TRAINING_PRECISIONS


def test_playbooks_pass_syntax_check() -> None:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    playbooks = ["run.yml", *(f"playbooks/{stage}.yml" for stage in STAGES)]
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "--syntax-check",
                           *playbooks], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_data_manifest_reuse_and_invalidation(tmp_path: Path) -> None:
    manifest = _module("deploy", "dlrm_data_manifest")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.bin").write_bytes(b"x" * 320)
    (data / "test.bin").write_bytes(b"y" * 160)

    class Module:
        check_mode = False

        def fail_json(self, **kw):  # pragma: no cover - not expected here
            raise AssertionError(kw)

    params = {"preset": "tiny", "seed": 0}
    assert manifest.verify(str(data), params, False)[0] is False  # no manifest yet
    changed, files = manifest.write(Module(), str(data), params, True)
    assert changed and set(files) == {"train.bin", "test.bin"}
    assert len(files["train.bin"]["sha256"]) == 64
    assert manifest.write(Module(), str(data), params, True)[0] is False  # unchanged
    assert manifest.verify(str(data), params, True)[0] is True
    assert manifest.verify(str(data), {"preset": "tiny", "seed": 1}, False)[0] is False
    (data / "test.bin").write_bytes(b"z" * 161)
    valid, reason, _ = manifest.verify(str(data), params, False)
    assert not valid and "test.bin" in reason
    (data / "extra.bin").write_bytes(b"")
    assert "unexpected" in manifest.verify(str(data), params, False)[1]
    recorded = json.loads((data / "manifest.json").read_text())
    assert recorded["params"] == params


def test_tune_reads_sysfs_selectors(tmp_path: Path) -> None:
    tune = _module("tune", "dlrm_tune")
    thp = tmp_path / "enabled"
    thp.write_text("always [madvise] never\n")
    assert tune.read_value(str(thp)) == "madvise"
    nr = tmp_path / "nr_hugepages"
    nr.write_text("37\n")
    assert tune.read_value(str(nr)) == "37"


def test_host_facts_honour_the_flags_override() -> None:
    facts = _module("preflight", "dlrm_host_facts")
    assert facts.parse_flags("avx512f, avx512_vnni amx_tile") == ["amx_tile", "avx512_vnni",
                                                                  "avx512f"]
    model, flags = facts.cpu_model_and_flags("model name\t: Xeon\nflags\t\t: fpu avx512f\n")
    assert model == "Xeon" and flags == ["avx512f", "fpu"]
    governor, has_cpufreq = facts.governor()
    assert isinstance(governor, str) and (has_cpufreq or governor == "unsupported")
