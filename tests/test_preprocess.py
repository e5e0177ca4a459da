"""Preprocessing: pycytominer agreement on real plates, dropped features/wells with reasons, apply()."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from pycytominer import normalize
from pycytominer.operations import correlation_threshold as pcm_correlation_threshold
from pycytominer.operations import frequency_threshold as pcm_frequency_threshold
from pycytominer.operations import variance_threshold as pcm_variance_threshold

from cpdistiller_core.errors import CpDistillerError, CpDistillerWarning
from cpdistiller_core.io import read_profiles
from cpdistiller_core.preprocess import (
    PreprocessConfig,
    PreprocessReport,
    clip_outliers,
    correlation_threshold,
    frequency_threshold,
    mad_normalize,
    mad_normalize_array,
    preprocess,
    select_features,
    variance_threshold,
    zscore,
)
from cpdistiller_core.profiles import Profiles, Roles

ROLES = Roles(plate="Metadata_Plate", well="Metadata_Well", control="Metadata_pert_type",
              negative_values=("negcon",), perturbation="Metadata_pert_iname")


def _toy(n_plates: int = 3, p: int = 12, seed: int = 0) -> Profiles:
    """Small 96-well plates: 16 negative controls per plate, plate-specific offsets and scales."""
    rng = np.random.default_rng(seed)
    wells = [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)]
    metas, xs = [], []
    for k in range(n_plates):
        ctrl = np.array(["trt"] * 96, dtype=object)
        ctrl[rng.choice(96, 16, replace=False)] = "negcon"
        metas.append(pd.DataFrame({
            "Metadata_Plate": f"P{k}", "Metadata_Well": wells, "Metadata_pert_type": ctrl,
            "Metadata_pert_iname": [f"cpd{i % 20}" for i in range(96)], "Metadata_note": "free text, kept",
        }))
        xs.append(rng.normal(10 * k, 1 + k, size=(96, p)) * rng.uniform(1, 5, p))
    meta = pd.concat(metas, ignore_index=True)
    return Profiles(meta, np.vstack(xs), [f"Cells_F{i}" for i in range(p)], ROLES)


# ----- MAD normalisation -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def varchamp(shared_data):
    files = sorted((shared_data / "varchamp_b14").glob("*_augmented.csv.gz"))
    assert len(files) == 4
    df = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    feats = [c for c in df.columns if c.split("_")[0] in ("Cells", "Nuclei", "Cytoplasm", "Image")
             and pd.api.types.is_numeric_dtype(df[c])]
    meta_cols = [c for c in df.columns if c not in set(feats)]
    roles = Roles(plate="Metadata_Plate", well="Metadata_Well", control="Metadata_node_type",
                  negative_values=("NC",), perturbation="Metadata_gene_allele")
    prof = Profiles(df[meta_cols], df[feats].to_numpy(), feats, roles, source="varchamp_b14")
    return df, feats, meta_cols, prof


def _pycytominer_per_plate(df: pd.DataFrame, feats: list[str], meta_cols: list[str]) -> np.ndarray:
    """pycytominer.normalize per plate. Features go in blocks of 200: the result is the same (the
    MAD is per feature), and pandas' query on a 4,000-column frame costs ~10 s per call."""
    out = np.empty((len(df), len(feats)))
    for _, part in df.groupby("Metadata_Plate", sort=False):
        rows = part.index.to_numpy()
        for j in range(0, len(feats), 200):
            block = feats[j:j + 200]
            norm = normalize(part[meta_cols + block], features=block, meta_features=meta_cols,
                             method="mad_robustize", samples="Metadata_node_type == 'NC'")
            out[rows, j:j + 200] = norm[block].to_numpy()
    return out


def test_mad_normalisation_matches_pycytominer_on_varchamp(varchamp, shared_data):
    df, feats, meta_cols, prof = varchamp
    assert df[feats].isna().to_numpy().any()  # the raw plates hold missing Neighbors values
    # (a) the float64 arithmetic on the raw CSV values: pycytominer's result to the last few bits
    ref = _pycytominer_per_plate(df, feats, meta_cols)
    ours64, zero_mad = mad_normalize_array(df[feats].to_numpy(), df["Metadata_Plate"].to_numpy(),
                                           (df["Metadata_node_type"] == "NC").to_numpy())
    np.testing.assert_allclose(ours64, ref, rtol=1e-9, atol=1e-12, equal_nan=True)
    assert np.array_equal(np.isnan(ours64), np.isnan(ref))
    assert len(zero_mad) == 4 and any(m.any() for m in zero_mad.values())  # constant image-area features
    # (b) end to end: the files read by our reader at float64 (as `cpdistiller preprocess` does), then
    # mad_normalize, agree with pycytominer on the raw CSV values for every feature.
    files = sorted((shared_data / "varchamp_b14").glob("*_augmented.csv.gz"))
    loaded = read_profiles(files, dtype=np.float64)
    assert loaded.X.dtype == np.float64
    with warnings.catch_warnings():
        warnings.simplefilter("error", CpDistillerWarning)  # negative controls everywhere: no warning
        ours = mad_normalize(loaded)
    assert ours.X.dtype == np.float32
    pos = {f: i for i, f in enumerate(ours.features)}
    idx = [pos[f] for f in feats]
    # float32 storage of the normalised values: relative 1e-6, absolute 1e-6 near zero
    np.testing.assert_allclose(ours.X[:, idx], ref, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert list(ours.meta.columns)[:len(meta_cols)] == meta_cols


def test_feature_selection_rules_match_pycytominer_on_varchamp(varchamp):
    df, feats, _, prof = varchamp
    complete = np.isfinite(prof.X).all(axis=1)
    raw = prof.X[complete]
    # variance on raw values, where small-valued features fall under the cut
    ours = sorted(variance_threshold(raw, feats, min_variance=1e-4))
    theirs = sorted(pcm_variance_threshold(pd.DataFrame(raw, columns=feats), features=feats, min_variance=1e-4))
    assert ours == theirs and 0 < len(ours) < len(feats)
    # frequency on raw values with cuts that split the integer-valued features from the rest
    ours = sorted(frequency_threshold(raw, feats, freq_cut=0.2, unique_cut=0.5))
    theirs = sorted(pcm_frequency_threshold(pd.DataFrame(raw, columns=feats), features=feats,
                                            freq_cut=0.2, unique_cut=0.5))
    assert ours == theirs and 0 < len(ours) < len(feats)
    # correlation on normalised values (a fixed subset keeps pycytominer's pair table small)
    norm = mad_normalize(prof).X[complete]
    finite_cols = np.isfinite(norm).all(axis=0) & (np.abs(norm) < 1e6).all(axis=0) & (norm.std(axis=0) > 0)
    cols = np.flatnonzero(finite_cols)[::4]
    sub, names = norm[:, cols], [feats[i] for i in cols]
    ours = sorted(correlation_threshold(sub, names, 0.9))
    theirs = sorted(pcm_correlation_threshold(pd.DataFrame(sub.astype(np.float64), columns=names),
                                              features=names, threshold=0.9))
    assert ours == theirs and 0 < len(ours) < len(names)


def test_preprocess_varchamp_reports_every_drop(varchamp):
    _, feats, meta_cols, prof = varchamp
    with pytest.warns(CpDistillerWarning, match="missing values"):
        out, rep = preprocess(prof)
    assert list(out.meta.columns) == meta_cols
    assert set(rep.kept_features) | {d["feature"] for d in rep.dropped_features} == set(feats)
    assert not set(rep.kept_features) & {d["feature"] for d in rep.dropped_features}
    steps = {d["step"] for d in rep.dropped_features}
    assert {"normalize", "correlation_threshold", "blocklist"} <= steps
    # the 17 NaNs sit in Neighbors features; wells are dropped only for NaN in a kept feature
    assert rep.n_wells_out == out.n_wells == prof.n_wells - len(rep.dropped_rows)
    for r in rep.dropped_rows:
        assert r["reason"].startswith("missing value") and r["plate"].startswith("2025_01_28")
        assert np.isnan(prof.subset(features=rep.kept_features).X[r["position"]]).any()
    assert np.isfinite(out.X).all()
    np.testing.assert_allclose(out.X.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(out.X.std(axis=0), 1, atol=1e-3)


# ----- errors and warnings -----------------------------------------------------------------------------
def test_plate_without_negative_controls_is_named():
    prof = _toy()
    meta = prof.meta.copy()
    meta.loc[meta["Metadata_Plate"] == "P1", "Metadata_pert_type"] = "trt"
    bad = prof.replace(meta=meta)
    with pytest.raises(CpDistillerError, match=r"'P1'.*normalize_samples=\"all\""):
        preprocess(bad)
    with pytest.raises(CpDistillerError, match="'P1'"):
        mad_normalize(bad)
    with pytest.warns(CpDistillerWarning, match="all wells"):
        out, rep = preprocess(bad, PreprocessConfig(normalize_samples="all"))
    assert any("all wells" in w for w in rep.warnings)


def test_no_control_role_normalises_against_all_wells_and_bad_settings_raise():
    prof = _toy()
    no_ctrl = prof.replace(roles=Roles(plate="Metadata_Plate", well="Metadata_Well"))
    with pytest.warns(CpDistillerWarning, match="no negative controls.*all wells of each plate"):
        out, rep = preprocess(no_ctrl)
    assert rep.config.normalize_samples == "all"  # recorded, so apply() repeats it on new plates
    with pytest.warns(CpDistillerWarning, match="all wells"):
        ref, _ = preprocess(no_ctrl, PreprocessConfig(normalize_samples="all"))
    assert np.array_equal(out.X, ref.X) and out.features == ref.features
    with pytest.warns(CpDistillerWarning, match="no negative controls"):
        assert np.array_equal(mad_normalize(no_ctrl).X, mad_normalize(no_ctrl, samples="all").X)
    with pytest.raises(CpDistillerError, match="unknown feature-selection"):
        PreprocessConfig(operations=("variance_threshold", "magic"))
    with pytest.raises(CpDistillerError, match="corr_threshold"):
        PreprocessConfig(corr_threshold=1.5)
    with pytest.raises(CpDistillerError, match="cannot evaluate"):
        mad_normalize(prof, samples="Metadata_nope == 3")


def test_query_samples_equal_negcon():
    prof = _toy()
    a = mad_normalize(prof).X
    b = mad_normalize(prof, samples="Metadata_pert_type == 'negcon'").X
    assert np.array_equal(a, b)


# ----- dropped features and wells ----------------------------------------------------------------------
def _with_problems() -> Profiles:
    prof = _toy(p=12)
    X = prof.X.copy()
    X[:, 0] = np.nan                         # all NaN
    X[:, 1] = 7.0                            # constant
    X[::3, 2] = np.nan                       # NaN-heavy (33 %)
    X[:, 3] = X[:, 4] * 2 + 1e-4 * X[:, 5]   # a near copy of feature 4
    X[:, 6] = -X[:, 7]                       # anticorrelated: pycytominer keeps both
    X[5, 8] = np.nan                         # one missing value in a kept feature
    X[9, 9] = np.inf                         # one infinite value
    return prof.with_features(X, prof.features)


def test_every_dropped_feature_and_well_has_a_reason():
    prof = _with_problems()
    with pytest.warns(CpDistillerWarning):
        out, rep = preprocess(prof, PreprocessConfig(drop_zero_mad=False))
    reasons = {d["feature"]: (d["step"], d["reason"]) for d in rep.dropped_features}
    assert reasons["Cells_F0"][0] == "drop_na_columns" and "100.0%" in reasons["Cells_F0"][1]
    assert reasons["Cells_F1"][0] in ("variance_threshold", "frequency_threshold")
    assert reasons["Cells_F2"][0] == "drop_na_columns"
    assert [reasons.get(f, ("",))[0] for f in ("Cells_F3", "Cells_F4")].count("correlation_threshold") == 1
    assert "Cells_F6" in out.features and "Cells_F7" in out.features
    assert [r["position"] for r in rep.dropped_rows] == [5, 9]
    assert rep.dropped_rows[0]["plate"] == "P0" and rep.dropped_rows[0]["well"] == prof.well[5]
    assert any("infinite" in w for w in rep.warnings)
    # every metadata column and every other row survives
    assert list(out.meta.columns) == list(prof.meta.columns)
    assert list(out.meta.index) == [i for i in prof.meta.index if i not in (5, 9)]
    table = rep.features_table()
    assert len(table) == prof.n_features and table["kept"].sum() == out.n_features


def test_zero_mad_features_are_dropped_with_the_plate():
    prof = _toy()
    X = prof.X.copy()
    neg = prof.negative_mask & (prof.plate == "P2")
    X[neg, 3] = 1.5  # constant among P2's controls only
    out, rep = preprocess(prof.with_features(X, prof.features))
    (d,) = [d for d in rep.dropped_features if d["feature"] == "Cells_F3"]
    assert d["step"] == "normalize" and "'P2'" in d["reason"]


def test_nan_rows_zero_keeps_wells():
    prof = _with_problems()
    with pytest.warns(CpDistillerWarning, match="set to 0"):
        out, rep = preprocess(prof, PreprocessConfig(nan_rows="zero"))
    assert out.n_wells == prof.n_wells and rep.dropped_rows == [] and rep.n_imputed_values == 2
    assert np.isfinite(out.X).all()


# ----- steps, report and apply -------------------------------------------------------------------------
def test_clip_and_zscore():
    prof = _toy()
    X = prof.X.copy()
    X[0, 0] = 1e6
    clipped = clip_outliers(prof.with_features(X, prof.features), 30.0)
    assert clipped.X.max() == 30.0 and clipped.X[1:, 0].tolist() == np.clip(X[1:, 0], -30, 30).tolist()
    z, mean, std = zscore(prof)
    np.testing.assert_allclose(z.X.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.X.std(axis=0), 1, atol=1e-5)
    np.testing.assert_allclose(mean, prof.X.astype(np.float64).mean(axis=0), rtol=1e-12)
    again, _, _ = zscore(prof, mean, std)
    assert np.array_equal(again.X, z.X)


def test_report_roundtrip_and_apply(tmp_path):
    prof = _with_problems()
    with pytest.warns(CpDistillerWarning):
        out, rep = preprocess(prof)
    rep.save(tmp_path / "report.json")
    loaded = PreprocessReport.load(tmp_path / "report.json")
    assert loaded.to_dict() == json.loads(rep.to_json())
    assert loaded.config == rep.config
    assert len(loaded.zscore_table()) == len(rep.kept_features)
    assert loaded.dropped_rows_table()["position"].tolist() == [5, 9]
    # the same data through apply(): identical output
    with pytest.warns(CpDistillerWarning):
        again = loaded.apply(prof)
    assert again.features == out.features and np.array_equal(again.X, out.X)
    assert list(again.meta.index) == list(out.meta.index)
    # a new plate: normalised on its own controls, stored z-score parameters
    new = _toy(n_plates=4, seed=5).subset(rows=np.arange(3 * 96, 4 * 96))
    applied = loaded.apply(new)
    assert applied.features == rep.kept_features and applied.n_wells == 96
    manual = mad_normalize(new.subset(features=rep.kept_features)).X.clip(-30, 30)
    expected = (manual - np.asarray(rep.zscore_mean, np.float32)) / np.asarray(rep.zscore_std, np.float32)
    np.testing.assert_allclose(applied.X, expected, rtol=1e-5, atol=1e-5)
    # missing features are refused by name
    with pytest.raises(CpDistillerError, match="Cells_F4|Cells_F5"):
        loaded.apply(new.subset(features=["Cells_F0", "Cells_F1"]))


def test_select_features_refuses_missing_values_for_complete_data_operations():
    prof = _with_problems()
    with pytest.raises(CpDistillerError, match="complete data"):
        select_features(prof, ["correlation_threshold"])


def test_correlation_and_frequency_rules_match_pycytominer_synthetic():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(500, 30))
    X = np.hstack([base, base[:, :10] + 0.2 * rng.normal(size=(500, 10)), -base[:, 10:15],
                   rng.integers(0, 3, size=(500, 5)).astype(float)]).astype(np.float32)
    names = [f"Cells_X{i}" for i in range(X.shape[1])]
    df = pd.DataFrame(X.astype(np.float64), columns=names)
    ours = sorted(correlation_threshold(X, names, 0.9))
    assert ours == sorted(pcm_correlation_threshold(df, features=names, threshold=0.9))
    assert len(ours) == 10  # one of each near copy; the anticorrelated copies stay
    ours = sorted(frequency_threshold(X, names, freq_cut=0.05, unique_cut=0.01))
    assert ours == sorted(pcm_frequency_threshold(df, features=names, freq_cut=0.05, unique_cut=0.01))
    assert ours == names[-5:]


def test_frequency_rule_matches_pycytominer_on_random_discrete_data():
    rng = np.random.default_rng(1)
    for trial in range(30):
        n, p = int(rng.integers(1, 60)), int(rng.integers(1, 20))
        X = rng.integers(0, int(rng.integers(1, 6)), size=(n, p)).astype(np.float32)
        if trial % 3 == 0:
            X[:, : p // 2] = rng.normal(size=(n, p // 2))
        names = [f"Cells_{i}" for i in range(p)]
        fc, uc = rng.uniform(0, 1), rng.uniform(0, 1)
        ours = sorted(frequency_threshold(X, names, fc, uc))
        theirs = pcm_frequency_threshold(pd.DataFrame(X.astype(np.float64), columns=names), features=names,
                                         freq_cut=fc, unique_cut=uc)
        assert ours == sorted(theirs), trial


def test_selection_rules_leave_their_input_untouched():
    rng = np.random.default_rng(4)
    base = rng.normal(size=(200, 8)).astype(np.float32)
    for X in (base, base[:, np.ones(8, bool)], np.asfortranarray(base)):  # C, gathered and F layouts
        before = X.copy()
        frequency_threshold(X, list("abcdefgh"))
        variance_threshold(X, list("abcdefgh"))
        correlation_threshold(X, list("abcdefgh"))
        assert np.array_equal(X, before)


def test_clipping_unnormalised_data_warns():
    prof = _toy()  # raw values around 0-50 with scales up to 5x
    with pytest.warns(CpDistillerWarning, match="are the profiles normalised"):
        preprocess(prof, PreprocessConfig(normalize=None, clip=1.0))


# ----- the pipeline composes the public steps -------------------------------------------------------------
def test_pipeline_equals_the_public_steps_composed():
    prof = _toy()
    X = prof.X.astype(np.float32)
    X[3, 2] = 1e4  # something to clip
    prof = prof.with_features(X, prof.features)
    out, rep = preprocess(prof, PreprocessConfig(operations=(), clip=5.0))
    normed = mad_normalize(prof)
    clipped, n_clipped = clip_outliers(normed, 5.0, return_count=True)
    z, mean, std = zscore(clipped)
    assert np.array_equal(out.X, z.X) and out.features == z.features
    assert rep.n_clipped_values == n_clipped == int((np.abs(normed.X) > 5.0).sum()) > 0
    assert rep.zscore_mean == mean.tolist() and rep.zscore_std == std.tolist()


def test_step_options_copy_and_stats():
    prof = _toy()
    prof = prof.with_features(prof.X.astype(np.float32), prof.features)
    X = prof.X.copy()
    clipped, n = clip_outliers(prof, 2.0, copy=False, return_count=True)
    assert clipped.X is prof.X and np.array_equal(prof.X, np.clip(X, -2.0, 2.0))
    assert n == int((np.abs(X) > 2.0).sum())
    fresh = prof.with_features(prof.X.copy(), prof.features)
    copied, m1, s1 = zscore(prof)
    inplace, m2, s2 = zscore(fresh, copy=False)
    assert inplace.X is fresh.X and np.array_equal(inplace.X, copied.X)
    assert np.array_equal(m1, m2) and np.array_equal(s1, s2)


def test_mad_normalize_stats_and_warning_sink():
    prof = _toy(p=4)
    X = prof.X.copy()
    on_p1 = prof.meta["Metadata_Plate"].to_numpy() == "P1"
    X[on_p1 & prof.negative_mask, 1] = 7.0  # MAD 0 among P1's controls
    prof = prof.with_features(X, prof.features)
    out, stats = mad_normalize(prof, return_stats=True)
    assert stats.samples == "negcon" and stats.zero_mad["P1"].tolist() == [False, True, False, False]
    assert not stats.zero_mad["P0"].any() and np.array_equal(out.X, mad_normalize(prof).X)
    heard: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", CpDistillerWarning)
        no_ctrl = prof.replace(roles=Roles(plate="Metadata_Plate", well="Metadata_Well"))
        _, stats = mad_normalize(no_ctrl, warn=heard.append, return_stats=True)
    assert stats.samples == "all" and len(heard) == 1 and "no negative controls" in heard[0]


def test_already_normalised_profiles_are_recognised_and_raw_ones_are_not():
    from cpdistiller_core.datasets import demo_profiles
    from cpdistiller_core.preprocess import looks_normalized

    raw = demo_profiles()
    assert looks_normalized(raw) is None  # CellProfiler scales: far from 0, spreads over orders of magnitude
    normalised, _ = preprocess(raw, PreprocessConfig())
    sentence = looks_normalized(normalised)
    assert sentence is not None and "preprocessing off" in sentence
    shifted = normalised.replace(X=normalised.X + 50.0)  # same spreads, no longer centred
    assert looks_normalized(shifted) is None


def test_a_restricted_negcon_model_removes_one_effect_estimated_alongside_the_others():
    """The controls of each row sit in a few columns only (one plate map): a row model fitted alone takes
    up those columns' effects; fitted with the columns and restricted to the row, it does not."""
    from cpdistiller_core.preprocess import fit_negcon_technical

    rng = np.random.default_rng(1)
    n_rows, n_cols, d = 8, 12, 4
    row, col = np.divmod(np.arange(n_rows * n_cols), n_cols)
    row, col = np.tile(row, 6), np.tile(col, 6)       # six plates of one map
    row_shift, col_shift = rng.normal(0, 2, (n_rows, d)), rng.normal(0, 2, (n_cols, d))
    neg = np.zeros(len(row), dtype=bool)
    neg[(col == 0) | (col == row + 1)] = True   # controls in column 1 and in one more column per row
    X = row_shift[row] + col_shift[col] + rng.normal(0, 0.05, (len(row), d))
    labels = {"row": row.astype(str), "column": col.astype(str)}
    joint = fit_negcon_technical(X, labels, neg, alpha=1e-6)
    only_row = joint.restrict(["row"])
    assert list(only_row.levels) == ["row"] and only_row.levels_without_controls == {"row": 0}
    full = joint.restrict(["row", "column"])
    np.testing.assert_array_equal(full.effects(), joint.effects())
    # the restricted model removes the row effect (up to a constant), not the columns'
    left = X - only_row.effects()
    by_row = np.array([left[row == r].mean(axis=0) for r in range(n_rows)])
    assert np.abs(by_row - by_row.mean(axis=0)).max() < 0.1
    alone = fit_negcon_technical(X, {"row": labels["row"]}, neg, alpha=1e-6)
    left = X - alone.effects()
    by_row = np.array([left[row == r].mean(axis=0) for r in range(n_rows)])
    assert np.abs(by_row - by_row.mean(axis=0)).max() > 0.5   # fitted alone it also moved column effects


def test_negcon_technical_effects_recovers_additive_effects_from_the_controls():
    from cpdistiller_core.preprocess import negcon_technical_effects

    rng = np.random.default_rng(0)
    n, d = 600, 5
    row = rng.integers(0, 4, n)
    batch = rng.integers(0, 2, n)
    row_shift, batch_shift = rng.normal(0, 3, (4, d)), rng.normal(0, 3, (2, d))
    neg = rng.random(n) < 0.3
    neg[row == 3] = False                      # row D has no control: it must be left alone
    biology = np.where(neg[:, None], 0.0, rng.normal(0, 2, (n, d)))
    X = biology + row_shift[row] + batch_shift[batch] + rng.normal(0, 0.05, (n, d))
    labels = {"row": np.array(list("ABCD"))[row], "batch": batch.astype(str)}
    tech, unseen = negcon_technical_effects(X, labels, neg, alpha=1e-6)
    assert unseen == {"row": 1, "batch": 0}
    corrected = X - tech
    seen = row != 3
    # up to one constant per feature, the controls' rows and batches line up again
    residual = corrected[seen] - biology[seen]
    assert np.abs(residual - residual.mean(axis=0)).max() < 0.3
    # row D (no control) gets only its batch's effect: one value per batch, differing by the batch shift
    for b in (0, 1):
        in_b = tech[(row == 3) & (batch == b)]
        assert np.ptp(in_b, axis=0).max() < 1e-9
    d_batch = tech[(row == 3) & (batch == 1)][0] - tech[(row == 3) & (batch == 0)][0]
    assert np.allclose(d_batch, batch_shift[1] - batch_shift[0], atol=0.1)
    with pytest.raises(CpDistillerError, match="3\\+ negative-control"):
        negcon_technical_effects(X, labels, np.zeros(n, dtype=bool))
