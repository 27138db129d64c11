"""One benchmark instance from a resolved ``RunConfig`` to a ``result.json`` payload.

Order of work: model (preset, checkpoint, or the shared prepared-weights file), precision
preparation (int8 calibration), warmup, the launcher's start barrier, the timed region (with
telemetry for pkm), metrics, and the result document. Import this module only after the
precision's ISA environment is set (``dlrm_bench.cpu.apply_isa_environment``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from dlrm_bench.backends import native
from dlrm_bench.checkpoint import checkpoint_spec, load_checkpoint_model, save_checkpoint
from dlrm_bench.config import TELEMETRY_INTERVAL_S, RunConfig
from dlrm_bench.engine import batches as data
from dlrm_bench.engine.inference import evaluate, timed, warmup
from dlrm_bench.engine.runlog import RunLog
from dlrm_bench.engine.sync import shared_weights, wait_at_barrier
from dlrm_bench.engine.telemetry import TelemetrySampler
from dlrm_bench.engine.training import LRPolicy, Trainer
from dlrm_bench.model import DLRM, build_model
from dlrm_bench.presets import ModelSpec, get_preset
from dlrm_bench.results import SCHEMA_VERSION, host_facts, now_iso, software_versions

CALIBRATION_MIN_BATCH = 256


def model_spec(cfg: RunConfig) -> ModelSpec:
    return checkpoint_spec(cfg.checkpoint) if cfg.checkpoint else get_preset(cfg.preset)


def model_identity(cfg: RunConfig) -> dict[str, Any]:
    if cfg.checkpoint:
        stat = Path(cfg.checkpoint).stat()
        return {"checkpoint": str(Path(cfg.checkpoint).resolve()), "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns}
    return {"preset": cfg.preset, "seed": cfg.seed}


def build(cfg: RunConfig, spec: ModelSpec) -> DLRM:
    if cfg.checkpoint:
        return load_checkpoint_model(cfg.checkpoint)
    return build_model(spec, seed=cfg.seed).eval()


def _calibration_file(cfg: RunConfig) -> Path | None:
    """Where int8 calibration is read from (if present) or written to.

    With a weights cache, instances share one calibration beside the shared weights, so the
    cache key does not depend on each instance's own output directory.
    """
    if not cfg.precision.endswith("int8"):
        return None
    if cfg.calibration_file:
        return Path(cfg.calibration_file)
    if cfg.weights_cache and cfg.function == "inference":
        return Path(cfg.weights_cache) / f"calibration-{cfg.backend}-{cfg.precision}.json"
    return Path(cfg.output) / "calibration.json" if cfg.output else None


def backend_module(name: str) -> Any:
    """``native`` or ``ipex`` (imported only when chosen): ``prepare``, ``save_prepared``,
    ``load_prepared``."""
    if name == "ipex":
        from dlrm_bench.backends import ipex

        return ipex
    return native


def prepare_inference(cfg: RunConfig, spec: ModelSpec, log: RunLog) -> tuple[Any, dict[str, Any]]:
    """The prepared forward for ``cfg.precision`` and facts about how it was obtained."""
    calib_file = _calibration_file(cfg)
    backend = backend_module(cfg.backend)
    # where the tables live: only the native backend moves them (see dlrm_bench.hugepages)
    placement = {"table_memory": cfg.table_memory} if cfg.backend == "native" else {}

    def make() -> Any:
        model = build(cfg, spec)
        calibration = None
        if cfg.precision.endswith("int8") and not (calib_file and calib_file.exists()):
            size = max(cfg.batch_size, CALIBRATION_MIN_BATCH)
            calibration = data.pool(cfg, spec, "train", size, cfg.calibration_batches)
            log.line(f"Calibrating int8 on {len(calibration)} training batches of {size}")
        return backend.prepare(model, cfg.precision, calibration=calibration,
                               calibration_file=calib_file, **placement)

    facts: dict[str, Any] = {"weights": "private"}
    if cfg.weights_cache and cfg.function == "inference":
        identity = {**model_identity(cfg), "precision": cfg.precision,
                    "calibration": cfg.calibration_file}
        if cfg.backend != "native":  # native keeps its keys: caches made before stay valid
            identity["backend"] = cfg.backend
        prepared, created = shared_weights(
            cfg.weights_cache, identity,
            create=lambda path: backend.save_prepared(make(), path),
            load=lambda path: backend.load_prepared(path, mmap=True, **placement),
        )
        facts = {"weights": "shared", "weights_cache": cfg.weights_cache, "created_here": created}
    else:
        prepared = make()
    if calib_file is not None:
        facts["calibration_file"] = str(calib_file)
    tables = getattr(prepared, "placement", None)
    if tables is not None:
        facts["tables"] = tables.facts()
        log.line(f"Embedding tables: {tables.memory} ({tables.detail})")
    kernels = getattr(prepared, "kernels", None)
    if kernels:  # which implementation ran, e.g. why the fused kernel was not used
        facts["kernels"] = kernels
    return prepared, facts


def _inference(cfg: RunConfig, spec: ModelSpec, log: RunLog) -> tuple[dict[str, Any], Any]:
    forward, facts = prepare_inference(cfg, spec, log)
    if cfg.mode == "accuracy":
        wait_at_barrier(cfg.barrier_dir, cfg.instance_id, cfg.barrier_timeout)
        limit = cfg.steps if (cfg.steps_given or not cfg.data_dir) else None
        source = data.batches(cfg, spec, "test", cfg.batch_size)
        return evaluate(forward, source, limit, limit or 0), facts
    pool = data.pool(cfg, spec, "test", cfg.batch_size, cfg.steps)
    warmup(forward, pool, cfg.warmup_steps)
    facts["barrier_wait_s"] = wait_at_barrier(cfg.barrier_dir, cfg.instance_id,
                                              cfg.barrier_timeout)
    return _timed_with_telemetry(cfg, lambda: timed(forward, pool, cfg.steps)), facts


def _timed_with_telemetry(cfg: RunConfig, body: Any) -> dict[str, Any]:
    sampler = TelemetrySampler(TELEMETRY_INTERVAL_S) if cfg.case_type == "pkm" else None
    if sampler:
        sampler.start()
    try:
        metrics = body()
    finally:
        telemetry = sampler.stop() if sampler else None
    if telemetry:
        metrics["telemetry"] = telemetry
    return metrics


def _training(cfg: RunConfig, spec: ModelSpec, log: RunLog) -> tuple[dict[str, Any], Any]:
    model = build(cfg, spec)
    total = cfg.warmup_steps + cfg.steps
    trainer = Trainer(model, cfg.precision, LRPolicy.for_steps(cfg.learning_rate, total))
    stream = data.cycling(cfg, spec, "train", cfg.batch_size)
    facts: dict[str, Any] = {"optimizer": "SGD", "lr_policy": trainer.policy.__dict__}
    if cfg.mode == "throughput":
        trainer.run(stream, cfg.warmup_steps, "warmup", timed=False)
        facts["barrier_wait_s"] = wait_at_barrier(cfg.barrier_dir, cfg.instance_id,
                                                  cfg.barrier_timeout)
        metrics = _timed_with_telemetry(
            cfg, lambda: trainer.run(stream, cfg.steps, "train", timed=True))
        return metrics, facts
    wait_at_barrier(cfg.barrier_dir, cfg.instance_id, cfg.barrier_timeout)
    metrics = trainer.run(stream, total, "train", timed=False)
    evaluation = evaluate(trainer.inference_forward(), data.batches(cfg, spec, "test", 1024),
                          None if cfg.data_dir else max(1, 100_000 // 1024), 0)
    for key in ("auc", "accuracy", "log_loss", "evaluated_samples", "positive_rate"):
        if key in evaluation:
            metrics[key] = evaluation[key]
    target = cfg.save_checkpoint or (str(Path(cfg.output) / "checkpoint.pt") if cfg.output
                                     else None)
    if target:
        for bag in model.emb_l:
            bag.sparse = False
        save_checkpoint(model, target, epoch=0, nepochs=1, nbatches=total, iter=total,
                        train_loss=metrics["train_loss"], test_auc=metrics.get("auc"),
                        test_acc=metrics.get("accuracy"))
        facts["checkpoint_saved"] = target
        log.line(f"Checkpoint saved: {target}")
    return metrics, facts


def kpi_of(cfg: RunConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    if cfg.mode == "accuracy":
        return {"metric": "Accuracy", "value": 100.0 * metrics.get("auc", 0.0), "unit": "%"}
    if cfg.mode == "latency":
        return {"metric": "Latency", "value": metrics["latency_ms"]["mean"], "unit": "ms"}
    return {"metric": "Throughput", "value": metrics["throughput_samples_per_s"],
            "unit": "samples/sec"}


def run(cfg: RunConfig) -> dict[str, Any]:
    """Run one instance and return its result document (not yet written)."""
    started = now_iso()
    torch.set_num_threads(cfg.threads)
    spec = model_spec(cfg)
    data.check_data_matches_model(cfg, spec)
    log = RunLog(cfg.output)
    try:
        log.echo_parameters(cfg, {"TEST_CASE": cfg.test_case, "THREADS": cfg.threads,
                                  "MODEL": cfg.checkpoint or cfg.preset, "PID": os.getpid()})
        if cfg.function == "inference":
            metrics, facts = _inference(cfg, spec, log)
        else:
            metrics, facts = _training(cfg, spec, log)
        _log_metrics(log, cfg, metrics)
    finally:
        log.close()
    timing = {"started": started, "finished": now_iso(),
              "timed_start_unix": metrics.pop("timed_start_unix"),
              "timed_end_unix": metrics.pop("timed_end_unix")}
    telemetry = metrics.pop("telemetry", None)
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "status": "ok",
        "test_case": cfg.test_case,
        "config": cfg.to_dict(),
        "model": {"table_sizes": list(spec.table_sizes), "embedding_dim": spec.embedding_dim,
                  "bottom_mlp": list(spec.bottom_mlp), "top_mlp": list(spec.top_mlp),
                  "flops_per_sample": spec.flops_per_sample(), **facts},
        "data": data.data_description(cfg),
        "host": host_facts(),
        "versions": software_versions(cfg.backend),
        "metrics": metrics,
        "kpi": kpi_of(cfg, metrics),
        "timing": timing,
    }
    if telemetry:
        result["telemetry"] = telemetry
    return result


def _log_metrics(log: RunLog, cfg: RunConfig, metrics: dict[str, Any]) -> None:
    log.line(f"Throughput: {metrics['throughput_samples_per_s']:.3f} fps")
    if "latency_ms" in metrics:
        lat = metrics["latency_ms"]
        log.line(f"Latency: {lat['mean']:.3f} ms (p50 {lat['p50']:.3f}, p90 {lat['p90']:.3f}, "
                 f"p99 {lat['p99']:.3f}, p99.9 {lat['p99_9']:.3f})")
    if "auc" in metrics:
        log.line(f"Accuracy: {metrics['auc']:.6f}")
        log.line(f"Log loss: {metrics['log_loss']:.6f}")
    if "train_loss" in metrics:
        log.line(f"Train loss: {metrics['train_loss']:.6f}")
