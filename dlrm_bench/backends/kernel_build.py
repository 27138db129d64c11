"""Building the native backend's C kernels (``kernels/interaction.c``), without torch.

``fused`` loads and calls them (and needs torch: the kernel links the OpenMP runtime torch has
loaded). This module only compiles them into a per-user cache and answers ``dlrm-bench
kernels``: the deploy role runs that on every host before each run, and importing torch there
(~1.5 s) cost more than the check itself once the kernel is built. A build that has loaded once
(``fused.load`` checked its ABI) leaves a ``.loaded`` stamp beside it; ``status`` trusts the stamp
instead of loading the library again. The build's file name hashes the source, the compiler and
the flags, so a stamp never vouches for another build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from dlrm_bench.cpu import cpu_flags

ABI = 12
SOURCE = "interaction.c"
CFLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-fopenmp",
          "-shared", "-fPIC")
NEEDED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq")
# "0" turns the kernels off (A/B measurements, debugging): the torch ops run instead
ENV_SWITCH = "DLRM_BENCH_FUSED"
ENV_CACHE = "DLRM_BENCH_KERNEL_CACHE"


class KernelUnavailable(RuntimeError):
    """The fused kernel cannot run here; the message says why."""


def status() -> dict[str, object]:
    """Build (if needed) and load the kernels here: ``available``, ``path``, ``built_now``,
    ``reason`` (why not), ``cache`` (what ``dlrm-bench kernels`` prints). A build with a
    ``.loaded`` stamp is not loaded again (no torch import)."""
    result: dict[str, object] = {"available": False, "path": None, "built_now": False,
                                 "reason": None, "cache": str(cache_dir())}
    try:
        check_usable()
        path, built_now = build()
        result.update(path=str(path), built_now=built_now)
        if built_now or not loaded_stamp(path).exists():
            from dlrm_bench.backends import fused  # torch: only for a build not loaded yet

            fused.load()
    except KernelUnavailable as exc:
        result["reason"] = str(exc)
        return result
    result["available"] = True
    return result


def check_usable() -> None:
    """``KernelUnavailable`` when switched off or the CPU lacks the instructions."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        raise KernelUnavailable(f"turned off by {ENV_SWITCH}=0")
    missing = [flag for flag in NEEDED_FLAGS if flag not in cpu_flags()]
    if missing:
        raise KernelUnavailable(f"the CPU lacks {', '.join(missing)}")


def cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dlrm-bench" / "kernels"


def loaded_stamp(library: Path) -> Path:
    """The file that says ``library`` loaded here with this ABI (``fused.load`` writes it)."""
    return library.with_name(f"{library.name}.abi{ABI}.loaded")


def _compiler() -> str:
    name = os.environ.get("CC", "gcc")
    path = shutil.which(name)
    if path is None:
        raise KernelUnavailable(f"no C compiler ({name!r} not found on PATH)")
    return path


def build(directory: Path | None = None) -> tuple[Path, bool]:
    """The compiled kernel's path and whether it was compiled now (this source, compiler and
    flags were new here).

    The file name carries a hash of all three, so an edited kernel or another compiler never
    loads a stale build; the build goes to a temporary name and is renamed into place, so
    instances starting together on one host may race to build it without harm.
    """
    compiler = _compiler()
    source = resources.files("dlrm_bench.backends").joinpath("kernels", SOURCE).read_bytes()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        raise KernelUnavailable(f"C compiler {compiler} does not run: {exc}") from None
    key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(CFLAGS).encode()]))
    directory = Path(directory) if directory is not None else cache_dir()
    target = directory / f"interaction-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target, False
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as tmp:
            src = Path(tmp) / SOURCE
            src.write_bytes(source)
            built = Path(tmp) / target.name
            proc = subprocess.run([compiler, *CFLAGS, str(src), "-o", str(built)],
                                  capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                first = (proc.stderr.strip().splitlines() or ["(no output)"])[0]
                raise KernelUnavailable(f"compiling {SOURCE} failed: {first}")
            os.replace(built, target)
    except OSError as exc:
        raise KernelUnavailable(f"cannot build the kernel in {directory}: {exc}") from None
    return target, True
