"""Extractor inputs: synthetic Cell Painting plates (made here, reused by the other extractor tests),
LoadData / pattern manifests, illumination correction and Mesmer's channel preparation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.extractor.features import FeatureSettings
from cpdistiller_core.extractor.images import (
    CHANNELS,
    histogram_normalization,
    mesmer_preprocess,
    percentile_threshold,
    prepare_site,
    read_image,
    read_load_data,
    read_pattern_folder,
)

STAINS = ("DNA", "RNA", "ER", "AGP", "Mito")
# Blob radius and brightness per stain: nuclei small and bright, cytoplasm stains larger.
_STAIN_SHAPE = {"DNA": (3.0, 3000), "RNA": (6.0, 1500), "ER": (7.0, 1200), "AGP": (8.0, 900), "Mito": (5.0, 1100)}


def blob_site(size: int, n_cells: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One site: ``n_cells`` Gaussian blob cells in 5 stains, uint16 [size, size] each, with an
    illumination falloff towards the corners and Poisson-ish noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centres = rng.uniform(4, size - 4, size=(n_cells, 2))
    vignette = 1.0 - 0.4 * (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (size / 2) ** 2)
    out = {}
    for stain in STAINS:
        radius, peak = _STAIN_SHAPE[stain]
        img = np.zeros((size, size), np.float32)
        for cy, cx in centres:
            img += peak * rng.uniform(0.6, 1.4) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
        img = (img + 100) * vignette + rng.normal(0, 10, img.shape)
        out[stain] = np.clip(img, 0, 65535).astype(np.uint16)
    return out


def make_plate(root: Path, plate: str, wells: list[str], sites: int = 2, size: int = 96, illum: bool = True,
               seed: int = 0, shuffle_rows: bool = False) -> Path:
    """Write TIFFs, ``{plate}_Illum{ch}.npy`` and a Gallery-style LoadData CSV; returns the CSV path.

    Images go to ``root/images/{plate}``; the CSV uses relative PathName_ values and carries an extra
    metadata column (Metadata_Compound) that outputs must keep.
    """
    rng = np.random.default_rng(seed)
    img_dir = root / "images" / plate
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for w, well in enumerate(wells):
        for s in range(1, sites + 1):
            site = blob_site(size, n_cells=4 + (w + s) % 5, rng=rng)
            row = {"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": s,
                   "Metadata_Compound": f"cmpd{w % 3}"}
            for stain in STAINS:
                name = f"{plate}_{well}_s{s}_{stain}.tiff"
                tifffile.imwrite(img_dir / name, site[stain])
                row[f"FileName_Orig{stain}"] = name
                row[f"PathName_Orig{stain}"] = f"images/{plate}"
            rows.append(row)
    if illum:
        ill_dir = root / "illum"
        ill_dir.mkdir(exist_ok=True)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        for k, stain in enumerate(STAINS):
            fn = 1.0 + 0.3 * np.sin(yy / size * np.pi) * np.cos(xx / size * np.pi / (k + 1))
            np.save(ill_dir / f"{plate}_Illum{stain}.npy", fn.astype(np.float32))
    df = pd.DataFrame(rows)
    if shuffle_rows:
        df = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    csv = root / f"load_data_{plate}.csv"
    df.to_csv(csv, index=False)
    return csv


def test_load_data_resolves_paths_and_illum(tmp_path: Path) -> None:
    csv = make_plate(tmp_path, "P1", ["A01", "B02"], sites=3)
    m = read_load_data(csv, illum_dir=tmp_path / "illum")
    assert m.plates() == ["P1"] and len(m.table) == 6
    assert all(Path(p).is_file() for c in CHANNELS for p in m.paths[c])
    assert m.illum is not None and m.illum["ER"].iloc[0].endswith("P1_IllumER.npy")
    wells = m.wells()
    assert [w for _, w, _ in wells] == ["A01", "B02"]
    assert list(wells[0][2]["Metadata_Site"]) == [1, 2, 3]
    assert "Metadata_Compound" in m.table.columns


def test_load_data_errors_name_file_column_rows(tmp_path: Path) -> None:
    csv = make_plate(tmp_path, "P1", ["A01"], sites=2, illum=False)
    df = pd.read_csv(csv)
    df.drop(columns=["FileName_OrigER"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(CpDistillerError, match=r"bad\.csv.*FileName_OrigER"):
        read_load_data(tmp_path / "bad.csv")
    df2 = df.astype({"Metadata_Site": object})
    df2.loc[1, "Metadata_Site"] = "x"
    df2.to_csv(tmp_path / "bad2.csv", index=False)
    with pytest.raises(CpDistillerError, match=r"bad2\.csv, column 'Metadata_Site'.*row 1"):
        read_load_data(tmp_path / "bad2.csv")
    with pytest.raises(CpDistillerError, match="illumination file"):
        read_load_data(csv, illum_dir=tmp_path / "nowhere")


def test_pattern_folder_phenix_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "plateX"
    folder.mkdir()
    chan = {"DNA": 1, "ER": 2, "RNA": 3, "AGP": 4, "Mito": 5}
    for r, c in [(1, 1), (2, 3)]:
        for f in (1, 2):
            site = blob_site(64, 3, rng)
            for stain, ch in chan.items():
                tifffile.imwrite(folder / f"r{r:02d}c{c:02d}f{f:02d}p01-ch{ch}sk1fk1fl1.tiff", site[stain])
    # A second plane is ignored.
    tifffile.imwrite(folder / "r01c01f01p02-ch1sk1fk1fl1.tiff", site["DNA"])
    m = read_pattern_folder(folder, channel_map="DNA=1,ER=2,RNA=3")
    assert m.plates() == ["plateX"]
    assert sorted(set(m.table["Metadata_Well"])) == ["A01", "B03"]
    assert len(m.table) == 4
    assert m.paths["RNA"].str.endswith("-ch3sk1fk1fl1.tiff").all()
    with pytest.raises(CpDistillerError, match="channel-map"):
        read_pattern_folder(folder)


def test_prepare_site_illum_and_channel_mix(tmp_path: Path) -> None:
    csv = make_plate(tmp_path, "P1", ["A01"], sites=1, size=80)
    m = read_load_data(csv, illum_dir=tmp_path / "illum")
    idx = m.table.index[0]
    paths = {c: m.paths.at[idx, c] for c in CHANNELS}
    illum = {c: m.illum.at[idx, c] for c in CHANNELS}
    out = prepare_site(paths, illum, preprocess="mesmer")
    assert out.shape == (2, 80, 80) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    raw = {c: read_image(paths[c]) / np.load(illum[c]) for c in CHANNELS}
    expected = mesmer_preprocess(np.stack([raw["DNA"], (raw["RNA"] + raw["ER"]) / 2]))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # Without illumination correction the result differs.
    assert not np.allclose(prepare_site(paths, None, preprocess="mesmer"), out, atol=1e-3)


def _clahe(x: np.ndarray, k: int | None) -> np.ndarray:
    """deepcell_toolbox.histogram_normalization on one channel, written out with skimage."""
    from skimage.exposure import equalize_adapthist, rescale_intensity

    return equalize_adapthist(rescale_intensity(x.astype(np.float32), out_range=(0.0, 1.0)), kernel_size=k)


def _clip(x: np.ndarray, q: float = 99.9) -> np.ndarray:
    return np.minimum(x, np.percentile(x[x != 0], q))


def test_paper_preprocessing_is_the_reference_chain(tmp_path: Path) -> None:
    """Reference chain after the illumination step (divided here): CLAHE at skimage's default kernel
    (1/8 of the image), log1p(2 x) on DNA only, then Mesmer's clip + CLAHE(128). The default of
    prepare_site and of the extractor."""
    csv = make_plate(tmp_path, "P1", ["A01"], sites=1, size=96)
    m = read_load_data(csv, illum_dir=tmp_path / "illum")
    idx = m.table.index[0]
    paths = {c: m.paths.at[idx, c] for c in CHANNELS}
    illum = {c: m.illum.at[idx, c] for c in CHANNELS}
    raw = {c: read_image(paths[c]) / np.load(illum[c]) for c in CHANNELS}
    dna, mix = raw["DNA"], (raw["RNA"] + raw["ER"]) / 2
    want = np.stack([_clahe(_clip(np.log1p(2 * _clahe(dna, None))), 128), _clahe(_clip(_clahe(mix, None)), 128)])
    out = prepare_site(paths, illum)
    assert out.dtype == np.float32 and FeatureSettings().preprocess == "paper"
    np.testing.assert_allclose(out, want, atol=2e-6)
    # The log step reaches the nucleus channel only.
    no_log = np.stack([_clahe(_clip(_clahe(dna, None)), 128), want[1]])
    assert np.abs(out[0] - no_log[0]).max() > 1e-3
    np.testing.assert_allclose(out[1], no_log[1], atol=2e-6)


def test_illumination_multiply_reproduces_the_reference(tmp_path: Path) -> None:
    csv = make_plate(tmp_path, "P1", ["A01"], sites=1, size=80)
    m = read_load_data(csv, illum_dir=tmp_path / "illum")
    idx = m.table.index[0]
    paths = {c: m.paths.at[idx, c] for c in CHANNELS}
    illum = {c: m.illum.at[idx, c] for c in CHANNELS}
    mult = {c: read_image(paths[c]) * np.load(illum[c]) for c in CHANNELS}
    want = mesmer_preprocess(np.stack([mult["DNA"], (mult["RNA"] + mult["ER"]) / 2]))
    got = prepare_site(paths, illum, preprocess="mesmer", illum_mode="multiply")
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.allclose(got, prepare_site(paths, illum, preprocess="mesmer"), atol=1e-3)
    with pytest.raises(CpDistillerError, match="illumination mode"):
        prepare_site(paths, illum, illum_mode="subtract")
    with pytest.raises(CpDistillerError, match="pre-processing"):
        FeatureSettings(preprocess="log")


def test_mesmer_normalisation_steps() -> None:
    x = np.arange(1, 10001, dtype=np.float32).reshape(100, 100)
    x[0, 0] = 0
    t = percentile_threshold(x, 99.0)
    assert t.max() == pytest.approx(np.percentile(x[x != 0], 99.0))
    assert np.all(histogram_normalization(np.full((64, 64), 7.0, np.float32)) == 0)
    h = histogram_normalization(x, kernel_size=32)
    assert h.min() >= 0 and h.max() <= 1 and h.std() > 0.1


_DEEPCELL_SIDE = """
import sys
import numpy as np
from deepcell_toolbox.processing import histogram_normalization, percentile_threshold
x = np.load(sys.argv[1])                                # [1, H, W, 2], as npz2embedding holds it
x = histogram_normalization(x)                          # npz2embedding: no kernel size (skimage's 1/8)
x[..., 0] = np.log1p(2 * x[..., 0])                     # smooth_matrix_log(scale_factor=2)
x = histogram_normalization(percentile_threshold(x, 99.9), kernel_size=128)  # mesmer_preprocess
np.save(sys.argv[2], x)
"""


@pytest.mark.slow
def test_reference_preprocess_matches_deepcell_toolbox(tmp_path: Path) -> None:
    """Optional, in the TensorFlow/deepcell environment of test_mesmer_equivalence.py: our chain equals
    the reference's calls to deepcell_toolbox (skipped when that environment is absent)."""
    import os
    import subprocess

    from cpdistiller_core.extractor.images import reference_preprocess

    tf_python = Path(os.environ.get("CPDISTILLER_TF_PYTHON",
                                    Path(__file__).resolve().parents[1] / ".venv-tf" / "bin" / "python"))
    if not tf_python.is_file() or subprocess.run([str(tf_python), "-c", "import deepcell_toolbox"],
                                                 capture_output=True, timeout=300).returncode:
        pytest.skip(f"deepcell_toolbox environment not found at {tf_python}")
    site = blob_site(160, 12, np.random.default_rng(3))
    img = np.stack([site["DNA"], (site["RNA"].astype(np.float32) + site["ER"]) / 2]).astype(np.float32)
    np.save(tmp_path / "in.npy", img.transpose(1, 2, 0)[None])
    (tmp_path / "side.py").write_text(_DEEPCELL_SIDE)
    subprocess.run([str(tf_python), str(tmp_path / "side.py"), str(tmp_path / "in.npy"), str(tmp_path / "out.npy")],
                   check=True, timeout=600)
    want = np.load(tmp_path / "out.npy")[0].transpose(2, 0, 1)
    np.testing.assert_allclose(reference_preprocess(img), want, atol=1e-5)
