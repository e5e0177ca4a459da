"""Neighbour mining for the contrastive module: sparse KNN/MNN pairs and streamed triplets.

Skeleton: names and signatures are fixed for the training loop; bodies land in the next commits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from .progress import ProgressCallback

__all__ = [
    "NeighborGraph",
    "TripletSampler",
    "embed_for_neighbors",
    "knn_within",
    "mine_neighbors",
    "mnn_across",
]


@dataclass
class NeighborGraph:
    """Positive partners per well, stored as CSR (symmetric, sorted per anchor, no self-pairs)."""

    indptr: np.ndarray
    indices: np.ndarray
    n: int
    stats: dict[str, Any] = field(default_factory=dict)

    def positives(self, i: int) -> np.ndarray:
        """Positive partners of well ``i`` (sorted, possibly empty)."""
        return self.indices[self.indptr[i]:self.indptr[i + 1]]

    def has_positive(self) -> np.ndarray:
        """Boolean per well: does it have at least one positive partner?"""
        return np.diff(self.indptr) > 0

    def to_csr(self) -> sp.csr_matrix:
        """The graph as an n x n boolean sparse matrix."""
        data = np.ones(len(self.indices), dtype=bool)
        return sp.csr_matrix((data, self.indices, self.indptr), shape=(self.n, self.n))


def embed_for_neighbors(X: np.ndarray, n_pcs: int = 50, seed: int = 0) -> np.ndarray:
    """PCA of ``X`` then L2-normalised rows (float32), so Euclidean order equals cosine order."""
    raise NotImplementedError


def knn_within(Z: np.ndarray, levels: np.ndarray, k: int, *, method: str = "exact",
               seed: int = 0) -> sp.csr_matrix:
    """Directed KNN graph: each well's ``k`` nearest wells sharing its level (self excluded)."""
    raise NotImplementedError


def mnn_across(Z: np.ndarray, levels: np.ndarray, k: int, *, method: str = "exact",
               seed: int = 0) -> sp.csr_matrix:
    """Symmetric MNN graph: pairs in different levels that are in each other's ``k`` nearest."""
    raise NotImplementedError


def mine_neighbors(X: np.ndarray, labels: Mapping[str, np.ndarray], *, k_knn: int = 10, k_mnn: int = 5,
                   n_pcs: int = 50, combine: str = "intersection", method: str = "auto",
                   seed: int = 0, progress: ProgressCallback | None = None) -> NeighborGraph:
    """Mine positive pairs (KNN within levels, MNN across levels) combined over technical effects."""
    raise NotImplementedError


class TripletSampler:
    """Streams (anchor, positive, negative) index triplets per mini-batch following the control rule."""

    def __init__(self, graph: NeighborGraph, negative_mask: np.ndarray, seed: int = 0) -> None:
        self.graph = graph
        self.negative_mask = np.asarray(negative_mask, dtype=bool)
        self.rng = np.random.default_rng(seed)

    def sample(self, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Triplets for ``anchors`` that have a positive (others dropped)."""
        raise NotImplementedError
