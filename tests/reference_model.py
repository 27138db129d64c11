"""An independent DLRM in the reference layout, for tests that load "other tools'" files."""

from __future__ import annotations

import torch
from torch import nn


class ReferenceStyleDLRM(nn.Module):
    """An independent module with the reference's key layout and its loop-style interaction."""

    def __init__(self, tables: list[int], dim: int, bottom: list[int], top: list[int]) -> None:
        super().__init__()
        self.emb_l = nn.ModuleList(nn.EmbeddingBag(n, dim, mode="sum") for n in tables)
        self.bot_l = self._mlp(bottom, sigmoid=False)
        self.top_l = self._mlp(top, sigmoid=True)

    @staticmethod
    def _mlp(widths: list[int], sigmoid: bool) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            last = i == len(widths) - 2
            layers.append(nn.Sigmoid() if (last and sigmoid) else nn.ReLU())
        return nn.Sequential(*layers)

    def forward(self, dense: torch.Tensor, offsets: torch.Tensor, indices: torch.Tensor):
        x = self.bot_l(dense)
        ly = [bag(indices[k], offsets[k]) for k, bag in enumerate(self.emb_l)]
        vectors = [x, *ly]
        pairs = [(vectors[i] * vectors[j]).sum(1, keepdim=True)
                 for i in range(len(vectors)) for j in range(i)]
        return self.top_l(torch.cat([x, *pairs], dim=1))
