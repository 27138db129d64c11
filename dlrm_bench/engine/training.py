"""Training: SGD with the reference's warmup + polynomial-decay policy, BCE loss.

Precisions: ``avx_fp32`` plain fp32; ``amx_bfloat16`` autocast to bf16 on AMX with fp32 master
weights (the optimiser updates fp32 parameters, so small updates are not lost to bf16 rounding);
``amx_bfloat32`` fp32 parameters with oneDNN running fp32 matmuls in bf16 on AMX.
Embedding gradients are sparse, as in the reference: a dense gradient of the tables would be as
large as the tables themselves.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dlrm_bench.backends.compat import set_fp32_matmul_precision
from dlrm_bench.data.reader import Batch
from dlrm_bench.engine.metrics import latency_summary
from dlrm_bench.engine.runlog import progress
from dlrm_bench.model import DLRM


@dataclass(frozen=True)
class LRPolicy:
    """Linear warmup to ``base_lr``, hold, then ``(remaining / decay_steps) ** 2`` decay to 0."""

    base_lr: float
    warmup_steps: int
    decay_start: int
    decay_steps: int

    @classmethod
    def for_steps(cls, base_lr: float, total_steps: int) -> LRPolicy:
        warm = min(100, max(1, total_steps // 10))
        decay_start = max(warm, total_steps // 2)
        return cls(base_lr, warm, decay_start, max(1, total_steps - decay_start))

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if step < self.decay_start:
            return self.base_lr
        remaining = self.decay_start + self.decay_steps - step
        return self.base_lr * max(0.0, remaining / self.decay_steps) ** 2


def precision_context(precision: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast or math-mode context under which training forward passes run."""
    if precision == "amx_bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    set_fp32_matmul_mode("bf16" if precision == "amx_bfloat32" else "ieee")
    return contextlib.nullcontext()


def set_fp32_matmul_mode(mode: str) -> None:
    """``bf16`` lets oneDNN run fp32 matmuls in bf16 on AMX (bf32); ``ieee`` is plain fp32."""
    set_fp32_matmul_precision(mode)


class Trainer:
    """Owns the optimiser and the step counter for one model."""

    def __init__(self, model: DLRM, precision: str, policy: LRPolicy) -> None:
        self.model = model.train()
        for bag in model.emb_l:
            bag.sparse = True
        self.precision = precision
        self.policy = policy
        self.optimizer = torch.optim.SGD(model.parameters(), lr=policy.lr(0))
        self.loss_fn = torch.nn.BCELoss()
        self.step_count = 0
        self.context = precision_context(precision)

    def step(self, batch: Batch) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.policy.lr(self.step_count)
        with self.context:
            out = self.model(batch.dense, batch.offsets, batch.indices)
        probs = out.float().reshape(-1).clamp(1e-7, 1 - 1e-7)
        loss = self.loss_fn(probs, batch.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step_count += 1
        return float(loss.detach())

    def run(self, batches: Iterator[Batch], steps: int, label: str,
            timed: bool) -> dict[str, Any]:
        latencies = np.empty(steps, dtype=np.float64)
        losses = np.empty(steps, dtype=np.float64)
        samples = 0
        with progress(label, steps) as bar:
            start_unix = time.time()
            t_start = time.perf_counter()
            for i in range(steps):
                batch = next(batches)
                t0 = time.perf_counter()
                losses[i] = self.step(batch)
                latencies[i] = time.perf_counter() - t0
                samples += batch.labels.numel()
                bar.advance()
            elapsed = time.perf_counter() - t_start
        result: dict[str, Any] = {
            "samples": samples,
            "elapsed_s": elapsed,
            "throughput_samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
            "train_loss": float(losses[-min(steps, 20):].mean()) if steps else 0.0,
            "timed_start_unix": start_unix,
            "timed_end_unix": start_unix + elapsed,
        }
        if timed:
            lat_ms = (latencies * 1000.0).tolist()
            result["latency_ms"] = latency_summary(lat_ms)
            result["latencies_ms"] = [round(v, 6) for v in lat_ms]
        return result

    def inference_forward(self) -> Any:
        """A forward for evaluation under the same precision, in eval mode."""
        model, context = self.model.eval(), self.context

        def forward(dense: torch.Tensor, offsets: torch.Tensor, indices: torch.Tensor) -> Any:
            with context:
                return model(dense, offsets, indices).float()

        return forward
