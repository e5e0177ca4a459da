"""CpDistiller: fit / transform / save / load, new plates, warm start, checkpoints, image features, errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from engine_screens import small_screen

from cpdistiller_core.api import MODEL_FILE, WEIGHTS_FILE, CpDistiller, InputTransform, ZCAWhitening
from cpdistiller_core.config import CpDistillerConfig, parse_effects
from cpdistiller_core.errors import CpDistillerError, CpDistillerWarning
from cpdistiller_core.profiles import Embedding, Profiles

TINY = CpDistillerConfig(epochs=2, batch_size=64, hidden_dim=32, latent_dim=8, n_components=4,
                         discriminator_hidden=16, device="cpu", min_steps=0)


@pytest.fixture(scope="module")
def screen() -> Profiles:
    return small_screen(n_plates=3, n_features=20, seed=2)


@pytest.fixture(scope="module")
def fitted(screen) -> CpDistiller:
    return CpDistiller(TINY).fit(screen, effects="batch,row,col")


def test_transform_returns_embedding_with_every_metadata_column(fitted, screen):
    emb = fitted.transform(screen)
    assert isinstance(emb, Embedding) and emb.method == "cpDistiller"
    assert emb.features == [f"cpd_{i}" for i in range(8)]
    assert list(emb.meta.columns) == list(screen.meta.columns)
    assert emb.meta.equals(screen.meta)
    assert np.isfinite(emb.X).all() and emb.X.std(axis=0).min() > 0
    assert emb.provenance["effects"] == ["batch", "row", "column"]
    # Deterministic: the posterior mean, not a sample.
    np.testing.assert_array_equal(emb.X, fitted.transform(screen).X)


def test_save_load_identical_and_weights_only(fitted, screen, tmp_path):
    fitted.save(tmp_path / "m")
    state = torch.load(tmp_path / "m" / WEIGHTS_FILE, weights_only=True)
    assert set(state) == {"module", "input_transform", "output"}  # output: the corrected input's projection
    meta = json.loads((tmp_path / "m" / MODEL_FILE).read_text())
    assert meta["features"] == screen.features and meta["config"]["latent_dim"] == 8
    loaded = CpDistiller.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.transform(screen).X, fitted.transform(screen).X)


def test_new_plates_reordered_or_extra_features_work_missing_refused(fitted, screen, tmp_path):
    fitted.save(tmp_path / "m")
    model = CpDistiller.load(tmp_path / "m")
    new = small_screen(n_plates=2, n_features=20, seed=9)
    ref = model.transform(new).X
    shuffled = new.subset(features=new.features[::-1])
    np.testing.assert_allclose(model.transform(shuffled).X, ref, rtol=1e-5, atol=1e-6)
    extra = new.with_features(np.hstack([new.X, np.ones((new.n_wells, 1), np.float32)]),
                              new.features + ["Cells_extra"])
    np.testing.assert_allclose(model.transform(extra).X, ref, rtol=1e-5, atol=1e-6)
    other = small_screen(n_plates=1, n_features=21, seed=9)
    other = other.with_features(other.X, [f"Nuclei_g{i}" for i in range(21)])
    with pytest.raises(CpDistillerError, match="features this model was trained on are missing"):
        model.transform(other)
    with pytest.raises(CpDistillerError, match="warm-start"):
        CpDistiller(TINY).fit(other, effects="row,column", warm_start=tmp_path / "m")


def test_warm_start_fine_tunes_from_saved_weights(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    new = small_screen(n_plates=2, n_features=20, seed=5)
    tuned = CpDistiller(TINY.replace(epochs=1, hidden_dim=64)).fit(new, effects="row,column",
                                                                  warm_start=tmp_path / "m")
    assert tuned.config.hidden_dim == 32  # the saved architecture wins
    assert tuned.train_info["warm_start"] == str(tmp_path / "m")
    # Starts from the saved weights (close after one epoch) rather than from scratch.
    w0 = fitted.module.gmvae.qy_x[0].weight
    w1 = tuned.module.gmvae.qy_x[0].weight
    fresh = CpDistiller(TINY.replace(epochs=1)).fit(new, effects="row,column").module.gmvae.qy_x[0].weight
    assert (w1 - w0).abs().mean() < (fresh - w0).abs().mean()
    assert np.array_equal(tuned.input_transform.mean, fitted.input_transform.mean)


def test_checkpoints_are_loadable_models(screen, tmp_path):
    cfg = TINY.replace(epochs=3, checkpoint_every=2)
    model = CpDistiller(cfg).fit(screen, effects="row,column", checkpoint_dir=tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["epoch_002", "epoch_003"]
    last = CpDistiller.load(tmp_path / "ck" / "epoch_003")
    np.testing.assert_allclose(last.transform(screen).X, model.transform(screen).X, rtol=1e-5, atol=1e-6)


def test_single_level_effect_dropped_with_notice(screen):
    one_batch = screen.replace(meta=screen.meta.assign(Metadata_Batch="B0"))
    with pytest.warns(CpDistillerWarning, match="'batch' has a single level"):
        m = CpDistiller(TINY.replace(epochs=1)).fit(one_batch, effects="batch,row,col")
    assert m.effects == ("row", "column") and set(m.module.discriminators) == {"row", "column"}


def test_bad_inputs_give_clear_errors(screen):
    one_plate = screen.subset(rows=screen.plate == "P0")
    with pytest.raises(CpDistillerError, match="nothing to correct"), warnings.catch_warnings():
        warnings.simplefilter("ignore", CpDistillerWarning)
        CpDistiller(TINY).fit(one_plate, effects="batch")
    # One plate is fine for row/column correction (the reference crashes there).
    CpDistiller(TINY.replace(epochs=1)).fit(one_plate, effects="row,column")
    no_controls = small_screen(n_plates=2, n_features=20, with_controls=False)
    with pytest.raises(CpDistillerError, match="negative-control wells"):
        CpDistiller(TINY.replace(sphering="negcon")).fit(no_controls, effects="row,column")
    bad = screen.X.copy()
    bad[5, 3] = np.nan
    with pytest.raises(CpDistillerError, match=r"NaN/inf.*Cells_f3"):
        CpDistiller(TINY).fit(screen.with_features(bad, screen.features), effects="row")
    with pytest.raises(CpDistillerError, match="unknown effect"):
        parse_effects("row,plate_x")
    with pytest.raises(CpDistillerError, match="not a saved cpDistiller model"):
        CpDistiller.load(screen.source or "/nonexistent")
    with pytest.raises(CpDistillerError, match="not been fitted"):
        CpDistiller(TINY).transform(screen)
    with pytest.raises(CpDistillerError, match="invalid cpDistiller settings"):
        CpDistillerConfig(sphering="pca")
    with pytest.raises(CpDistillerError, match="adversary_view must be 'sample' or 'mean'"):
        CpDistillerConfig(adversary_view="mu")
    with pytest.raises(CpDistillerError, match=r"^settings\.json: invalid cpDistiller settings: adversary_wells"):
        CpDistillerConfig.from_dict({"adversary_wells": "controls"}, source="settings.json")


def test_negcon_sphering_whitens_controls(screen):
    t = InputTransform.fit(screen.X, screen.negative_mask, "negcon", 1e-6)
    neg = t.apply(screen.X[screen.negative_mask])
    assert t.whitening is not None and t.whitening.basis.shape[0] == 20
    # Whitened controls: near-identity covariance up to the final per-feature scaling.
    cov = np.cov(neg * t.std, rowvar=False)
    np.testing.assert_allclose(cov, np.eye(20), atol=0.05)
    m = CpDistiller(TINY.replace(sphering="negcon", epochs=1)).fit(screen, effects="row,column")
    assert np.isfinite(m.transform(screen).X).all()


def test_image_features_join_on_plate_and_well(screen):
    rng = np.random.default_rng(0)
    n_img = 45  # 5 pooled values with the compact joint module's window of 9 (paper variant: test_joint.py)
    order = rng.permutation(screen.n_wells)  # the table comes in another row order
    img = Profiles(screen.meta.iloc[order][["Metadata_Plate", "Metadata_Well"]].reset_index(drop=True),
                   rng.normal(size=(screen.n_wells, n_img)).astype(np.float32),
                   [f"img_{i}" for i in range(n_img)], screen.roles.__class__(plate="Metadata_Plate",
                                                                              well="Metadata_Well"))
    m = CpDistiller(TINY.replace(joint_module="compact")).fit(screen, effects="row,column", extractor=img)
    assert m.module.joint is not None
    assert m.module.n_gmvae_input == 20 + m.module.joint.out_dim
    assert "joint_recon" in m.history[-1]
    Z = m.transform(screen, extractor=img).X
    assert Z.shape == (screen.n_wells, 8)
    # The image features matter: shuffling them across wells changes the embedding.
    shuffled = img.with_features(img.X[rng.permutation(img.n_wells)], img.features)
    assert not np.allclose(m.transform(screen, extractor=shuffled).X, Z)
    with pytest.raises(CpDistillerError, match="image features"):
        m.transform(screen)
    with pytest.raises(CpDistillerError, match="no image features for"):
        CpDistiller(TINY).fit(screen, effects="row", extractor=img.subset(rows=np.arange(10)))


def test_auto_sphering_uses_controls_when_there_are_enough(screen):
    m = CpDistiller(TINY.replace(sphering="auto", epochs=1)).fit(screen, effects="row,column")
    assert m.train_info["sphered"] and m.input_transform.whitening is not None
    no_controls = small_screen(n_plates=2, n_features=20, with_controls=False)
    with pytest.warns(CpDistillerWarning, match="not sphered"):
        m2 = CpDistiller(TINY.replace(sphering="auto", epochs=1)).fit(no_controls, effects="row,column")
    assert not m2.train_info["sphered"]


def test_auto_adversary_wells_uses_controls_when_they_span_the_effects(screen):
    assert CpDistillerConfig().adversary_wells == "all"  # the paper's default; auto is an option
    m = CpDistiller(TINY.replace(epochs=1, adversary_wells="auto")).fit(screen, effects="row,column")
    assert m.adversary_wells == "negcon" and m.train_info["adversary_wells"] == "negcon"
    # small_screen shuffles every plate's layout: position does not predict the perturbation.
    assert set(m.train_info["position_confounding"]) == {"row", "column"}
    assert m.train_info["position_confounding"]["row"] < 0.5
    # Controls confined to one column cannot teach a column adversary: all wells, with a warning.
    one_col = screen.subset(rows=np.flatnonzero(~screen.negative_mask | (screen.col == screen.col[
        screen.negative_mask][0])))
    with pytest.warns(CpDistillerWarning, match="cover too few levels of column"):
        m2 = CpDistiller(TINY.replace(epochs=1, sphering_min_controls=2, adversary_wells="auto")).fit(
            one_col, effects="row,column")
    assert m2.adversary_wells == "all"
    with pytest.raises(CpDistillerError, match="column \\(1 level\\)"):
        CpDistiller(TINY.replace(epochs=1, adversary_wells="negcon")).fit(one_col, effects="row,column")
    paper = CpDistiller(TINY.replace(epochs=1, adversary_wells="all")).fit(screen, effects="row,column")
    assert paper.adversary_wells == "all"


@pytest.mark.parametrize("n_controls", [12, 60])
def test_span_whitening_equals_full_zca(n_controls):
    """The span-of-controls ZCA equals the full d x d ZCA (fewer and more controls than features)."""
    rng = np.random.default_rng(0)
    d = 30
    Xn = rng.normal(size=(n_controls, d)) @ rng.normal(size=(d, d))
    C = Xn - Xn.mean(axis=0)
    evals, evecs = np.linalg.eigh(np.cov(C, rowvar=False))
    evals = np.clip(evals, 0.0, None)
    ridge = 1e-2 * evals.mean()
    W = (evecs / np.sqrt(evals + ridge)) @ evecs.T
    Y = rng.normal(size=(7, d))
    w = ZCAWhitening.fit(C, 1e-2)
    np.testing.assert_allclose(w.apply(Y), Y @ W, rtol=1e-3, atol=1e-3)
    assert w.basis.shape == (d, min(n_controls, d))
    # models saved with the full matrix load into the same transform
    np.testing.assert_allclose(ZCAWhitening.from_matrix(W).apply(Y), Y @ W, rtol=1e-3, atol=1e-3)


def test_ema_keeps_the_final_temperature(screen):
    m = CpDistiller(TINY.replace(epochs=20, temperature_decay=0.1, temperature_min=0.2)).fit(screen, effects="row")
    assert float(m.module.gmvae.temperature) == pytest.approx(max(np.exp(-0.1 * 19), 0.2))


def test_wide_profiles_are_sphered_in_the_controls_span():
    """20,000 features x 80 wells: the whitening keeps a 20,000 x 20 basis, never a 20,000^2 matrix."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 20_000)).astype(np.float32)
    neg = np.arange(80) < 20
    t = InputTransform.fit(X, neg, "negcon", 1e-3)
    assert t.whitening.basis.shape == (20_000, 20)
    Y = t.apply(X)
    assert Y.shape == X.shape and np.isfinite(Y).all()


def test_conditional_decoder_learns_level_offsets_and_saves(screen, tmp_path):
    m = CpDistiller(TINY.replace(decoder_covariates="effects", epochs=3)).fit(screen, effects="batch,row")
    tables = m.module.gmvae.decoder_covariates
    assert set(tables) == {"batch", "row"}
    assert tables["row"].weight.shape[0] == len(m.levels["row"])
    assert tables["row"].weight.abs().sum() > 0  # trained away from their zero start
    m.save(tmp_path / "m")
    loaded = CpDistiller.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.transform(screen).X, m.transform(screen).X, rtol=1e-5, atol=1e-5)
    with pytest.raises(CpDistillerError, match="decoder_covariates"):
        CpDistillerConfig(decoder_covariates="plate")


def test_decoder_covariates_auto_follows_the_adversary_and_survives_a_reload(screen, tmp_path):
    assert CpDistillerConfig().decoder_covariates == "auto"
    paper_adversary = CpDistiller(TINY.replace(adversary_wells="all", epochs=1)).fit(screen, effects="batch,row")
    assert set(paper_adversary.module.gmvae.decoder_covariates) == {"batch", "row"}
    assert paper_adversary.train_info["decoder_covariates"] == "effects"
    controls = CpDistiller(TINY.replace(adversary_wells="negcon", sphering_min_controls=5, epochs=1)).fit(
        screen, effects="batch,row")
    assert len(controls.module.gmvae.decoder_covariates) == 0
    assert controls.train_info["decoder_covariates"] == "none"
    for m, name in ((paper_adversary, "all"), (controls, "negcon")):
        m.save(tmp_path / name)
        loaded = CpDistiller.load(tmp_path / name)  # builds the same decoder, or the weights would not load
        assert loaded._decoder_covariates() == m.train_info["decoder_covariates"]
        assert set(loaded.module.gmvae.decoder_covariates) == set(m.module.gmvae.decoder_covariates)
        np.testing.assert_allclose(loaded.transform(screen).X, m.transform(screen).X, rtol=1e-5, atol=1e-5)


def test_triplet_controls_auto_follows_the_adversary(screen):
    paper = CpDistiller(TINY.replace(adversary_wells="all", epochs=1)).fit(screen, effects="row")
    ours = CpDistiller(TINY.replace(adversary_wells="negcon", sphering_min_controls=5, epochs=1)).fit(
        screen, effects="row")
    assert paper.neighbor_stats["triplet_controls"] == "paper"
    assert ours.neighbor_stats["triplet_controls"] == "neutral"


def test_cpdistiller_docstring_example_runs():
    import doctest

    for test in doctest.DocTestFinder(recurse=False).find(CpDistiller, "CpDistiller"):
        result = doctest.DocTestRunner().run(test, out=lambda s: None)
        assert result.attempted > 0 and result.failed == 0


def test_locked_layout_warns_about_the_all_wells_adversary():
    locked = _one_plate_map(small_screen(n_plates=3, n_features=20, seed=2))
    with pytest.warns(CpDistillerWarning, match="ties perturbations to well positions"):
        CpDistiller(TINY.replace(epochs=1)).fit(locked, effects="row,column")
    # "controls": with every position effect tied, their discriminators learn from the negative controls
    cfg = TINY.replace(epochs=1, sphering_min_controls=5, tied_effects="controls")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = CpDistiller(cfg).fit(locked, effects="row,column")
    said = " ".join(str(w.message) for w in caught)
    assert "ties row and column to the treatments: their discriminators learn from the" in said
    assert "ties perturbations to well positions" not in said
    assert m.train_info["adversary_by_effect"] == {"row": "negcon", "column": "negcon"}
    assert len(m.module.gmvae.decoder_covariates) == 0 and m.neighbor_stats["triplet_controls"] == "neutral"
    # too few controls to teach them: the paper's correction, with its warning
    with pytest.warns(CpDistillerWarning, match="ties perturbations to well positions"):
        few = CpDistiller(cfg.replace(sphering_min_controls=10_000)).fit(locked, effects="row,column")
    assert few.train_info["adversary_by_effect"] == {"row": "all", "column": "all"}


def _tied_to_rows(screen: Profiles) -> Profiles:
    """``screen`` with each treatment's wells in one row: the treatment is named after its row."""
    meta = screen.meta
    pert = np.where(meta["Metadata_pert"] == "DMSO", "DMSO", "cpd_" + meta["Metadata_Well"].str[0])
    return Profiles(meta.assign(Metadata_pert=pert), screen.X, screen.features, screen.roles, screen.source)


def test_a_row_tied_to_the_treatments_is_left_uncorrected_with_a_warning(screen):
    tied = _tied_to_rows(screen)
    with pytest.warns(CpDistillerWarning, match=r"not corrected: row \(100% .*correcting column"):
        m = CpDistiller(TINY).fit(tied, effects="row,column")
    assert m.effects == ("column",) and set(m.levels) == {"column"}
    assert m.train_info["effects_skipped"] == {"row": 1.0}
    assert m.train_info["position_confounding"]["row"] == 1.0  # still reported for the requested effects
    # a shuffled layout keeps every effect; so do tied_effects="correct" and controls-trained discriminators
    assert CpDistiller(TINY).fit(screen, effects="row,column").effects == ("row", "column")
    assert CpDistiller(TINY.replace(tied_effects="correct")).fit(tied, effects="row,column").effects == ("row", "column")
    negcon = CpDistiller(TINY.replace(adversary_wells="negcon")).fit(tied, effects="row,column")
    assert negcon.effects == ("row", "column") and negcon.train_info["effects_skipped"] == {}


def _dose_by_column(screen: Profiles) -> Profiles:
    """``screen`` with a dose for each treated well set by its column (six doses), none for the controls."""
    meta = screen.meta
    column = meta["Metadata_Well"].str[1:].astype(int)
    dose = np.where(meta["Metadata_pert"] == "DMSO", np.nan, 20.0 / 2.0 ** (column % 6))
    return Profiles(meta.assign(Metadata_dose=dose), screen.X, screen.features, screen.roles, screen.source)


def test_a_column_that_sets_the_dose_is_corrected_with_a_warning_that_names_it(screen):
    dosed = _dose_by_column(screen)
    with pytest.warns(CpDistillerWarning, match=r"column sets 'Metadata_dose' for 100% of treated wells \(6 "
                                                r"values\).*correct batch,row only \(--effects batch,row\)"):
        m = CpDistiller(TINY).fit(dosed, effects="batch,row,column")
    assert m.effects == ("batch", "row", "column") and m.train_info["effects_skipped"] == {}
    with pytest.warns(CpDistillerWarning, match="it is the only effect corrected"):
        assert CpDistiller(TINY).fit(dosed, effects="column").effects == ("column",)
    # without the dose column, or without the column among the effects, nothing is said
    for profiles, effects in ((screen, "batch,row,column"), (dosed, "batch,row")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            CpDistiller(TINY).fit(profiles, effects=effects)
        assert not [w for w in caught if "sets 'Metadata_dose'" in str(w.message)]


def test_a_layout_tying_treatments_to_rows_trains_at_most_tied_layout_epochs(screen):
    cfg = TINY.replace(epochs=3, tied_layout_epochs=2, tied_effects="correct")
    tied = _tied_to_rows(screen)
    m = CpDistiller(cfg).fit(tied, effects="row,column")
    assert m.train_info["position_confounding"]["row"] == 1.0
    assert m.train_info["epochs"] == 2 and len(m.history) == 2 and m.history[-1]["epochs"] == 2
    assert m.config.epochs == 3  # the settings asked for are kept as they were
    # the same capped fit is the plain 2-epoch fit
    two = CpDistiller(cfg.replace(epochs=2)).fit(tied, effects="row,column")
    np.testing.assert_array_equal(m.transform(tied).X, two.transform(tied).X)
    # shuffled layouts, no limit, or discriminators that learn from the controls: the full length
    assert CpDistiller(cfg).fit(screen, effects="row,column").train_info["epochs"] == 3
    assert CpDistiller(cfg.replace(tied_layout_epochs=None)).fit(tied, effects="row,column").train_info["epochs"] == 3
    negcon = CpDistiller(cfg.replace(adversary_wells="negcon")).fit(tied, effects="row,column")
    assert negcon.train_info["epochs"] == 3


def test_tied_effects_controls_teaches_a_tied_row_from_the_negative_controls(screen, tmp_path):
    tied = _tied_to_rows(screen)
    cfg = TINY.replace(tied_effects="controls", sphering_min_controls=5)
    with pytest.warns(CpDistillerWarning, match=r"ties row to the treatments: its discriminator learns from the \d+ "
                                                "negative controls"):
        m = CpDistiller(cfg).fit(tied, effects="row,column")
    assert m.effects == ("row", "column") and m.train_info["effects_skipped"] == {}
    assert m.train_info["adversary_by_effect"] == {"row": "negcon", "column": "all"}
    assert m.train_info["adversary_wells"] == "all"
    # the decoder is told the levels of the effects learnt from every well only
    assert set(m.module.gmvae.decoder_covariates) == {"column"}
    assert m.neighbor_stats["triplet_controls"] == "paper"
    assert len(m.history) == 2  # no epoch cap: the tied row's discriminator learns from the controls
    m.save(tmp_path / "m")
    loaded = CpDistiller.load(tmp_path / "m")  # the same decoder, or its weights would not load
    np.testing.assert_allclose(loaded.transform(tied).X, m.transform(tied).X, rtol=1e-5, atol=1e-5)
    # too few controls to learn the row from: the row is left out, as with "skip", and the warning says why
    with pytest.warns(CpDistillerWarning, match=r"not corrected: row .*too few negative controls"):
        thin = CpDistiller(cfg.replace(sphering_min_controls=10_000)).fit(tied, effects="row,column")
    assert thin.effects == ("column",)
    # a shuffled layout: every discriminator learns from every well, as with "skip"
    assert CpDistiller(cfg).fit(screen, effects="row,column").train_info["adversary_by_effect"] == \
        {"row": "all", "column": "all"}


def _one_plate_map(screen: Profiles) -> Profiles:
    """``screen`` with every treatment in one well, the same on every plate (replicates only across plates)."""
    meta = screen.meta
    pert = np.where(meta["Metadata_pert"] == "DMSO", "DMSO", "cpd_" + meta["Metadata_Well"])
    return Profiles(meta.assign(Metadata_pert=pert), screen.X, screen.features, screen.roles, screen.source)


def test_input_correction_auto_removes_the_controls_effects_when_every_effect_is_tied(screen):
    locked = _one_plate_map(screen)
    cfg = TINY.replace(sphering_min_controls=5)
    with pytest.warns(CpDistillerWarning, match=r"Before correcting row and column with the model, their additive "
                                                r"effects fitted on the \d+ negative controls are removed from the "
                                                r"input \(the layout ties every effect to the treatments"):
        auto = CpDistiller(cfg).fit(locked, effects="row,column")
    assert auto.effects == ("row", "column") and auto.train_info["effects_skipped"] == {}
    assert auto.train_info["input_correction"] == {"setting": "auto", "effects": ["row", "column"],
                                                   "levels_without_controls": {"row": 0, "column": 0}}
    # the same model as the explicit setting; without it the embedding differs
    explicit = CpDistiller(cfg.replace(input_correction="negcon_linear")).fit(locked, effects="row,column")
    np.testing.assert_array_equal(auto.transform(locked).X, explicit.transform(locked).X)
    off = CpDistiller(cfg.replace(input_correction="none")).fit(locked, effects="row,column")
    assert off.technical is None and not np.allclose(off.transform(locked).X, auto.transform(locked).X)
    # "auto" stays off: a shuffled layout, the paper's handling of tied effects, controls-trained
    # discriminators, too few controls at the levels, controls on one plate only
    one_plate = screen.subset(screen.plate == screen.plate[0])
    for profiles, changes in ((screen, {}), (locked, {"tied_effects": "correct"}), (locked, {"adversary_wells": "negcon"}),
                              (locked, {"sphering_min_controls": 10_000}), (_one_plate_map(one_plate), {})):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = CpDistiller(cfg.replace(**changes)).fit(profiles, effects="row,column")
        assert m.technical is None and "input_correction" not in m.train_info, changes


def test_input_correction_auto_removes_the_controls_effect_of_a_tied_row_the_model_leaves_out(screen):
    tied = _tied_to_rows(screen)
    cfg = TINY.replace(sphering_min_controls=5)
    with pytest.warns(CpDistillerWarning, match=r"Instead of correcting row with the model, its additive effect "
                                                r"fitted on the \d+ negative controls is removed from the input"):
        m = CpDistiller(cfg).fit(tied, effects="row,column")
    assert m.effects == ("column",) and m.train_info["effects_skipped"] == {"row": 1.0}
    assert m.train_info["input_correction"]["effects"] == ["row"] and list(m.technical.levels) == ["row"]
    # the controls of one plate: each row's coefficient would be their own noise, so "auto" leaves the row;
    # "tied" removes it whatever the plates
    one_plate = _tied_to_rows(screen.subset(screen.plate == screen.plate[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert CpDistiller(cfg).fit(one_plate, effects="row,column").technical is None
        tied_only = CpDistiller(cfg.replace(input_correction="tied")).fit(one_plate, effects="row,column")
    assert list(tied_only.technical.levels) == ["row"]
    # asked for explicitly where it cannot act, it says so
    with pytest.warns(CpDistillerWarning, match="input_correction 'tied' acts with tied_effects 'skip'"):
        m = CpDistiller(cfg.replace(input_correction="tied", tied_effects="correct")).fit(tied, effects="row,column")
    assert m.technical is None


def test_input_correction_removes_the_controls_additive_effects_and_survives_a_reload(screen, tmp_path):
    from cpdistiller_core.preprocess import fit_negcon_technical

    cfg = TINY.replace(input_correction="negcon_linear")
    m = CpDistiller(cfg).fit(screen, effects="batch,row,column")
    assert m.train_info["input_correction"]["effects"] == ["batch", "row", "column"]
    # the model's input transform is fitted on the profiles minus what a ridge model fits on the controls
    labels = {e: screen.labels(e) for e in ("batch", "row", "column")}
    expected = screen.X - fit_negcon_technical(screen.X, labels, screen.negative_mask).effects()
    own, unseen = m.technical.for_wells(labels)
    assert unseen == {"batch": 0, "row": 0, "column": 0}
    np.testing.assert_allclose(screen.X - own.effects(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m.input_transform.mean, expected.mean(axis=0), rtol=1e-4, atol=1e-5)
    # it changes the embedding, and a reload gives the same one
    plain = CpDistiller(TINY).fit(screen, effects="batch,row,column")
    assert not np.allclose(plain.transform(screen).X, m.transform(screen).X)
    m.save(tmp_path / "m")
    loaded = CpDistiller.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.transform(screen).X, m.transform(screen).X, rtol=1e-5, atol=1e-5)
    # wells of a batch the controls never saw keep that batch's effect, and the user is told
    renamed = Profiles(screen.meta.assign(Metadata_Batch="new_batch"), screen.X, screen.features, screen.roles,
                       screen.source)
    with pytest.warns(CpDistillerWarning, match=r"\d+ wells at a batch level the training controls did not cover"):
        loaded.transform(renamed)
    # too few controls: refused before any work, naming the setting
    no_controls = small_screen(n_plates=2, n_features=20, seed=1, with_controls=False)
    with pytest.raises(CpDistillerError, match="input_correction 'negcon_linear' .* needs 3\\+ of them"):
        CpDistiller(cfg).fit(no_controls, effects="row,column")
