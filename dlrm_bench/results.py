"""Result files: atomic writes, host facts, software versions and the ``result.json`` schema."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from dlrm_bench import __version__
from dlrm_bench.errors import UserError

SCHEMA_VERSION = 1
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file + fsync + rename: readers never see half a file.

    A full disk raises ``UserError`` naming the file, and leaves the previous file (if any) intact.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp makes 0600 files; results are meant to be read by others (collection, reports).
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_torch_save(payload: Any, path: str | os.PathLike[str], what: str = "") -> Path:
    """``torch.save`` to a temp file beside ``path``, then rename: never a half-written file.

    A failed write (a full disk) is one ``UserError`` line: ``cannot write <what><path>: why``.
    """
    import torch  # deferred: this module is imported by commands that must not load torch

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, target)
    except (OSError, RuntimeError) as exc:  # torch reports a short write as a RuntimeError
        raise UserError(f"cannot write {what}{target}: {write_failure(exc, target.parent)}") \
            from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def write_failure(exc: BaseException, directory: str | os.PathLike[str]) -> str:
    """Why a write into ``directory`` failed, in words: the OS error, or (for writers such as
    ``torch.save`` that report a short write as a RuntimeError) a full disk when it is full."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    try:
        stat = os.statvfs(directory)
        if stat.f_bavail * stat.f_frsize < 1024 * 1024:
            return f"No space left on device ({stat.f_bavail * stat.f_frsize // 1024} kB free)"
    except OSError:
        pass
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    model, flags = platform.processor() or "unknown", []
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("unknown", "", "x86_64"):
            model = value.strip()
        elif key == "flags" and not flags:
            flags = value.split()
    return model, flags


def _meminfo() -> dict[str, int]:
    info: dict[str, int] = {}
    for line in (_read("/proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            info[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return info


def _hugepages() -> dict[str, Any]:
    pages: dict[str, Any] = {}
    base = Path("/sys/kernel/mm/hugepages")
    if base.is_dir():
        for entry in sorted(base.iterdir()):
            nr = _read(str(entry / "nr_hugepages"))
            free = _read(str(entry / "free_hugepages"))
            pages[entry.name.removeprefix("hugepages-")] = {
                "nr": int(nr) if nr and nr.isdigit() else None,
                "free": int(free) if free and free.isdigit() else None,
            }
    return pages


def sysfs_selected(text: str) -> str:
    """A sysfs value; for selector files (``always [madvise] never``) the selected word."""
    if "[" in text:
        return text.split("[", 1)[1].split("]", 1)[0]
    return text


def _thp() -> str | None:
    text = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    return sysfs_selected(text) if text else text


def _governor() -> str:
    return _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") or "unsupported"


def _numa_nodes() -> dict[str, str]:
    nodes: dict[str, str] = {}
    base = Path("/sys/devices/system/node")
    if base.is_dir():
        for entry in sorted(base.glob("node[0-9]*")):
            nodes[entry.name] = _read(str(entry / "cpulist")) or ""
    return nodes


def host_facts() -> dict[str, Any]:
    """What a reader of the result needs to know about the machine it came from."""
    model, flags = _cpu_model_and_flags()
    mem = _meminfo()
    sockets = set()
    for path in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology/physical_package_id"):
        value = _read(str(path))
        if value is not None:
            sockets.add(value)
    isa = sorted(f for f in flags if f.startswith(("amx", "avx512", "avx_vnni")))
    return {
        "hostname": platform.node(),
        "cpu_model": model,
        "isa_flags": isa,
        "logical_cpus": os.cpu_count(),
        "allowed_cpus": sorted(os.sched_getaffinity(0)),
        "sockets": len(sockets) or None,
        "numa_nodes": _numa_nodes(),
        "memory_bytes": mem.get("MemTotal"),
        "memory_available_bytes": mem.get("MemAvailable"),
        "kernel": platform.release(),
        "governor": _governor(),
        "hugepages": _hugepages(),
        "thp": _thp(),
        "cpu_flags_override": os.environ.get("DLRM_BENCH_CPU_FLAGS"),
    }


def software_versions(backend: str) -> dict[str, Any]:
    versions: dict[str, Any] = {
        "dlrm_bench": __version__,
        "python": platform.python_version(),
        "backend": backend,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        versions["torch"] = torch.__version__
        try:
            onednn = torch.backends.mkldnn.version() if hasattr(torch.backends.mkldnn, "version") \
                else None
        except Exception:  # version probing must never fail a run
            onednn = None
        if onednn is None:
            cfg = torch.__config__.show()
            marker = "MKL-DNN v"
            if marker in cfg:
                onednn = cfg.split(marker, 1)[1].split()[0]
        versions["onednn"] = str(onednn) if onednn is not None else None
    for name in ("torchao", "intel_extension_for_pytorch", "numpy"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "unknown")
    versions["ld_preload"] = os.environ.get("LD_PRELOAD") or None
    return versions


def load_schema() -> dict[str, Any]:
    text = resources.files("dlrm_bench").joinpath("schemas/result.schema.json").read_text()
    return json.loads(text)
