"""One (backend, precision) of benchmarks/harness.py: every batch size, in one process.

    <venv>/bin/python benchmarks/harness_worker.py --backend ipex --precision amx_int8 \\
        --preset terabyte-small --seed 0 --threads 2 --plan '[[2048, 3, 10, 2.0, 2000]]' \\
        --weights-cache DIR --calibration-file F --out result.json

The precision's ISA environment is set before torch is imported (as ``dlrm-bench run`` does).
For each ``[batch, warmup_steps, min_steps, target_seconds, max_steps]`` of the plan the model
is prepared afresh through the engine's ``prepare_inference`` (from the shared prepared-weights
file in ``--weights-cache``, memory-mapped, so only the first use builds it; for IPEX a fresh
trace at that batch size), run once (IPEX traces there), warmed up (the plan's steps, then on
until ``--warmup-seconds`` have passed: IPEX's first seconds after tracing are slow), and timed
with the engine's own loop on a pool of generated test batches. The timed steps last about
``target_seconds`` (estimated from the warmup steps' time, within ``[min_steps, max_steps]``),
so a fast and a slow backend get windows of about the same length.

``--serve`` (benchmarks/harness.py's paired slices): the first batch of the plan only, prepared
and warmed up as above; then the worker answers requests on stdin, one JSON line each:
``{"seconds": S}`` runs ``warmup`` untimed steps (the caches are the other worker's after a
switch) and a timed window of about S seconds, and writes its metrics as one line starting
with ``@@ `` on stdout; ``{"peak": {"kernel": K, "n": N, "seconds": S}}`` times one of
benchmarks/harness_peaks.py's GEMMs instead (``peak_window``); ``{"quit": true}`` or the end of
stdin ends it. The harness keeps two
such workers (native and IPEX) alive and alternates their windows, so that each pair of windows
is seconds apart instead of the length of a worker's whole run.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


REPLY = "@@ "  # --serve: the prefix of the lines that answer a request


def window(timed: Any, forward: Any, pool: Any, seconds: float, per_step: float,
           limits: tuple[int, int]) -> dict[str, Any]:
    """One timed window of about ``seconds`` (steps from ``per_step``, within ``limits``)."""
    steps = int(min(limits[1], max(limits[0], math.ceil(seconds / max(per_step, 1e-6)))))
    cpu0 = time.process_time()
    metrics = timed(forward, pool, steps)
    cpu_s = time.process_time() - cpu0
    metrics.pop("latencies_ms", None)
    return {"steps": steps, "timed_cpu_utilisation": round(cpu_s / metrics["elapsed_s"], 3),
            **metrics}


_PEAK_KERNELS: dict[tuple[str, int], Any] = {}


def peak_window(precision: str, kernel: str, n: int, seconds: float) -> dict[str, Any]:
    """--serve's ``{"peak": {"kernel", "n", "seconds"}}``: one of benchmarks/harness_peaks.py's
    GEMMs (``kernel`` as named there, n x n x n) timed for about ``seconds`` in this process,
    so that the roofline of a window can use a peak measured seconds from it."""
    import torch
    from harness_peaks import _rate, kernels, matmul_mode

    from dlrm_bench.backends.compat import fp32_matmul_precision

    if (kernel, n) not in _PEAK_KERNELS:
        made = kernels(precision, n)
        if kernel not in made:
            return {"kernel": kernel, "n": n, "error": f"no kernel {kernel!r} here"}
        _PEAK_KERNELS[(kernel, n)] = made[kernel]
    with torch.inference_mode(), fp32_matmul_precision(matmul_mode(precision)):
        rate = _rate(_PEAK_KERNELS[(kernel, n)], 2.0 * n ** 3, rounds=2, min_s=seconds / 2)
    return {"kernel": kernel, "n": n, "peak_gflops": round(rate, 1)}


def run_plan(args: argparse.Namespace) -> dict[str, Any]:
    from dlrm_bench.cpu import apply_isa_environment

    apply_isa_environment(args.precision)
    from dlrm_bench import config

    def cfg_for(batch: int, warm: int, steps: int) -> config.RunConfig:
        return config.resolve({
            "backend": args.backend, "precision": args.precision, "preset": args.preset,
            "seed": args.seed, "threads": args.threads, "batch_size": batch,
            "warmup_steps": warm, "steps": steps, "weights_cache": args.weights_cache,
            "calibration_file": args.calibration_file, "table_memory": args.table_memory},
            env={})

    import torch

    from dlrm_bench.engine import batches as data
    from dlrm_bench.engine import runner
    from dlrm_bench.engine.inference import timed, warmup
    from dlrm_bench.engine.runlog import RunLog
    from dlrm_bench.results import software_versions

    torch.set_num_threads(args.threads)
    runs: list[dict[str, Any]] = []
    plan = json.loads(args.plan)
    for batch, warm, min_steps, target_s, max_steps in plan[:1] if args.serve else plan:
        cfg = cfg_for(batch, max(1, warm), max_steps)
        spec = runner.model_spec(cfg)
        t0 = time.perf_counter()
        forward, facts = runner.prepare_inference(cfg, spec, RunLog(None))
        t1 = time.perf_counter()
        pool = data.pool(cfg, spec, "test", batch, max_steps)
        warmup(forward, pool, 1)  # IPEX traces and freezes at its first call
        t2 = time.perf_counter()
        warmup(forward, pool, max(1, warm))
        per_step = (time.perf_counter() - t2) / max(1, warm)
        # then by time: IPEX's first seconds after tracing run well below its steady rate
        # (amx_bfloat32, 2 cores: ~40k samples/s for ~2 s, then 60-70k), so a few steps
        # measured its start-up rather than its speed
        while (short := args.warmup_seconds - (time.perf_counter() - t2)) > 0:
            extra = max(1, min(max_steps, math.ceil(short / max(per_step, 1e-6))))
            t3 = time.perf_counter()
            warmup(forward, pool, extra)
            per_step = (time.perf_counter() - t3) / extra
        warmed_s = round(time.perf_counter() - t2, 3)

        base = {"batch_size": batch, "warmup_steps": warm, "prepare_s": round(t1 - t0, 3),
                "first_call_s": round(t2 - t1, 3), "warmup_s": warmed_s, "weights": facts}
        limits = (min_steps, max_steps)
        if args.serve:
            print(REPLY + json.dumps({"ready": True, "per_step_s": per_step,
                                      "warmup_s": warmed_s}), flush=True)
            for line in sys.stdin:
                request = json.loads(line)
                if request.get("quit"):
                    break
                if "peak" in request:
                    print(REPLY + json.dumps(peak_window(args.precision, **request["peak"])),
                          flush=True)
                    continue
                warmup(forward, pool, int(request.get("warmup", warm)))
                run = {**base, **window(timed, forward, pool, float(request["seconds"]),
                                        per_step, limits)}
                per_step = run["elapsed_s"] / run["steps"]
                runs.append(run)
                print(REPLY + json.dumps(run), flush=True)
        else:
            runs.append({**base, **window(timed, forward, pool, target_s, per_step, limits)})
            print(f"{args.backend} {args.precision} batch {batch}: "
                  f"{runs[-1]['throughput_samples_per_s']:.1f} samples/s", flush=True)
        del forward
        gc.collect()
    return {"backend": args.backend, "precision": args.precision, "threads": args.threads,
            "flops_per_sample": spec.flops_per_sample(), "pid": os.getpid(),
            "versions": software_versions(args.backend), "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True)
    parser.add_argument("--precision", required=True)
    parser.add_argument("--preset", default="terabyte-small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--plan", required=True, help="JSON [[batch, warmup, steps], ...]")
    parser.add_argument("--weights-cache", required=True)
    parser.add_argument("--calibration-file")
    parser.add_argument("--table-memory", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--warmup-seconds", type=float, default=0.0,
                        help="after the plan's warmup steps, warm up until this many seconds "
                             "have passed (before the first timed window of each batch size)")
    parser.add_argument("--serve", action="store_true",
                        help="timed windows on request (stdin), the plan's first batch only")
    args = parser.parse_args()
    result = run_plan(args)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    from dlrm_bench.errors import UserError  # torch-free: the ISA env is not set yet

    try:
        sys.exit(main())
    except UserError as exc:
        print(f"harness_worker: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
