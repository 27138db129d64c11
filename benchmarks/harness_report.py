"""Summary and markdown tables of benchmarks/harness.py's runs (no torch, no subprocesses)."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from typing import Any


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(runs: list[dict[str, Any]], peaks: dict[str, dict[str, Any]],
              flops_per_sample: int | None) -> list[dict[str, Any]]:
    """One row per (precision, layout): medians per backend, native/IPEX ratio with its spread
    (per-repeat ratios, min-max; for the paired layout, whose runs carry a ``slice``, the ratio
    of each slice's two windows), batch-1 latency and the fraction of the GEMM roofline."""
    keys: list[tuple[str, str]] = []
    for r in runs:
        if (r["precision"], r["layout"]) not in keys:
            keys.append((r["precision"], r["layout"]))
    rows = []
    for precision, layout in keys:
        per: dict[str, dict[tuple[int, int | None], dict[str, Any]]] = {}
        errors: dict[str, list[str]] = {}
        slice_peaks: dict[tuple[int, int | None], float] = {}  # the paired windows' GEMM peaks
        for r in runs:
            if (r["precision"], r["layout"]) != (precision, layout):
                continue
            if r["backend"] == "peak":
                if r.get("peak_gflops"):
                    slice_peaks[(r["repeat"], r.get("slice"))] = r["peak_gflops"]
                elif r.get("error"):
                    errors.setdefault("peak", []).append(r["error"])
                continue
            if r.get("error"):
                errors.setdefault(r["backend"], []).append(r["error"])
            else:
                per.setdefault(r["backend"], {})[(r["repeat"], r.get("slice"))] = r
        row: dict[str, Any] = {"precision": precision, "layout": layout, "backends": {}}
        peak = (peaks.get(precision) or {}).get("peak_gflops")
        for backend, by_repeat in per.items():
            rates = [r["samples_per_s"] for r in by_repeat.values()]
            med = _median(rates)
            entry: dict[str, Any] = {
                "samples_per_s_median": med, "samples_per_s": rates,
                "repeats": len(rates),
                "latency_ms_p50": _median([r["latency_ms"]["p50"] for r in by_repeat.values()]),
                "latency_ms_p99": _median([r["latency_ms"]["p99"] for r in by_repeat.values()]),
            }
            paired = [r["samples_per_s"] * flops_per_sample / (slice_peaks[key] * 1e9)
                      for key, r in by_repeat.items() if key in slice_peaks and flops_per_sample]
            if paired:  # each window over the peak measured seconds after it
                entry["roofline_fraction"] = statistics.median(paired)
                entry["roofline_of"] = "paired peaks"
            elif med and peak and flops_per_sample:
                entry["roofline_fraction"] = med * flops_per_sample / (peak * 1e9)
            row["backends"][backend] = entry
        if slice_peaks:
            values = list(slice_peaks.values())
            row["paired_peak_gflops"] = {"median": statistics.median(values),
                                         "min": min(values), "max": max(values)}
        if "native" in per and "ipex" in per:
            common = sorted(set(per["native"]) & set(per["ipex"]))
            ratios = [per["native"][k]["samples_per_s"] / per["ipex"][k]["samples_per_s"]
                      for k in common if per["ipex"][k]["samples_per_s"] > 0]
            if ratios:
                row["native_over_ipex"] = {"median": statistics.median(ratios),
                                           "min": min(ratios), "max": max(ratios),
                                           "per_repeat": ratios}
        if errors:
            row["errors"] = errors
        rows.append(row)
    return rows


# Issue #7's targets (same machine, same run, terabyte-small): native / IPEX at batch 2048, the
# batch-1 p50 latency as a fraction of IPEX's, the weight-sharing layout's ratio, and the
# fraction of the same-run GEMM roofline.
TARGETS_PRESET = "terabyte-small"
THROUGHPUT_TARGETS = {"amx_int8": 1.3, "amx_bfloat16": 1.3, "avx_fp32": 2.0, "amx_bfloat32": 5.0}
LATENCY_TARGETS = {"amx_int8": 0.6, "amx_bfloat16": 0.6}
SHARING_TARGET = 1.3
ROOFLINE_TARGETS = {"amx_int8": 0.7, "amx_bfloat16": 0.7}


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each of #7's targets that ``summarise``'s rows can judge: ``target``, ``precision``,
    ``measured``, ``required``, ``met`` and ``source`` (the row's layout). Batch 2048 is judged
    on the paired windows where the run has them (two windows seconds apart, roofline over the
    peak timed after each), else on the worker runs; a bound is met when the median is."""
    by_key = {(r["precision"], r["layout"]): r for r in rows}
    out: list[dict[str, Any]] = []

    def add(target: str, precision: str, measured: float | None, required: float,
            at_most: bool, source: str) -> None:
        if measured is None:
            return
        met = measured <= required if at_most else measured >= required
        out.append({"target": target, "precision": precision, "measured": measured,
                    "required": required, "at_most": at_most, "met": met, "source": source})

    def big_batch(precision: str) -> dict[str, Any] | None:
        return by_key.get((precision, "paired batch 2048")) or by_key.get((precision,
                                                                            "batch 2048"))

    for precision, required in THROUGHPUT_TARGETS.items():
        row = big_batch(precision)
        if row and row.get("native_over_ipex"):
            add("batch 2048 native / IPEX", precision, row["native_over_ipex"]["median"],
                required, False, row["layout"])
    for precision, required in LATENCY_TARGETS.items():
        row = by_key.get((precision, "batch 1"))
        if row:
            native = row["backends"].get("native", {}).get("latency_ms_p50")
            ipex = row["backends"].get("ipex", {}).get("latency_ms_p50")
            if native is not None and ipex:
                add("batch-1 p50, native / IPEX", precision, native / ipex, required, True,
                    row["layout"])
    for row in rows:
        if row["layout"].startswith("sharing") and row.get("native_over_ipex"):
            add("weight sharing native / IPEX", row["precision"],
                row["native_over_ipex"]["median"], SHARING_TARGET, False, row["layout"])
    for precision, required in ROOFLINE_TARGETS.items():
        row = big_batch(precision)
        if row:
            native = row["backends"].get("native", {})
            source = row["layout"]
            if source.startswith("paired") and native.get("roofline_of") != "paired peaks":
                source += " (over the run's start / end peak)"
            add("batch 2048 roofline (native)", precision, native.get("roofline_fraction"),
                required, False, source)
    return out


def _target_value(target: str, value: float) -> str:
    return f"{100 * value:.2f}%" if "roofline" in target else f"{value:.3f}"


def _shortfall(t: dict[str, Any]) -> str:
    """How far a missed target is from its bound: points of the roofline, else percent."""
    if "roofline" in t["target"]:
        return f"missed by {100 * abs(t['required'] - t['measured']):.2f} points"
    return f"missed by {abs(t['measured'] / t['required'] - 1) * 100:.1f}%"


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def markdown(doc: dict[str, Any]) -> str:
    """The tables: throughput and ratio, batch-1 latency, GEMM peaks, and the machine."""
    m, rows = doc["machine"], doc["summary"]
    backends = doc["parameters"]["backends"]
    lines = [
        f"## DLRM {doc['parameters']['preset']}: native vs IPEX on {m['cpu_model']}",
        "",
        f"{m['physical_cores']} physical cores, {doc['parameters']['threads']} threads per "
        f"process; ISA flags: {' '.join(m['isa_flags'])}; torch: "
        + ", ".join(f"{b} {v.get('torch')}" + (f" + IPEX {v['intel-extension-for-pytorch']}"
                                               if v.get("intel-extension-for-pytorch") else "")
                    for b, v in doc["venvs"].items())
        + f"; {doc['parameters']['repeats']} repeats, alternating {' / '.join(backends)}; "
          f"{doc['when']}; total {doc['total_s'] / 60:.1f} min.",
        "",
    ]
    if m.get("cpu_flags_override") and "amx_tile" not in m["isa_flags"]:
        lines += ["**Not AMX figures:** the CPU flags were overridden (`DLRM_BENCH_CPU_FLAGS`) "
                  "on a CPU without AMX, so any amx_* precision ran its recipe on the kernels "
                  "oneDNN has here (AVX512-VNNI int8, AVX512-BF16 or emulated bf16).", ""]
    lines += [
        "| precision | layout | " + " | ".join(f"{b} samples/s" for b in backends)
        + " | native/IPEX [min–max] | " + " | ".join(f"{b} roofline" for b in backends) + " |",
        "|---|---|" + "---:|" * len(backends) + "---:|" + "---:|" * len(backends),
    ]
    for row in rows:
        cells = [row["precision"], row["layout"]]
        cells += [_num(row["backends"].get(b, {}).get("samples_per_s_median")) for b in backends]
        ratio = row.get("native_over_ipex")
        cells.append(f"{ratio['median']:.3f} [{ratio['min']:.3f}–{ratio['max']:.3f}]"
                     if ratio else "—")
        cells += [_pct(row["backends"].get(b, {}).get("roofline_fraction")) for b in backends]
        lines.append("| " + " | ".join(cells) + " |")
    paired = [row for row in rows if row["layout"].startswith("paired")]
    if paired:
        slices = doc["parameters"].get("paired_slices")
        text = (f"Paired rows: native and IPEX in two processes kept alive, their timed windows "
                f"taking turns ({slices} per backend and repeat); the ratio's median and range "
                "are over the slices, each the ratio of two windows seconds apart (the other "
                "rows compare whole worker runs, minutes apart).")
        with_peaks = [row for row in paired if row.get("paired_peak_gflops")]
        if with_peaks:
            text += (" Their roofline is the median over the windows of each window over the GEMM "
                     "peak measured right after it in the native worker: " + ", ".join(
                         f"{row['precision']} (median {p['median']:,.1f}, {p['min']:,.1f}-"
                         f"{p['max']:,.1f})"
                         for row in with_peaks for p in [row["paired_peak_gflops"]]) + ".")
        if len(with_peaks) < len(paired):
            text += (" " + ("The others'" if with_peaks else "Their") + " roofline is over the "
                     "run's start / end peak below.")
        lines += ["", text]
    judged = doc["targets"] if "targets" in doc else targets(rows)  # older results: derive
    if judged:
        preset = doc["parameters"].get("preset")
        caveat = ("" if preset == TARGETS_PRESET else
                  f"; they are set for {TARGETS_PRESET}, this run is {preset}: indicative only")
        lines += ["", "Against #7's targets (batch 2048 from the paired windows where the run has "
                  f"them; medians{caveat}):", "",
                  "| target | precision | measured | required | met | from |",
                  "|---|---|---:|---:|---|---|"]
        for t in judged:
            bound = ("<= " if t["at_most"] else ">= ") + _target_value(t["target"], t["required"])
            verdict = "met" if t["met"] else _shortfall(t)
            lines.append(f"| {t['target']} | {t['precision']} | "
                         f"{_target_value(t['target'], t['measured'])} | {bound} | {verdict} | "
                         f"{t['source']} |")
    batch1 = [r for r in rows if r["layout"] == "batch 1"]
    if batch1:
        lines += ["", "Batch-1 latency (ms, median over repeats):", "",
                  "| precision | " + " | ".join(f"{b} p50 | {b} p99" for b in backends) + " |",
                  "|---|" + "---:|---:|" * len(backends)]
        for row in batch1:
            cells = [row["precision"]]
            for b in backends:
                e = row["backends"].get(b, {})
                cells += [_num(e.get("latency_ms_p50"), 3), _num(e.get("latency_ms_p99"), 3)]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"GEMM peaks (GFLOP/s or int8 GOP/s, {doc['parameters']['threads']} threads, "
              "best kernel, max of the measurements at the start and the end):", "",
              "| precision | peak | best kernel |", "|---|---:|---|"]
    for precision, peak in doc["peaks"].items():
        lines.append(f"| {precision} | {_num(peak.get('peak_gflops'), 1)} | "
                     f"{peak.get('best') or '—'} |")
    kernels: dict[str, dict[str, str]] = {}
    for r in doc["runs"]:  # native and its variants (native-unfused, native-normal-tables)
        backend = r.get("backend", "")
        if backend.startswith("native") and r.get("kernels"):
            label = r["precision"] + ("" if backend == "native" else f" ({backend})")
            kernels.setdefault(label, r["kernels"])
    if kernels:  # which native kernels ran (the fused ones, or why not)
        lines += ["", "Native kernels: " + "; ".join(
            f"{p}: " + ", ".join(f"{k} = {v}" for k, v in ks.items())
            for p, ks in kernels.items())]
    tables: dict[str, set[str]] = {}
    for r in doc["runs"]:  # where each native variant's embedding tables were
        t = r.get("tables")
        if r.get("backend", "").startswith("native") and isinstance(t, dict):
            tables.setdefault(r["backend"], set()).add(t.get("memory", "?"))
    if tables:
        lines += ["", "Embedding tables: " + "; ".join(
            f"{b}: {' and '.join(sorted(m))}" for b, m in tables.items())]
    failed = [(r["precision"], r["layout"], b, e[0][:120]) for r in rows
              for b, e in r.get("errors", {}).items()]
    if failed:
        lines += ["", "Failures: " + "; ".join(f"{p} {lay} {b}: {e}" for p, lay, b, e in failed)]
    loads = [r["loadavg_1m"] for r in doc["runs"] if r.get("loadavg_1m") is not None]
    if loads:
        lines += ["", f"1-minute load average at the start of each run: median "
                  f"{statistics.median(loads):.2f}, max {max(loads):.2f} (on {m['logical_cpus']} "
                  "CPUs; above the thread count means other work shared the cores)."]
    busy = [r["cpu_utilisation"] for r in doc["runs"] if r.get("cpu_utilisation")]
    if busy:
        lines += [f"CPU time / wall time of the single-process timed windows: median "
                  f"{statistics.median(busy):.2f}, min {min(busy):.2f} (of "
                  f"{doc['parameters']['threads']} threads; well below it means the benchmark "
                  "did not have the cores to itself)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``harness_report.py RESULT.json``: the markdown of a harness result, rendered again from
    its JSON (for results written before a section of the markdown existed)."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("result", type=Path, help="a benchmarks/harness.py JSON result")
    args = parser.parse_args(argv)
    try:
        doc = json.loads(args.result.read_text())
        print(markdown(doc), end="")
    except (OSError, ValueError, KeyError) as exc:
        print(f"harness_report: cannot render {args.result}: {exc!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
