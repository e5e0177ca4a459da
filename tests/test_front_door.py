"""The Python front door: cpd.correct / cpd.evaluate on AnnData and DataFrames, Profiles.from_frame /
from_anndata / to_anndata, Embedding.to_anndata and the .h5ad layout (embedding in .obsm)."""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from engine_screens import small_screen

import cpdistiller_core as cpd
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.io import read_profiles_with_report, write_profiles
from cpdistiller_core.profiles import Embedding
from cpdistiller_core.runs import Run

FAST = dict(epochs=1, min_steps=0, device="cpu", summary=False)


def width(info: dict) -> int:
    """Columns of the default embedding: principal components of the corrected input, at most 50 and at
    most one per feature the model kept (these test screens keep 16)."""
    return min(50, info["train"]["n_features"])


def screen_frame(n_plates: int = 3, n_features: int = 16, seed: int = 0) -> pd.DataFrame:
    """A simulated screen in pycytominer layout whose roles auto-detection finds (DMSO controls)."""
    p = small_screen(n_plates=n_plates, n_features=n_features, seed=seed)
    return p.to_frame().rename(columns={"Metadata_pert": "Metadata_broad_sample"})


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return screen_frame()


# ----- reading in-memory objects exactly as files -----------------------------------------------------
def test_frame_and_anndata_get_the_roles_and_reasons_of_the_same_file(frame, tmp_path: Path) -> None:
    frame.to_csv(tmp_path / "s.csv", index=False)
    from_file, file_report = read_profiles_with_report(tmp_path / "s.csv", emit_warnings=False)
    from_frame, frame_report = read_profiles_with_report(frame, emit_warnings=False)
    assert from_frame.roles == from_file.roles and from_frame.roles.negative_values == ("DMSO",)
    assert frame_report.role_reasons == file_report.role_reasons
    assert from_frame.features == from_file.features
    np.testing.assert_array_equal(from_frame.X, from_file.X)
    pd.testing.assert_frame_equal(from_frame.meta, from_file.meta)
    ad = anndata.AnnData(X=frame[from_file.features].to_numpy(), obs=frame.drop(columns=from_file.features),
                         var=pd.DataFrame(index=from_file.features))
    from_ad, ad_report = read_profiles_with_report(ad, emit_warnings=False)
    assert from_ad.roles == from_file.roles and ad_report.role_reasons == file_report.role_reasons
    assert from_frame.source == "DataFrame" and from_ad.source == "AnnData"


def test_in_memory_errors_are_the_file_errors(frame, tmp_path: Path) -> None:
    bad = frame.drop(columns=["Metadata_Plate"])
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(CpDistillerError) as from_file:
        read_profiles_with_report(tmp_path / "bad.csv")
    with pytest.raises(CpDistillerError) as from_frame:
        cpd.Profiles.from_frame(bad)
    assert "no plate column found" in str(from_frame.value)
    assert str(from_frame.value).replace("DataFrame", "X") == str(from_file.value).replace(
        str(tmp_path / "bad.csv"), "X")
    dup = pd.concat([frame, frame.iloc[:1]], ignore_index=True)
    with pytest.raises(CpDistillerError, match="duplicated .plate, well. pair"):
        cpd.Profiles.from_frame(dup)
    text = frame.astype({"Cells_f0": object})
    text.loc[2, "Cells_f0"] = "oops"
    with pytest.raises(CpDistillerError, match="'Cells_f0' holds text"):
        cpd.Profiles.from_frame(text)
    with pytest.raises(CpDistillerError, match="expects a pandas DataFrame"):
        cpd.Profiles.from_frame(frame.to_numpy())


def test_role_overrides_apply_to_frames(frame) -> None:
    p = quiet(cpd.Profiles.from_frame, frame, roles={"batch": None, "annotation": "Metadata_note"})
    assert p.roles.batch is None and p.roles.annotation == "Metadata_note"
    with pytest.raises(CpDistillerError, match="the plate column 'Nope' is not in the file"):
        cpd.Profiles.from_frame(frame, roles={"plate": "Nope"})


def test_anndata_with_sparse_x_duplicate_names_and_categorical_obs(frame) -> None:
    p = quiet(cpd.Profiles.from_frame, frame)
    obs = p.meta.copy()
    obs["Metadata_Batch"] = obs["Metadata_Batch"].astype("category")
    obs["Metadata_Plate"] = obs["Metadata_Plate"].astype("category")
    obs.index = [f"well{i % 10}" for i in range(len(obs))]  # duplicated obs_names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ad = anndata.AnnData(X=sp.csr_matrix(p.X), obs=obs, var=pd.DataFrame(index=p.features))
    before = ad.copy()
    q = quiet(cpd.Profiles.from_anndata, ad)
    np.testing.assert_array_equal(q.X, p.X)
    assert q.roles.plate == "Metadata_Plate" and q.roles.batch == "Metadata_Batch"
    assert list(q.meta["obs_names"][:3]) == ["well0", "well1", "well2"]  # kept as a column, like a file
    assert isinstance(q.meta["Metadata_Batch"].dtype, pd.CategoricalDtype)
    np.testing.assert_array_equal(q.batch, p.batch)
    assert (ad.obs_names == before.obs_names).all() and sp.issparse(ad.X)  # the input is untouched


def test_to_anndata_and_back_restores_roles_and_metadata(frame) -> None:
    p = quiet(cpd.Profiles.from_frame, frame, roles={"annotation": "Metadata_note"})
    ad = p.to_anndata()
    assert list(ad.obs.columns) == list(p.meta.columns) and list(ad.var_names) == p.features
    q = quiet(cpd.Profiles.from_anndata, ad)
    assert q.roles == p.roles  # stored with the object, not detected again
    pd.testing.assert_frame_equal(q.meta, p.meta)
    ad.X[0, 0] = 1e6  # a copy: the Profiles are not changed through the AnnData
    assert p.X[0, 0] != 1e6


# ----- .h5ad layout ------------------------------------------------------------------------------------
def test_embedding_h5ad_has_obsm_and_input_features(frame, tmp_path: Path) -> None:
    p = quiet(cpd.Profiles.from_frame, frame)
    Z = np.random.default_rng(1).normal(size=(p.n_wells, 50)).astype(np.float32)
    emb = Embedding.from_profiles(p, Z, "cpDistiller", provenance={"epochs": 3})
    path = write_profiles(emb, tmp_path / "emb.h5ad", input_profiles=p)
    raw = anndata.read_h5ad(path)
    np.testing.assert_array_equal(raw.obsm["X_cpdistiller"], Z)
    np.testing.assert_array_equal(np.asarray(raw.X), p.X)
    assert list(raw.var_names) == p.features and list(raw.obs.columns) == list(p.meta.columns)
    back = cpd.read_profiles(path)
    assert isinstance(back, Embedding) and back.method == "cpDistiller" and back.provenance == {"epochs": 3}
    np.testing.assert_array_equal(back.X, Z)
    assert back.features == [f"cpd_{i}" for i in range(50)] and back.roles == p.roles
    shifted = p.with_features(p.X + 1.0, p.features)
    layered = anndata.read_h5ad(write_profiles(emb, tmp_path / "layered.h5ad", input_profiles=p,
                                               layers={"corrected": shifted}))
    np.testing.assert_array_equal(np.asarray(layered.layers["corrected"]), p.X + 1.0)
    with pytest.raises(CpDistillerError, match="layer 'corrected' has 2 features"):
        write_profiles(emb, tmp_path / "bad.h5ad", input_profiles=p,
                       layers={"corrected": p.subset(features=p.features[:2])})
    with pytest.raises(CpDistillerError, match="not the wells"):
        write_profiles(emb, tmp_path / "bad.h5ad", input_profiles=p, layers={"corrected": shifted.subset(np.arange(3))})
    with pytest.raises(CpDistillerError, match="only be written to an AnnData"):
        write_profiles(emb, tmp_path / "bad.parquet", input_profiles=p, layers={"corrected": shifted})
    assert not list(tmp_path.glob("bad*"))
    no_input = anndata.read_h5ad(write_profiles(emb, tmp_path / "bare.h5ad"))
    assert no_input.n_vars == 0 and no_input.obsm["X_cpdistiller"].shape == (p.n_wells, 50)
    bare = cpd.read_profiles(tmp_path / "bare.h5ad")  # e.g. the dashboard's h5ad download
    assert isinstance(bare, Embedding) and bare.features == back.features
    np.testing.assert_array_equal(bare.X, Z)
    with pytest.raises(CpDistillerError, match="not the wells of the embedding"):
        emb.to_anndata(p.subset(rows=np.arange(10)))


# ----- correct -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corrected(frame):
    """One small training run on an AnnData with sparse X, a NaN well and duplicate obs names."""
    df = frame.copy()
    df.loc[7, "Cells_f3"] = np.nan  # preprocessing drops this well
    p = quiet(cpd.Profiles.from_frame, df)
    ad = p.to_anndata()
    ad.X = sp.csr_matrix(np.nan_to_num(ad.X, nan=0.0))
    ad.X[7, 3] = np.nan
    ad.obs["Metadata_Batch"] = ad.obs["Metadata_Batch"].astype("category")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ad.obs_names = ["w"] * ad.n_obs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = cpd.correct(ad, effects="batch,row,column", epochs=1, min_steps=0, device="cpu")
    return ad, out, [str(w.message) for w in caught]


def test_correct_anndata_in_place_with_nan_rows_for_dropped_wells(corrected) -> None:
    ad, out, caught = corrected
    assert out is ad
    Z = ad.obsm["X_cpdistiller"]
    assert Z.shape == (ad.n_obs, width(ad.uns["cpdistiller"]))
    used = ad.obs["cpdistiller_used"].to_numpy()
    assert used.dtype == bool and not used[7] and used.sum() == ad.n_obs - 1
    assert np.isnan(Z[7]).all() and np.isfinite(Z[used]).all()
    info = ad.uns["cpdistiller"]
    assert info["n_used"] == ad.n_obs - 1 and info["dropped_wells"]["0"]["row"] == 7
    assert list(info["effects"]) == ["batch", "row", "column"]
    assert info["versions"]["cpdistiller"] == cpd.__version__ and "torch" in info["versions"]
    assert info["config"]["epochs"] == 1
    assert any("dropped 1 well" in w for w in info["warnings"]) and any("dropped 1 well" in w for w in caught)
    verdict = info["did_it_help"]
    assert verdict["status"] in ("good", "warn", "bad")
    rep = verdict["checks"]["replicates"]
    assert 0 <= rep["uncorrected"] <= 1 and 0 <= rep["corrected"] <= 1 and rep["status"] in ("good", "warn", "bad")
    assert {"neighbours", "controls", "row", "column"} <= set(verdict["checks"])
    problems = [n for n, c in verdict["checks"].items() if c["status"] != "good"]
    assert all(any(f"did it help? {n}:" in w for w in caught) for n in problems)


def test_corrected_anndata_round_trips_through_h5ad(corrected, tmp_path: Path) -> None:
    ad, _, _ = corrected
    ad.write_h5ad(tmp_path / "c.h5ad")
    back = anndata.read_h5ad(tmp_path / "c.h5ad")
    assert list(back.obs.columns) == list(ad.obs.columns)
    for c in ad.obs.columns:
        pd.testing.assert_series_equal(back.obs[c], ad.obs[c], check_categorical=False, check_names=True)
    np.testing.assert_array_equal(back.obsm["X_cpdistiller"], ad.obsm["X_cpdistiller"])
    assert back.uns["cpdistiller"]["n_used"] == ad.n_obs - 1
    p = quiet(cpd.read_profiles, tmp_path / "c.h5ad")  # the cpDistiller reader keeps every obs column too
    assert {"cpdistiller_used", "Metadata_note"} <= set(p.meta.columns)


def test_correct_copy_leaves_the_input_alone(frame) -> None:
    ad = quiet(cpd.Profiles.from_frame, frame).to_anndata()
    out = quiet(cpd.correct, ad, effects="row,column", copy=True, **FAST)
    assert out is not ad and "X_cpdistiller" in out.obsm
    assert "X_cpdistiller" not in ad.obsm and "cpdistiller_used" not in ad.obs and "cpdistiller" not in ad.uns


def test_strict_refuses_dropped_wells_before_training(frame) -> None:
    df = frame.copy()
    df.loc[[4, 9], "Cells_f2"] = np.nan
    with pytest.raises(CpDistillerError, match=r"dropped 2 of 288 wells: row 4 \(plate P0 well A05\)"):
        quiet(cpd.correct, df, strict=True, **FAST)
    no_batch = frame.drop(columns=["Metadata_Batch"])
    with pytest.raises(CpDistillerError, match="no batch column"):
        quiet(cpd.correct, no_batch, strict=True, **FAST)


def test_correct_dataframe_keeps_metadata_index_and_order(frame) -> None:
    df = frame.copy()
    df.index = pd.Index([f"r{i}" for i in range(len(df))])
    df.insert(3, "Metadata_dose", np.arange(len(df)) * 0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = cpd.correct(df.drop(columns=["Metadata_Batch"]), **FAST)  # default effects without a batch column
    assert any("no batch column" in str(w.message) for w in caught)
    meta = [c for c in df.columns if c != "Metadata_Batch" and not c.startswith("Cells_")]
    names = [f"cpd_{i}" for i in range(width(out.attrs["cpdistiller"]))]
    assert list(out.columns) == meta + names + ["Metadata_cpdistiller_used"]
    assert (out.index == df.index).all()
    pd.testing.assert_frame_equal(out[meta], df[meta])
    assert out["Metadata_cpdistiller_used"].all() and np.isfinite(out[names].to_numpy()).all()
    assert out.attrs["cpdistiller"]["effects"] == ["row", "column"]


def test_correct_frame_with_non_cellprofiler_feature_names(frame) -> None:
    df = frame.rename(columns=lambda c: c.replace("Cells_", "emb_"))
    with pytest.raises(CpDistillerError, match="DataFrame: no feature columns found"):
        cpd.correct(df, **FAST)
    out = quiet(cpd.correct, df, feature_regex="^emb_", **FAST)
    assert not out.filter(like="emb_").shape[1] and out.filter(like="cpd_").shape[1] == width(out.attrs["cpdistiller"])


def test_fitted_model_applies_to_new_plates(tmp_path: Path) -> None:
    train, new = screen_frame(n_plates=3, seed=0), screen_frame(n_plates=2, seed=1)
    model = cpd.CpDistiller(epochs=1, min_steps=0, device="cpu")
    quiet(cpd.correct, train, effects="row,column", model=model, summary=False, save_model=tmp_path / "m")
    assert model.module is not None and model.preprocess_report is not None
    out = quiet(cpd.correct, new, model=model, summary=False)
    pp = quiet(model.preprocess_report.apply, quiet(cpd.Profiles.from_frame, new))
    expected = model.transform(pp).X
    names = [f"cpd_{i}" for i in range(width(out.attrs["cpdistiller"]))]
    np.testing.assert_allclose(out[names].to_numpy(), expected, rtol=1e-5, atol=1e-5)
    assert out.attrs["cpdistiller"]["model"] == "applied a fitted model"
    from_disk = quiet(cpd.correct, new, model=tmp_path / "m", summary=False)
    np.testing.assert_allclose(from_disk[names].to_numpy(), expected, rtol=1e-5, atol=1e-5)
    kept = model.preprocess_report.kept_features
    with pytest.raises(CpDistillerError, match=f"missing: .*{kept[0]}"):
        quiet(cpd.correct, new.drop(columns=[kept[0]]), model=model, summary=False)
    with pytest.raises(CpDistillerError, match="a model keeps its own settings"):
        cpd.correct(new, model=model, epochs=3)
    bare = cpd.CpDistiller.load(tmp_path / "m")  # weights only: no preprocessing known
    with pytest.raises(CpDistillerError, match="carries no preprocessing"):
        quiet(cpd.correct, new, model=bare, summary=False)


def test_evaluate_scores_the_corrected_anndata_and_frame(corrected, frame) -> None:
    ad, _, _ = corrected
    card = quiet(cpd.evaluate, ad, null_size=100, leiden_resolutions=(1.0,))
    assert card.methods == ["cpDistiller"]
    summary = card.summary()
    assert 0 <= summary.loc["cpDistiller", "technical"] <= 1 and summary.loc["cpDistiller", "n_biological"] > 0
    n = int(card.scores.query("metric == 'activity_map'")["n"].iloc[0])
    assert n > 0
    with pytest.raises(CpDistillerError, match="no .obsm\\['X_other'\\]"):
        cpd.evaluate(ad, key="X_other")
    with pytest.raises(CpDistillerError, match="unknown evaluation setting"):
        cpd.evaluate(ad, nul_size=5)


def test_correct_refuses_other_inputs() -> None:
    with pytest.raises(CpDistillerError, match="AnnData or a pandas DataFrame"):
        cpd.correct(np.zeros((3, 3)))
    with pytest.raises(CpDistillerError, match="unknown setting"):
        quiet(cpd.correct, screen_frame(n_plates=2), effects="row,column", epoch=3)


# ----- the "Done when" on the real cell-injury screen ------------------------------------------
@pytest.mark.slow
def test_done_when_on_cell_injury(shared_data: Path) -> None:
    path = shared_data / "cell_injury" / "fs_plate_holdout.csv.gz"
    adata = quiet(cpd.read_profiles, path).to_anndata()
    quiet(cpd.correct, adata, effects="batch,row,column", epochs=2, min_steps=0, summary=False)
    assert adata.obsm["X_cpdistiller"].shape == (1948, 50)
    assert adata.uns["cpdistiller"]["effects"][0] == "batch"
    df = pd.read_csv(path)
    out = quiet(cpd.correct, df, effects="batch,row,column", epochs=2, min_steps=0, summary=False)
    features = [c for c in df.columns if c.startswith(("Cells_", "Nuclei_", "Cytoplasm_"))]
    assert out.shape == (1948, df.shape[1] - len(features) + 51)
    assert out.filter(regex=r"^cpd_\d+$").shape == (1948, 50)
    pd.testing.assert_frame_equal(out[["Plate", "Well", "Compound Name"]], df[["Plate", "Well", "Compound Name"]])


# ----- the README's Python example and the docs/api.md walkthrough run as written -------------------------
def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.fixture
def docs_screen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`profiles.csv.gz` (a small simulated screen) in the working directory; training shortened to one
    epoch (the only change to the documented code: new models get epochs=1, min_steps=0)."""
    from cpdistiller_core.api import CpDistiller

    monkeypatch.chdir(tmp_path)
    screen_frame().to_csv("profiles.csv.gz", index=False)
    from cpdistiller_core import tools

    fast = dict(epochs=1, min_steps=0, device="cpu")
    new_config = tools._config
    monkeypatch.setattr(tools, "_config", lambda config: new_config({**fast, **config}))
    monkeypatch.setattr(cpd, "CpDistiller", functools.partial(CpDistiller, **fast))
    return tmp_path


def test_readme_python_example_runs(docs_screen: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = _python_blocks(section)
    assert len(blocks) == 2 and "cpd.correct(adata" in blocks[0]
    ns: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for block in blocks:
            exec(compile(block, "README.md", "exec"), ns)  # noqa: S102 - the project's own README
    k = width(ns["adata"].uns["cpdistiller"])
    assert ns["adata"].obsm["X_cpdistiller"].shape == (288, k)
    assert ns["out"].filter(regex=r"^cpd_\d+$").shape == (288, k)


@pytest.mark.slow
def test_api_walkthrough_runs(docs_screen: Path) -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text(encoding="utf-8")
    ns: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for block in _python_blocks(doc):
            exec(compile(block, "docs/api.md", "exec"), ns)  # noqa: S102 - the project's own docs
    assert ns["new_adata"].obsm["X_cpdistiller"].shape == (288, width(ns["new_adata"].uns["cpdistiller"]))
    assert list(ns["both"].summary().index) == ["uncorrected", "cpDistiller"]
    assert (docs_screen / "screen_model" / "preprocess.json").is_file()
    assert len(ns["fig"].data) > 0


# Docstrings of the top-level API: numpydoc with an Examples section (CpDistiller's trains a model, so
# its example is checked by test_api.py's doctest instead of here).
DOCSTRING_PENDING = {"CpDistiller"}


def test_top_level_api_has_numpydoc_examples() -> None:
    import doctest

    names = [n for n in cpd.__all__ if not n.isupper() and not n.startswith("_") and n not in DOCSTRING_PENDING]
    assert {"read_profiles", "preprocess", "correct", "evaluate", "Profiles", "Embedding"} <= set(names)
    lacking = [n for n in names if "Examples\n    --------" not in (getattr(cpd, n).__doc__ or "")]
    assert not lacking, f"no Examples section: {lacking}"
    for name in names:  # the examples that do not need a screen file run
        finder = doctest.DocTestFinder(recurse=False)
        for test in finder.find(getattr(cpd, name), name, globs={"cpd": cpd}):
            result = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS).run(test, out=lambda s: None)
            assert result.failed == 0, f"doctest of {name} failed"
    assert "Examples" in cpd.CpDistiller.__doc__ or ">>>" in cpd.CpDistiller.__doc__


def test_cli_format_h5ad_writes_the_anndata_layout(frame, tmp_path: Path, capsys) -> None:
    from cpdistiller_core.cli import main

    frame.to_csv(tmp_path / "s.csv", index=False)
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["correct", str(tmp_path / "s.csv"), "--effects", "row,column", "--out", str(run), "--format",
                   "h5ad", "--epochs", "1", "--min-steps", "0", "--device", "cpu", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    ad = anndata.read_h5ad(run / "embedding.h5ad")
    emb = cpd.read_profiles(run / "embedding.parquet")
    np.testing.assert_array_equal(ad.obsm["X_cpdistiller"], emb.X)
    clean, _ = quiet(cpd.preprocess, quiet(cpd.read_profiles, tmp_path / "s.csv", dtype=np.float64))
    assert list(ad.var_names) == clean.features  # the model's input: the preprocessed features
    np.testing.assert_allclose(np.asarray(ad.X), clean.X, rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(ad.X), frame[clean.features].to_numpy(), atol=1e-2)  # not the raw ones
    assert list(ad.obs.columns) == [c for c in frame.columns if not c.startswith("Cells_")]
    corrected = cpd.read_profiles(run / "corrected_profiles.parquet")  # the default output: the corrected input
    assert list(ad.layers) == ["cpdistiller_corrected"] and corrected.features == clean.features
    np.testing.assert_array_equal(np.asarray(ad.layers["cpdistiller_corrected"]), corrected.X)
    assert not np.allclose(np.asarray(ad.layers["cpdistiller_corrected"]), np.asarray(ad.X))
    elsewhere = Run.open(run).write_h5ad(tmp_path / "download.h5ad")  # the dashboard's download
    np.testing.assert_array_equal(np.asarray(anndata.read_h5ad(elsewhere).layers["cpdistiller_corrected"]),
                                  corrected.X)
    back = cpd.read_profiles(run / "embedding.h5ad")
    assert isinstance(back, Embedding) and back.roles == emb.roles
