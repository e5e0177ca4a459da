"""Dask orchestration: 2 plates on a LocalCluster of 2 workers, random weights, small images;
same result as the sequential run; a failing plate is retried and reported while the other is kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_extractor_images import make_plate

from cpdistiller_core.cli import main
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.extractor.distributed import extract_plates
from cpdistiller_core.extractor.features import FeatureSettings
from cpdistiller_core.extractor.images import read_load_data
from cpdistiller_core.extractor.run import RANDOM_STAMP, WEIGHTS_COLUMN, WeightsSpec

SMALL = FeatureSettings(tile=64, overlap=0.25, pool=4, batch_size=16)
RANDOM = WeightsSpec(random=True)


def _two_plates(root: Path) -> Path:
    a = pd.read_csv(make_plate(root, "PA", ["A01", "A02"], sites=2, size=64, seed=1))
    b = pd.read_csv(make_plate(root, "PB", ["B01", "B02", "B03"], sites=2, size=64, seed=2))
    csv = root / "load_data.csv"
    pd.concat([a, b]).to_csv(csv, index=False)
    return csv


@pytest.mark.slow
def test_dask_two_plates_two_workers(tmp_path: Path) -> None:
    csv = _two_plates(tmp_path)
    m = read_load_data(csv, illum_dir=tmp_path / "illum")
    fractions: list[float] = []
    res = extract_plates(m, tmp_path / "dask", RANDOM, SMALL, device="cpu", workers=1, n_workers=2,
                         torch_threads=1, progress=lambda f, msg: fractions.append(f))
    assert [r["plate"] for r in res] == ["PA", "PB"] and [r["wells"] for r in res] == [2, 3]
    assert fractions[-1] == 1.0
    seq = extract_plates(m, tmp_path / "seq", RANDOM, SMALL, device="cpu", workers=1, use_dask=False)
    for r, s in zip(res, seq):
        a, b = pd.read_parquet(r["path"]), pd.read_parquet(s["path"])
        assert a[WEIGHTS_COLUMN].str.startswith(RANDOM_STAMP).all()
        feats = [c for c in a.columns if c.startswith("mesmer_")]
        np.testing.assert_allclose(a[feats].to_numpy(), b[feats].to_numpy(), rtol=1e-4, atol=1e-4)
    # Rerunning skips finished plates.
    again = extract_plates(m, tmp_path / "dask", RANDOM, SMALL, device="cpu", use_dask=False)
    assert all(r["skipped"] for r in again)


@pytest.mark.slow
def test_failed_plate_is_retried_and_reported(tmp_path: Path, capsys) -> None:
    csv = _two_plates(tmp_path)
    bad = tmp_path / "images" / "PB" / "PB_B02_s1_ER.tiff"
    bad.write_bytes(b"not a tiff")
    rc = main(["extract", str(csv), "--out", str(tmp_path / "out"), "--random-weights", "--tile", "64",
               "--pool", "4", "--dask-workers", "2", "--retries", "1", "--device", "cpu", "--workers", "1",
               "--torch-threads", "1"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "1 of 2 plates failed after 1 retries" in err and "PB" in err and "PB_B02_s1_ER.tiff" in err
    assert "UNTRAINED" in err
    assert (tmp_path / "out" / "PA.parquet").is_file() and not (tmp_path / "out" / "PB.parquet").exists()
    with pytest.raises(CpDistillerError, match="convert-mesmer"):
        extract_plates(read_load_data(csv), tmp_path / "x", WeightsSpec(), SMALL)
