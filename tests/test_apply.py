"""Incremental correction: `cpdistiller apply` / Run.apply (a trained run's model and its stored
preprocessing on new plates) and joint training with per-well image features (`correct --image-features`)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core.api import CpDistiller
from cpdistiller_core.cli import main
from cpdistiller_core.config import CpDistillerConfig
from cpdistiller_core.datasets import make_demo_screen
from cpdistiller_core.errors import CpDistillerError, CpDistillerWarning
from cpdistiller_core.metrics import variance_explained_score
from cpdistiller_core.preprocess import preprocess
from cpdistiller_core.runs import Run, RunSpec, apply_model, load_fitted, read_image_features

TINY = ["--epochs", "2", "--batch-size", "64", "--hidden-dim", "32", "--latent-dim", "8",
        "--device", "cpu", "--min-steps", "0", "--quiet"]
N_IMG = 324  # image features per well: an 18 x 18 view, 4 values after the joint module's 9 x 9 max-pool


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """Three plates of the demo screen: two to train on (train.csv), one new plate (new.csv)."""
    p = make_demo_screen(seed=2, n_batches=1, plates_per_batch=3, n_features=40).profiles
    frame = p.to_frame()
    frame.insert(2, "Metadata_note", [f"n{i % 7}" for i in range(len(frame))])  # a column no role uses
    plates = sorted(set(p.plate))
    folder = tmp_path_factory.mktemp("demo")
    train, new = folder / "train.csv", folder / "new.csv"
    frame[frame["Metadata_Plate"].isin(plates[:2])].to_csv(train, index=False)
    frame[frame["Metadata_Plate"] == plates[2]].to_csv(new, index=False)
    return {"train": train, "new": new, "frame": frame, "plates": plates, "folder": folder}


def _image_table(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """An extractor-like table (Metadata_Plate, Metadata_Well, mesmer_*) in shuffled row order, with
    unpadded well names (A1) as some image pipelines write them."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    wells = frame["Metadata_Well"].to_numpy()[order]
    out = pd.DataFrame({"Metadata_Plate": frame["Metadata_Plate"].to_numpy()[order],
                        "Metadata_Well": [w[0] + str(int(w[1:])) for w in wells]})
    values = rng.normal(size=(len(frame), N_IMG)).astype(np.float32)
    return pd.concat([out, pd.DataFrame(values, columns=[f"mesmer_{i}" for i in range(N_IMG)])], axis=1)


@pytest.fixture(scope="module")
def trained(small_demo, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "trained"
    assert main(["correct", str(small_demo["train"]), "--out", str(run_dir), *TINY]) == 0
    return run_dir


# ----- apply ---------------------------------------------------------------------------------------
def test_cli_apply_writes_a_run_directory_with_every_metadata_column(small_demo, trained, tmp_path, capsys):
    out = tmp_path / "applied"
    assert main(["apply", str(trained), str(small_demo["new"]), "--out", str(out), "--format", "h5ad"]) == 0, \
        capsys.readouterr().err
    run = Run.open(out)
    assert run.status == "finished" and run.applied_from == str(trained.resolve())
    assert run.config["effects"] == Run.open(trained).config["effects"]
    emb = run.embedding()
    new = pd.read_csv(small_demo["new"])
    meta_cols = [c for c in new.columns if c.startswith("Metadata_")]
    assert list(emb.meta.columns) == meta_cols
    assert (emb.meta["Metadata_note"].to_numpy() == new["Metadata_note"].to_numpy()).all()
    assert set(emb.plate) == {small_demo["plates"][2]} and emb.n_wells == len(new)
    # What the dashboard pages read: the usual spaces, a verdict, the model (so a later apply works too).
    spaces = run.spaces(references=False)
    assert spaces["uncorrected"].n_wells == spaces["cpDistiller"].n_wells == len(new)
    assert run.verdict() is not None and (out / "embedding.h5ad").is_file()
    corrected = run.corrected_profiles()  # the default model's embedding is the corrected input
    assert corrected is not None and list(corrected.meta.columns) == meta_cols
    assert corrected.n_wells == len(new) and corrected.features == run.model().features
    assert run.model().features == Run.open(trained).model().features
    # The engine function gives the same embedding as the command.
    again = Run.open(trained).apply(read_csv_profiles(small_demo["new"]))
    np.testing.assert_allclose(again.X, emb.X, atol=1e-5)


def test_a_run_writes_the_corrected_profiles_in_the_input_units_with_every_metadata_column(small_demo, trained):
    run = Run.open(trained)
    corrected, given = run.corrected_profiles(), run.input()
    assert list(corrected.meta.columns) == list(given.meta.columns)
    assert (corrected.meta["Metadata_note"].to_numpy() == given.meta["Metadata_note"].to_numpy()).all()
    model = run.model()
    np.testing.assert_allclose(corrected.X, model.corrected_features(given).X, atol=1e-5)
    # the profiles moved by their technical shift (small after two epochs) and stayed in the input's units
    X = given.X[:, [given.features.index(f) for f in corrected.features]]
    assert 1e-4 < np.abs(corrected.X - X).mean() < 0.1 * np.abs(X).mean()


def test_a_latent_embedding_run_writes_no_corrected_profiles(small_demo, tmp_path):
    run_dir = tmp_path / "latent"
    assert main(["correct", str(small_demo["train"]), "--out", str(run_dir), "--output", "latent", *TINY]) == 0
    run = Run.open(run_dir)
    assert run.status == "finished" and not run.has_corrected_profiles and run.corrected_profiles() is None


def read_csv_profiles(path):
    from cpdistiller_core.io import read_profiles

    return read_profiles(path, dtype=np.float64)


def test_apply_replays_the_stored_preprocessing(small_demo, trained):
    """Applied to the plates it was trained on, the model reproduces the run's own embedding: the stored
    preprocessing (per-plate normalisation, kept features, z-score) is replayed, not refitted."""
    run = Run.open(trained)
    emb = run.apply(read_csv_profiles(small_demo["train"]))
    np.testing.assert_allclose(emb.X, run.embedding().X, atol=1e-4)


def test_apply_names_missing_features(small_demo, trained, tmp_path, capsys):
    kept = load_fitted(trained).preprocess_report.kept_features
    new = pd.read_csv(small_demo["new"]).drop(columns=kept[:2])
    path = tmp_path / "fewer.csv"
    new.to_csv(path, index=False)
    assert main(["apply", str(trained), str(path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "2 feature(s)" in err and kept[0] in err and kept[1] in err
    with pytest.raises(CpDistillerError, match="missing"):
        Run.open(trained).apply(read_csv_profiles(path))


def test_apply_refuses_a_folder_that_is_not_a_run(small_demo, tmp_path, capsys):
    assert main(["apply", str(tmp_path), str(small_demo["new"]), "--out", str(tmp_path / "o")]) == 1
    assert "not a cpDistiller run directory" in capsys.readouterr().err


def test_apply_warns_about_batches_the_model_never_saw():
    p = make_demo_screen(n_batches=3, plates_per_batch=1, n_features=20, seed=0).profiles
    batches = sorted(set(p.labels("batch")))
    seen = np.isin(p.labels("batch"), batches[:2])
    pp, _ = preprocess(p)
    model = CpDistiller(CpDistillerConfig(epochs=1, hidden_dim=16, latent_dim=4, device="cpu")).fit(
        pp.subset(seen), effects="batch,row")
    with pytest.warns(CpDistillerWarning, match=rf"1 batch\(es\) the model never saw \('{batches[2]}'\)"):
        apply_model(model, pp.subset(~seen), preprocess=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CpDistillerWarning)
        apply_model(model, pp.subset(seen), preprocess=False)


@pytest.mark.slow
def test_fit_on_8_plates_apply_to_4_of_an_unseen_batch(tmp_path):
    """Issues #19 and #12: plates 9-12 (the demo's third batch) corrected by a model fitted on plates 1-8
    and applied to them, against models fitted on all 12. Scores: 1 - variance explained by row / column
    among negative controls, on plates 9-12.

    Measured (20 epochs, hidden 64, seeds 0-2, mean of row and column): applied with the defaults
    (conditional decoder) 0.713 / 0.712 / 0.713; the paper's decoder fitted on all 12 0.685 / 0.669 /
    0.679, applied 0.663 / 0.646 / 0.660; the defaults fitted on all 12 0.860 / 0.832 / 0.849. So the
    applied model does at least as well as the paper's refit, and a refit that sees the new batch
    removes more position still (docs/model.md, "Incremental correction")."""
    p = make_demo_screen(n_features=40, seed=0).profiles
    plates = sorted(set(p.plate))
    first = np.isin(p.plate, plates[:8])
    spec = RunSpec.build({"epochs": 20, "hidden_dim": 64, "device": "cpu"}, "row,column")
    with Run.create(tmp_path / "plates_1_8") as run:
        fitted = run.correct(p.subset(first), spec)
    applied = fitted.apply(p.subset(~first))
    assert set(applied.plate) == set(plates[8:])
    pp, _ = preprocess(p, spec.preprocess)

    def scores(emb):
        emb = emb.subset(np.isin(emb.plate, plates[8:]))
        return {e: variance_explained_score(emb, e)[0] for e in ("row", "column")}

    a = scores(applied)
    paper = scores(CpDistiller(spec.config.replace(decoder_covariates="none")).fit(pp, effects=spec.effects)
                   .transform(pp))
    refit = scores(CpDistiller(spec.config).fit(pp, effects=spec.effects).transform(pp))
    assert np.mean(list(a.values())) >= np.mean(list(paper.values())) - 0.02, (a, paper)
    assert np.mean(list(refit.values())) > np.mean(list(a.values())), (a, refit)


# ----- image features (joint module) -------------------------------------------------------------
@pytest.fixture(scope="module")
def joint_run(small_demo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("img")
    table = _image_table(small_demo["frame"])
    per_plate = folder / "features"  # `cpdistiller extract` writes one file per plate
    per_plate.mkdir()
    for plate, rows in table.groupby("Metadata_Plate"):
        rows.to_parquet(per_plate / f"{plate}.parquet", index=False)
    run_dir = folder / "joint"
    assert main(["correct", str(small_demo["train"]), "--image-features", str(per_plate), "--out", str(run_dir),
                 *TINY]) == 0
    return {"run": run_dir, "features": per_plate, "table": table}


def test_correct_with_image_features_stores_what_apply_needs(joint_run):
    run = Run.open(joint_run["run"])
    assert run.config["extractor"] == str(joint_run["features"])
    meta = json.loads((run.model_dir / "model.json").read_text())
    assert meta["extractor_features"] == [f"mesmer_{i}" for i in range(N_IMG)] and meta["joint"]
    model = run.model()
    assert model.module.joint is not None


def test_apply_with_image_features_reproduces_transform(small_demo, joint_run, tmp_path, capsys):
    run = Run.open(joint_run["run"])
    images = read_image_features(joint_run["features"])
    profiles = read_csv_profiles(small_demo["train"])
    # Same wells: apply (stored preprocessing + both feature sets) gives the run's embedding.
    np.testing.assert_allclose(run.apply(profiles, extractor=images).X, run.embedding().X, atol=1e-4)
    # Reordered image columns are matched by name; the image features change the embedding.
    reordered = images.subset(features=images.features[::-1])
    np.testing.assert_allclose(run.apply(profiles, extractor=reordered).X, run.embedding().X, atol=1e-4)
    shuffled = images.with_features(images.X[np.random.default_rng(1).permutation(images.n_wells)], images.features)
    assert not np.allclose(run.apply(profiles, extractor=shuffled).X, run.embedding().X, atol=1e-3)
    # New plate from the CLI, with the image features of that plate in one file.
    one_file = tmp_path / "new_plate.parquet"
    joint_run["table"][joint_run["table"]["Metadata_Plate"] == small_demo["plates"][2]].to_parquet(one_file)
    out = tmp_path / "applied"
    assert main(["apply", str(joint_run["run"]), str(small_demo["new"]), "--image-features", str(one_file),
                 "--out", str(out)]) == 0, capsys.readouterr().err
    assert Run.open(out).embedding().n_wells == len(pd.read_csv(small_demo["new"]))


def test_apply_without_image_features_says_so(small_demo, joint_run, trained, tmp_path, capsys):
    assert main(["apply", str(joint_run["run"]), str(small_demo["new"]), "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert f"trained with {N_IMG} image features" in err and "--image-features" in err
    with pytest.raises(CpDistillerError, match="trained without image features"):
        apply_model(load_fitted(trained), read_csv_profiles(small_demo["new"]),
                    extractor=read_image_features(joint_run["features"]))
    images = read_image_features(joint_run["features"])
    with pytest.raises(CpDistillerError, match=rf"3 of the {N_IMG} image features .* missing"):
        Run.open(joint_run["run"]).apply(read_csv_profiles(small_demo["new"]),
                                         extractor=images.subset(features=images.features[3:]))


def test_correct_names_unmatched_wells(small_demo, tmp_path, capsys):
    table = _image_table(small_demo["frame"])
    lost = table.iloc[:25]
    path = tmp_path / "partial.parquet"
    table.iloc[25:].to_parquet(path)
    rc = main(["correct", str(small_demo["train"]), "--image-features", str(path), "--out", str(tmp_path / "r"),
               *TINY])
    err = capsys.readouterr().err
    assert rc == 1
    train_plates = set(small_demo["plates"][:2])
    n_lost = int(lost["Metadata_Plate"].isin(train_plates).sum())
    assert f"no image features for {n_lost} well(s)" in err
    lost = lost[lost["Metadata_Plate"].isin(train_plates)]
    assert any(f"{p} {w[0]}{int(w[1:]):02d}" in err for p, w in zip(lost["Metadata_Plate"], lost["Metadata_Well"]))
    assert Run.open(tmp_path / "r").status == "failed"  # recorded before any training


def test_read_image_features_errors(tmp_path):
    with pytest.raises(CpDistillerError, match="no image-feature files"):
        read_image_features(tmp_path)



def test_apply_replays_the_controls_additive_model_of_a_tied_row(tmp_path, capsys):
    """A run whose layout ties the row to the treatments removes the controls' additive row model instead of
    correcting the row (input_correction "auto"); applied to its own plates it reproduces its embedding,
    so the saved coefficients are replayed, and the run says what it did."""
    p = make_demo_screen(seed=3, n_batches=1, plates_per_batch=3, n_features=40, replicates_in_row=True,
                         n_layouts=1).profiles
    path = tmp_path / "tied.csv"
    p.to_frame().to_csv(path, index=False)
    run_dir = tmp_path / "run"
    assert main(["correct", str(path), "--out", str(run_dir), "--effects", "row,column", *TINY]) == 0
    assert "Instead of correcting row with the model" in capsys.readouterr().err
    run = Run.open(run_dir)
    model = load_fitted(run_dir / "model")
    assert model.train_info["effects_skipped"].keys() == {"row"} and list(model.technical.levels) == ["row"]
    assert any("Instead of correcting row with the model" in n for n in run.notes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = run.apply(read_csv_profiles(path))
    np.testing.assert_allclose(emb.X, run.embedding().X, atol=1e-4)
