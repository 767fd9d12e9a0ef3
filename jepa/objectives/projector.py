"""LeJEPA's projector: pooled encoder features -> a small embedding, an MLP with BatchNorm
(docs/method/lejepa.md, "Projector")."""

from __future__ import annotations

from torch import Tensor, nn


class Projector(nn.Module):
    """(B, D) -> (B, K): ``num_layers - 1`` blocks of Linear -> BatchNorm1d -> ReLU, then a Linear.

    LeJEPA's paper finds a small output width better (K = 64 beat 1024) and one-layer projectors
    much worse, so ``num_layers`` is at least 2.

    Args:
        in_dim: D, the encoder width.
        hidden_dim: width of the hidden layers.
        out_dim: K, the embedding width SIGReg shapes.
        num_layers: linear layers in all.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 3):
        super().__init__()
        assert num_layers >= 2, num_layers
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(width, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, pooled_BD: Tensor) -> Tensor:
        return self.net(pooled_BD)
