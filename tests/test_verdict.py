"""The "did it help?" verdict: constructed embeddings whose right answer is known."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from engine_screens import small_screen

from cpdistiller_core import baselines
from cpdistiller_core.profiles import Embedding, Profiles
from cpdistiller_core.verdict import Verdict, did_it_help


@pytest.fixture(scope="module")
def screen():
    p = small_screen(n_plates=4, n_features=24, seed=3)
    meta = p.meta.assign(Metadata_moa=[f"moa{int(s[3:]) % 4}" if s.startswith("cpd") else None
                                       for s in p.meta["Metadata_pert"]])
    return Profiles(meta, p.X, p.features, dataclasses.replace(p.roles, annotation="Metadata_moa"), p.source)


def _emb(screen, Z, method):
    return Embedding.from_profiles(screen, Z.astype(np.float32), method=method)


def test_uncorrected_against_itself_keeps_biology_and_says_position_stays(screen):
    ref = baselines.uncorrected(screen)
    v = did_it_help(ref, screen, uncorrected=ref, null_size=200)
    names = {c.name for c in v.checks}
    assert {"replicates", "relations", "neighbours", "controls", "row", "column", "batch"} <= names
    for c in v.checks:
        if c.name != "neighbours":
            assert c.corrected == pytest.approx(c.uncorrected)
        if c.name in ("row", "column", "batch") and 1 - c.uncorrected >= 0.05:
            assert c.status == "warn" and "was not removed" in c.sentence, c  # nothing was corrected
        else:
            assert c.status == "good", c
    assert v.status == "warn"


def test_a_removed_row_effect_reads_good(screen):
    ref = baselines.uncorrected(screen)
    Z = ref.X.copy()
    rows = screen.labels("row")
    neg = screen.negative_mask
    for r in np.unique(rows):  # subtract each row's control mean: the row effect among controls is gone
        Z[rows == r] -= Z[(rows == r) & neg].mean(axis=0)
    v = did_it_help(_emb(screen, Z, "row removed"), screen, uncorrected=ref, null_size=200)
    row = {c.name: c for c in v.checks}["row"]
    assert 1 - row.uncorrected >= 0.05 and row.corrected >= row.uncorrected + 0.02
    assert row.status == "good" and "explains" in row.sentence


def test_an_effect_left_out_on_purpose_says_so(screen):
    ref = baselines.uncorrected(screen)
    v = did_it_help(ref, screen, uncorrected=ref, null_size=200, left_out=["row"])
    checks = {c.name: c for c in v.checks}
    assert "left row uncorrected on purpose" in checks["row"].sentence
    assert "on purpose" not in checks["column"].sentence and checks["row"].status == "warn"


def test_collapsed_controls_are_flagged(screen):
    ref = baselines.uncorrected(screen)
    Z = ref.X.copy()
    neg = screen.negative_mask
    Z[neg] = Z[neg].mean(axis=0) + 1e-3 * np.random.default_rng(0).normal(size=Z[neg].shape)
    v = did_it_help(_emb(screen, Z, "collapsed"), screen, uncorrected=ref, null_size=200)
    checks = {c.name: c for c in v.checks}
    assert checks["controls"].status == "bad"
    assert checks["replicates"].corrected > checks["replicates"].uncorrected  # the symptom it explains
    assert v.status == "bad" and v.problems()[0].status == "bad"


def test_random_embedding_loses_neighbours_and_relations(screen):
    ref = baselines.uncorrected(screen)
    Z = np.random.default_rng(1).normal(size=ref.X.shape)
    v = did_it_help(_emb(screen, Z, "random"), screen, uncorrected=ref, null_size=200)
    checks = {c.name: c for c in v.checks}
    assert checks["neighbours"].status == "bad"
    assert checks["replicates"].status == "bad"
    assert Verdict.from_dict(v.to_dict()).to_dict() == v.to_dict()
    assert "BAD" in v.format()


def test_a_run_compares_with_the_uncorrected_profiles_on_the_model_scale(tmp_path):
    """A run's verdict standardises the uncorrected reference as the model standardises its input, so a
    row the model leaves out (tied to the treatments) reads about as before, whatever the features' units."""
    from cpdistiller_core.runs import Run, RunSpec

    p = small_screen(n_plates=3, n_features=20, seed=2, position_strength=0.0)
    meta = p.meta.assign(Metadata_pert=np.where(p.meta["Metadata_pert"] == "DMSO", "DMSO",
                                                "cpd_" + p.meta["Metadata_Well"].str[0]))  # tied to rows
    X = p.X.copy()
    row = p.labels("row").astype(float)
    X[:, 10:] += 1.5 * (row - row.mean())[:, None] / row.std()  # a row effect in half the features...
    X[:, :10] *= 100.0                                          # ... the other half in much larger units
    tied = Profiles(meta, X, p.features, p.roles, p.source)
    spec = RunSpec.build({"epochs": 2, "batch_size": 64, "hidden_dim": 32, "latent_dim": 8, "device": "cpu",
                          "input_correction": "none"},  # the row left entirely alone
                         "row,column", preprocess=False)
    with Run.create(tmp_path / "run") as run:
        run = run.correct(tied, spec)
    check = {c.name: c for c in run.verdict().checks}["row"]
    assert "on purpose" in check.sentence
    # the fit's own warnings are kept as the run's notes (the dashboard shows them); the verdict's are not
    assert any(n.startswith(f"{p.source}: not corrected: row") for n in run.notes), run.notes
    assert any(w.startswith("did it help? row") for w in run.report["warnings"])
    assert not any(n.startswith("did it help?") for n in run.notes)
    # the plain PCA of the unscaled features hardly sees the row: against it the run would seem to have
    # added a row effect; the reference on the model's scale is much closer
    plain = {c.name: c for c in did_it_help(run.embedding(), tied, null_size=200).checks}["row"]
    assert plain.uncorrected - check.uncorrected > 0.2
    assert abs(check.corrected - check.uncorrected) < 0.5 * abs(check.corrected - plain.uncorrected)


def test_an_effect_learnt_from_the_controls_says_its_check_is_in_sample(screen):
    ref = baselines.uncorrected(screen)
    v = did_it_help(ref, screen, uncorrected=ref, null_size=200, learnt_from_controls=["row"])
    checks = {c.name: c for c in v.checks}
    assert "learnt row from these controls, so this check reads better than it is." in checks["row"].sentence
    assert "learnt" not in checks["column"].sentence
    # rows without a control: the sentence counts their wells, which keep that part of the effect
    row = screen.labels("row").astype(str)
    first = np.unique(row[screen.negative_mask])[0]
    moved = Profiles(screen.meta.assign(Metadata_pert=np.where(screen.negative_mask & (row == first), "cpd_moved",
                                                               screen.meta["Metadata_pert"])),
                     screen.X, screen.features, screen.roles, screen.source)
    sentence = {c.name: c for c in did_it_help(baselines.uncorrected(moved), moved, null_size=200,
                                               learnt_from_controls=["row"]).checks}["row"].sentence
    assert f"{int((row == first).sum()):,} of {moved.n_wells:,} wells sit at a row without a negative control" in sentence


def test_a_fit_that_removes_the_controls_additive_effects_reports_them_as_learnt_from_the_controls(screen):
    from cpdistiller_core import CpDistiller, CpDistillerConfig
    from cpdistiller_core.verdict import model_verdict

    cfg = CpDistillerConfig(epochs=1, batch_size=64, hidden_dim=32, latent_dim=8, device="cpu",
                            input_correction="negcon_linear")
    m = CpDistiller(cfg).fit(screen, effects="row,column")
    checks = {c.name: c for c in model_verdict(m, m.transform(screen), screen).checks}
    assert "learnt row from these controls" in checks["row"].sentence
    assert "learnt column from these controls" in checks["column"].sentence
    assert "on purpose" not in checks["row"].sentence
    plain = CpDistiller(cfg.replace(input_correction="none")).fit(screen, effects="row,column")
    checks = {c.name: c for c in model_verdict(plain, plain.transform(screen), screen).checks}
    assert "learnt" not in checks["row"].sentence


def test_a_tied_row_the_controls_model_removed_is_not_called_left_alone(screen):
    from cpdistiller_core import CpDistiller, CpDistillerConfig
    from cpdistiller_core.verdict import model_verdict

    pert = np.where(screen.meta["Metadata_pert"] == "DMSO", "DMSO", "cpd_" + screen.meta["Metadata_Well"].str[0])
    tied = Profiles(screen.meta.assign(Metadata_pert=pert), screen.X, screen.features, screen.roles, screen.source)
    cfg = CpDistillerConfig(epochs=1, batch_size=64, hidden_dim=32, latent_dim=8, device="cpu",
                            sphering_min_controls=5)
    with pytest.warns(UserWarning):
        m = CpDistiller(cfg).fit(tied, effects="row,column")
    assert m.train_info["effects_skipped"] == {"row": 1.0} and m.train_info["input_correction"]["effects"] == ["row"]
    row = {c.name: c for c in model_verdict(m, m.transform(tied), tied).checks}["row"]
    assert "learnt row from these controls" in row.sentence and "on purpose" not in row.sentence
    # without the controls' model the row is left alone, and the check says so
    alone = CpDistiller(cfg.replace(input_correction="none")).fit(tied, effects="row,column")
    row = {c.name: c for c in model_verdict(alone, alone.transform(tied), tied).checks}["row"]
    assert "on purpose" in row.sentence and "learnt" not in row.sentence
