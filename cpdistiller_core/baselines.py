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
* ``jump_chain``    the JUMP production chain: well position → ZCA-cor sphering on controls →
                    Harmony (batch, else plate) on PCA-50 (jump-profiling-recipe).
* ``scanorama``     Scanorama ``assemble`` over batch (else plate), as Arevalo et al. 2024, then PCA-50.
* ``scvi``          scvi-tools SCVI with a Gaussian likelihood over batch (else plate); CPU.

A method that cannot run on the data raises CpDistillerError with the reason; the benchmark keeps
it in its tables as "failed: <reason>".

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


def _sphere(X: np.ndarray, neg: np.ndarray, method: str = "ZCA", epsilon: float = 1e-6) -> tuple[np.ndarray, dict[str, Any]]:
    """pycytominer ``Spherize`` fitted on the negative controls, applied to every well."""
    from pycytominer.operations.transform import Spherize

    if neg.sum() < 3:
        raise CpDistillerError("sphering needs at least 3 negative-control wells (set the 'control' role).")
    ref = X[neg]
    keep = ref.std(axis=0) > 0
    if not keep.all():
        log.info("sphering: %d features constant among negative controls dropped", int((~keep).sum()))
    cols = [str(i) for i in range(int(keep.sum()))]
    sph = Spherize(method=method, epsilon=epsilon, center=True, return_numpy=True)
    try:
        sph.fit(pd.DataFrame(ref[:, keep], columns=cols))
    except ValueError as exc:
        raise CpDistillerError(f"sphering failed on the negative controls: {exc}") from exc
    Xs = np.asarray(sph.transform(pd.DataFrame(X[:, keep], columns=cols)), dtype=np.float64)
    return Xs, {"fitted_on_negative_controls": int(neg.sum()), "features_dropped_constant": int((~keep).sum()),
                "epsilon": epsilon, "sphering_method": method}


def _subtract_well_mean(profiles: Profiles, X: np.ndarray) -> tuple[np.ndarray, int]:
    """Each well position's mean over plates subtracted (positions on one plate only are left as they
    are); returns the matrix and the number of such uncorrected wells."""
    if len(pd.unique(profiles.plate)) < 2:
        raise CpDistillerError("well-position correction needs at least two plates.")
    pos = pd.Series(profiles.well)
    n_plates = pd.Series(profiles.plate).groupby(pos.to_numpy()).transform("nunique").to_numpy()
    means = pd.DataFrame(X).groupby(pos.to_numpy()).transform("mean").to_numpy()
    corr = n_plates > 1
    Xc = X.copy()
    Xc[corr] = X[corr] - means[corr]
    return Xc, int((~corr).sum())


def _integration_key(profiles: Profiles, effects: Sequence[str]) -> str:
    """The one label integration methods (Harmony in the JUMP chain, Scanorama, scVI) mix over:
    batch when the data have 2+ batches, else plate."""
    use, _ = resolve_effects(profiles, [e for e in ("batch", "plate") if e in (*effects, "plate")])
    if not use:
        raise CpDistillerError("no batch column with 2+ batches and a single plate: nothing to integrate.")
    return use[0]


def sphering(profiles: Profiles, effects: Sequence[str] = DEFAULT_EFFECTS, seed: int = 0,
             epsilon: float = 1e-6) -> Embedding:
    """ZCA sphering (pycytominer ``Spherize``) fitted on negative controls, applied to all wells, then PCA-50.

    Needs negative controls; ``effects`` are not used (sphering is label-free)."""
    Xs, info = _sphere(_check(profiles), profiles.negative_mask, "ZCA", epsilon)
    return _embed(profiles, pca(Xs, seed=seed), "sphering", "sph_", effects_corrected=[],
                  effects_skipped={}, **info)


def well_position(profiles: Profiles, effects: Sequence[str] = DEFAULT_EFFECTS, seed: int = 0) -> Embedding:
    """JUMP-style well-position correction: subtract each well position's mean over plates, then PCA-50.

    Needs at least two plates; positions present on one plate only are left uncorrected (their mean
    would be the well itself). With the same layout on every plate this also removes the
    perturbation signal — a known limitation of the method."""
    Xc, n_single = _subtract_well_mean(profiles, _check(profiles))
    return _embed(profiles, pca(Xc, seed=seed), "well_position", "wp_", effects_corrected=["well position"],
                  effects_skipped={}, wells_uncorrected_single_plate_position=n_single)


def jump_chain(profiles: Profiles, effects: Sequence[str] = DEFAULT_EFFECTS, seed: int = 0) -> Embedding:
    """The JUMP production chain (jump-profiling-recipe ``wellpos → … → sphering → harmony``) on the
    preprocessed profiles: well-position mean subtraction, ZCA-cor sphering fitted on the negative
    controls, then Harmony over the batch (else plate) label on PCA-50 of the sphered profiles,
    ``max_iter_harmony=20`` and one cluster per 30 wells (at most 300) as the recipe's 300 clusters.
    The recipe's cell-count regression needs cell counts and is not part of it here; its own
    variance/MAD/outlier/feature-selection steps are ``cpdistiller preprocess``."""
    from harmonypy import run_harmony

    X = _check(profiles)
    key = _integration_key(profiles, effects)
    Xc, n_single = _subtract_well_mean(profiles, X)
    Xs, info = _sphere(Xc, profiles.negative_mask, "ZCA-cor", 1e-6)
    Z = pca(Xs, seed=seed).astype(np.float64)
    meta = pd.DataFrame({"label": _labels(profiles, key)})
    nclust = int(min(300, max(2, profiles.n_wells // 30)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ho = run_harmony(Z, meta, ["label"], random_state=seed, verbose=False, max_iter_harmony=20,
                         nclust=nclust, ncores=1)
    Zc = np.asarray(ho.Z_corr)
    Z = Zc if Zc.shape[0] == len(meta) else Zc.T
    return _embed(profiles, Z, "jump_chain", "jump_", effects_corrected=["well position", key],
                  effects_skipped={}, wells_uncorrected_single_plate_position=n_single, harmony_key=key,
                  harmony_clusters=nclust, **info)


def scanorama(profiles: Profiles, effects: Sequence[str] = DEFAULT_EFFECTS, seed: int = 0) -> Embedding:
    """Scanorama (Hie et al. 2019; ``scanorama.assemble`` on the features, as Arevalo et al. ran it)
    over the batch (else plate) label, then PCA-50 of the corrected features."""
    try:
        import scanorama as scan
    except ImportError as exc:
        raise CpDistillerError(f"Scanorama is not installed ({exc}); pip install scanorama==1.7.4.") from exc
    X = _check(profiles)
    key = _integration_key(profiles, effects)
    labels = _labels(profiles, key)
    groups = [np.flatnonzero(labels == lab) for lab in pd.unique(labels)]
    if min(len(g) for g in groups) < 3:
        raise CpDistillerError(f"Scanorama needs 3+ wells in every {key}.")
    np.random.seed(seed)  # scanorama draws from numpy's global generator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = scan.assemble([X[g].copy() for g in groups], batch_size=5000, verbose=0)
    Xc = np.empty_like(X)
    for g, part in zip(groups, parts):
        Xc[g] = part
    Z = pca(Xc, seed=seed)
    return _embed(profiles, Z, "scanorama", "scanorama_", effects_corrected=[key], effects_skipped={})


def scvi(profiles: Profiles, effects: Sequence[str] = DEFAULT_EFFECTS, seed: int = 0,
         max_epochs: int = 100, n_latent: int = 30) -> Embedding:
    """scVI (scvi-tools ``SCVI``) with a Gaussian likelihood (``gene_likelihood="normal"``) over the
    batch (else plate) label: 2 layers, ``n_latent`` dimensions, ``max_epochs`` on CPU.

    scVI's decoder models means as library size × a softmax, so profiles are shifted to be
    non-negative first (as Arevalo et al. did) and fed without log transform."""
    try:
        import scvi as scvi_tools
    except ImportError as exc:
        raise CpDistillerError(f"scvi-tools is not installed ({exc}); pip install scvi-tools==1.4.2.") from exc
    import anndata as ad

    X = _check(profiles)
    key = _integration_key(profiles, effects)
    Xp = (X - X.min(axis=0)).astype(np.float32)
    obs = pd.DataFrame({"batch": pd.Categorical(_labels(profiles, key))}, index=[str(i) for i in range(len(X))])
    adata = ad.AnnData(X=Xp, obs=obs)
    scvi_tools.settings.seed = seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scvi_tools.model.SCVI.setup_anndata(adata, batch_key="batch")
        model = scvi_tools.model.SCVI(adata, n_layers=2, n_latent=n_latent, gene_likelihood="normal",
                                      log_variational=False)
        model.train(max_epochs=max_epochs, accelerator="cpu", devices=1, enable_progress_bar=False,
                    early_stopping=True)
        Z = model.get_latent_representation()
    if not np.isfinite(Z).all():
        raise CpDistillerError("scVI produced NaN/inf latent values.")
    return _embed(profiles, Z, "scvi", "scvi_", effects_corrected=[key], effects_skipped={},
                  max_epochs=max_epochs, n_latent=n_latent, likelihood="normal")


def negcon_linear(profiles: Profiles, effects: Sequence[str] = DEFAULT_EFFECTS, seed: int = 0,
                  alpha: float = 1.0) -> Embedding:
    """Negative-control linear position model: ridge regression of the features on one-hot row,
    column (and batch, when present) levels fitted on negative controls; its prediction without the
    intercept is subtracted from every well, then PCA-50. Levels without any negative control get
    no correction (their coefficients are 0), counted in provenance."""
    from .preprocess import negcon_technical_effects

    X = _check(profiles)
    neg = profiles.negative_mask
    if neg.sum() < 3:
        raise CpDistillerError("the negative-control position model needs 3+ negative-control wells.")
    wanted = [e for e in effects if e in ("batch", "plate", "row", "column")]
    use, skipped = resolve_effects(profiles, wanted)
    if not use:
        raise CpDistillerError(f"no technical effect to model (requested {list(effects)}).")
    tech, unseen = negcon_technical_effects(X, {e: _labels(profiles, e) for e in use}, neg, alpha)
    Xc = X - tech
    return _embed(profiles, pca(Xc, seed=seed), "negcon_linear", "ncl_", effects_corrected=use,
                  effects_skipped=skipped, levels_without_controls=unseen, alpha=alpha)


BASELINES: dict[str, BaselineFn] = {
    "uncorrected": uncorrected,
    "harmony": harmony,
    "combat": combat,
    "sphering": sphering,
    "well_position": well_position,
    "negcon_linear": negcon_linear,
    "jump_chain": jump_chain,
    "scanorama": scanorama,
    "scvi": scvi,
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
