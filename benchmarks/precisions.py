"""Samples/s of every precision on this machine (not a test: it measures and writes results).

    .venv/bin/python benchmarks/precisions.py [--preset terabyte-small] [--batch-size 2048]
        [--steps 50] [--repeats 1] [--out benchmarks/results/precisions-<host>.json]

Each precision runs in its own ``dlrm-bench run`` process (the oneDNN ISA cap is per process),
on the same generated model and data, with the same threads. The JSON states the machine.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dlrm_bench.config import PRECISIONS  # noqa: E402
from dlrm_bench.results import atomic_write_json, host_facts, now_iso  # noqa: E402


def run_once(precision: str, args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, "-m", "dlrm_bench", "run", "--precision", precision,
           "--preset", args.preset, "--batch-size", str(args.batch_size),
           "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps),
           "--threads", str(args.threads), "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{precision}: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return json.loads((out / "result.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="terabyte-small")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for precision in args.precisions.split(","):
                result = run_once(precision, args, Path(tmp) / f"{precision}-{repeat}")
                metrics = result["metrics"]
                rows.setdefault(precision, []).append({
                    "samples_per_s": metrics["throughput_samples_per_s"],
                    "latency_ms_p50": metrics["latency_ms"]["p50"],
                    "versions": result["versions"],
                })
                print(f"{precision:14s} repeat {repeat}: "
                      f"{metrics['throughput_samples_per_s']:12.1f} samples/s", flush=True)
    summary = {
        p: {"median_samples_per_s": statistics.median(r["samples_per_s"] for r in runs),
            "runs": runs}
        for p, runs in rows.items()
    }
    facts = host_facts()
    document = {
        "benchmark": "precisions",
        "when": now_iso(),
        "machine": {k: facts[k] for k in ("hostname", "cpu_model", "isa_flags", "logical_cpus",
                                          "allowed_cpus", "memory_bytes", "kernel")},
        "python": platform.python_version(),
        "parameters": {k: v for k, v in vars(args).items() if k != "out"},
        "results": summary,
    }
    out = args.out or REPO / "benchmarks" / "results" / f"precisions-{platform.node()}.json"
    atomic_write_json(out, document)
    print(f"\n| precision | samples/s (median of {args.repeats}) |\n|---|---|")
    for precision, row in summary.items():
        print(f"| {precision} | {row['median_samples_per_s']:.0f} |")
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
