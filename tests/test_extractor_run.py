"""Per-plate extraction: well vectors and site order, metadata, random-weights stamp, resume, refusal,
weights conversion from Keras HDF5, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from test_extractor_images import make_plate

from cpdistiller_core.cli import main
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.extractor.convert import convert_mesmer, torch_to_keras
from cpdistiller_core.extractor.features import Extractor, FeatureSettings, site_feature_length
from cpdistiller_core.extractor.images import CHANNELS, prepare_site, read_load_data
from cpdistiller_core.extractor.mesmer import MesmerC5Reduced, random_init
from cpdistiller_core.extractor.run import (
    RANDOM_STAMP,
    SITES_COLUMN,
    WEIGHTS_COLUMN,
    WeightsSpec,
    align_features,
    extract_plate,
    load_model,
    read_features,
)

SMALL = FeatureSettings(tile=64, overlap=0.25, pool=4, batch_size=16)
RANDOM = WeightsSpec(random=True, seed=0)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _features(df: pd.DataFrame) -> np.ndarray:
    return df[[c for c in df.columns if c.startswith("mesmer_")]].to_numpy()


def test_well_vectors_site_order_metadata_and_stamp(tmp_path: Path) -> None:
    csv = make_plate(tmp_path, "P1", ["A01", "B02", "C03"], sites=3, size=80, shuffle_rows=True)
    m = read_load_data(csv, illum_dir=tmp_path / "illum")
    summary = extract_plate(m, tmp_path / "out", RANDOM, SMALL, device="cpu", workers=2)
    df = pd.read_parquet(summary["path"])
    site_len = site_feature_length(80, 80, SMALL)
    assert df.shape[0] == 3 and summary["n_features"] == 3 * site_len
    first_seen = list(dict.fromkeys(pd.read_csv(csv)["Metadata_Well"]))
    assert list(df["Metadata_Well"]) == first_seen                   # wells in order of first appearance
    # Every input column survives; per-site values joined in site order.
    for col in pd.read_csv(csv).columns:
        assert col in df.columns
    assert df["Metadata_Site"].iloc[0] == "1;2;3"
    w0 = first_seen[0]
    assert df["FileName_OrigDNA"].iloc[0] == ";".join(f"P1_{w0}_s{s}_DNA.tiff" for s in (1, 2, 3))
    assert set(df["Metadata_Compound"]) == {"cmpd0", "cmpd1", "cmpd2"}
    assert df[SITES_COLUMN].eq(3).all()
    # Random weights are stamped into every row, the Parquet metadata and the sidecar.
    assert df[WEIGHTS_COLUMN].str.startswith(RANDOM_STAMP).all()
    meta = json.loads(pq.read_schema(summary["path"]).metadata[b"cpdistiller"])
    assert meta["config"]["random_weights"] is True
    assert json.loads(Path(summary["path"]).with_suffix(".json").read_text())["config"]["random_weights"]
    # Site order: the well's vector is its sites' vectors, site 1 first.
    ex = Extractor(load_model(RANDOM), SMALL)
    rows = m.table[m.table["Metadata_Well"] == "B02"].sort_values("Metadata_Site")
    for k, idx in enumerate(rows.index):
        site = prepare_site({c: m.paths.at[idx, c] for c in CHANNELS}, {c: m.illum.at[idx, c] for c in CHANNELS})
        got = _features(df)[first_seen.index("B02"), k * site_len:(k + 1) * site_len]
        np.testing.assert_allclose(got, ex.site_features(site), rtol=1e-4, atol=1e-4)
    # Reading back gives Profiles with plate/well roles.
    prof = read_features(tmp_path / "out")
    assert prof.n_wells == 3 and prof.n_features == 3 * site_len and "Metadata_Compound" in prof.meta
    # Aligned to a CellProfiler table in another row order (and well spelling), by plate + well.
    from cpdistiller_core.profiles import Profiles, Roles

    cp_meta = pd.DataFrame({"Metadata_Plate": ["P1", "P1", "P1"], "Metadata_Well": ["C3", "A1", "B2"]})
    cp = Profiles(cp_meta, np.zeros((3, 2), np.float32), ["f1", "f2"], Roles(plate="Metadata_Plate",
                                                                              well="Metadata_Well"))
    E = align_features(prof, cp)
    order = [list(prof.well).index(w) for w in ("C03", "A01", "B02")]
    np.testing.assert_array_equal(E, prof.X[order])
    with pytest.raises(CpDistillerError, match=r"no image features for 1 of 2 wells.*'P2/A01'"):
        align_features(prof, Profiles(pd.DataFrame({"Metadata_Plate": ["P1", "P2"], "Metadata_Well": ["A01", "A01"]}),
                                      np.zeros((2, 1), np.float32), ["f"], Roles(plate="Metadata_Plate",
                                                                                 well="Metadata_Well")))


def test_resume_after_interruption(tmp_path: Path) -> None:
    wells = ["A01", "A02", "B01", "B02", "C01"]
    csv = make_plate(tmp_path, "P1", wells, sites=2, size=64, illum=False)
    m = read_load_data(csv)
    full = extract_plate(m, tmp_path / "full", RANDOM, SMALL, device="cpu", workers=1)

    class Stop(Exception):
        pass

    seen: list[str] = []

    def stop_after_two(well: str) -> None:
        seen.append(well)
        if len(seen) == 3:
            raise Stop

    with pytest.raises(Stop):
        extract_plate(m, tmp_path / "out", RANDOM, SMALL, device="cpu", workers=1, checkpoint_every=1,
                      on_well=stop_after_two)
    assert not (tmp_path / "out" / "P1.parquet").exists()
    assert len(list((tmp_path / "out" / ".partial" / "P1").glob("chunk_*.parquet"))) == 2
    # Different settings must not mix with the interrupted run.
    with pytest.raises(CpDistillerError, match="different settings"):
        extract_plate(m, tmp_path / "out", RANDOM, FeatureSettings(tile=64, pool=2), device="cpu")
    again: list[str] = []
    resumed = extract_plate(m, tmp_path / "out", RANDOM, SMALL, device="cpu", workers=1, checkpoint_every=1,
                            on_well=again.append)
    assert again == wells[2:] and resumed["resumed_wells"] == 2 and resumed["wells_computed"] == 3
    a, b = pd.read_parquet(full["path"]), pd.read_parquet(resumed["path"])
    assert list(a["Metadata_Well"]) == list(b["Metadata_Well"]) == wells
    np.testing.assert_allclose(_features(a), _features(b), rtol=1e-5, atol=1e-5)
    assert not (tmp_path / "out" / ".partial").exists()
    # A finished plate is skipped.
    assert extract_plate(m, tmp_path / "out", RANDOM, SMALL, device="cpu")["skipped"] is True


def test_refuses_without_weights(tmp_path: Path, capsys) -> None:
    csv = make_plate(tmp_path, "P1", ["A01"], sites=1, size=64, illum=False)
    with pytest.raises(CpDistillerError, match="convert-mesmer"):
        WeightsSpec().check()
    assert main(["extract", str(csv), "--out", str(tmp_path / "o"), "--no-dask"]) == 1
    err = capsys.readouterr().err
    assert "no Mesmer weights" in err and "DeepCell token" in err
    assert "MultiplexSegmentation-9.tar.gz" in err and "convert-mesmer" in err and "TensorFlow" in err
    assert not (tmp_path / "o").exists()
    assert main(["extract", str(csv), "--out", str(tmp_path / "o"), "--weights", str(tmp_path / "nope.pt")]) == 1
    assert "weights file not found" in capsys.readouterr().err


def test_site_count_mismatch_names_wells(tmp_path: Path) -> None:
    csv = make_plate(tmp_path, "P1", ["A01", "A02"], sites=2, size=64, illum=False)
    df = pd.read_csv(csv)
    df.iloc[:-1].to_csv(tmp_path / "short.csv", index=False)
    m = read_load_data(tmp_path / "short.csv")
    with pytest.raises(CpDistillerError, match=r"P1/A02 \(1 sites\)"):
        extract_plate(m, tmp_path / "o", RANDOM, SMALL, device="cpu")


def _write_keras_h5(path: Path, model: MesmerC5Reduced) -> None:
    """Keras save_weights layout: /<layer>/<layer>/<var>:0."""
    with h5py.File(path, "w") as f:
        for (layer, var), arr in torch_to_keras(model.state_dict()).items():
            f.create_dataset(f"{layer}/{layer}/{var}:0", data=arr)
        f.create_dataset("P3/P3/kernel:0", data=np.zeros((3, 3, 256, 256), np.float32))  # unused layer


def test_convert_from_keras_h5_and_extract_with_weights(tmp_path: Path) -> None:
    ref = random_init(MesmerC5Reduced(), seed=7).eval()
    _write_keras_h5(tmp_path / "mesmer.h5", ref)
    assert main(["convert-mesmer", str(tmp_path / "mesmer.h5"), str(tmp_path / "mesmer.pt")]) == 0
    model = load_model(WeightsSpec(path=str(tmp_path / "mesmer.pt")))
    for k, v in ref.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(model.state_dict()[k], v), k
    x = torch.rand(1, 2, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-5)
    # A file missing a layer is refused with the layer named.
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("conv1_conv/conv1_conv/kernel:0", data=np.zeros((7, 7, 3, 64), np.float32))
    with pytest.raises(CpDistillerError, match="missing"):
        convert_mesmer(tmp_path / "bad.h5", tmp_path / "bad.pt")
    # CLI end to end with real (converted) weights: no random stamp.
    csv = make_plate(tmp_path, "P9", ["A01", "A02"], sites=2, size=64, illum=False)
    rc = main(["extract", str(csv), "--out", str(tmp_path / "out"), "--weights", str(tmp_path / "mesmer.pt"),
               "--no-dask", "--tile", "64", "--pool", "4", "--device", "cpu", "--workers", "1"])
    assert rc == 0
    df = pd.read_parquet(tmp_path / "out" / "P9.parquet")
    assert df[WEIGHTS_COLUMN].str.startswith("mesmer:mesmer.pt:sha256=").all()
    assert not df[WEIGHTS_COLUMN].str.contains("RANDOM").any()


def test_convert_savedmodel_without_tensorflow_is_explained(tmp_path: Path) -> None:
    pytest.importorskip("pytest")
    try:
        import tensorflow  # noqa: F401
        pytest.skip("TensorFlow is installed here")
    except ImportError:
        pass
    (tmp_path / "MultiplexSegmentation").mkdir()
    with pytest.raises(CpDistillerError, match="needs TensorFlow"):
        convert_mesmer(tmp_path / "MultiplexSegmentation", tmp_path / "w.pt")
