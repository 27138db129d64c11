"""Summary and markdown tables of benchmarks/harness.py's runs (no torch, no subprocesses)."""

from __future__ import annotations

import statistics
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
    for row in rows:
        if not row["layout"].startswith("paired"):
            continue
        slices = doc["parameters"].get("paired_slices")
        text = (f"{row['precision']} {row['layout']}: native and IPEX in two processes kept "
                f"alive, their timed windows taking turns ({slices} per backend and repeat); the "
                "ratio's median and range are over the slices, each the ratio of two windows "
                "seconds apart (the other rows compare whole worker runs, minutes apart)")
        p = row.get("paired_peak_gflops")
        if p:
            text += (f"; its roofline is the median over the windows of each window over the GEMM "
                     f"peak measured right after it in the native worker (median "
                     f"{p['median']:,.1f}, {p['min']:,.1f}-{p['max']:,.1f})")
        lines += ["", text + "."]
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
