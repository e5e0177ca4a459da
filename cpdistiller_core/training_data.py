"""What the training loop reads, prepared from preprocessed Profiles (scvi-tools: the data-manager step).

:meth:`TrainData.from_profiles` turns the model's input matrix and the profiles' metadata into device
tensors: level codes per corrected effect (row/column codes in plate order), their soft-label tables,
the aligned image features, the adversary's well weights, and the streamed triplet sampler built on
mined neighbours.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor

from .config import CpDistillerConfig
from .errors import CpDistillerError, CpDistillerWarning, example_values, where
from .model.bounds import check_architecture
from .model.discriminators import ordinal_soft_labels, smooth_labels
from .profiles import Profiles
from .progress import ProgressCallback, no_progress

if TYPE_CHECKING:
    from .preprocess import CorrectedRows

ORDERED_EFFECTS = ("row", "column")


class TripletSource(Protocol):
    def sample(self, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def _check_finite(profiles: Profiles, what: str = "features", chunk: int = 16384) -> None:
    X = profiles.X
    bad_rows, bad_cols = [], np.zeros(X.shape[1], dtype=bool)
    for s in range(0, X.shape[0], chunk):  # row chunks: no wells x features mask
        bad = ~np.isfinite(X[s:s + chunk])
        if bad.any():
            bad_rows.append(s + np.flatnonzero(bad.any(axis=1)))
            bad_cols |= bad.any(axis=0)
    if bad_rows:
        rows = np.concatenate(bad_rows)
        cols = [profiles.features[j] for j in np.flatnonzero(bad_cols)]
        raise CpDistillerError(
            f"{where(profiles.source or None)}{what} contain NaN/inf in {len(rows)} well(s) "
            f"(rows {', '.join(str(profiles.meta.index[i]) for i in rows[:5])}; columns "
            f"{example_values(cols)}): preprocess the profiles first (cpdistiller preprocess)."
        )


def _well_keys(p: Profiles) -> np.ndarray:
    return np.char.add(np.char.add(p.plate.astype(str), "\x1f"), p.well.astype(str))


def align_extractor(profiles: Profiles, extractor: Profiles) -> np.ndarray:
    """Image features in the row order of ``profiles``, joined on plate + well."""
    keys = _well_keys(extractor)
    uniq, first = np.unique(keys, return_index=True)
    if len(uniq) != len(keys):
        dup = keys[np.setdiff1d(np.arange(len(keys)), first)]
        raise CpDistillerError(
            f"{where(extractor.source or None)}image features list some wells twice "
            f"({example_values([k.replace(chr(31), ' ') for k in dup])}); give one row per plate and well."
        )
    want = _well_keys(profiles)
    pos = np.searchsorted(uniq, want)
    pos = np.clip(pos, 0, len(uniq) - 1)
    found = uniq[pos] == want
    if not found.all():
        miss = want[~found]
        raise CpDistillerError(
            f"{where(extractor.source or None)}no image features for {len(miss)} well(s) of the profiles "
            f"({example_values([k.replace(chr(31), ' ') for k in miss])}); join on plate and well failed."
        )
    _check_finite(extractor, "image features")
    return extractor.X[first[pos]]


def _level_codes(values: np.ndarray, effect: str) -> tuple[np.ndarray, list[Any]]:
    """Codes 0..L-1; row/column levels sorted by plate position so code distance is positional order."""
    if effect in ORDERED_EFFECTS:
        levels = sorted({int(v) for v in values})
        codes = np.searchsorted(np.asarray(levels), values.astype(np.int64))
        return codes.astype(np.int64), levels
    levels = sorted({str(v) for v in values})
    return level_codes(values, levels, effect), levels


def level_codes(values: np.ndarray, levels: Sequence[Any], effect: str) -> np.ndarray:
    """Codes of ``values`` among a model's ``levels`` of ``effect`` (as ``_level_codes`` made them); -1 where
    a value is not among them (a level the model was not trained on)."""
    key = int if effect in ORDERED_EFFECTS else str
    lookup = {key(v): i for i, v in enumerate(levels)}
    return np.fromiter((lookup.get(key(v), -1) for v in values), dtype=np.int64, count=len(values))


def soft_label_table(effect: str, n_levels: int, alpha: float) -> Tensor:
    """The discriminator's soft targets: ordinal for row/column, plain label smoothing otherwise."""
    table = ordinal_soft_labels(n_levels, alpha) if effect in ORDERED_EFFECTS else smooth_labels(n_levels, alpha)
    return torch.tensor(table, dtype=torch.float32)


def _zscored(X: np.ndarray) -> np.ndarray:
    """Per-feature z-scored float32 copy (the unsphered space for neighbour mining)."""
    from .api import InputTransform  # the model's own transform, without sphering (api imports this module)

    return InputTransform.fit(X, None, "none", 0.0).apply(X)


def _mining_space(profiles: Profiles, X: np.ndarray, effects: Sequence[str], space: str,
                  features: Sequence[str] | None) -> tuple[np.ndarray | CorrectedRows, str]:
    """The matrix neighbours are mined in (``CpDistillerConfig.neighbor_space``) and the space used.

    The negative-control corrected space is computed a block of rows at a time, so mining holds no
    second copy of ``X``."""
    if space == "unsphered":
        return _zscored(profiles.subset(features=list(features or profiles.features)).X), space
    if space == "negcon_linear":
        neg = profiles.negative_mask
        if neg.sum() < 3:
            warnings.warn(f"neighbour mining in the negative-control corrected space needs 3+ negative controls "
                          f"(this screen has {int(neg.sum())}): mining in the model input instead.",
                          CpDistillerWarning, stacklevel=5)
            return X, "input"
        from .preprocess import fit_negcon_technical

        return fit_negcon_technical(X, {e: profiles.labels(e) for e in effects}, neg).corrected(X), space
    return X, "input"


@dataclass
class TrainData:
    """Everything the loop reads, already on the device, and what preparing it found out."""

    X: Tensor                          # [n, d] model input (scaled / sphered)
    labels: Mapping[str, Tensor]       # effect -> [n] int64 codes
    soft_targets: Mapping[str, Tensor]  # effect -> [levels, levels] target table
    E: Tensor | None = None            # [n, f] image features for the joint module
    triplets: TripletSource | None = None
    # effect -> [n] float 0/1: the wells its discriminator learns from (an effect not named: every well)
    adversary_weight: dict[str, Tensor] = field(default_factory=dict)
    levels: dict[str, list[Any]] = field(default_factory=dict)  # effect -> level values, in code order
    neighbor_stats: dict[str, Any] = field(default_factory=dict)
    neighbor_seconds: float = 0.0

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @classmethod
    def from_profiles(cls, profiles: Profiles, X: np.ndarray, effects: Sequence[str], config: CpDistillerConfig,
                      *, adversary_wells: Mapping[str, str], features: Sequence[str] | None = None,
                      extractor: Profiles | None = None, device: torch.device | str = "cpu",
                      progress: ProgressCallback | None = None) -> TrainData:
        """Prepare training data for ``effects`` from ``profiles`` and their model input ``X``.

        Parameters
        ----------
        profiles
            The preprocessed profiles (metadata: effect labels, negative controls, plate and well).
        X
            The model input, one row per well of ``profiles`` (after the model's input transform).
        effects
            The corrected effects, each with 2+ levels.
        config
            Settings: soft labels, neighbour mining, triplet controls, model sizes.
        adversary_wells
            Effect -> "all" or "negcon" (resolved): the wells its discriminator learns from.
        features
            The model's features among ``profiles.features`` (default: all), for unsphered mining.
        extractor
            Per-well image features for the joint module, joined on plate + well.
        device
            Where the tensors go.
        progress
            Called during neighbour mining with fractions 0..1.

        Raises ``CpDistillerError`` when the image features do not join or the model would be too large;
        both before the neighbour search, the slow part.
        """
        codes, levels = {}, {}
        for e in effects:
            codes[e], levels[e] = _level_codes(profiles.labels(e), e)
        E = None if extractor is None else align_extractor(profiles, extractor).astype(np.float32)
        check_architecture(config, X.shape[1], {e: len(levels[e]) for e in effects})
        t0 = time.perf_counter()
        sampler, stats = _triplet_sampler(profiles, X, effects, config, adversary_wells, features,
                                          progress or no_progress)
        neighbor_seconds = time.perf_counter() - t0
        controls = torch.from_numpy(profiles.negative_mask.astype(np.float32)).to(device)
        return cls(
            X=torch.from_numpy(X).to(device),
            labels={e: torch.from_numpy(codes[e]).to(device) for e in effects},
            soft_targets={e: soft_label_table(e, len(levels[e]), config.soft_label_alpha).to(device)
                          for e in effects},
            E=None if E is None else torch.from_numpy(E).to(device),
            triplets=sampler,
            adversary_weight={e: controls for e in effects if adversary_wells[e] == "negcon"},
            levels=levels, neighbor_stats=stats, neighbor_seconds=neighbor_seconds,
        )


def _triplet_sampler(profiles: Profiles, X: np.ndarray, effects: Sequence[str], cfg: CpDistillerConfig,
                     adversary_wells: Mapping[str, str], features: Sequence[str] | None,
                     progress: ProgressCallback) -> tuple[TripletSource | None, dict[str, Any]]:
    """Neighbours for the contrastive term (sparse; mined on the model's input space) and their sampler."""
    from .neighbors import TripletSampler, mine_neighbors

    progress(0.0, "mining neighbours")
    X_mine, space = _mining_space(profiles, X, effects, cfg.neighbor_space, features)
    graph = mine_neighbors(X_mine, {e: profiles.labels(e) for e in effects}, k_knn=cfg.k_knn,
                           k_mnn=cfg.k_mnn, n_pcs=cfg.neighbor_pcs, combine=cfg.neighbor_combine,
                           method=cfg.neighbor_method, seed=cfg.seed, progress=progress)
    stats = dict(getattr(graph, "stats", {}) or {})
    stats.setdefault("anchors_with_positive", int(graph.has_positive().sum()))
    stats["mining_space"] = space
    del X_mine
    # "neutral": no well is treated as a control, so no control is pulled onto the others.
    rule = cfg.triplet_controls if cfg.triplet_controls != "auto" else \
        ("neutral" if adversary_wells and "all" not in adversary_wells.values() else "paper")
    triplet_controls = profiles.negative_mask if rule == "paper" else np.zeros(profiles.n_wells, dtype=bool)
    stats["triplet_controls"] = rule
    sampler = TripletSampler(graph, triplet_controls, seed=cfg.seed, p_knn=cfg.triplet_knn_share)
    n_anchor = len(sampler.anchors()) if hasattr(sampler, "anchors") else int(graph.has_positive().sum())
    stats["triplet_anchors"] = n_anchor
    if not n_anchor:
        warnings.warn("no well has a positive neighbour: training without the contrastive term.",
                      CpDistillerWarning, stacklevel=4)
        return None, stats
    return sampler, stats
