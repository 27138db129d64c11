"""CPU flags, precision support refusals and the ISA environment (dlrm_bench.cpu)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlrm_bench import cpu
from dlrm_bench.errors import UserError

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu
"""
NO_AMX = "avx512f avx512bw avx512_vnni"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cpu.FLAGS_ENV, raising=False)


def test_parse_cpuinfo_takes_first_flags_line() -> None:
    flags = cpu.parse_flags(CPUINFO)
    assert {"amx_tile", "amx_int8", "amx_bf16", "avx512f", "avx512_vnni"} <= flags
    assert "bugs" not in flags and "spectre_v1" not in flags
    assert len(flags) == 9


def test_cpu_flags_reads_the_cpuinfo_file(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    assert "amx_tile" in cpu.cpu_flags(environ={}, cpuinfo=info)
    assert cpu.cpu_flags(environ={}, cpuinfo=tmp_path / "missing") == frozenset()


def test_real_host_flags_are_read() -> None:
    # every x86-64 Linux host lists at least sse2 (a crude check that the parser fits the file)
    if not Path("/proc/cpuinfo").exists():
        pytest.skip("no /proc/cpuinfo")
    assert "sse2" in cpu.cpu_flags(environ={})


@pytest.mark.parametrize("text", ["avx512f,avx512_vnni", "avx512f avx512_vnni",
                                  " avx512f ,\tavx512_vnni\n"])
def test_override_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    monkeypatch.setenv(cpu.FLAGS_ENV, text)
    assert cpu.cpu_flags(cpuinfo=info) == frozenset({"avx512f", "avx512_vnni"})


def test_amx_refused_without_amx_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu.FLAGS_ENV, NO_AMX)
    with pytest.raises(UserError) as err:
        cpu.check_supported("amx_int8", "inference")
    msg = str(err.value)
    assert msg == ("precision amx_int8 needs the CPU flags amx_tile, amx_int8; "
                   f"this host lacks: amx_tile, amx_int8 (from {cpu.FLAGS_ENV})")
    assert "\n" not in msg
    for precision in ("amx_bfloat16", "amx_bfloat32"):
        with pytest.raises(UserError, match="amx_tile, amx_bf16; this host lacks"):
            cpu.check_supported(precision, "inference")
    # the avx precisions still run there
    cpu.check_supported("avx_fp32", "inference")
    cpu.check_supported("avx_int8", "inference")


def test_only_the_missing_flags_are_named() -> None:
    flags = frozenset({"avx512f", "amx_tile", "amx_bf16"})
    with pytest.raises(UserError, match=r"this host lacks: amx_int8$"):
        cpu.check_supported("amx_int8", flags=flags)
    cpu.check_supported("amx_bfloat16", flags=flags)


def test_avx_refusals() -> None:
    with pytest.raises(UserError, match=r"avx_int8 needs .*; this host lacks: avx512_vnni"):
        cpu.check_supported("avx_int8", flags=frozenset({"avx512f"}))
    with pytest.raises(UserError, match="avx_fp32 needs the CPU flags avx512f"):
        cpu.check_supported("avx_fp32", flags=frozenset({"avx2"}))


def test_int8_training_refused() -> None:
    everything = frozenset(flag for needed in cpu.REQUIRED_FLAGS.values() for flag in needed)
    for precision in ("avx_int8", "amx_int8"):
        with pytest.raises(UserError) as err:
            cpu.check_supported(precision, "training", flags=everything)
        assert str(err.value) == (
            f"precision {precision} cannot train: training supports avx_fp32, amx_bfloat16, "
            "amx_bfloat32; int8 training is not supported")
    for precision in cpu.TRAINING_PRECISIONS:
        cpu.check_supported(precision, "training", flags=everything)


def test_unknown_precision_lists_the_valid_ones() -> None:
    with pytest.raises(UserError) as err:
        cpu.check_supported("amx_fp16", "inference")
    assert str(err.value) == ("unknown precision 'amx_fp16': choose one of avx_fp32, avx_int8, "
                              "amx_int8, amx_bfloat16, amx_bfloat32")
    with pytest.raises(UserError, match="unknown precision"):
        cpu.isa_environment("fp32")
    with pytest.raises(UserError, match="unknown function 'serving'"):
        cpu.check_supported("avx_fp32", "serving")


def test_isa_environment() -> None:
    for precision in ("avx_fp32", "avx_int8"):
        env = cpu.isa_environment(precision)
        assert env["ONEDNN_MAX_CPU_ISA"] == env["DNNL_MAX_CPU_ISA"] == "AVX512_CORE_VNNI"
        assert env["MKL_ENABLE_INSTRUCTIONS"] == "AVX512"
    for precision in ("amx_int8", "amx_bfloat16", "amx_bfloat32"):
        env = cpu.isa_environment(precision)
        assert env["ONEDNN_MAX_CPU_ISA"] == env["DNNL_MAX_CPU_ISA"] == "ALL"
        assert "MKL_ENABLE_INSTRUCTIONS" not in env


def test_apply_overrides_and_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch  # noqa: F401  (the "too late" warning needs torch in sys.modules)

    for key in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    with pytest.warns(RuntimeWarning) as record:
        changed = cpu.apply_isa_environment("avx_fp32")
    messages = [str(w.message) for w in record]
    assert any("ONEDNN_MAX_CPU_ISA=ALL replaced by AVX512_CORE_VNNI" in m for m in messages)
    assert any("torch is already imported" in m for m in messages)
    assert changed == cpu.isa_environment("avx_fp32")
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE_VNNI"
    # a second call has nothing to change, hence nothing to warn about
    assert cpu.apply_isa_environment("avx_int8") == {}


def test_cpu_module_does_not_import_torch() -> None:
    code = ("import sys, dlrm_bench.cpu as c; c.apply_isa_environment('avx_fp32'); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    isa_keys = {*cpu.isa_environment("avx_fp32"), *cpu.isa_environment("amx_int8")}
    env = {k: v for k, v in os.environ.items() if k not in isa_keys}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_values_that_already_fit_are_kept() -> None:
    seed_amx = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX", "DNNL_MAX_CPU_ISA": "AVX512_CORE_AMX"}
    assert cpu.isa_mismatches("amx_int8", environ=seed_amx) == {}
    assert cpu.isa_mismatches("amx_bfloat16", environ={}) == {}  # unset = oneDNN's ALL
    assert set(cpu.isa_mismatches("avx_int8", environ=seed_amx)) == {
        "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"}
    lower = {"ONEDNN_MAX_CPU_ISA": "avx2", "DNNL_MAX_CPU_ISA": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX512"}
    assert cpu.isa_mismatches("avx_fp32", environ=lower) == {}
    assert cpu.isa_mismatches("amx_int8", environ=lower) == {
        "ONEDNN_MAX_CPU_ISA": "ALL", "DNNL_MAX_CPU_ISA": "ALL"}
