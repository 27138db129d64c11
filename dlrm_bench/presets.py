"""Model presets: the DLRM Criteo Terabyte architecture at several table-size caps."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from dlrm_bench.errors import UserError

# MLPerf / Intel reference table sizes for Criteo Terabyte with max-ind-range 40M.
TERABYTE_TABLE_SIZES: tuple[int, ...] = (
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951,
    2953546, 403346, 10, 2208, 11938, 155, 4, 976, 14, 39979771,
    25641295, 39664984, 585935, 12972, 108, 36,
)
NUM_DENSE = 13
NUM_SPARSE = len(TERABYTE_TABLE_SIZES)
EMBEDDING_DIM = 128
BOTTOM_MLP: tuple[int, ...] = (13, 512, 256, 128)
TOP_MLP_HIDDEN: tuple[int, ...] = (1024, 1024, 512, 256, 1)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a DLRM: table rows, embedding width and MLP widths."""

    table_sizes: tuple[int, ...]
    embedding_dim: int = EMBEDDING_DIM
    bottom_mlp: tuple[int, ...] = BOTTOM_MLP
    top_mlp: tuple[int, ...] = field(default=TOP_MLP_HIDDEN)

    @property
    def num_tables(self) -> int:
        return len(self.table_sizes)

    @property
    def interaction_width(self) -> int:
        """Dense features plus the strictly-lower triangle of the (tables+1)^2 dot products."""
        n = self.num_tables + 1
        return self.embedding_dim + n * (n - 1) // 2

    @property
    def table_rows(self) -> int:
        return sum(self.table_sizes)

    def table_bytes(self, bytes_per_value: int = 4) -> int:
        return self.table_rows * self.embedding_dim * bytes_per_value

    def mlp_macs_per_sample(self) -> int:
        """Multiply-accumulates of both MLPs for one sample (no interaction)."""
        bottom = sum(a * b for a, b in zip(self.bottom_mlp, self.bottom_mlp[1:], strict=False))
        top_dims = (self.interaction_width, *self.top_mlp)
        top = sum(a * b for a, b in itertools.pairwise(top_dims))
        return bottom + top

    def flops_per_sample(self) -> int:
        """FLOPs (2 per MAC) of MLPs plus the pairwise interaction dot products."""
        n = self.num_tables + 1
        interaction_macs = n * (n - 1) // 2 * self.embedding_dim
        return 2 * (self.mlp_macs_per_sample() + interaction_macs)


def _capped(cap: int) -> tuple[int, ...]:
    return tuple(min(size, cap) for size in TERABYTE_TABLE_SIZES)


PRESETS: dict[str, ModelSpec] = {
    "terabyte": ModelSpec(TERABYTE_TABLE_SIZES),
    "terabyte-small": ModelSpec(_capped(1_000_000)),
    "tiny": ModelSpec(_capped(10_000)),
}


def get_preset(name: str) -> ModelSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(
            f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}"
        ) from None
