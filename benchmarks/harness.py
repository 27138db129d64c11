"""Native vs IPEX on this machine: one invocation, alternating backends (not a test).

    .venv/bin/python benchmarks/harness.py [--precisions avx_fp32,amx_bfloat16,amx_int8 | all]
        [--batches 2048,1] [--sharing-batch 16] [--repeats 3] [--paired-slices 8] [--paired-only]
        [--target-seconds 2] [--preset terabyte-small] [--seed 0] [--threads N]
        [--cache-dir DIR] [--out F.json]

What runs. The native backend with .venv/bin/python and, when .venv-ipex exists (``make
ipex-venv``), the IPEX backend with .venv-ipex/bin/python, on the same model (``--preset``,
``--seed``: generated weights), the same generated test data, the same threads. For each repeat
and precision: a worker process per backend (benchmarks/harness_worker.py: every batch size of
``--batches`` in one process, the ISA environment being per process), in ``--backends`` order
rotated by one each repeat (``backend_order``: the first worker after a precision change pays
for paging its tables in); then the seed's weight-sharing layout per backend, in the same order:
``dlrm-bench launch --instances <cores> --cores-per-instance 1 --weight-sharing`` at
``--sharing-batch`` (one single-threaded
stream per physical core over one memory-mapped copy of the weights), its timed windows sized
as the workers' (``sharing_steps``). Then the paired windows
(``run_paired``, ``--paired-slices``, when both native and IPEX run): one worker per backend in
``--serve`` mode, both kept alive at the largest batch, their timed windows of
``--target-seconds`` taking turns (native first in even slices, IPEX in odd ones); the ratio of
each slice's two windows compares the backends over the same few seconds of the machine, where
the workers' runs above are a whole worker apart (on a VM whose speed drifts by tens of percent
over minutes, those ratios spread 1.18-1.49 over five repeats). ``--paired-only``: those
windows alone (no worker runs or sharing launches; amx_int8, 3 repeats: 3.5 minutes).
Prepared weights and int8
calibrations are made once, in ``--cache-dir``, and reused by every repeat and by the launches.
Worker processes get the launcher's environment: OMP_NUM_THREADS, KMP_* and jemalloc when
installed. Timed windows last about ``--target-seconds`` per batch size whatever the speed,
after a warmup of at least ``--warmup-seconds`` (3 s: IPEX's amx_bfloat32 ran ~40k samples/s for
its first ~2 s after tracing, 60-70k after).
``--backends`` may also name native variants (``VARIANTS``): ``native-unfused`` (the fused C
kernels off: the torch ops, e.g. the amx_* plans' AMX bmm) and ``native-normal-tables``
(tables left in normal memory where ``native`` puts them on hugepages), columns of the same
table. Hugepages: the native backend's ``table_memory=auto`` uses a mounted hugetlbfs with room
for the tables (``playbooks/provision.yml`` reserves and mounts one, or by hand:
``echo N > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages`` and ``mount -t hugetlbfs
nodev /dev/hugepages``); where the tables went is in each run's record and in the report.

Roofline. For each precision, benchmarks/harness_peaks.py measures (in the main venv, in a
process with that precision's ISA caps, with ``--threads`` threads) the best of two GEMM kernels
of the precision's datatype on n x n x n products (n = 1024, 2048, 4096; see its docstring): fp32
``torch.mm`` (MKL) or oneDNN prepacked linear; bf32 the same in oneDNN's bf16 math mode; bf16
``torch.mm`` / oneDNN prepacked linear in bf16; int8 ``torch._int_mm`` or oneDNN ``qlinear``
(u8 x s8). It runs at the start and at the end; the peak is the larger. Fraction of the roofline
= samples/s x ``ModelSpec.flops_per_sample()`` (2 per MAC: both MLPs and the interaction's dot
products; embedding gathers count nothing) / peak. The paired rows divide each window by the
same best kernel timed in the native worker right after that slice (``run_paired``): on this
VM the peak at the start and end can be a third off the runs' phase (a run with amx_bfloat16 at
115% of it), the paired peak is seconds from its window.

Output: ``--out`` (default benchmarks/results/harness-<host>.json) with the machine (CPU model,
flags, cores, torch / IPEX versions of both venvs), parameters, peaks, every run, the summary
and #7's targets judged on it (``harness_report.targets``: batch 2048 on the paired rows where the
run has them, met or missed and by how much); the markdown tables beside it (.md) and on stdout.
``benchmarks/harness_report.py F.json`` renders a saved result's markdown again. Default: 3
precisions x 3 repeats, about 18 minutes on 2 cores with the paired windows (``--precisions all``
for the five).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness_report import markdown, summarise, targets  # noqa: E402  (benchmarks/ is on sys.path)
from harness_worker import REPLY  # noqa: E402

from dlrm_bench import launcher, topology  # noqa: E402
from dlrm_bench.config import ENV_NAMES, PRECISIONS  # noqa: E402
from dlrm_bench.presets import get_preset  # noqa: E402
from dlrm_bench.results import atomic_write_json, atomic_write_text, host_facts, now_iso  # noqa: E402

VENVS = {"native": REPO / ".venv" / "bin" / "python",
         "ipex": REPO / ".venv-ipex" / "bin" / "python"}
# --backends names: a backend, the environment and the run flags it runs with. The native
# variants switch its fused C kernels (dlrm_bench/backends/fused.py) off or keep its tables off
# hugepages, so that what each adds is measured in the same run: --backends
# native,native-unfused,ipex
VARIANTS: dict[str, tuple[str, dict[str, str], dict[str, str]]] = {
    "native": ("native", {}, {}),
    "ipex": ("ipex", {}, {}),
    "native-unfused": ("native", {"DLRM_BENCH_FUSED": "0"}, {}),
    "native-normal-tables": ("native", {}, {"table_memory": "normal"}),
}


def backend_order(backends: list[str], repeat: int) -> list[str]:
    """The backends rotated by one per repeat: the first worker after a precision change pays for
    paging its tables back in (amx_bfloat32, 2 cores: p50 52 against 33-35 ms in the later
    repeats), so no backend may always go first."""
    shift = repeat % len(backends) if backends else 0
    return backends[shift:] + backends[:shift]


def run_flags(variant: str) -> list[str]:
    """``--table-memory normal`` etc.: the variant's run flags on a command line."""
    return [arg for key, value in VARIANTS[variant][2].items()
            for arg in (f"--{key.replace('_', '-')}", value)]
DEFAULT_PRECISIONS = "avx_fp32,amx_bfloat16,amx_int8"
FIRST_SHARING_STEPS = 10_000  # a variant's first sharing launch: 1-8 s on 2 cores
MIN_SHARING_STEPS = 1_000


def python_of(variant: str) -> Path:
    """The venv interpreter that runs a ``--backends`` name."""
    return VENVS[VARIANTS[variant][0]]


def base_env(threads: int | None) -> dict[str, str]:
    """os.environ without the seed's variables, plus the launcher's threading and allocator."""
    env = {k: v for k, v in os.environ.items() if k not in (*ENV_NAMES.values(), "CASE")}
    env["PYTHONPATH"] = str(REPO)
    if threads is not None:
        env.update({"OMP_NUM_THREADS": str(threads), **launcher.KMP_ENV,
                    **launcher.find_allocator("auto").env})
    return env


def venv_versions(python: Path) -> dict[str, str | None]:
    code = ("import importlib.metadata as m, json, platform\n"
            "def v(n):\n  try: return m.version(n)\n  except m.PackageNotFoundError: return None\n"
            "print(json.dumps({'python': platform.python_version(), 'torch': v('torch'), "
            "'intel-extension-for-pytorch': v('intel-extension-for-pytorch'), "
            "'numpy': v('numpy')}))")
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    return json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-300:]}


def loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


WALL: dict[str, float] = {}  # seconds each subprocess took, by log name


def _call(cmd: list[str], log: Path, env: dict[str, str], timeout: float) -> str | None:
    """Run ``cmd`` with its output in ``log``; None when it succeeded, else the error's tail."""
    start = time.monotonic()
    with log.open("w") as handle:
        try:
            proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                  timeout=timeout, cwd=REPO)
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout:.0f} s (log {log})"
        finally:
            WALL[log.stem] = round(time.monotonic() - start, 1)
    if proc.returncode == 0:
        return None
    tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-3:]
    return f"exit {proc.returncode}: {' | '.join(tail)[-400:]} (log {log})"


def measure_peaks(args: argparse.Namespace, work: Path, tag: str) -> dict[str, dict[str, Any]]:
    peaks = {}
    for precision in args.precisions:
        out = work / f"peak-{precision}-{tag}.json"
        error = _call([str(VENVS["native"]), str(REPO / "benchmarks" / "harness_peaks.py"),
                       "--precision", precision, "--threads", str(args.threads),
                       "--sizes", args.peak_sizes, "--out", str(out)],
                      work / f"peak-{precision}-{tag}.log", base_env(args.threads), 600)
        peaks[precision] = json.loads(out.read_text()) if error is None else {"error": error}
        print(f"peak {precision} ({tag}): {peaks[precision].get('peak_gflops')} GFLOP/s "
              f"{peaks[precision].get('best') or peaks[precision].get('error')}", flush=True)
    return peaks


def _calibration(cache: Path, backend: str) -> str:
    return str(cache / f"calibration-{backend}.json")


def worker_cmd(args: argparse.Namespace, variant: str, precision: str, plan: list[list[Any]],
               cache: Path, out: Path, serve: bool = False) -> list[str]:
    """benchmarks/harness_worker.py's command line for a variant and plan."""
    backend = VARIANTS[variant][0]
    return [str(VENVS[backend]), str(REPO / "benchmarks" / "harness_worker.py"),
            "--backend", backend, "--precision", precision, "--preset", args.preset,
            "--seed", str(args.seed), "--threads", str(args.threads),
            "--plan", json.dumps(plan), "--weights-cache", str(cache / "weights-node0"),
            "--calibration-file", _calibration(cache, backend), "--out", str(out),
            "--warmup-seconds", str(args.warmup_seconds),
            *(["--serve"] if serve else []), *run_flags(variant)]


def worker_plan(args: argparse.Namespace, batches: list[int]) -> list[list[Any]]:
    """harness_worker.py's ``--plan``: [batch, warmup steps, min steps, seconds, max steps]."""
    return [[b, 5 if b >= 256 else 50, 10 if b >= 256 else 200, args.target_seconds,
             args.max_steps] for b in batches]


def window_record(r: dict[str, Any]) -> dict[str, Any]:
    """The fields of a harness record taken from one of harness_worker.py's timed windows."""
    weights = r.get("weights") or {}
    return {"samples_per_s": r["throughput_samples_per_s"], "latency_ms": r["latency_ms"],
            "steps": r["steps"], "elapsed_s": r["elapsed_s"],
            "cpu_utilisation": r["timed_cpu_utilisation"], "kernels": weights.get("kernels"),
            "tables": weights.get("tables")}


def run_worker(args: argparse.Namespace, variant: str, precision: str, repeat: int,
               cache: Path, work: Path) -> list[dict[str, Any]]:
    plan = worker_plan(args, args.batches)
    extra_env = VARIANTS[variant][1]
    tag = f"{variant}-{precision}-r{repeat}"
    out, load = work / f"{tag}.json", loadavg()
    error = _call(worker_cmd(args, variant, precision, plan, cache, out),
                  work / f"{tag}.log", {**base_env(args.threads), **extra_env}, 1800)
    common = {"backend": variant, "precision": precision, "repeat": repeat, "loadavg_1m": load,
              "process_wall_s": WALL.get(tag)}
    if error is not None:
        print(f"{tag}: FAILED {error}", flush=True)
        return [{**common, "layout": f"batch {b}", "error": error} for b in args.batches]
    result = json.loads(out.read_text())
    records = []
    for r in result["runs"]:
        records.append({**common, "layout": f"batch {r['batch_size']}", **window_record(r),
                        "prepare_s": r["prepare_s"], "first_call_s": r["first_call_s"],
                        "warmup_s": r.get("warmup_s"),
                        "versions": result["versions"]})
        print(f"{tag} batch {r['batch_size']}: {r['throughput_samples_per_s']:,.0f} samples/s "
              f"(p50 {r['latency_ms']['p50']:.3f} ms, {r['steps']} steps)", flush=True)
    return records


class ServedWorker:
    """A ``harness_worker.py --serve`` process: one JSON request per line on its stdin, its
    answers the ``@@ `` lines of its stdout (read by a thread, so that a hung worker times out
    instead of hanging the harness); its stderr goes to ``log``."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self._log = log.open("w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, env=env, cwd=REPO, text=True)
        self._answers: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                self._answers.put(line[len(REPLY):])
        self._answers.put(None)  # end of output: the worker exited

    def answer(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"no answer in {timeout:.0f} s (log {self._log.name})") from None
        if line is None:
            self._answers.put(None)  # for the next caller too
            raise RuntimeError(f"exited {self.proc.wait()} (log {self._log.name})")
        return json.loads(line)

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):  # a worker that is gone: answer() says how
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        return self.answer(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def paired_order(variants: list[str], slice_index: int) -> list[str]:
    """native, ipex in even slices, ipex, native in odd ones: each backend's window follows the
    other's as often as it precedes it."""
    return variants if slice_index % 2 == 0 else variants[::-1]


def run_paired(args: argparse.Namespace, precision: str, repeat: int, cache: Path,
               work: Path, peak: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``--paired-slices`` timed windows per backend at the largest batch, native and IPEX
    taking turns (paired_order) in two processes kept alive: the ratio of the two windows of a
    slice compares the backends over the same few seconds of the machine, where the workers'
    windows are a worker's whole run apart (this VM's speed drifts by tens of percent over
    minutes). With ``peak`` (harness_peaks.py's result at the start) the native worker also
    times that run's best GEMM for about ``--target-seconds`` / 2 after each slice (a record
    with ``peak_gflops``): the paired roofline's peak, measured seconds from its windows."""
    variants = [v for v in ("native", "ipex") if v in args.backends]
    if args.paired_slices <= 0 or len(variants) < 2:
        return []
    batch = max(args.batches)
    layout = f"paired batch {batch}"
    plan = worker_plan(args, [batch])
    best = (peak or {}).get("best")  # "kernel @n"
    peak_request = None
    if best:
        kernel, _, n = best.rpartition(" @")
        peak_request = {"peak": {"kernel": kernel, "n": int(n),
                                 "seconds": args.target_seconds / 2}}
    workers: dict[str, ServedWorker] = {}
    records: list[dict[str, Any]] = []
    common = {"precision": precision, "repeat": repeat, "layout": layout}
    try:
        for variant in variants:
            tag = f"{variant}-{precision}-r{repeat}-paired"
            workers[variant] = ServedWorker(
                worker_cmd(args, variant, precision, plan, cache, work / f"{tag}.json",
                           serve=True),
                {**base_env(args.threads), **VARIANTS[variant][1]}, work / f"{tag}.log")
            workers[variant].answer(1800)  # prepared and warmed up (one at a time)
        for k in range(args.paired_slices):
            for variant in paired_order(variants, k):
                r = workers[variant].request({"seconds": args.target_seconds}, 600)
                records.append({**common, "backend": variant, "slice": k,
                                **window_record(r)})
            if peak_request:
                p = workers["native"].request(peak_request, 600)
                records.append({**common, "backend": "peak", "slice": k, "kernel": best,
                                "peak_gflops": p.get("peak_gflops"), "error": p.get("error")})
        rates = {v: [r["samples_per_s"] for r in records if r["backend"] == v] for v in variants}
        print(f"{precision}-r{repeat} {layout}: " + ", ".join(
            f"{v} {statistics.median(x):,.0f}" for v, x in rates.items()) + " samples/s "
            f"(median of {args.paired_slices} windows each)", flush=True)
    except RuntimeError as exc:
        print(f"{precision}-r{repeat} {layout}: FAILED {exc}", flush=True)
        records = [{**common, "backend": v, "error": str(exc)} for v in variants]
    finally:
        for worker in workers.values():
            worker.close()
    return records


def sharing_steps(args: argparse.Namespace, earlier: list[dict[str, Any]], variant: str,
                  precision: str) -> int:
    """``--sharing-steps``, or (0: auto) steps for a timed window of about ``--target-seconds``
    per instance at the rate of this variant and precision's last sharing run, in hundreds,
    between MIN_SHARING_STEPS and 5 x ``--max-steps``; the first run gets FIRST_SHARING_STEPS.
    Fixed counts gave windows of 0.2 s at avx_int8 but 8 s at
    avx_fp32 on IPEX; the short ones moved the ratio by +-20 % from repeat to repeat."""
    if args.sharing_steps > 0:
        return args.sharing_steps
    rates = [r["samples_per_s"] / r["instances"] for r in earlier
             if r.get("layout", "").startswith("sharing") and r["backend"] == variant
             and r["precision"] == precision and r.get("samples_per_s")]
    if not rates:
        return FIRST_SHARING_STEPS
    steps = args.target_seconds * rates[-1] / args.sharing_batch
    return int(min(args.max_steps * 5, max(MIN_SHARING_STEPS, round(steps, -2))))


def run_sharing(args: argparse.Namespace, variant: str, precision: str, repeat: int,
                cache: Path, work: Path, steps: int) -> dict[str, Any]:
    backend, extra_env, _flags = VARIANTS[variant]
    tag = f"{variant}-{precision}-r{repeat}-sharing"
    run_dir, load = work / tag, loadavg()
    error = _call([str(VENVS[backend]), "-m", "dlrm_bench", "launch",
                   "--instances", str(args.cores), "--cores-per-instance", "1",
                   "--weight-sharing", "--weights-cache", str(cache), "--output", str(run_dir),
                   "--backend", backend, "--precision", precision, "--preset", args.preset,
                   "--seed", str(args.seed), "--batch-size", str(args.sharing_batch),
                   "--steps", str(steps), "--warmup-steps",
                   str(steps // 10), "--calibration-file",
                   _calibration(cache, backend), *run_flags(variant)],
                  work / f"{tag}.log", {**base_env(None), **extra_env}, 1800)
    record: dict[str, Any] = {
        "backend": variant, "precision": precision, "repeat": repeat, "loadavg_1m": load,
        "process_wall_s": WALL.get(tag),
        "layout": f"sharing {args.cores}x1 core, batch {args.sharing_batch}"}
    if error is not None:
        print(f"{tag}: FAILED {error}", flush=True)
        return {**record, "error": error}
    host = json.loads((run_dir / "host_result.json").read_text())
    metrics = host.get("metrics", {})
    tables = [json.loads(f.read_text()).get("model", {}).get("tables")
              for f in sorted(run_dir.glob("instance-*/result.json"))]
    record["tables"] = tables[0] if tables and all(t == tables[0] for t in tables) else tables
    record.update(samples_per_s=host["kpi"]["value"], latency_ms=metrics.get("latency_ms", {}),
                  steps=steps, instances=len(host["instances"]),
                  pinning=host["pinning"]["method"], allocator=host["allocator"]["name"])
    print(f"{tag}: {record['samples_per_s']:,.0f} samples/s", flush=True)
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default=DEFAULT_PRECISIONS, help="comma list, or all")
    parser.add_argument("--batches", default="2048,1")
    parser.add_argument("--sharing-batch", type=int, default=16, help="0: no sharing layout")
    parser.add_argument("--sharing-steps", type=int, default=0,
                        help="timed steps of each sharing launch; 0: about --target-seconds")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paired-slices", type=int, default=8,
                        help="native/IPEX windows taking turns per repeat (0: none)")
    parser.add_argument("--paired-only", action="store_true",
                        help="only the paired windows: no worker runs, no sharing launches")
    parser.add_argument("--target-seconds", type=float, default=2.0)
    parser.add_argument("--warmup-seconds", type=float, default=3.0,
                        help="each worker warms up at least this long before its first timed "
                             "window (IPEX's first seconds after tracing are slow)")
    parser.add_argument("--max-steps", type=int, default=20000)
    parser.add_argument("--preset", default="terabyte-small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--backends", default="native,ipex",
                        help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--peak-sizes", default="1024,2048,4096")
    parser.add_argument("--cache-dir", type=Path, help="kept (default: a temporary dir)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.precisions = list(PRECISIONS) if args.precisions == "all" else args.precisions.split(",")
    unknown = [p for p in args.precisions if p not in PRECISIONS]
    if unknown:
        parser.error(f"unknown precisions: {', '.join(unknown)}")
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.cores = len(topology.detect().physical_cpus)
    args.threads = args.threads or args.cores
    wanted = args.backends.split(",")
    unknown = [b for b in wanted if b not in VARIANTS]
    if unknown:
        parser.error(f"unknown backends: {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    if args.paired_only and not ({"native", "ipex"} <= set(wanted) and args.paired_slices > 0):
        parser.error("--paired-only needs --backends with native and ipex and --paired-slices > 0")
    args.backends = [b for b in wanted if python_of(b).exists()]
    args.skipped = {b: f"{python_of(b)} does not exist"
                    + (" (make ipex-venv)" if VARIANTS[b][0] == "ipex" else "")
                    for b in wanted if b not in args.backends}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for backend, why in args.skipped.items():
        print(f"skipping {backend}: {why}", flush=True)
    if not args.backends:
        raise SystemExit("no backend to run")
    if args.paired_only and "ipex" not in args.backends:
        raise SystemExit(f"--paired-only: {args.skipped['ipex']}")
    started, t0 = now_iso(), time.monotonic()
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="dlrm-harness-cache-"))
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dlrm-harness-"))
    print(f"cache {cache}, logs {work}", flush=True)
    runs: list[dict[str, Any]] = []
    try:
        peaks_start = measure_peaks(args, work, "start")
        for repeat in range(args.repeats):
            for precision in args.precisions:
                order = [] if args.paired_only else backend_order(args.backends, repeat)
                for backend in order:
                    runs += run_worker(args, backend, precision, repeat, cache, work)
                if args.sharing_batch > 0:
                    for backend in order:
                        steps = sharing_steps(args, runs, backend, precision)
                        runs.append(run_sharing(args, backend, precision, repeat, cache, work,
                                                steps))
                runs += run_paired(args, precision, repeat, cache, work,
                                   peaks_start.get(precision))
        peaks_end = measure_peaks(args, work, "end")
    finally:
        if args.cache_dir is None:
            shutil.rmtree(cache, ignore_errors=True)
    peaks = {p: max((peaks_start[p], peaks_end[p]), key=lambda d: d.get("peak_gflops") or 0)
             for p in args.precisions}
    facts = host_facts()
    spec = get_preset(args.preset)
    doc = {
        "benchmark": "harness: native vs IPEX",
        "when": started, "total_s": round(time.monotonic() - t0, 1),
        "machine": {**{k: facts[k] for k in ("hostname", "cpu_model", "isa_flags", "logical_cpus",
                                              "allowed_cpus", "sockets", "memory_bytes",
                                              "kernel", "governor",
                                              "cpu_flags_override")},
                    "physical_cores": args.cores},
        "venvs": {b: venv_versions(python_of(b)) for b in args.backends},
        "skipped_backends": args.skipped,
        "parameters": {"precisions": args.precisions, "batches": args.batches,
                       "sharing_batch": args.sharing_batch, "sharing_steps": args.sharing_steps,
                       "repeats": args.repeats, "paired_slices": args.paired_slices,
                       "paired_only": args.paired_only,
                       "target_seconds": args.target_seconds,
                       "warmup_seconds": args.warmup_seconds,
                       "preset": args.preset, "seed": args.seed, "threads": args.threads,
                       "backends": args.backends, "peak_sizes": args.peak_sizes,
                       "order": "per repeat and precision: workers, then sharing launches, "
                                "each in the order of backends, then the paired windows"},
        "flops_per_sample": spec.flops_per_sample(),
        "peaks": peaks, "peaks_start": peaks_start, "peaks_end": peaks_end,
        "summary": summarise(runs, peaks, spec.flops_per_sample()),
        "runs": runs, "logs": str(work),
    }
    doc["targets"] = targets(doc["summary"])
    out = args.out or REPO / "benchmarks" / "results" / f"harness-{platform.node()}.json"
    atomic_write_json(out, doc)
    table = markdown(doc)
    atomic_write_text(out.with_suffix(".md"), table)
    print("\n" + table + f"\nwritten: {out} and {out.with_suffix('.md')}; logs {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
