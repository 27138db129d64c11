"""The DLRM model in the reference Criteo Terabyte layout.

Small modules in the style of TorchRec's ``dlrm.py`` (dense arch, sparse arch, interaction,
over arch), while the parameter names stay those of Facebook's / Intel's ``dlrm_s_pytorch.py``
(``bot_l.*``, ``emb_l.*``, ``top_l.*``) so that real checkpoints such as ``tb00_40M.pt`` load.

Shapes: ``B`` is the batch size, ``T`` the number of tables (26), ``D`` the embedding dim (128).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from dlrm_bench.presets import ModelSpec


def _mlp_layers(widths: Sequence[int], sigmoid_last: bool) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(n_in, n_out))
        last = i == len(widths) - 2
        layers.append(nn.Sigmoid() if last and sigmoid_last else nn.ReLU())
    return layers


class DenseArch(nn.Sequential):
    """Bottom MLP: ``[B, 13]`` dense features -> ``[B, D]``, ReLU after every layer."""

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__(*_mlp_layers(widths, sigmoid_last=False))


class OverArch(nn.Sequential):
    """Top MLP: ``[B, D + T(T+1)/2]`` -> ``[B, 1]`` click probability (ReLU, final sigmoid)."""

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__(*_mlp_layers(widths, sigmoid_last=True))


class SparseArch(nn.ModuleList):
    """One ``EmbeddingBag(sum)`` per categorical feature: ``T x [B]`` ids -> ``T x [B, D]``."""

    def __init__(self, table_sizes: Sequence[int], dim: int) -> None:
        super().__init__(
            nn.EmbeddingBag(int(n), dim, mode="sum", sparse=False) for n in table_sizes
        )

    def forward(  # type: ignore[override]
        self, offsets: torch.Tensor | Sequence[torch.Tensor],
        indices: torch.Tensor | Sequence[torch.Tensor],
    ) -> list[torch.Tensor]:
        """``offsets`` ``[T, B]``, ``indices`` ``[T, N]`` (or T tensors each, for multi-hot)."""
        return [bag(indices[k], offsets[k]) for k, bag in enumerate(self)]


class DotInteraction(nn.Module):
    """Pairwise dot products of the dense vector and the T embeddings, self-pairs excluded.

    ``[B, D]`` and ``T x [B, D]`` -> ``[B, D + (T+1)T/2]``: the dense vector first, then the
    strictly lower triangle of ``Z = X X^T`` row by row, the order of the reference implementation.
    """

    def __init__(self, num_vectors: int) -> None:
        super().__init__()
        rows, cols = torch.tril_indices(num_vectors, num_vectors, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, dense: torch.Tensor, embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        batch, dim = dense.shape
        stacked = torch.cat([dense, *embeddings], dim=1).view(batch, -1, dim)
        products = torch.bmm(stacked, stacked.transpose(1, 2))
        return torch.cat([dense, products[:, self.rows, self.cols]], dim=1)


class DLRM(nn.Module):
    """DLRM: ``forward(dense [B,13], offsets [T,B], indices [T,B]) -> probabilities [B, 1]``."""

    def __init__(self, spec: ModelSpec, init_weights: bool = True) -> None:
        super().__init__()
        if spec.bottom_mlp[-1] != spec.embedding_dim:
            raise ValueError("the bottom MLP must end at the embedding dimension")
        self.spec = spec
        self.bot_l = DenseArch(spec.bottom_mlp)
        self.emb_l = SparseArch(spec.table_sizes, spec.embedding_dim)
        self.interaction = DotInteraction(spec.num_tables + 1)
        self.top_l = OverArch((spec.interaction_width, *spec.top_mlp))
        if init_weights:
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference initialisation (normal MLP weights, uniform tables)."""
        for layer in [*self.bot_l, *self.top_l]:
            if isinstance(layer, nn.Linear):
                n_out, n_in = layer.weight.shape
                layer.weight.normal_(0.0, math.sqrt(2.0 / (n_in + n_out)))
                layer.bias.normal_(0.0, math.sqrt(1.0 / n_out))
        for bag in self.emb_l:
            bound = math.sqrt(1.0 / bag.num_embeddings)
            bag.weight.uniform_(-bound, bound)

    def forward(
        self,
        dense: torch.Tensor,
        offsets: torch.Tensor | Sequence[torch.Tensor],
        indices: torch.Tensor | Sequence[torch.Tensor],
    ) -> torch.Tensor:
        x = self.bot_l(dense)
        embeddings = self.emb_l(offsets, indices)
        return self.top_l(self.interaction(x, embeddings))


def build_model(spec: ModelSpec, seed: int | None = 0, device: str | torch.device = "cpu") -> DLRM:
    """A freshly initialised DLRM for ``spec`` (deterministic when ``seed`` is given)."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        return DLRM(spec, init_weights=str(device) != "meta")
