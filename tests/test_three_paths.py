"""The README's three paths on the demo, from simulated images: CellProfiler only; CellProfiler + image
features that `cpdistiller extract` computed from simulated Cell Painting images; a trained joint model
applied to a new plate with that plate's extracted features.

No Mesmer weights can be downloaded here, so extraction uses `--random-weights` (stamped into every
row); the correction then warns that the image features are no model's output.
"""

from __future__ import annotations

import pandas as pd
import pytest
from test_extractor_images import make_plate

from cpdistiller_core.cli import main
from cpdistiller_core.datasets import make_demo_screen
from cpdistiller_core.extractor.run import RANDOM_STAMP, WEIGHTS_COLUMN
from cpdistiller_core.runs import Run

TINY = ["--epochs", "2", "--batch-size", "64", "--hidden-dim", "32", "--latent-dim", "8",
        "--device", "cpu", "--min-steps", "0", "--quiet"]
EXTRACT = ["--random-weights", "--no-dask", "--tile", "64", "--pool", "2", "--device", "cpu", "--workers", "1"]


@pytest.fixture(scope="module")
def screen_with_images(tmp_path_factory):
    """Three demo plates cut to rows A-B (48 wells each), and one simulated image site per well."""
    root = tmp_path_factory.mktemp("three_paths")
    frame = make_demo_screen(seed=3, n_batches=1, plates_per_batch=3, n_features=40).profiles.to_frame()
    frame = frame[frame["Metadata_Well"].str[0].isin(list("AB"))].reset_index(drop=True)
    plates = sorted(frame["Metadata_Plate"].unique())
    frame[frame["Metadata_Plate"].isin(plates[:2])].to_csv(root / "train.csv", index=False)
    frame[frame["Metadata_Plate"] == plates[2]].to_csv(root / "new.csv", index=False)
    features = {}
    for k, plate in enumerate(plates):
        wells = list(frame.loc[frame["Metadata_Plate"] == plate, "Metadata_Well"])
        csv = make_plate(root, plate, wells, sites=1, size=64, illum=True, seed=k)
        out = root / ("features" if k < 2 else "features_new")
        assert main(["extract", str(csv), "--out", str(out), "--illum-dir", str(root / "illum"), *EXTRACT]) == 0
        features[plate] = out / f"{plate}.parquet"
    return {"root": root, "plates": plates, "features": features, "frame": frame}


def test_extracted_features_cover_every_well_and_carry_the_stamp(screen_with_images):
    for plate, path in screen_with_images["features"].items():
        table = pd.read_parquet(path)
        assert len(table) == 48 and table["Metadata_Plate"].eq(plate).all()
        assert table[WEIGHTS_COLUMN].str.startswith(RANDOM_STAMP).all()


def test_three_paths_from_simulated_images(screen_with_images, tmp_path, capsys):
    root = screen_with_images["root"]
    # 1. CellProfiler profiles only
    assert main(["correct", str(root / "train.csv"), "--out", str(tmp_path / "cp"), *TINY]) == 0
    # 2. CellProfiler + the extracted image features (a folder, one file per plate)
    assert main(["correct", str(root / "train.csv"), "--image-features", str(root / "features"),
                 "--out", str(tmp_path / "joint"), *TINY]) == 0
    assert "untrained random weights" in capsys.readouterr().err
    joint = Run.open(tmp_path / "joint")
    assert joint.model().module.joint is not None
    cp = Run.open(tmp_path / "cp")
    assert joint.embedding().n_wells == cp.embedding().n_wells == 96
    # 3. the joint model on the new plate, with that plate's extracted features
    new_plate = screen_with_images["features"][screen_with_images["plates"][2]]
    assert main(["apply", str(tmp_path / "joint"), str(root / "new.csv"), "--image-features", str(new_plate),
                 "--out", str(tmp_path / "applied")]) == 0
    applied = Run.open(tmp_path / "applied").embedding()
    assert applied.n_wells == 48 and set(applied.plate) == {screen_with_images["plates"][2]}
    # every input metadata column survives, also through the joint path
    assert set(pd.read_csv(root / "new.csv").filter(like="Metadata_").columns) <= set(applied.meta.columns)


def test_three_paths_from_the_dashboard(screen_with_images, monkeypatch):
    """The Correct page's calls: image features from a server folder of `extract` output, a joint
    correction job, then the joint model applied to the new plate with its own features."""
    from cpdistiller_core import jobs
    from cpdistiller_core.io import read_profiles
    from dashboard import state as ds

    root = screen_with_images["root"]
    monkeypatch.setenv("CPDISTILLER_DATA_ROOT", str(root))
    sid = ds.new_session_id()
    config = {"epochs": 2, "hidden_dim": 32, "latent_dim": 8, "batch_size": 64, "device": "cpu"}
    train = ds.Dataset(name="train", raw=read_profiles(root / "train.csv"))
    with pytest.warns(UserWarning, match="untrained random weights"):
        images = ds.load_image_features(str(root / "features"), session_id=sid)
    run_dirs = {}
    for name, extractor in (("cp", None), ("joint", images)):  # one job at a time per session
        run_dirs[name] = ds.launch_correction(train, config, ["row", "column"], session_id=sid, extractor=extractor)
        assert jobs.wait(run_dirs[name], timeout=600).status == jobs.DONE, (name, jobs.read_log(run_dirs[name]))
    assert Run.open(run_dirs["joint"]).model().extractor_features == images.features
    new = ds.Dataset(name="new", raw=read_profiles(root / "new.csv"))
    new_plate = screen_with_images["features"][screen_with_images["plates"][2]]
    with pytest.warns(UserWarning, match="untrained random weights"):
        new_images = ds.load_image_features(str(new_plate), session_id=sid)
    applied = ds.launch_apply(new, run_dirs["joint"], session_id=sid, extractor=new_images)
    assert jobs.wait(applied, timeout=600).status == jobs.DONE, jobs.read_log(applied)
    assert Run.open(applied).embedding().n_wells == 48
