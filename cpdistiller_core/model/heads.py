"""Projection head of the contrastive module: the triplet loss reads h(z), not z itself."""

from __future__ import annotations

from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """Linear(latent -> latent) + LeakyReLU, as in the paper."""

    def __init__(self, dim: int = 50) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU())

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
