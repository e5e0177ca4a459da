"""Safe to share: no pickle, bind address and authentication, the data root, no echoed cell contents,
per-session workspaces, quotas, job caps, Enrichr library names, the page icon."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core import access, jobs
from cpdistiller_core import dashboard_state as ds
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.io import write_profiles
from cpdistiller_core.profiles import Embedding, Profiles, Roles

REPO = Path(__file__).resolve().parents[1]
WELLS = [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)]


class _Exploit:
    """Unpickling this runs a command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _profiles(n_features: int = 4, seed: int = 0) -> Profiles:
    meta = pd.DataFrame({"Metadata_Plate": ["P1"] * 96, "Metadata_Well": WELLS,
                         "Metadata_Symbol": [f"G{i % 12}" for i in range(96)]})
    X = np.random.default_rng(seed).normal(size=(96, n_features))
    return Profiles(meta=meta, X=X, features=[f"Cells_f{i}" for i in range(n_features)],
                    roles=Roles(plate="Metadata_Plate", well="Metadata_Well", perturbation="Metadata_Symbol"),
                    source="screen.csv", full_precision=True)


def _old_layout_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run directory as older versions wrote it, with a planted malicious pickle as its input."""
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "runs" / "run-old"
    (run_dir / jobs.INPUTS_DIR).mkdir(parents=True)
    (run_dir / jobs.INPUTS_DIR / f"{ds.INPUT_OBJECT}.pkl").write_bytes(pickle.dumps(_Exploit(marker)))
    (run_dir / jobs.JOB_FILE).write_text(json.dumps({"target": ds.CORRECTION_TARGET, "args": [], "kwargs": {},
                                                     "objects": [ds.INPUT_OBJECT], "meta": {}}))
    (run_dir / jobs.STATE_FILE).write_text(json.dumps({"run_dir": str(run_dir), "status": "done"}))
    emb = Embedding(meta=_profiles().meta, X=np.random.default_rng(1).normal(size=(96, 3)),
                    features=["cpd_0", "cpd_1", "cpd_2"], roles=_profiles().roles, method="cpDistiller")
    write_profiles(emb, run_dir / "embedding.parquet")
    (run_dir / "config.json").write_text(json.dumps({"input": {"source": "gone.csv"}}))
    (run_dir / "progress.json").write_text(json.dumps({"status": "finished"}))
    (run_dir / "report.json").write_text(json.dumps({"status": "finished"}))
    return run_dir, marker


# ----- 1. no pickle ---------------------------------------------------------------------------------
def test_no_pickle_in_the_package_or_the_pages():
    sources = [*REPO.joinpath("cpdistiller_core").rglob("*.py"), REPO / "app.py", *REPO.joinpath("pages").glob("*.py")]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        assert "import pickle" not in text and "pickle.load" not in text and "joblib" not in text, path
        assert "allow_pickle=True" not in text, path
        for call in text.split("torch.load(")[1:]:
            assert "weights_only=True" in call[:300], path


def test_job_inputs_are_parquet_and_read_back_exactly(tmp_path):
    raw = _profiles()
    run_dir = jobs.new_run_dir(tmp_path)
    entry = jobs.save_input(run_dir, ds.INPUT_OBJECT, raw)
    (run_dir / jobs.JOB_FILE).write_text(json.dumps({"inputs": {ds.INPUT_OBJECT: entry}}))
    path = run_dir / jobs.INPUTS_DIR / f"{ds.INPUT_OBJECT}.parquet"
    assert path.read_bytes()[:4] == b"PAR1" and not list(run_dir.rglob("*.pkl"))
    back = jobs.load_input(run_dir, ds.INPUT_OBJECT)
    assert back.X.dtype == np.float64 and np.array_equal(back.X, raw.X)  # full precision kept
    assert back.roles == raw.roles and back.source == "screen.csv"
    pd.testing.assert_frame_equal(back.meta, raw.meta)
    with pytest.raises(CpDistillerError, match="cannot be handed to a job"):
        jobs.save_input(run_dir, "thing", {"a": object()})


def test_a_planted_pickle_is_never_loaded_and_the_old_layout_is_named(tmp_path):
    run_dir, marker = _old_layout_run(tmp_path)
    with pytest.raises(CpDistillerError, match="old layout"):
        ds.run_input(run_dir)  # what the Explorer, Plate maps, Gene clusters and Retrieval pages read
    with pytest.raises(CpDistillerError, match="old layout"):
        ds.load_run_view(run_dir)
    # the job runner's child side does not unpickle it either
    done = subprocess.run([sys.executable, "-m", "cpdistiller_core.jobs", str(run_dir)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1 and "old layout" in done.stderr
    # nor `cpdistiller genes RUN_DIR`
    done = subprocess.run([sys.executable, "-m", "cpdistiller_core", "genes", str(run_dir), "--out",
                           str(tmp_path / "genes"), "--no-enrichment", "--permutations", "0"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1 and "old layout" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    time.sleep(0.2)
    assert not marker.exists()
