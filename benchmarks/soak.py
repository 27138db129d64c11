"""Soak: many short ``dlrm-bench launch`` runs back to back, watching for leaks (not a test).

    .venv/bin/python benchmarks/soak.py [--iterations 200] [--max-seconds 1800]
        [--out benchmarks/results/soak-<host>.json] [-- LAUNCH ARGS...]

Each iteration is one launch through the Python API (``dlrm_bench.commands.launch.launch``, in
this process, so the launcher's own growth shows): by default ``--instances 2
--cores-per-instance 1 --preset tiny --steps 5 --warmup-steps 1 --batch-size 16``. After each,
it records the launcher's RSS, open fds, threads and unreaped children, the system's
MemAvailable, the processes left behind by the iteration (and their open fds), the exit code
and the wall time. The run stops after ``--iterations`` or ``--max-seconds``, whichever comes
first, writes the JSON and prints the first vs last 20 iterations.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dlrm_bench.commands.launch import launch  # noqa: E402
from dlrm_bench.results import atomic_write_json, host_facts, now_iso  # noqa: E402
from dlrm_bench.supervisor import Progress  # noqa: E402

DEFAULT_ARGS = ["--instances", "2", "--cores-per-instance", "1", "--preset", "tiny", "--steps",
                "5", "--warmup-steps", "1", "--batch-size", "16"]
WINDOW = 20


class Quiet(Progress):
    """No per-instance lines: 200 iterations of them would bury the summary."""

    def event(self, message: str) -> None:
        pass


def _status(pid: int | str = "self") -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def _fds(pid: int | str = "self") -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _mem_available_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def _children() -> int:
    """Processes whose parent is this one (an unreaped instance would show here)."""
    me, count = str(os.getpid()), 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] == me:
                count += 1
        except (OSError, IndexError):
            continue
    return count


def _leftovers(pattern: str) -> list[dict[str, Any]]:
    """Processes whose command line holds ``pattern`` (this soak's run dirs): they should not
    outlive their launch."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if pattern in cmdline:
            found.append({"pid": int(entry.name), "fds": _fds(entry.name),
                          "cmdline": cmdline[:200]})
    return found


def _window(rows: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    first, last = rows[:WINDOW], rows[-WINDOW:]
    keys = ("seconds", "launcher_rss_kb", "launcher_fds", "launcher_threads",
            "launcher_children", "mem_available_kb", "leftover_processes", "leftover_fds")
    out: dict[str, Any] = {"iterations": len(rows), "window": min(WINDOW, len(rows)),
                           "failed_iterations": sum(1 for r in rows if r["exit_code"] != 0),
                           "max_leftover_processes": max(r["leftover_processes"] for r in rows),
                           "first": {}, "last": {}}
    for key in keys:
        out["first"][key] = _window(first, key)
        out["last"][key] = _window(last, key)
    return out


def print_summary(summary: dict[str, Any]) -> None:
    print(f"{summary['iterations']} iterations, {summary['failed_iterations']} failed; "
          f"first vs last {summary['window']} (mean):")
    for key, first in summary["first"].items():
        last = summary["last"][key]
        if first is None or last is None:
            continue
        delta = last["mean"] - first["mean"]
        print(f"  {key:20s} {first['mean']:12.1f} -> {last['mean']:12.1f}  ({delta:+.1f}; "
              f"last max {last['max']:.0f})")
    print(f"  leftover processes after any iteration: {summary['max_leftover_processes']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep every iteration's run dir")
    parser.add_argument("launch_args", nargs="*", help="launch arguments (after --)")
    args = parser.parse_args()
    launch_args = args.launch_args or DEFAULT_ARGS
    host = platform.node() or "host"
    out = args.out or REPO / "benchmarks" / "results" / f"soak-{host}.json"

    rows: list[dict[str, Any]] = []
    started, deadline = now_iso(), time.monotonic() + args.max_seconds
    base = {"rss": _status(), "fds": _fds(), "mem": _mem_available_kb()}
    root = Path(tempfile.mkdtemp(prefix="dlrm-bench-soak-"))
    try:
        for i in range(args.iterations):
            if time.monotonic() >= deadline:
                print(f"stopping after {i} iterations: --max-seconds {args.max_seconds:g} reached")
                break
            run_dir = root / f"iter-{i:04d}"
            t0 = time.monotonic()
            try:
                code, result = launch([*launch_args, "--output", str(run_dir)], Quiet())
                status = result.get("status")
                throughput = (result.get("metrics") or {}).get("throughput_samples_per_s")
            except SystemExit as exc:  # a usage error: the same for every iteration
                raise SystemExit(f"launch refused its arguments: exit {exc.code}") from None
            seconds = time.monotonic() - t0
            left = _leftovers(str(run_dir))
            st = _status()
            rows.append({
                "iteration": i, "exit_code": code, "status": status, "seconds": seconds,
                "throughput_samples_per_s": throughput,
                "launcher_rss_kb": st.get("VmRSS"), "launcher_hwm_kb": st.get("VmHWM"),
                "launcher_threads": st.get("Threads"), "launcher_fds": _fds(),
                "launcher_children": _children(), "mem_available_kb": _mem_available_kb(),
                "leftover_processes": len(left),
                "leftover_fds": sum(p["fds"] for p in left), "leftovers": left,
            })
            if not args.keep:
                shutil.rmtree(run_dir, ignore_errors=True)
            if i % 10 == 0 or code != 0:
                r = rows[-1]
                print(f"iter {i}: exit {code} {seconds:.2f} s, rss {r['launcher_rss_kb']} kB, "
                      f"fds {r['launcher_fds']}, left {len(left)}, "
                      f"MemAvailable {r['mem_available_kb'] // 1024} MiB", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if not rows:
        print("no iteration ran", file=sys.stderr)
        return 1
    summary = summarize(rows)
    payload = {"kind": "soak", "started": started, "finished": now_iso(),
               "command": ["dlrm-bench", "launch", *launch_args],
               "iterations_requested": args.iterations, "max_seconds": args.max_seconds,
               "baseline": base, "summary": summary, "machine": host_facts(),
               "load_average": os.getloadavg(), "iterations": rows}
    atomic_write_json(out, payload)
    print_summary(summary)
    print(f"wrote {out}")
    return 0 if summary["failed_iterations"] == 0 and summary["max_leftover_processes"] == 0 \
        else 1


if __name__ == "__main__":
    sys.exit(main())
