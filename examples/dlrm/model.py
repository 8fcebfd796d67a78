"""A small DLRM (Naumov et al., 2019) split for hybrid parallel training.

* ``Tables``: the embedding tables one rank owns (model parallel). ``forward`` pools the
  lookups of the *whole global batch* into ``[batch, local_tables * dim]``: the payload of the
  forward all-to-all.
* ``DenseNet``: bottom MLP on dense features, pairwise dot-product interaction with the
  embedding vectors of *all* tables (received from the owners), top MLP to one logit. Data
  parallel: every rank holds a replica, gradients are all-reduced.
"""

from __future__ import annotations

import torch
from torch import nn


def mlp(sizes, last_act=True):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_act:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Tables(nn.Module):
    """Embedding bags (mean pooling, index 0 = padding) for the tables in ``owned``."""

    def __init__(self, table_sizes, owned, dim, seed=0):
        super().__init__()
        self.owned = list(owned)
        self.dim = dim
        self.bags = nn.ModuleList()
        for t in self.owned:
            g = torch.Generator().manual_seed(seed * 1000 + t)  # same table init whatever the sharding
            bag = nn.EmbeddingBag(table_sizes[t], dim, mode="mean", padding_idx=0)
            with torch.no_grad():
                bound = table_sizes[t] ** -0.5
                bag.weight.uniform_(-bound, bound, generator=g)
                bag.weight[0].zero_()
            self.bags.append(bag)

    def forward(self, sparse):
        """``sparse``: list over all tables of int64 ``[batch, L]``; returns ``[batch, local * dim]``."""
        if not self.owned:
            return torch.zeros(sparse[0].shape[0], 0)
        return torch.cat([bag(torch.as_tensor(sparse[t])) for t, bag in zip(self.owned, self.bags)], dim=1)


class DenseNet(nn.Module):
    """Bottom MLP -> dot interaction with embeddings -> top MLP -> logit."""

    def __init__(self, n_dense, n_tables, dim, bottom=(64, 32), top=(64, 32)):
        super().__init__()
        self.bottom = mlp([n_dense, *bottom, dim])
        n = n_tables + 1
        self.top = mlp([dim + n * (n - 1) // 2, *top, 1], last_act=False)
        self.register_buffer("tri", torch.tril_indices(n, n, offset=-1), persistent=False)

    def forward(self, dense, emb):
        """``dense`` ``[b, n_dense]``, ``emb`` ``[b, tables, dim]`` -> logits ``[b]``."""
        x = self.bottom(dense)
        z = torch.cat([x.unsqueeze(1), emb], dim=1)  # [b, n, dim]
        inter = torch.bmm(z, z.transpose(1, 2))[:, self.tri[0], self.tri[1]]
        return self.top(torch.cat([x, inter], dim=1)).squeeze(1)
