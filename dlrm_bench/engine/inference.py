"""Inference loops: timed throughput/latency over a batch pool, and accuracy over the test set."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from dlrm_bench.data.reader import Batch
from dlrm_bench.engine.metrics import classification_metrics, latency_summary
from dlrm_bench.engine.runlog import progress

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def warmup(forward: Forward, pool: Sequence[Batch], steps: int) -> None:
    with torch.inference_mode(), progress("warmup", steps) as bar:
        for i in range(steps):
            b = pool[i % len(pool)]
            forward(b.dense, b.offsets, b.indices)
            bar.advance()


def timed(forward: Forward, pool: Sequence[Batch], steps: int) -> dict[str, Any]:
    """Run ``steps`` batches, timing each; throughput is samples over the whole window."""
    latencies = np.empty(steps, dtype=np.float64)
    samples = 0
    tick = max(1, steps // 100)
    with torch.inference_mode(), progress("benchmark", steps) as bar:
        start_unix = time.time()
        window_start = time.perf_counter()
        for i in range(steps):
            b = pool[i % len(pool)]
            t0 = time.perf_counter()
            forward(b.dense, b.offsets, b.indices)
            latencies[i] = time.perf_counter() - t0
            samples += b.labels.numel()
            if (i + 1) % tick == 0:
                bar.advance(tick)
        elapsed = time.perf_counter() - window_start
        end_unix = start_unix + elapsed
    lat_ms = (latencies * 1000.0).tolist()
    return {
        "samples": samples,
        "elapsed_s": elapsed,
        "throughput_samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
        "latency_ms": latency_summary(lat_ms),
        "latencies_ms": [round(v, 6) for v in lat_ms],
        "timed_start_unix": start_unix,
        "timed_end_unix": end_unix,
    }


def evaluate(forward: Forward, batches: Iterable[Batch], max_batches: int | None,
             total_hint: int) -> dict[str, Any]:
    """Predict over ``batches`` (the test set, or its first ``max_batches``) and score them."""
    labels: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    samples = 0
    source = itertools.islice(batches, max_batches) if max_batches else batches
    with torch.inference_mode(), progress("evaluate", total_hint) as bar:
        start_unix = time.time()
        t0 = time.perf_counter()
        for b in source:
            out = forward(b.dense, b.offsets, b.indices)
            probs.append(out.float().reshape(-1).numpy())
            labels.append(b.labels.numpy())
            samples += b.labels.numel()
            bar.advance()
        elapsed = time.perf_counter() - t0
    if not labels:
        return {"samples": 0, "elapsed_s": elapsed, "throughput_samples_per_s": 0.0,
                "timed_start_unix": start_unix, "timed_end_unix": start_unix + elapsed}
    metrics = classification_metrics(np.concatenate(labels), np.concatenate(probs))
    metrics.update({
        "samples": samples,
        "elapsed_s": elapsed,
        "throughput_samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
        "timed_start_unix": start_unix,
        "timed_end_unix": start_unix + elapsed,
    })
    return metrics
