"""``dlrm-bench run``: one benchmark instance (what the launcher starts once per core group)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from dlrm_bench import config
from dlrm_bench.errors import UserError


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The run parameters; ``None`` means "not given" so the seed's env vars can fill in."""
    p = parser.add_argument_group("benchmark (seed env var in brackets)")
    p.add_argument("--case", help="a test case name, e.g. inference_throughput_amx_int8[_gated]")
    p.add_argument("--function", help="inference | training [FUNCTION]")
    p.add_argument("--mode", help="throughput | latency | accuracy [MODE]")
    p.add_argument("--precision", help=f"{' | '.join(config.PRECISIONS)} [PRECISION]")
    p.add_argument("--data-type", help="real | synthetic [DATA_TYPE]")
    p.add_argument("--case-type", help="'' | gated | pkm [CASE_TYPE]")
    p.add_argument("--batch-size", help="samples per batch [BATCH_SIZE]")
    p.add_argument("--warmup-steps", help="untimed steps before timing [WARMUP_STEPS]")
    p.add_argument("--steps", help="timed steps [STEPS]")
    p.add_argument("--onednn-verbose", help="oneDNN verbose level [ONEDNN_VERBOSE]")
    m = parser.add_argument_group("model and data")
    m.add_argument("--preset", help="tiny | terabyte-small | terabyte (default tiny)")
    m.add_argument("--checkpoint", help="a tb00_40M.pt-layout checkpoint (overrides --preset)")
    m.add_argument("--data-dir", help="directory with terabyte_processed_*.bin files")
    m.add_argument("--seed", help="seed of the generated model and data (default 0)")
    m.add_argument("--calibration-file", help="int8 calibration JSON: read if present, else made")
    m.add_argument("--calibration-batches", help="training batches used to calibrate int8")
    m.add_argument("--learning-rate", type=float, help="training base learning rate (default 1.0)")
    m.add_argument("--save-checkpoint", help="where training accuracy mode saves the model")
    r = parser.add_argument_group("execution")
    r.add_argument("--threads", help="intra-op threads (default: the CPUs this process may use)")
    r.add_argument("--backend",
                   help="native (stock PyTorch, default) | ipex (needs make ipex-venv)")
    r.add_argument("--output", help="directory for run.log and result.json")
    r.add_argument("--instance-id", help=argparse.SUPPRESS)
    r.add_argument("--barrier-dir", help=argparse.SUPPRESS)
    r.add_argument("--barrier-timeout", type=float, help=argparse.SUPPRESS)
    r.add_argument("--weights-cache", help="share prepared weights via a file in this directory")
    r.add_argument("--table-memory",
                   help="auto (hugepages when a hugetlbfs mount has room, default) | hugepages "
                        "(or fail) | normal: where native inference keeps the embedding tables")


RUN_KEYS = (
    "case", "function", "mode", "precision", "data_type", "case_type", "batch_size",
    "warmup_steps", "steps", "onednn_verbose", "preset", "checkpoint", "data_dir", "seed",
    "calibration_file", "calibration_batches", "learning_rate", "save_checkpoint", "threads",
    "backend", "output", "instance_id", "barrier_dir", "barrier_timeout", "weights_cache",
    "table_memory",
)


def flags_of(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key, None) for key in RUN_KEYS}


def execute(cfg: config.RunConfig) -> dict[str, Any]:
    """Check the host, pin the ISA, then import the engine (torch) and run."""
    from dlrm_bench.cpu import apply_isa_environment, check_supported

    check_supported(cfg.precision, cfg.function)
    apply_isa_environment(cfg.precision)
    if cfg.onednn_verbose:
        os.environ["ONEDNN_VERBOSE"] = str(cfg.onednn_verbose)
    from dlrm_bench.engine.runner import run

    return run(cfg)


def _command(args: argparse.Namespace) -> int:
    from dlrm_bench.results import atomic_write_json

    cfg = config.resolve(flags_of(args))
    if cfg.output:
        from dlrm_bench.safety import check_root

        check_root("--output", cfg.output, resolve=True)
    try:
        result = execute(cfg)
    except MemoryError:
        raise UserError("out of memory: use a smaller --preset or batch size") from None
    if cfg.output:
        path = atomic_write_json(os.path.join(cfg.output, "result.json"), result)
        print(f"Result: {path}", flush=True)
    kpi = result["kpi"]
    print(f"*{kpi['metric']} ({kpi['unit']}): {kpi['value']:.3f}", flush=True)
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser("run", help="run one benchmark instance",
                            description=__doc__)
    add_run_arguments(parser)
    parser.set_defaults(func=_command)
