"""Where an instance's batches come from: a data directory (memory-mapped) or the generator."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

from dlrm_bench.config import RunConfig
from dlrm_bench.data.reader import Batch, open_split, read_table_sizes
from dlrm_bench.errors import UserError
from dlrm_bench.presets import ModelSpec

# Timed loops cycle over a pool of batches prepared beforehand, so the timing is the model's.
POOL_BATCHES = 64


def check_data_matches_model(cfg: RunConfig, spec: ModelSpec) -> None:
    """A checkpoint must have a row for every id the data holds; a preset folds ids modulo."""
    if not cfg.data_dir:
        return
    counts = read_table_sizes(cfg.data_dir)
    if len(counts) != spec.num_tables:
        raise UserError(
            f"data in {cfg.data_dir} has {len(counts)} categorical features, "
            f"the model has {spec.num_tables} tables"
        )
    if cfg.checkpoint:
        for k, (count, rows) in enumerate(zip(counts, spec.table_sizes, strict=True)):
            if count > rows:
                raise UserError(
                    f"data in {cfg.data_dir} has {count} ids for feature {k}, the checkpoint's "
                    f"table emb_l.{k} has only {rows} rows (checkpoint and data do not match)"
                )


def batches(cfg: RunConfig, spec: ModelSpec, split: str, batch_size: int) -> Iterator[Batch]:
    """Batches of ``split`` in file order (one pass for a data dir; endless when synthetic)."""
    if cfg.data_dir:
        records = open_split(cfg.data_dir, split, table_sizes=spec.table_sizes)
        if records.num_records < batch_size and split == "train":
            raise UserError(
                f"{records.path} holds {records.num_records} records, fewer than one batch of "
                f"{batch_size}"
            )
        return records.batches(batch_size)
    from dlrm_bench.data.synth import synthetic_batches

    return synthetic_batches(spec, batch_size, seed=cfg.seed, split=split)


def cycling(cfg: RunConfig, spec: ModelSpec, split: str, batch_size: int) -> Iterator[Batch]:
    """Endless batches: a data dir's file is read again from the start when it runs out."""
    if not cfg.data_dir:
        return batches(cfg, spec, split, batch_size)

    def forever() -> Iterator[Batch]:
        while True:
            yield from batches(cfg, spec, split, batch_size)

    return forever()


def pool(cfg: RunConfig, spec: ModelSpec, split: str, batch_size: int, count: int) -> list[Batch]:
    """Up to ``count`` (at most ``POOL_BATCHES``) full batches materialised in memory."""
    wanted = max(1, min(count, POOL_BATCHES))
    source = cycling(cfg, spec, split, batch_size)
    return [b for b in itertools.islice(source, wanted) if b.labels.numel() == batch_size] or [
        next(iter(batches(cfg, spec, split, batch_size)))
    ]


def data_description(cfg: RunConfig) -> dict[str, object]:
    if cfg.data_dir:
        return {"source": "files", "data_dir": str(Path(cfg.data_dir).resolve())}
    return {"source": "generated", "generator": "dlrm_bench.data.synth", "seed": cfg.seed}
