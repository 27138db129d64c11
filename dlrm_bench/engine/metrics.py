"""Metric computations shared by the engine and the rollup: latency percentiles, AUC, log loss."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99_9": 99.9}


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """Mean and p50/p90/p99/p99.9 (linear interpolation) of per-batch latencies in ms."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    if values.size == 0:
        return {"mean": 0.0, **{k: 0.0 for k in PERCENTILES}}
    summary = {"mean": float(values.mean())}
    for name, q in PERCENTILES.items():
        summary[name] = float(np.percentile(values, q))
    return summary


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """AUC, accuracy at 0.5 and log loss (scikit-learn), as the reference reports them."""
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probabilities, dtype=np.float64).ravel(), 1e-7, 1 - 1e-7)
    metrics = {
        "accuracy": float(accuracy_score(y, p >= 0.5)),
        "log_loss": float(log_loss(y, p, labels=[0.0, 1.0])),
        "positive_rate": float(y.mean()) if y.size else 0.0,
        "evaluated_samples": int(y.size),
    }
    # AUC is undefined with one class present; report it as missing rather than invent a number.
    if 0 < y.sum() < y.size:
        metrics["auc"] = float(roc_auc_score(y, p))
    return metrics
