"""Reference correction methods, each ``fn(profiles, effects, seed) -> Embedding`` on preprocessed Profiles.

Registry (``BASELINES``; names are what ``cpdistiller benchmark --methods`` accepts):

* ``uncorrected``   PCA-50 of the preprocessed features.
* ``harmony``       harmonypy on PCA-50, run sequentially per effect (batch, then row, then column), as
                    the cpDistiller paper ran it.
* ``combat``        scanpy.pp.combat (Johnson et al. 2007 empirical-Bayes ComBat, port of sva's) on the
                    features, sequentially per effect in the same order, then PCA-50.
* ``sphering``      ZCA whitening fitted on negative controls (pycytominer ``Spherize``), applied to
                    all wells, then PCA-50 (Cell Painting CNN-1 / JUMP pipeline).
* ``well_position`` JUMP-style: subtract each well position's mean across plates, then PCA-50.
* ``negcon_linear`` a linear row + column (+ batch) model fitted on negative controls (ridge on
                    one-hot levels) whose predicted technical part is subtracted from all wells, then
                    PCA-50.

Every embedding has ``provenance`` with the effects corrected, the effects skipped (and why) and
``runtime_s``. ``effects`` are technical effects among "batch", "plate", "row", "column"; an effect the
data do not have (no batch column, a single plate) is skipped and recorded, not silently faked.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .errors import CpDistillerError
from .profiles import Embedding, Profiles

log = logging.getLogger("cpdistiller")

DEFAULT_EFFECTS: tuple[str, ...] = ("batch", "row", "column")
N_COMPONENTS = 50

BaselineFn = Callable[[Profiles, Sequence[str], int], Embedding]


def _check(profiles: Profiles) -> np.ndarray:
    X = profiles.X.astype(np.float64)
    bad = ~np.isfinite(X)
    if bad.any():
        raise CpDistillerError(
            f"{int(bad.sum())} NaN/inf feature values: preprocess the profiles first (cpdistiller preprocess)."
        )
    if profiles.n_wells < 3:
        raise CpDistillerError("need at least 3 wells.")
    return X


def pca(X: np.ndarray, n_components: int = N_COMPONENTS, seed: int = 0) -> np.ndarray:
    """PCA to at most ``n_components`` dimensions (fewer when wells or features are fewer)."""
    from sklearn.decomposition import PCA

    k = int(min(n_components, X.shape[0] - 1, X.shape[1]))
    return PCA(n_components=k, random_state=seed).fit_transform(X).astype(np.float32)


def resolve_effects(profiles: Profiles, effects: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Effects that exist with 2+ levels in the data, and {skipped effect: reason}."""
    use, skipped = [], {}
    for e in effects:
        if e not in ("batch", "plate", "row", "column"):
            raise CpDistillerError(f"unknown technical effect {e!r}; use batch, plate, row or column.")
        try:
            lab = profiles.labels(e)
        except CpDistillerError as exc:
            skipped[e] = str(exc)
            continue
        n = len(pd.unique(np.asarray(lab).astype(str)))
        if n < 2:
            skipped[e] = f"a single {e} level"
            continue
        use.append(e)
    return use, skipped


def _labels(profiles: Profiles, effect: str) -> np.ndarray:
    return np.asarray(profiles.labels(effect)).astype(str)


def _embed(profiles: Profiles, Z: np.ndarray, method: str, prefix: str, **prov: Any) -> Embedding:
    return Embedding.from_profiles(profiles, np.asarray(Z, dtype=np.float32), method=method, prefix=prefix,
                                   provenance=prov)


# ------------------------------------------------------------------------------------------------
def uncorrected(profiles: Profiles, effects: Sequence[str] = DEFAULT_EFFECTS, seed: int = 0) -> Embedding:
    """PCA-50 of the preprocessed features (no correction)."""
    Z = pca(_check(profiles), seed=seed)
    return _embed(profiles, Z, "uncorrected", "pc_", effects_corrected=[], effects_skipped={})


def harmony(profiles: Profiles, effects: Sequence[str] = DEFAULT_EFFECTS, seed: int = 0) -> Embedding:
    """harmonypy on PCA-50, one effect at a time (batch → row → column), each run on the previous output."""
    from harmonypy import run_harmony

    use, skipped = resolve_effects(profiles, effects)
    Z = pca(_check(profiles), seed=seed).astype(np.float64)
    for e in use:
        meta = pd.DataFrame({"label": _labels(profiles, e)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ho = run_harmony(Z, meta, ["label"], random_state=seed, verbose=False, ncores=1)
        Zc = np.asarray(ho.Z_corr)
        Z = Zc if Zc.shape[0] == len(meta) else Zc.T
    return _embed(profiles, Z, "harmony", "harmony_", effects_corrected=use, effects_skipped=skipped)


def combat(profiles: Profiles, effects: Sequence[str] = DEFAULT_EFFECTS, seed: int = 0) -> Embedding:
    """scanpy.pp.combat on the features, one effect at a time (batch → row → column), then PCA-50.

    Levels with a single well cannot be estimated by ComBat; those wells are merged into a level
    named '__singletons__' (recorded in provenance)."""
    import anndata as ad
    import scanpy as sc

    use, skipped = resolve_effects(profiles, effects)
    X = _check(profiles)
    merged: dict[str, int] = {}
    for e in use:
        lab = _labels(profiles, e)
        counts = pd.Series(lab).value_counts()
        single = counts.index[counts < 2]
        if len(single):
            lab = np.where(np.isin(lab, single), "__singletons__", lab)
            merged[e] = int(len(single))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obs = pd.DataFrame({"label": pd.Categorical(lab)}, index=[str(i) for i in range(len(lab))])
            adata = ad.AnnData(X=X.astype(np.float64), obs=obs)
            sc.pp.combat(adata, key="label")
        X = np.asarray(adata.X, dtype=np.float64)
        if not np.isfinite(X).all():
            raise CpDistillerError(f"ComBat produced NaN/inf values when correcting {e}.")
    return _embed(profiles, pca(X, seed=seed), "combat", "combat_", effects_corrected=use,
                  effects_skipped=skipped, singleton_levels_merged=merged)


def sphering(profiles: Profiles, effects: Sequence[str] = DEFAULT_EFFECTS, seed: int = 0,
             epsilon: float = 1e-6) -> Embedding:
    """ZCA sphering (pycytominer ``Spherize``) fitted on negative controls, applied to all wells, then PCA-50.

    Needs negative controls; ``effects`` are not used (sphering is label-free)."""
    from pycytominer.operations.transform import Spherize

    X = _check(profiles)
    neg = profiles.negative_mask
    if neg.sum() < 3:
        raise CpDistillerError("sphering needs at least 3 negative-control wells (set the 'control' role).")
    ref = X[neg]
    keep = ref.std(axis=0) > 0
    if not keep.all():
        log.info("sphering: %d features constant among negative controls dropped", int((~keep).sum()))
    cols = [str(i) for i in range(int(keep.sum()))]
    sph = Spherize(method="ZCA", epsilon=epsilon, center=True, return_numpy=True)
    try:
        sph.fit(pd.DataFrame(ref[:, keep], columns=cols))
    except ValueError as exc:
        raise CpDistillerError(f"sphering failed on the negative controls: {exc}") from exc
    Xs = np.asarray(sph.transform(pd.DataFrame(X[:, keep], columns=cols)), dtype=np.float64)
    return _embed(profiles, pca(Xs, seed=seed), "sphering", "sph_", effects_corrected=[],
                  effects_skipped={}, fitted_on_negative_controls=int(neg.sum()),
                  features_dropped_constant=int((~keep).sum()), epsilon=epsilon)


def well_position(profiles: Profiles, effects: Sequence[str] = DEFAULT_EFFECTS, seed: int = 0) -> Embedding:
    """JUMP-style well-position correction: subtract each well position's mean over plates, then PCA-50.

    Needs at least two plates; positions present on one plate only are left uncorrected (their mean
    would be the well itself). With the same layout on every plate this also removes the
    perturbation signal — a known limitation of the method."""
    X = _check(profiles)
    plates = pd.unique(profiles.plate)
    if len(plates) < 2:
        raise CpDistillerError("well-position correction needs at least two plates.")
    df = pd.DataFrame(X)
    pos = pd.Series(profiles.well)
    n_plates = pd.Series(profiles.plate).groupby(pos.to_numpy()).transform("nunique").to_numpy()
    means = df.groupby(pos.to_numpy()).transform("mean").to_numpy()
    corr = n_plates > 1
    Xc = X.copy()
    Xc[corr] = X[corr] - means[corr]
    return _embed(profiles, pca(Xc, seed=seed), "well_position", "wp_", effects_corrected=["well position"],
                  effects_skipped={}, wells_uncorrected_single_plate_position=int((~corr).sum()))


def negcon_linear(profiles: Profiles, effects: Sequence[str] = DEFAULT_EFFECTS, seed: int = 0,
                  alpha: float = 1.0) -> Embedding:
    """Negative-control linear position model: ridge regression of the features on one-hot row,
    column (and batch, when present) levels fitted on negative controls; its prediction without the
    intercept is subtracted from every well, then PCA-50. Levels without any negative control get
    no correction (their coefficients are 0), counted in provenance."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import OneHotEncoder

    X = _check(profiles)
    neg = profiles.negative_mask
    if neg.sum() < 3:
        raise CpDistillerError("the negative-control position model needs 3+ negative-control wells.")
    wanted = [e for e in effects if e in ("batch", "plate", "row", "column")]
    use, skipped = resolve_effects(profiles, wanted)
    if not use:
        raise CpDistillerError(f"no technical effect to model (requested {list(effects)}).")
    L = np.column_stack([_labels(profiles, e) for e in use])
    enc = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(L[neg])
    D = enc.transform(L)
    model = Ridge(alpha=alpha).fit(D[neg], X[neg])
    tech = D @ model.coef_.T
    Xc = X - tech
    unseen = {e: int(len(set(L[:, i]) - set(L[neg, i]))) for i, e in enumerate(use)}
    return _embed(profiles, pca(Xc, seed=seed), "negcon_linear", "ncl_", effects_corrected=use,
                  effects_skipped=skipped, levels_without_controls=unseen, alpha=alpha)


BASELINES: dict[str, BaselineFn] = {
    "uncorrected": uncorrected,
    "harmony": harmony,
    "combat": combat,
    "sphering": sphering,
    "well_position": well_position,
    "negcon_linear": negcon_linear,
}


def run_baseline(name: str, profiles: Profiles, effects: Sequence[str] = DEFAULT_EFFECTS,
                 seed: int = 0) -> Embedding:
    """Run a registered reference method and record its wall-clock run time in ``provenance['runtime_s']``."""
    if name not in BASELINES:
        raise CpDistillerError(f"unknown reference method {name!r}; choose from {', '.join(BASELINES)}.")
    t0 = time.perf_counter()
    emb = BASELINES[name](profiles, tuple(effects), seed)
    emb.provenance["runtime_s"] = round(time.perf_counter() - t0, 3)
    emb.provenance.setdefault("effects_requested", list(effects))
    return emb
