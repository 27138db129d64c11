"""Building blocks of the native backend: embedding tables, the dot interaction, dense linears.

Shapes: ``B`` batch, ``T`` tables (26), ``D`` embedding dim (128), ``F = D + (T+1)T/2`` (479).

Everything here runs in ``torch.inference_mode`` on CPU and is written for speed: tables are looked
up in one call where possible, the interaction gathers the lower triangle with one
``index_select`` on the flattened Gram matrix, and linears are oneDNN-prepacked with the ReLU /
sigmoid fused into the GEMM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Table storage kinds: "fp32" / "bf16" rows, or "int8" = rowwise asymmetric uint8 as written by
# ``quantized.embedding_bag_byte_prepack``: each row is D uint8 values then a float32 scale and a
# float32 bias (D + 8 bytes); value = q * scale + bias.
TABLE_KINDS = ("fp32", "bf16", "int8")


class Workspace:
    """Output buffers reused from one batch to the next, by (name, shape, dtype).

    A fresh multi-MB tensor per batch (the interaction's operand is 14 MB at 1024 rows) is new
    memory for the allocator to fault in, which cost more than the copy that fills it (measured
    on a 2-core VM: a 14 MB ``cat`` 0.3-0.7 ms into a reused buffer, 4.6-9.5 ms into a fresh one).
    A buffer is valid until the next call that asks for it: only for intermediates that the next
    op consumes at once, never for what the model returns.
    """

    def __init__(self, limit: int = 8) -> None:
        self._buffers: dict[tuple[str, tuple[int, ...], torch.dtype], torch.Tensor] = {}
        self._limit = limit

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        key = (name, shape, dtype)
        buffer = self._buffers.get(key)
        if buffer is None:
            if len(self._buffers) >= self._limit:  # batch sizes change rarely: start afresh
                self._buffers.clear()
            buffer = self._buffers[key] = torch.empty(shape, dtype=dtype)
        return buffer


class EmbeddingTables:
    """The T tables of one model, in one of ``TABLE_KINDS``.

    ``weights`` is either a list of T tables (``split``: the fp32 tables of the source model used
    as they are, no copy) or a single tensor with all tables stacked by rows (``fused``: one lookup
    call for all tables; ``bases[t]`` is the first row of table ``t``).
    """

    def __init__(self, kind: str, weights: list[torch.Tensor], sizes: tuple[int, ...]) -> None:
        if kind not in TABLE_KINDS:
            raise ValueError(f"unknown table kind {kind!r}")
        self.kind = kind
        self.weights = weights
        self.sizes = sizes
        self.fused = len(weights) == 1 and len(sizes) > 1
        bases = torch.zeros(len(sizes), dtype=torch.int64)
        bases[1:] = torch.cumsum(torch.tensor(sizes[:-1], dtype=torch.int64), 0)
        self.bases = bases.view(-1, 1)  # [T, 1]
        self._arange = torch.empty(0, dtype=torch.int64)
        self.workspace = Workspace()

    @property
    def dim(self) -> int:
        width = self.weights[0].shape[1]
        return width - 8 if self.kind == "int8" else width

    def one_hot(self, offsets: torch.Tensor, indices: torch.Tensor) -> bool:
        """True when every bag holds one id: ``offsets[t] == arange(B)`` (as in the data)."""
        if not isinstance(offsets, torch.Tensor) or offsets.dim() != 2:
            return False
        if not isinstance(indices, torch.Tensor) or indices.shape != offsets.shape:
            return False
        return bool((offsets == self.arange(offsets.shape[1])).all())

    def lookup(
        self, offsets: torch.Tensor, indices: torch.Tensor, one_hot: bool | None = None
    ) -> torch.Tensor:
        """``offsets`` ``[T, B]``, ``indices`` ``[T, N]`` -> summed bags ``[B, T, D]``.

        fp32 tables give float32, bf16 tables bfloat16, int8 tables float32 (dequantized).
        ``one_hot``: the caller's ``one_hot(offsets, indices)`` if known (saves the check).
        """
        num_tables, batch = offsets.shape
        if self.fused:
            global_ids = indices + self.bases  # [T, N] rows of the stacked table
            if one_hot if one_hot is not None else self.one_hot(offsets, indices):
                ids = global_ids.t()  # sample-major [B, T]: the output is [B, T, D] as is
                if self.kind != "int8":
                    return F.embedding(ids, self.weights[0])
                bag_offsets = self.arange(batch * num_tables)
                out = self._bags(ids.reshape(-1), bag_offsets, self.weights[0])
                return out.view(batch, num_tables, -1)
            # multi-hot: bags of table t are bags t*B .. t*B+B-1 of the flattened ids
            shift = torch.arange(num_tables, dtype=torch.int64).view(-1, 1) * indices.shape[1]
            out = self._bags(global_ids.reshape(-1), (offsets + shift).reshape(-1), self.weights[0])
            return out.view(num_tables, batch, -1).transpose(0, 1)
        looked = [self._bags(indices[t], offsets[t], w) for t, w in enumerate(self.weights)]
        return torch.stack(looked, dim=1)

    def stacked(
        self, x: torch.Tensor, offsets: torch.Tensor, indices: torch.Tensor, one_hot: bool
    ) -> torch.Tensor:
        """``S = [x; E]`` ``[B, T+1, D]`` in ``x``'s dtype, the interaction's operand.

        Built without a separate concatenation pass where possible: one-hot lookups of a fused
        float table gather straight into ``S`` (slot 0 gathers a dummy row, then gets ``x``);
        split tables are concatenated once, from the T looked-up bags.
        """
        batch, dim = x.shape
        num_tables = offsets.shape[0]
        out = self.workspace.get("stacked", (batch, num_tables + 1, dim), x.dtype)
        if self.fused and one_hot and self.kind != "int8" and self.weights[0].dtype == x.dtype:
            ids = torch.zeros(batch, num_tables + 1, dtype=torch.int64)
            ids[:, 1:] = (indices + self.bases).t()
            torch.index_select(self.weights[0], 0, ids.view(-1), out=out.view(-1, dim))
            out[:, 0] = x
        elif not self.fused:
            bags = [self._bags(indices[t], offsets[t], w).unsqueeze(1)
                    for t, w in enumerate(self.weights)]
            torch.cat([x.unsqueeze(1), *bags], dim=1, out=out)
        elif one_hot and self.kind == "int8":  # gathered, then dequantized in place in S
            self._dequantized_rows(indices, out[:, 1:])
            out[:, 0] = x
        else:  # multi-hot bags, or bf16 rows for a float32 x (amx_bfloat32): the copy converts
            torch.cat([x.unsqueeze(1), self.lookup(offsets, indices, one_hot)], dim=1, out=out)
        return out

    def _dequantized_rows(self, indices: torch.Tensor, dest: torch.Tensor) -> None:
        """One-hot int8 lookups straight into ``dest`` ``[B, T, D]``: gather the rows (values,
        then the fp32 scale and bias that ``embedding_bag_byte_prepack`` appends), then
        ``q * scale + bias``. The same figures as ``embedding_bag_byte_rowwise_offsets``
        (to fp32 rounding) at a third of its time on a 2-core VM: its output is a fresh 14 MB
        tensor per 1024 rows, and a ``cat`` into ``S`` followed."""
        batch, num_tables, dim = dest.shape
        table = self.weights[0]
        ids = (indices + self.bases).t().reshape(-1)  # sample-major [B * T]
        rows = self.workspace.get("rows", (batch * num_tables, table.shape[1]), torch.uint8)
        torch.index_select(table, 0, ids, out=rows)
        values = dest if dest.dtype == torch.float32 else \
            self.workspace.get("values", (batch, num_tables, dim), torch.float32)
        values.copy_(rows[:, :dim].view(batch, num_tables, dim))
        scale = rows[:, dim:dim + 4].view(torch.float32).view(batch, num_tables, 1)
        bias = rows[:, dim + 4:dim + 8].view(torch.float32).view(batch, num_tables, 1)
        values.mul_(scale).add_(bias)
        if values is not dest:
            dest.copy_(values)

    def arange(self, n: int) -> torch.Tensor:
        """``arange(n)`` int64 from a cached buffer (no allocation per batch)."""
        if self._arange.numel() < n:
            self._arange = torch.arange(n, dtype=torch.int64)
        return self._arange[:n]

    def _bags(self, ids: torch.Tensor, offsets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.kind == "int8":
            return torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
                weight, ids, offsets, False, 0, False, None, None, False
            )
        return F.embedding_bag(ids, weight, offsets, mode="sum")


def fuse_tables(tables: list[torch.Tensor], kind: str) -> torch.Tensor:
    """Stack ``T x [N_t, D]`` float tables into one ``[sum N_t, D(+8)]`` tensor of ``kind``.

    Converted table by table into a preallocated result, so the peak extra memory is one table.
    """
    rows = sum(int(t.shape[0]) for t in tables)
    dim = int(tables[0].shape[1])
    if kind == "bf16":
        out = torch.empty(rows, dim, dtype=torch.bfloat16)
    elif kind == "int8":
        out = torch.empty(rows, dim + 8, dtype=torch.uint8)
    else:
        out = torch.empty(rows, dim, dtype=torch.float32)
    start = 0
    for table in tables:
        n = int(table.shape[0])
        # chunks of rows bound the temporary float copy of a 40M-row table
        for lo in range(0, n, 1 << 20):
            rows_in = table[lo:lo + (1 << 20)].float()
            dest = out[start + lo:start + lo + rows_in.shape[0]]
            if kind == "int8":
                dest.copy_(torch.ops.quantized.embedding_bag_byte_prepack(rows_in))
            else:
                dest.copy_(rows_in)
        start += n
    return out


class Interaction:
    """Dot interaction: ``S = [x; E]`` ``[B, T+1, D]`` -> ``[B, F]`` in the reference order.

    The output is ``[x, tril(Z)]`` with ``Z = S S^T`` and ``tril`` the strictly-lower triangle
    row by row, exactly ``DotInteraction`` of ``dlrm_bench.model``, gathered with one
    ``index_select`` on the flattened ``Z`` straight into the output (advanced indexing
    ``Z[:, rows, cols]`` then ``cat`` is slower). Computing ``E x`` and ``E E^T`` separately to
    avoid building ``S`` was measured no faster: the batched matrix-vector product costs as much
    as the copy it saves; folding the gather into a zero-padded first top-layer weight (K 479 ->
    857) was 5% slower.
    """

    def __init__(self, num_tables: int) -> None:
        n = num_tables + 1
        rows, cols = torch.tril_indices(n, n, offset=-1)
        self.flat = rows * n + cols  # [n(n-1)/2] positions in the flattened [n, n] Gram matrix
        self.workspace = Workspace()

    def __call__(self, stacked: torch.Tensor) -> torch.Tensor:
        """The result is a reused buffer: the top MLP's first layer must consume it at once."""
        batch, n, dim = stacked.shape
        gram = self.workspace.get("gram", (batch, n, n), stacked.dtype)
        torch.bmm(stacked, stacked.transpose(1, 2), out=gram)  # [B, T+1, T+1]
        out = self.workspace.get("out", (batch, dim + self.flat.numel()), stacked.dtype)
        out[:, :dim] = stacked[:, 0]
        torch.index_select(gram.view(batch, -1), 1, self.flat, out=out[:, dim:])
        return out  # [B, D + T(T+1)/2]


class DenseLinear:
    """A float linear (fp32 or bf16 weights) with its activation fused: ``[M, K] -> [M, N]``.

    ``packed`` uses a oneDNN-prepacked weight and ``mkldnn._linear_pointwise`` (GEMM + bias + ReLU
    or sigmoid in one primitive); the unpacked form is ``F.linear`` (MKL for fp32) then the
    activation. ``gemv_unpacked``: single rows (M = 1) take the unpacked fp32 path even when
    packed, because MKL's sgemv beat oneDNN there (8 layers of the Terabyte MLPs, one core of an
    AMD EPYC VM: 162 vs 191 us; at M = 2 oneDNN already wins, 218 vs 323 us).
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor, post: str, packed: bool, batch_hint: int,
        gemv_unpacked: bool = False,
    ) -> None:
        if post not in ("relu", "sigmoid", "none"):
            raise ValueError(f"unknown post-op {post!r}")
        self.weight, self.bias, self.post = weight, bias, post
        self.packed = packed
        self.gemv_unpacked = gemv_unpacked and packed and weight.dtype == torch.float32
        self.w = (
            torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint) if packed else weight
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.w.dtype:  # a float32 head on bf16 activations
            x = x.to(self.w.dtype)
        if self.packed and not (self.gemv_unpacked and x.shape[0] == 1):
            return torch.ops.mkldnn._linear_pointwise(x, self.w, self.bias, self.post, [], "")
        y = F.linear(x, self.weight, self.bias)
        if self.post == "relu":
            return torch.relu_(y)
        if self.post == "sigmoid":
            return torch.sigmoid_(y)
        return y
