"""Reference methods: each runs on a small simulated screen and on a real data set, and each removes
the position effect it is designed for."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core import baselines as B
from cpdistiller_core import metrics as M
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.profiles import Profiles, Roles


def make_screen(n_plates: int = 4, n_perts: int = 20, dim: int = 60, row_effect: float = 1.5,
                col_effect: float = 1.0, batch_effect: float = 1.0, seed: int = 0, shuffle: bool = True) -> Profiles:
    """96-well plates, negative controls in columns 1 and 12, perturbations shuffled per plate
    (``shuffle=False``: the same layout on every plate); additive row, column and batch shifts."""
    rng = np.random.default_rng(seed)
    rows = []
    base = [f"cmp{i % n_perts}" for i in range(80)]
    for p in range(n_plates):
        perts = list(base)
        if shuffle:
            rng.shuffle(perts)
        it = iter(perts)
        for r in range(8):
            for c in range(12):
                ctrl = c in (0, 11)
                rows.append({"Plate": f"P{p}", "Well": f"{chr(65 + r)}{c + 1:02d}", "Batch": f"B{p % 2}",
                             "Pert": "DMSO" if ctrl else next(it), "Type": "neg" if ctrl else "trt"})
    meta = pd.DataFrame(rows)
    cent = {f"cmp{i}": rng.normal(size=dim) * 2 for i in range(n_perts)}
    cent["DMSO"] = np.zeros(dim)
    X = np.stack([cent[p] for p in meta["Pert"]]) + rng.normal(size=(len(meta), dim)) * 0.5
    r = meta["Well"].str[0].map(ord).to_numpy() - 65
    c = meta["Well"].str[1:].astype(int).to_numpy() - 1
    X += np.outer(r - 3.5, rng.normal(size=dim)) * row_effect / 3.5
    X += np.outer(np.abs(c - 5.5), rng.normal(size=dim)) * col_effect / 5.5
    X += np.outer((meta["Batch"] == "B1").to_numpy(), rng.normal(size=dim)) * batch_effect
    roles = Roles(plate="Plate", well="Well", batch="Batch", perturbation="Pert", control="Type",
                  negative_values=("neg",))
    return Profiles(meta=meta, X=X, features=[f"f{i}" for i in range(dim)], roles=roles)


@pytest.fixture(scope="module")
def screen() -> Profiles:
    return make_screen()


@pytest.fixture(scope="module")
def uncorrected_row_score(screen) -> float:
    return M.variance_explained_score(B.run_baseline("uncorrected", screen), "row")[0]


# scVI trains a network (tested on its own below with few epochs); Scanorama and scVI integrate over
# batch (else plate) only, so they are not expected to remove a row gradient.
FAST = [n for n in B.BASELINES if n != "scvi"]
POSITION_METHODS = [n for n in FAST if n not in ("uncorrected", "scanorama")]


@pytest.mark.parametrize("name", FAST)
def test_each_method_runs_on_simulated_screen(screen, name):
    emb = B.run_baseline(name, screen, seed=0)
    assert emb.method == name
    assert emb.X.shape == (screen.n_wells, min(50, screen.n_features))
    assert np.isfinite(emb.X).all()
    assert emb.provenance["runtime_s"] >= 0
    assert (emb.meta.index == screen.meta.index).all()
    again = B.run_baseline(name, screen, seed=0)
    np.testing.assert_allclose(emb.X, again.X, atol=1e-4)  # seeded: reproducible


@pytest.mark.parametrize("name", POSITION_METHODS)
def test_each_correction_reduces_the_row_effect(screen, uncorrected_row_score, name):
    emb = B.run_baseline(name, screen, effects=("row",))
    score = M.variance_explained_score(emb, "row")[0]
    # 1 - adjusted R^2 of row among negative controls: higher = less row signal left. (Harmony run
    # sequentially batch -> row -> column leaves most of this gradient in place: see docs/metrics.md.)
    assert score > uncorrected_row_score + 0.1, (name, score, uncorrected_row_score)


def test_uncorrected_is_pca_of_features(screen):
    from sklearn.decomposition import PCA

    emb = B.uncorrected(screen)
    ref = PCA(n_components=50, random_state=0).fit_transform(screen.X.astype(np.float64))
    np.testing.assert_allclose(np.abs(emb.X), np.abs(ref), atol=1e-3)


def test_sequential_effects_and_skips_are_recorded(screen):
    emb = B.harmony(screen)
    assert emb.provenance["effects_corrected"] == ["batch", "row", "column"]
    no_batch = screen.replace(roles=Roles(plate="Plate", well="Well", perturbation="Pert", control="Type",
                                          negative_values=("neg",)))
    emb = B.combat(no_batch)
    assert emb.provenance["effects_corrected"] == ["row", "column"]
    assert "batch" in emb.provenance["effects_skipped"]


def test_negcon_linear_removes_additive_row_effect_exactly():
    p = make_screen(row_effect=5.0, col_effect=0.0, batch_effect=0.0, seed=3)
    clean = make_screen(row_effect=0.0, col_effect=0.0, batch_effect=0.0, seed=3)
    emb = B.negcon_linear(p, effects=("row",), alpha=1e-6)
    ref = B.uncorrected(clean)
    # the corrected features equal the clean ones up to the control means per row (noise only)
    gap = np.abs(np.abs(emb.X[:, :5]) - np.abs(ref.X[:, :5])).mean()
    assert gap < 0.5
    assert M.variance_explained_score(emb, "row")[0] > 0.9


def test_well_position_needs_two_plates_and_flags_same_layout():
    one = make_screen(n_plates=1)
    with pytest.raises(CpDistillerError, match="two plates"):
        B.well_position(one)
    same = make_screen(shuffle=False, row_effect=0.0, col_effect=0.0, batch_effect=0.0)
    emb = B.well_position(same)
    # same layout on every plate: subtracting the per-position mean removes the biology too
    assert M.phenotypic_activity(emb, null_size=200)["mean_average_precision"].mean() < 0.5


def test_sphering_whitens_negative_controls(screen):
    from pycytominer.operations.transform import Spherize

    emb = B.sphering(screen, epsilon=1e-6)
    assert emb.provenance["fitted_on_negative_controls"] == int(screen.negative_mask.sum())
    neg = screen.X[screen.negative_mask].astype(np.float64)
    sph = Spherize(method="ZCA", epsilon=1e-6, return_numpy=True).fit(pd.DataFrame(neg))
    W = np.asarray(sph.transform(pd.DataFrame(neg)))
    cov = np.cov(W, rowvar=False)
    # rank-deficient (64 controls < 60 features + noise): the whitened covariance is ~ identity on its support
    eig = np.linalg.eigvalsh(cov)
    assert np.allclose(eig[eig > 0.5], 1.0, atol=0.05)
    with pytest.raises(CpDistillerError, match="negative-control"):
        B.sphering(screen.replace(roles=Roles(plate="Plate", well="Well", perturbation="Pert")))


def test_unknown_method_and_effect(screen):
    with pytest.raises(CpDistillerError, match="unknown reference method"):
        B.run_baseline("magic", screen)
    with pytest.raises(CpDistillerError, match="unknown technical effect"):
        B.harmony(screen, effects=("colour",))


def test_nan_features_are_refused(screen):
    X = screen.X.copy()
    X[0, 0] = np.nan
    with pytest.raises(CpDistillerError, match="NaN"):
        B.uncorrected(screen.with_features(X, screen.features))


# ------------------------------------------------------------------ a real data set
@pytest.fixture(scope="module")
def cmqtl(shared_data) -> Profiles:
    from cpdistiller_core.io import read_profiles

    files = sorted((shared_data / "cmqtl_crispri").glob("*.csv.gz"))
    with pytest.warns(Warning):
        return read_profiles(files, {"perturbation": "Metadata_sample_id", "control": "Metadata_target_gene",
                                     "negative_values": ["CONTROL"], "annotation": "Metadata_target_gene"},
                             batch_from_file=True)


@pytest.mark.parametrize("name", [n for n in FAST if n != "jump_chain"])
def test_each_method_runs_on_cmqtl(cmqtl, name):
    emb = B.run_baseline(name, cmqtl, effects=("batch", "row", "column"))
    assert emb.X.shape == (768, 50)
    assert np.isfinite(emb.X).all()
    if name in ("harmony", "combat", "negcon_linear"):
        assert emb.provenance["effects_corrected"] == ["batch", "row", "column"]


def test_integration_methods_mix_batches(screen):
    """JUMP chain and Scanorama integrate over the batch label: treatments mix better across batches
    (iLISI of the protocol: uncorrected ≈ 0.80, jump_chain ≈ 0.96, scanorama ≈ 0.93 on this screen)."""
    before = M.ilisi_score(B.run_baseline("uncorrected", screen), "batch")[0]
    for name in ("jump_chain", "scanorama"):
        emb = B.run_baseline(name, screen)
        assert emb.provenance["effects_corrected"][-1] == "batch"
        assert M.ilisi_score(emb, "batch")[0] > before + 0.1, name
    jc = B.run_baseline("jump_chain", screen).provenance
    assert jc["sphering_method"] == "ZCA-cor" and jc["harmony_key"] == "batch"


def test_integration_key_falls_back_to_plate_and_fails_with_reason(screen):
    no_batch = screen.replace(roles=Roles(plate="Plate", well="Well", perturbation="Pert", control="Type",
                                          negative_values=("neg",)))
    assert B.run_baseline("scanorama", no_batch).provenance["effects_corrected"] == ["plate"]
    one_plate = no_batch.subset(no_batch.plate == "P0")
    with pytest.raises(CpDistillerError, match="nothing to integrate"):
        B.run_baseline("scanorama", one_plate)


def test_scvi_gaussian_latent(screen):
    pytest.importorskip("scvi")
    emb = B.scvi(screen, seed=0, max_epochs=3, n_latent=8)
    assert emb.X.shape == (screen.n_wells, 8) and np.isfinite(emb.X).all()
    assert emb.provenance["likelihood"] == "normal" and emb.provenance["effects_corrected"] == ["batch"]


def test_jump_chain_reports_why_it_cannot_run_on_one_repeated_layout(cmqtl):
    """cmqtl: the same layout on two plates; subtracting each position's mean leaves the controls
    rank-deficient (x1 − m = −(x2 − m)), so sphering cannot be fitted: a clear error, not a fake result."""
    with pytest.raises(CpDistillerError, match="sphering failed on the negative controls"):
        B.run_baseline("jump_chain", cmqtl)
