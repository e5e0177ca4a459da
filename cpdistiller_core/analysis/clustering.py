"""Hierarchical clustering of perturbation profiles and the paper's permutation test per cluster.

A cluster's tightness is the height at which its members join into one group when they are clustered
on their own (same distance and linkage): the root merge height of their sub-tree. Its significance is
the rank of that height among ``n_permutations`` random sets of the same size drawn from all clustered
profiles: p = (1 + #random sets at least as tight) / (1 + n_permutations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.cluster import hierarchy
from scipy.spatial.distance import pdist, squareform

from ..errors import CpDistillerError
from ..profiles import Profiles
from ..progress import ProgressCallback, no_progress
from .active import ActiveScreen, active_screen
from .consensus import Consensus, consensus

LINKAGES = ("average", "complete", "single", "ward")
METRICS = ("euclidean", "cosine")


@dataclass(frozen=True)
class Clustering:
    """Result of :func:`cluster_profiles`.

    ``linkage`` is scipy's linkage matrix over ``labels``; ``clusters`` the 1-based cluster id per
    label; ``table`` one row per cluster (cluster, size, members, height, p_value, rank, significant).
    """

    labels: list[str]
    linkage: np.ndarray
    clusters: np.ndarray
    table: pd.DataFrame
    metric: str
    method: str
    n_permutations: int
    alpha: float

    @property
    def leaf_order(self) -> np.ndarray:
        """Positions of ``labels`` in dendrogram order."""
        return hierarchy.leaves_list(self.linkage)

    def members(self, cluster: int) -> list[str]:
        return [lab for lab, c in zip(self.labels, self.clusters) if c == cluster]

    def assignments(self) -> pd.DataFrame:
        """One row per label: label, cluster, leaf position in the dendrogram."""
        pos = np.empty(len(self.labels), dtype=int)
        pos[self.leaf_order] = np.arange(len(self.labels))
        return pd.DataFrame({"label": self.labels, "cluster": self.clusters, "leaf_position": pos})


def distance_matrix(X: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Condensed pairwise distances (scipy ``pdist``); cosine distances of zero rows are 1."""
    if metric not in METRICS:
        raise CpDistillerError(f"unknown distance {metric!r}; use one of {METRICS}.")
    X = np.asarray(X, dtype=np.float64)
    if metric == "cosine":
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        X = np.divide(X, norms, out=np.zeros_like(X), where=norms > 0)
        d = pdist(X, "euclidean") ** 2 / 2.0  # = 1 - cos for unit vectors
        return np.clip(d, 0.0, 2.0)
    return pdist(X, "euclidean")


def _linkage(d: np.ndarray, method: str) -> np.ndarray:
    # Ward is defined for Euclidean geometry; with cosine distances the rows are unit vectors and
    # sqrt(2 * (1 - cos)) is their Euclidean distance, so Ward runs on that.
    return hierarchy.linkage(d, method=method, optimal_ordering=False)


def _prepare(d: np.ndarray, metric: str, method: str) -> np.ndarray:
    if method == "ward" and metric == "cosine":
        return np.sqrt(2.0 * d)
    return d


def root_height(square: np.ndarray, idx: np.ndarray, method: str) -> float:
    """Height of the last merge when the rows ``idx`` are clustered on their own."""
    if len(idx) < 2:
        return float("nan")
    sub = square[np.ix_(idx, idx)]
    return float(_linkage(squareform(sub, checks=False), method)[-1, 2])


def permutation_test(square: np.ndarray, members: np.ndarray, method: str, n_permutations: int,
                     rng: np.random.Generator) -> tuple[float, float, int]:
    """(observed height, p-value, rank) of a cluster against random sets of the same size."""
    observed = root_height(square, members, method)
    n, k = square.shape[0], len(members)
    null = np.array([root_height(square, rng.choice(n, size=k, replace=False), method)
                     for _ in range(n_permutations)])
    as_tight = int((null <= observed + 1e-12).sum())
    return observed, (1 + as_tight) / (1 + n_permutations), 1 + as_tight


def cluster_profiles(X: np.ndarray, labels: Sequence[str], metric: str = "euclidean",
                     method: str = "average", n_clusters: int | None = 8, height: float | None = None,
                     n_permutations: int = 1000, alpha: float = 0.05, seed: int = 0,
                     progress: ProgressCallback = no_progress) -> Clustering:
    """Cluster rows of ``X`` hierarchically and test each cluster (size >= 2) by permutation.

    Cut the tree into ``n_clusters`` clusters, or at ``height`` when given (takes precedence).
    """
    if method not in LINKAGES:
        raise CpDistillerError(f"unknown linkage {method!r}; use one of {LINKAGES}.")
    X = np.asarray(X, dtype=np.float64)
    labels = [str(x) for x in labels]
    if X.ndim != 2 or X.shape[0] != len(labels):
        raise CpDistillerError(f"{len(labels)} labels for a matrix of shape {X.shape}.")
    if X.shape[0] < 3:
        raise CpDistillerError(f"clustering needs at least 3 profiles, got {X.shape[0]}.")
    if not np.isfinite(X).all():
        raise CpDistillerError("profiles contain NaN or infinite values; impute or drop them first.")
    d = _prepare(distance_matrix(X, metric), metric, method)
    Z = _linkage(d, method)
    if height is not None:
        clusters = hierarchy.fcluster(Z, t=float(height), criterion="distance")
    else:
        k = int(n_clusters or 2)
        if not 1 <= k <= X.shape[0]:
            raise CpDistillerError(f"number of clusters must be between 1 and {X.shape[0]}, got {k}.")
        clusters = hierarchy.fcluster(Z, t=k, criterion="maxclust")
    # Renumber clusters 1..k in dendrogram (left-to-right) order.
    order = hierarchy.leaves_list(Z)
    first_seen = list(dict.fromkeys(clusters[order]))
    remap = {old: new for new, old in enumerate(first_seen, start=1)}
    clusters = np.array([remap[c] for c in clusters], dtype=int)
    square = squareform(d)
    rng = np.random.default_rng(seed)
    rows = []
    ids = sorted(set(clusters))
    for i, c in enumerate(ids):
        members = np.flatnonzero(clusters == c)
        if len(members) >= 2 and n_permutations > 0 and len(members) < len(labels):
            h, p, rank = permutation_test(square, members, method, n_permutations, rng)
        else:
            h, p, rank = root_height(square, members, method), float("nan"), np.nan
        rows.append({"cluster": c, "size": len(members), "height": h, "p_value": p, "rank": rank,
                     "members": ";".join(labels[j] for j in members)})
        progress((i + 1) / len(ids), f"permutation test, cluster {c}")
    table = pd.DataFrame(rows)
    table["significant"] = table["p_value"] < alpha
    return Clustering(labels, Z, clusters, table, metric, method, int(n_permutations), float(alpha))


@dataclass(frozen=True)
class GeneClusters:
    """The gene-cluster analysis of one embedding: consensus, active screen, clustering of the top-N."""

    consensus: Consensus
    screen: ActiveScreen
    clustering: Clustering
    X: np.ndarray  # consensus profiles of the clustered perturbations, in ``clustering.labels`` order

    @property
    def background(self) -> list[str]:
        """Every (non-control) consensus label on the screen: the enrichment background."""
        return sorted(set(self.screen.table["perturbation"].astype(str)))

    def gene_lists(self, min_size: int = 2) -> dict[int, list[str]]:
        """Cluster id -> member labels, for clusters with at least ``min_size`` members."""
        out = {int(c): self.clustering.members(int(c)) for c in sorted(set(self.clustering.clusters))}
        return {c: m for c, m in out.items() if len(m) >= min_size}


def gene_clusters(profiles: Profiles, by: str | None = None, aggregate: str = "median",
                  metric: str = "euclidean", method: str = "average", screen_metric: str = "euclidean",
                  screen_null: str = "consensus", top_n: int | None = 200,
                  percentile: float = 95.0, n_clusters: int | None = 8, height: float | None = None,
                  n_permutations: int = 1000, alpha: float = 0.05, seed: int = 0,
                  progress: ProgressCallback = no_progress) -> GeneClusters:
    """Consensus per perturbation (or per ``by`` column, e.g. gene symbol), active screen against the
    negative controls, hierarchical clustering of the top-N active ones with permutation p-values.

    ``screen_metric`` is the active screen's distance (Euclidean by default: a cosine distance to the
    control centroid is ill-defined when profiles are centred on the controls, as normalised and
    corrected ones are); ``screen_null`` its control distances (see :mod:`.active`); ``metric`` is the
    clustering's."""
    progress(0.0, "consensus profiles")
    cons = consensus(profiles, aggregate=aggregate, by=by)
    screen = active_screen(profiles, cons, metric=screen_metric, percentile=percentile, top_n=top_n,
                           null=screen_null, seed=seed)
    sel = screen.selected
    if len(sel) < 3:
        raise CpDistillerError(
            f"only {len(sel)} perturbation(s) pass the active screen (threshold {screen.threshold:.3g}, "
            f"{screen.metric}); clustering needs 3 or more. Try a lower percentile."
        )
    X = cons.X[sel["consensus_row"].to_numpy()]
    n_clusters = None if n_clusters is None else min(int(n_clusters), len(sel))
    progress(0.05, f"clustering {len(sel)} active perturbations")
    clus = cluster_profiles(X, sel["perturbation"].astype(str).tolist(), metric=metric, method=method,
                            n_clusters=n_clusters, height=height, n_permutations=n_permutations,
                            alpha=alpha, seed=seed,
                            progress=lambda f, m: progress(0.05 + 0.95 * f, m))
    return GeneClusters(cons, screen, clus, X)
