"""output="corrected_input": the embedding is the model input minus the decoder's technical shift, by PCA."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from engine_screens import small_screen

from cpdistiller_core.api import CpDistiller
from cpdistiller_core.config import CpDistillerConfig
from cpdistiller_core.errors import CpDistillerError, CpDistillerWarning
from cpdistiller_core.profiles import Profiles
from cpdistiller_core.training_data import level_codes

TINY = CpDistillerConfig(epochs=2, batch_size=64, hidden_dim=32, latent_dim=8, n_components=4,
                         discriminator_hidden=16, device="cpu", output="corrected_input")


@pytest.fixture(scope="module")
def screen() -> Profiles:
    return small_screen(n_plates=3, n_features=20, seed=2)


@pytest.fixture(scope="module")
def fitted(screen) -> CpDistiller:
    return CpDistiller(TINY).fit(screen, effects="batch,row,column")


def _model_input(model: CpDistiller, profiles: Profiles) -> torch.Tensor:
    return torch.from_numpy(model.input_transform.apply(profiles.X))


def _codes(model: CpDistiller, profiles: Profiles) -> dict[str, torch.Tensor]:
    return {e: torch.from_numpy(level_codes(np.asarray(profiles.labels(e)), model.levels[e], e))
            for e in model.module.gmvae.decoder_covariates}


def _share_explained(Z: np.ndarray, labels: np.ndarray) -> float:
    """Between-level share of the total variance of Z."""
    frame = pd.DataFrame(Z - Z.mean(0))
    means = frame.groupby(np.asarray(labels)).transform("mean").to_numpy()
    return float((means ** 2).sum() / (frame.to_numpy() ** 2).sum())


def test_the_shift_is_the_decoder_at_the_wells_levels_minus_the_decoder_at_the_reference(fitted, screen):
    module, projection = fitted.module, fitted.projection
    x, codes = _model_input(fitted, screen), _codes(fitted, screen)
    got = projection.corrected(module, x, None, codes)
    # the same shift through GMVAE.decode: once with the wells' codes, once with every level's offset
    # replaced by the reference (the level-frequency mean of the learnt offsets)
    at_reference = copy.deepcopy(module.gmvae)
    for effect, table in at_reference.decoder_covariates.items():
        counts = np.bincount(codes[effect].numpy(), minlength=table.num_embeddings)
        mean = (counts / counts.sum()) @ table.weight.detach().numpy()
        np.testing.assert_allclose(projection.reference[effect], mean, rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            table.weight[:] = torch.from_numpy(mean.astype(np.float32))
    with torch.no_grad():
        z = module.gmvae.posterior_mean(x)
        shift = module.gmvae.decode(z, codes) - at_reference.decode(z, codes)
    np.testing.assert_allclose(got.numpy(), (x - shift).numpy(), rtol=1e-4, atol=1e-4)
    assert shift.abs().max() > 1e-3  # the decoder did learn level offsets


def test_embedding_is_the_pca_of_the_corrected_input_and_survives_a_reload(fitted, screen, tmp_path):
    emb = fitted.transform(screen)
    y = fitted.projection.corrected(fitted.module, _model_input(fitted, screen), None, _codes(fitted, screen))
    y = y.numpy().astype(np.float64)
    cov = np.cov(y, rowvar=False)
    top = np.sort(np.linalg.eigvalsh(cov))[::-1][:emb.X.shape[1]]
    # centred on the training wells, with the variances of the leading principal components, uncorrelated
    np.testing.assert_allclose(emb.X.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.var(emb.X, axis=0, ddof=1), top, rtol=1e-3)
    off = np.corrcoef(emb.X, rowvar=False) - np.eye(emb.X.shape[1])
    assert np.abs(off).max() < 1e-3
    assert emb.features == [f"cpd_{i}" for i in range(8)] and emb.meta.equals(screen.meta)
    assert fitted.train_info["output"]["effects"] == ["batch", "row", "column"]
    fitted.save(tmp_path / "m")
    loaded = CpDistiller.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.transform(screen).X, emb.X)


@pytest.fixture(scope="module")
def strong_position() -> tuple[Profiles, CpDistiller]:
    profiles = small_screen(n_plates=3, n_features=16, seed=5, position_strength=3.0)
    return profiles, CpDistiller(TINY.replace(epochs=80, batch_size=32)).fit(profiles, effects="row,column")


def test_it_removes_a_strong_position_effect_that_the_input_carries(strong_position):
    profiles, model = strong_position
    emb = model.transform(profiles)
    X = profiles.X - profiles.X.mean(0)
    for effect in ("row", "column"):  # about a third of the input's variance each; here 0.34 -> 0.02
        labels = np.asarray(profiles.labels(effect))
        before, after = _share_explained(X, labels), _share_explained(emb.X, labels)
        assert after < 0.25 * before, (effect, before, after)
    # what is left is the perturbations: their share of the variance rises (0.23 -> 0.61)
    perts = np.asarray(profiles.meta["Metadata_pert"])
    assert _share_explained(emb.X, perts) > 1.5 * _share_explained(X, perts)


def test_corrected_features_are_the_profiles_minus_the_shift_in_their_own_units(strong_position):
    profiles, model = strong_position
    fixed = model.corrected_features(profiles)
    assert fixed.features == profiles.features and fixed.meta.equals(profiles.meta)
    # the corrected input, mapped back through the input transform
    y = model.projection.corrected(model.module, _model_input(model, profiles), None, _codes(model, profiles))
    np.testing.assert_allclose(fixed.X, y.numpy() * model.input_transform.std + model.input_transform.mean,
                               rtol=1e-4, atol=1e-4)
    # per feature, the row and column effects are gone and the perturbation signal kept
    rows, perts = np.asarray(profiles.labels("row")), np.asarray(profiles.meta["Metadata_pert"])
    before = [_share_explained(profiles.X[:, [j]], rows) for j in range(16)]
    after = [_share_explained(fixed.X[:, [j]], rows) for j in range(16)]
    assert np.median(after) < 0.25 * np.median(before)
    assert _share_explained(fixed.X, perts) > 1.5 * _share_explained(profiles.X, perts)
    # the paper's embedding has no feature-space counterpart
    latent = CpDistiller(TINY.replace(output="latent")).fit(profiles, effects="row,column")
    with pytest.raises(CpDistillerError, match="no feature-space counterpart"):
        latent.corrected_features(profiles)


@pytest.mark.parametrize("sphering", ["none", "negcon"])
def test_the_input_transform_inverts(sphering):
    from cpdistiller_core.api import InputTransform

    profiles = small_screen(n_plates=2, n_features=30, seed=1)  # 64 controls: more controls than features
    for X in (profiles.X, profiles.X[:, :10]):
        t = InputTransform.fit(X, profiles.negative_mask, sphering, 1e-3)
        np.testing.assert_allclose(t.invert(t.apply(X)), X, rtol=1e-3, atol=1e-3)
    few = profiles.negative_mask & (np.cumsum(profiles.negative_mask) <= 8)  # fewer controls than features
    t = InputTransform.fit(profiles.X, few, sphering, 1e-3)
    np.testing.assert_allclose(t.invert(t.apply(profiles.X)), profiles.X, rtol=1e-3, atol=1e-3)


def test_wells_at_levels_the_model_never_saw_keep_that_effect_with_a_warning(fitted, screen):
    renamed = Profiles(screen.meta.assign(Metadata_Batch="new_batch"), screen.X, screen.features, screen.roles,
                       screen.source)
    with pytest.warns(CpDistillerWarning, match=r"\d+ wells at batch levels the model was not trained on "
                                                r"\(e\.g\. 'new_batch'\): they keep that effect"):
        fitted.transform(renamed)
    codes = level_codes(np.array(["B0", "new", "B1"]), ["B0", "B1"], "batch")
    assert codes.tolist() == [0, -1, 1]
    assert level_codes(np.array([3, 9]), [1, 2, 3], "row").tolist() == [2, -1]


def test_a_decoder_told_no_effect_is_refused_before_any_work(screen):
    with pytest.raises(CpDistillerError, match="needs decoder_covariates other than 'none'"):
        CpDistillerConfig(output="corrected_input", decoder_covariates="none")
    # "auto" tells the decoder nothing when every discriminator learns from the controls
    with pytest.raises(CpDistillerError, match="the decoder is told no effect"):
        CpDistiller(TINY.replace(adversary_wells="negcon")).fit(screen, effects="batch,row,column")
    with pytest.warns(CpDistillerWarning, match="removes only the effects the decoder is told \\(batch\\); "
                                                "row, column stays"):
        CpDistiller(TINY.replace(decoder_covariates="batch")).fit(screen, effects="batch,row,column")


def test_checkpoints_carry_their_own_projection(screen, tmp_path):
    cfg = TINY.replace(epochs=2, checkpoint_every=1)
    model = CpDistiller(cfg).fit(screen, effects="batch,row,column", checkpoint_dir=tmp_path)
    first = CpDistiller.load(tmp_path / "epoch_001").transform(screen).X
    last = CpDistiller.load(tmp_path / "epoch_002").transform(screen).X
    assert first.shape == last.shape == (screen.n_wells, 8)
    np.testing.assert_allclose(last, model.transform(screen).X, rtol=1e-4, atol=1e-4)
    assert not np.allclose(first, last)


def test_a_saved_corrected_input_model_without_its_projection_is_refused(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    state = torch.load(tmp_path / "m" / "weights.pt", weights_only=True)
    del state["output"]
    torch.save(state, tmp_path / "m" / "weights.pt")
    with pytest.raises(CpDistillerError, match="lack its projection"):
        CpDistiller.load(tmp_path / "m")


def test_auto_takes_the_corrected_input_only_when_the_decoder_is_told_every_corrected_effect(screen):
    told_all = CpDistiller(TINY.replace(output="auto")).fit(screen, effects="batch,row,column")
    assert told_all.embedding_kind == "corrected_input" and told_all.projection is not None
    assert told_all.train_info["embedding"] == "corrected_input"
    told_batch = CpDistiller(TINY.replace(output="auto", decoder_covariates="batch")).fit(
        screen, effects="batch,row,column")
    assert told_batch.embedding_kind == "latent" and told_batch.projection is None
    # controls-trained discriminators: the "auto" decoder is told nothing, so the latent it is
    controls = CpDistiller(TINY.replace(output="auto", adversary_wells="negcon")).fit(screen, effects="row,column")
    assert controls.embedding_kind == "latent" and controls.train_info["embedding"] == "latent"
    np.testing.assert_array_equal(controls.transform(screen).X[:, :2],
                                  controls.module.embed(_model_input(controls, screen)).numpy()[:, :2])


def test_one_pass_gives_the_embedding_and_the_corrected_features_of_the_two_methods(fitted, screen):
    emb, corrected = fitted.transform_with_corrected_features(screen)
    np.testing.assert_allclose(emb.X, fitted.transform(screen).X, atol=1e-5)
    np.testing.assert_allclose(corrected.X, fitted.corrected_features(screen).X, atol=1e-5)
    assert list(corrected.meta.columns) == list(screen.meta.columns) and corrected.features == fitted.features
