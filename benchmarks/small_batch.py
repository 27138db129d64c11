"""Where the native backend's one-call small-batch path beats its general path (not a test).

    .venv/bin/python benchmarks/small_batch.py [--precisions avx_int8,avx_fp32]
        [--threads 1,2] [--batches 1,4,16,32,64,128,256] [--repeats 5] [--samples 20000]
        [--preset terabyte-small] [--cache-dir DIR]
        [--out benchmarks/results/small-batch-<host>.json]

For each precision (own process: the oneDNN ISA cap is per process), thread count and batch
size, the same prepared model runs the same batches alternately through the one-call C path
(``dlrm_forward_small``) and through the general path (oneDNN layer by layer, the gather kernel),
``--repeats`` times each, each time over ``--samples`` rows (at least 20 batches); the JSON
gives the median microseconds per batch of both, their ratio, and the machine.
``native.SMALL_*_ROWS_PER_THREAD`` were chosen from these figures. On an AMX host,
``--precisions amx_int8,amx_bfloat16,amx_bfloat32`` measures the same question against oneDNN's
AMX kernels (``benchmarks/results/small-batch-amx-*.json``: 2 cores of an AMX Xeon).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dlrm_bench.errors import UserError  # noqa: E402  (torch-free: the ISA env is not set yet)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One precision, in this process: every thread count and batch size."""
    from dlrm_bench.cpu import apply_isa_environment

    apply_isa_environment(args.precision)
    import torch

    from dlrm_bench import config
    from dlrm_bench.engine import batches as data
    from dlrm_bench.engine import runner
    from dlrm_bench.engine.runlog import RunLog
    from dlrm_bench.results import software_versions

    cfg = config.resolve({
        "backend": "native", "precision": args.precision, "preset": args.preset, "seed": 0,
        "threads": max(args.threads), "batch_size": max(args.batches), "warmup_steps": 1,
        "steps": 16, "weights_cache": str(args.cache_dir),
        "calibration_file": str(args.cache_dir / "calibration-native.json")}, env={})
    spec = runner.model_spec(cfg)
    prepared, _facts = runner.prepare_inference(cfg, spec, RunLog(None))
    if prepared.small_forward is None:
        why = "; ".join(f"{k}: {v}" for k, v in prepared.kernels.items())
        raise UserError(f"{args.precision} has no one-call small-batch path here ({why})")
    pool = data.pool(cfg, spec, "test", max(args.batches), 16)
    limit = prepared.small_rows_per_thread

    chunks = prepared.small_chunks

    def per_batch_us(rows: int, small: bool) -> float:
        prepared.small_rows_per_thread = 1 << 30 if small else 0
        prepared.small_chunks = chunks and small  # the general path: oneDNN layer by layer
        batches = [(b.dense[:rows], b.offsets[:, :rows], b.indices[:, :rows]) for b in pool]
        steps = max(20, args.samples // rows)
        for i in range(5):
            prepared(*batches[i % len(batches)])
        start = time.perf_counter()
        for i in range(steps):
            prepared(*batches[i % len(batches)])
        return (time.perf_counter() - start) / steps * 1e6

    rows_out = []
    with torch.inference_mode():
        for threads in args.threads:
            torch.set_num_threads(threads)
            for rows in args.batches:
                times: dict[str, list[float]] = {"one_call": [], "general": []}
                for _ in range(args.repeats):  # alternating: the machine's drift hits both
                    times["one_call"].append(per_batch_us(rows, True))
                    times["general"].append(per_batch_us(rows, False))
                one, general = (statistics.median(times[k]) for k in ("one_call", "general"))
                rows_out.append({"threads": threads, "batch_size": rows,
                                 "one_call_us": round(one, 1), "general_us": round(general, 1),
                                 "general_over_one_call": round(general / one, 3),
                                 "per_repeat_us": times})
                print(f"{args.precision} {threads} thread(s) batch {rows}: one call {one:.1f} us,"
                      f" general {general:.1f} us ({general / one:.2f}x)", flush=True)
    prepared.small_rows_per_thread, prepared.small_chunks = limit, chunks
    return {"precision": args.precision, "rows_per_thread_limit": limit,
            "kernels": prepared.kernels, "versions": software_versions("native"),
            "results": rows_out}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="avx_int8,avx_fp32")
    parser.add_argument("--threads", default="1,2", type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--batches", default="1,4,16,32,64,128,256",
                        type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=20000,
                        help="rows per measurement (at least 20 batches)")
    parser.add_argument("--preset", default="terabyte-small")
    parser.add_argument("--cache-dir", type=Path, help="prepared weights, kept (default: temp)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--precision", help=argparse.SUPPRESS)  # worker mode
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.precision:
        args.worker_out.write_text(json.dumps(worker(args)))
        return 0

    from dlrm_bench.results import atomic_write_json, host_facts, now_iso

    out = args.out or REPO / "benchmarks" / "results" / f"small-batch-{platform.node()}.json"
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or Path(tmp) / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        precisions = []
        for precision in args.precisions.split(","):
            result = Path(tmp) / f"{precision}.json"
            cmd = [sys.executable, __file__, "--precision", precision, "--worker-out",
                   str(result), "--cache-dir", str(cache), "--preset", args.preset,
                   "--threads", ",".join(map(str, args.threads)),
                   "--batches", ",".join(map(str, args.batches)),
                   "--repeats", str(args.repeats), "--samples", str(args.samples)]
            proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO)},
                                  stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                if last.startswith("small_batch: error: "):  # the worker's own one line
                    raise UserError(last.removeprefix("small_batch: error: "))
                raise UserError(f"{precision}: exit {proc.returncode}: {last}")
            precisions.append(json.loads(result.read_text()))
    atomic_write_json(out, {"benchmark": "small_batch", "when": now_iso(),
                            "machine": host_facts(), "preset": args.preset,
                            "repeats": args.repeats, "samples": args.samples,
                            "precisions": precisions})
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"small_batch: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
