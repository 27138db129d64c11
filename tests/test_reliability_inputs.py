"""Bad inputs: each one is refused in one clear line with a non-zero exit before any work starts.

Only what other tests do not cover already (docs/reliability.md has the whole table, with the
tests that cover the rest): CLI flags of ``run``/``launch`` of a wrong type, negative or zero, or
an unknown choice; a host without AMX for ``launch``; latency mode on too few cores; data files of
the wrong record size; a checkpoint of the wrong shapes through the CLI; every Ansible parameter
through preflight (one playbook run, one inventory host per bad value); an inventory host that
does not resolve (ansible-playbook and the Python API's ``unreachable_hosts``).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from dlrm_bench.cli import main
from dlrm_bench.data.format import split_path
from dlrm_bench.data.synth import generate
from dlrm_bench.model import build_model
from dlrm_bench.presets import get_preset

CORES = len(os.sched_getaffinity(0))


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> str:
    """``dlrm-bench ARGV`` (in process) exits 2 with exactly one stderr line holding ``needle``."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("dlrm-bench: error: "), err
    assert needle in lines[0], err
    return lines[0]


RUN_CASES = [
    (["--batch-size", "1.5"], "batch size must be an integer, got '1.5'"),
    (["--warmup-steps", "x"], "warmup steps must be an integer, got 'x'"),
    (["--threads", "0"], "threads must be > 0, got 0"),
    (["--seed", "-1"], "seed must be >= 0, got -1"),
    (["--onednn-verbose", "x"], "onednn verbose must be an integer, got 'x'"),
    (["--data-type", "fake"], "data type 'fake' is not one of: real, synthetic"),
    (["--case-type", "quick"], "case type 'quick' is not one of: '', gated, pkm"),
    (["--function", "serve"], "function 'serve' is not one of: inference, training"),
    (["--backend", "tpu"], "backend 'tpu' is not one of"),
    (["--learning-rate", "abc"], "argument --learning-rate: invalid float value: 'abc'"),
    (["--learning-rate", "0"], "learning rate must be > 0"),
    (["--calibration-batches", "0"], "calibration batches must be > 0, got 0"),
    (["--barrier-timeout", "0"], "barrier timeout must be > 0"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
]


@pytest.mark.parametrize(("args", "needle"), RUN_CASES, ids=[c[1][:40] for c in RUN_CASES])
def test_run_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str],
                   needle: str) -> None:
    refused(capsys, ["run", *args, "--output", str(tmp_path / "out")], needle)
    assert not (tmp_path / "out").exists()


LAUNCH_CASES = [
    (["--instances", "two"], {}, "argument --instances: invalid int value: 'two'"),
    (["--instances", "0"], {}, "instances must be > 0, got 0"),
    (["--cores-per-instance", "-2"], {}, "cores per instance must be > 0, got -2"),
    (["--threads", "0"], {}, "threads must be > 0, got 0"),
    (["--barrier-timeout", "0"], {}, "barrier timeout must be > 0, got 0"),
    (["--pinning", "foo"], {}, "argument --pinning: invalid choice: 'foo'"),
    (["--allocator", "foo"], {}, "argument --allocator: invalid choice: 'foo'"),
    (["--steps", "0"], {}, "steps must be > 0, got 0"),
    (["--batch-size", "-1"], {}, "batch size must be > 0, got -1"),
    (["--precision", "amx_int9"], {}, "precision 'amx_int9' is not one of"),
    (["--function", "training", "--precision", "avx_int8"], {}, "int8 training is not"),
    (["--function", "training", "--weight-sharing"], {}, "cannot share them"),
    (["--precision", "amx_bfloat16"], {"DLRM_BENCH_CPU_FLAGS": "avx512f avx512_vnni"},
     "needs the CPU flags amx_tile, amx_bf16; this host lacks: amx_tile, amx_bf16"),
    ([], {"INSTANCE_NUMBER": "x"}, "INSTANCE_NUMBER must be an integer, got 'x'"),
    ([], {"CORES_PER_INSTANCE": "1.5"}, "CORES_PER_INSTANCE must be an integer"),
    ([], {"WEIGHT_SHARING": "maybe"}, "WEIGHT_SHARING must be True or False, got 'maybe'"),
    ([], {"STEPS": "-5"}, "steps must be > 0, got -5"),
    (["--instance-id", "3"], {}, "--instance-id is set by the launcher"),
    (["--bogus"], {}, "unrecognized arguments: --bogus"),
    (["--host-label", "a/b"], {}, "--host-label 'a/b' is not a plain name"),
]


@pytest.mark.parametrize(("args", "env", "needle"), LAUNCH_CASES,
                         ids=[c[2][:40] for c in LAUNCH_CASES])
def test_launch_flags(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                      tmp_path: Path, args: list[str], env: dict[str, str], needle: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    refused(capsys, ["launch", *args, "--preset", "tiny", "--output", str(tmp_path / "run")],
            needle)
    assert not (tmp_path / "run").exists(), "the launcher started before refusing"


@pytest.mark.skipif(CORES >= 4, reason="this host has enough cores for latency mode")
def test_latency_mode_on_too_few_cores(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    refused(capsys, ["launch", "--mode", "latency", "--preset", "tiny", "--output",
                     str(tmp_path / "run")],
            f"latency mode needs 4 cores per instance but this host allows {CORES}")


@pytest.mark.skipif(CORES >= 3, reason="this host has 3 cores")
def test_more_instances_than_cores(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    refused(capsys, ["launch", "--instances", "3", "--cores-per-instance", "1", "--preset",
                     "tiny", "--output", str(tmp_path / "run")], "lower --instances")


# -- data files and checkpoints through `dlrm-bench run` ------------------------------------------

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "good"
    generate(out, get_preset("tiny"), train_samples=4000, test_samples=4000, seed=0)
    return out


def _damaged(data_dir: Path, tmp_path: Path, how: str) -> Path:
    copy = tmp_path / how
    copy.mkdir()
    for f in data_dir.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    test = split_path(copy, "test")
    records = np.fromfile(test, dtype="<i4").reshape(-1, 40)
    if how == "truncated":
        test.write_bytes(test.read_bytes()[:-100])
    elif how == "empty":
        test.write_bytes(b"")
    elif how == "record-156":  # 39 ints a record, 4000 records: a multiple of 160 bytes anyway
        np.delete(records, 13, axis=1).astype("<i4").tofile(test)
    elif how == "int64":
        records.astype("<i8").tofile(test)
    return copy


@pytest.mark.parametrize(("how", "needle"), [
    ("truncated", "not a multiple of the 160-byte record"),
    ("empty", "file is empty"),
    ("record-156", "have a label other than 0 or 1: not a file of 40 x int32 records"),
    ("int64", "have a label other than 0 or 1: not a file of 40 x int32 records"),
])
def test_bad_data_files(capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path,
                        how: str, needle: str) -> None:
    bad = _damaged(data_dir, tmp_path, how)
    line = refused(capsys, ["run", "--data-dir", str(bad), "--mode", "accuracy", "--steps", "2",
                            "--batch-size", "100", "--output", str(tmp_path / "out")], needle)
    assert str(split_path(bad, "test")) in line
    assert not (tmp_path / "out" / "result.json").exists()


def test_checkpoint_of_wrong_shapes_through_the_cli(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    state = build_model(get_preset("tiny"), seed=0).state_dict()
    state["top_l.2.weight"] = torch.zeros(state["top_l.2.bias"].shape[0], 3)
    path = tmp_path / "tb00_40M.pt"
    torch.save({"state_dict": state}, path)
    refused(capsys, ["run", "--checkpoint", str(path), "--steps", "1", "--output",
                     str(tmp_path / "out")], "top_l.2.weight has 3 inputs")
    assert not (tmp_path / "out" / "result.json").exists()


# -- Ansible --------------------------------------------------------------------------------------

# One inventory host per bad value, in the string form `-e name=value` gives, all refused by the
# preflight role (argument specs and asserts) or the tune role's argument spec, before anything
# is tuned, installed or run. The value each host gets: host vars.
ANSIBLE_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "steps_type": ({"steps": "abc"}, "argument 'steps' is of type str and we were unable to "
                                     "convert to int"),
    "batch_float": ({"batch_size": "1.5"}, "argument 'batch_size' is of type str"),
    "instances_type": ({"instance_number": "two"}, "argument 'instance_number' is of type str"),
    "weight_sharing": ({"weight_sharing": "maybe"}, "argument 'weight_sharing' is of type str "
                                                    "and we were unable to convert to bool"),
    "steps_zero": ({"steps": "0"}, "steps must be >= 1, got 0"),
    "batch_negative": ({"batch_size": "-4"}, "batch_size must be >= 1, got -4"),
    "warmup_negative": ({"warmup_steps": "-1"}, "warmup_steps must be >= 0, got -1"),
    "cores_zero": ({"cores_per_instance": "0"}, "cores_per_instance must be >= 1, got 0"),
    "instances_zero": ({"instance_number": "0"}, "instance_number must be >= 1, got 0"),
    "verbose_negative": ({"onednn_verbose": "-2"}, "onednn_verbose must be >= 0, got -2"),
    "samples_zero": ({"synth_train_samples": "0"}, "synth_train_samples must be >= 1, got 0"),
    "hugepages": ({"hugepages": "-1"}, "hugepages must be auto, a page count or 0"),
    "function": ({"function": "serving"}, "value of function must be one of: inference, "
                                          "training, got: serving"),
    "preset": ({"preset": "huge"}, "value of preset must be one of"),
    "data_type": ({"data_type": "fake"}, "value of data_type must be one of"),
    "data_source": ({"data_type": "real", "data_source": "ftp"},
                    "value of data_source must be one of"),
    "thp": ({"thp": "sometimes"}, "value of thp must be one of"),
    "table_memory": ({"table_memory": "huge"}, "value of table_memory must be one of"),
    "int8_training": ({"function": "training", "precision": "amx_int8"},
                      "precision amx_int8 cannot train"),
    "latency_training": ({"function": "training", "mode": "latency"},
                         "latency mode is only valid for inference"),
    "amx_without_amx": ({"precision": "amx_int8",
                         "dlrm_cpu_flags_override": "avx512f avx512_vnni"},
                        "precision amx_int8 needs the CPU flags amx_tile, amx_int8"),
    "copy_without_src": ({"data_type": "real", "data_source": "copy"},
                         "data_source=copy needs data_src"),
    "run_id": ({"run_id": "../x"}, 'run_id "../x" is not a plain name'),
    "root_usr": ({"dlrm_root": "/usr"}, 'dlrm_root "/usr" must be an absolute path without'),
    "root_relative": ({"dlrm_root": "opt/dlrm"}, 'dlrm_root "opt/dlrm" must be an absolute'),
}
if CORES < 4:
    ANSIBLE_CASES["latency_cores"] = ({"mode": "latency"}, "need 4 cores, the host has "
                                      f"{CORES} (latency mode uses 4 cores per instance")


@pytest.mark.ansible
@pytest.mark.timeout(300)
def test_every_bad_ansible_parameter_is_refused_by_preflight(ansible_playbook: Any,
                                                             ansible_fast_vars: dict[str, Any],
                                                             tmp_path: Path) -> None:
    root = tmp_path / "root"
    hosts = {}
    for name, (values, _) in ANSIBLE_CASES.items():
        hosts[name] = {"ansible_connection": "local",
                       "ansible_python_interpreter": sys.executable,
                       "dlrm_root": str(root / name), **values}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"dlrm_hosts": {"hosts": hosts}}))
    # extra vars win over host vars: leave out the ones the hosts set
    extra = {k: v for k, v in ansible_fast_vars.items()
             if k not in ("steps", "warmup_steps", "preset")}
    extra["results_dir"] = str(tmp_path / "results")
    run = ansible_playbook("-i", str(inventory), "run.yml", extra=extra)
    assert run.returncode != 0
    recap = run.recaps[-1]
    for name, (_, needle) in ANSIBLE_CASES.items():
        assert recap[name]["failed"] == 1 and recap[name]["changed"] == 0, (name, recap[name])
        blocks = [b for b in re.split(r"(?:fatal|failed): \[", run.stdout)[1:]
                  if b.startswith(f"{name}]")]
        assert blocks and needle in " ".join(" ".join(blocks).split()), (name, blocks)
    assert "PLAY [Deploy" not in run.stdout or "TASK [deploy" not in run.stdout
    assert not root.exists(), "something was installed for a refused host"


@pytest.mark.ansible
@pytest.mark.timeout(300)
def test_bad_value_given_with_dash_e(ansible_playbook: Any, ansible_fast_vars: dict[str, Any],
                                     tmp_path: Path) -> None:
    """The same refusal through a real ``-e name=value`` (a string, as the shell gives it)."""
    extra = {k: v for k, v in ansible_fast_vars.items() if k != "steps"}
    extra.update(dlrm_root=str(tmp_path / "root"), results_dir=str(tmp_path / "results"))
    run = ansible_playbook("run.yml", "-e", "steps=-3", extra=extra)
    assert run.returncode != 0
    assert "localhost: steps must be >= 1, got -3" in run.stdout, run.explain()
    assert "Gather the host facts" not in run.stdout
    assert not (tmp_path / "root").exists()


def _ghost_inventory(tmp_path: Path) -> dict[str, Any]:
    return {"dlrm_hosts": {"hosts": {"ghost": {
        "ansible_host": "ghost.invalid", "ansible_connection": "ssh", "ansible_user": "root",
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o ConnectTimeout=5",
        "dlrm_root": str(tmp_path / "root")}}}}


@pytest.mark.ansible
@pytest.mark.timeout(300)
def test_unresolvable_host_is_named(ansible_playbook: Any, ansible_fast_vars: dict[str, Any],
                                    tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(_ghost_inventory(tmp_path)))
    run = ansible_playbook("-i", str(inventory), "run.yml",
                           extra={**ansible_fast_vars, "results_dir": str(tmp_path / "res")})
    assert run.returncode != 0
    assert "fatal: [ghost]: UNREACHABLE!" in run.stdout, run.explain()
    assert "Could not resolve hostname ghost.invalid" in run.stdout, run.explain()
    assert run.recaps[-1]["ghost"]["unreachable"] == 1


@pytest.mark.ansible
@pytest.mark.timeout(300)
def test_unresolvable_host_through_the_python_api(ansible_fast_vars: dict[str, Any],
                                                  tmp_path: Path) -> None:
    from dlrm_bench.orchestrate import run_benchmark

    result = run_benchmark(inventory=_ghost_inventory(tmp_path), results_dir=tmp_path / "res",
                           **{k: v for k, v in ansible_fast_vars.items()})
    assert result.status == "failed" and not result.ok
    assert result.unreachable_hosts == ["ghost"]
    assert "Could not resolve hostname ghost.invalid" in result.errors["ghost"]
    with pytest.raises(RuntimeError, match=r"ghost: .*Could not resolve hostname"):
        result.raise_for_status()
    assert json.loads(json.dumps(result.to_dict(), default=str))["unreachable_hosts"] == ["ghost"]
