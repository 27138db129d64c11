"""Run by tests/test_ipex_backend.py with .venv-ipex/bin/python, one process per precision.

    ipex_check.py PRECISION CHECKPOINT DATA_DIR OUT_DIR

1. ``dlrm-bench run --backend ipex --mode accuracy`` on the checkpoint and data (the CLI path;
   the process's ISA environment is set by it, before torch is imported);
2. in the same process, the IPEX-prepared model (with the calibration file the run wrote) and
   the plain fp32 model on the test split, sample by sample; and IPEX's interaction against
   ``DotInteraction``. Writes ``OUT_DIR/check.json``; exit status: the run's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(precision: str, checkpoint: str, data_dir: str, out_dir: str) -> int:
    from dlrm_bench.cli import main as cli

    out = Path(out_dir)
    code = cli(["run", "--backend", "ipex", "--precision", precision, "--mode", "accuracy",
                "--checkpoint", checkpoint, "--data-dir", data_dir, "--batch-size", "256",
                "--threads", "1", "--output", str(out)])
    if code != 0:
        return code

    import torch

    from dlrm_bench.backends import ipex
    from dlrm_bench.checkpoint import load_checkpoint_model
    from dlrm_bench.data.reader import open_split

    model = load_checkpoint_model(checkpoint)
    calib = out / "calibration.json"
    prepared = ipex.prepare(model, precision, calibration_file=calib if calib.exists() else None)
    diffs, ones = [], []
    with torch.no_grad():
        for k, b in enumerate(open_split(data_dir, "test").batches(256)):
            ref = model(b.dense, b.offsets, b.indices)
            diffs.append((prepared(b.dense, b.offsets, b.indices) - ref).abs().reshape(-1))
            if k == 0:  # a batch of one through the graph traced at 256
                one = prepared(b.dense[:1], b.offsets[:, :1], b.indices[:, :1])
                ones.append(float((one - ref[:1]).abs().max()))
        x = torch.randn(64, 128)
        embeddings = [torch.randn(64, 128) for _ in range(model.spec.num_tables)]
        ipex_mod = ipex.import_ipex(precision)
        inter = (ipex_mod.nn.functional.interaction(x, *embeddings)
                 - model.interaction(x, embeddings)).abs().max()
    err = torch.cat(diffs)
    check = {"precision": precision, "samples": int(err.numel()), "max_abs": float(err.max()),
             "mean_abs": float(err.mean()), "batch_of_one_max_abs": max(ones),
             "interaction_max_abs": float(inter), "traced_batch": prepared.traced_batch}
    (out / "check.json").write_text(json.dumps(check, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
