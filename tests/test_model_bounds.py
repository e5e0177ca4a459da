"""model.json sizes are user-writable: absurd ones are a clear error before any tensor is allocated."""

from __future__ import annotations

import json
import resource
import time

import pytest
from engine_screens import small_screen

from cpdistiller_core.api import MODEL_FILE, CpDistiller
from cpdistiller_core.cli import main
from cpdistiller_core.config import CpDistillerConfig
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.model.bounds import MAX_PARAMETERS, check_architecture, estimate_parameters
from cpdistiller_core.model.gmvae import CorrectionModule

TINY = CpDistillerConfig(epochs=1, batch_size=64, hidden_dim=32, latent_dim=8, n_components=4,
                         discriminator_hidden=16, device="cpu", min_steps=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    screen = small_screen(n_plates=2, n_features=20, seed=3)
    path = tmp_path_factory.mktemp("model") / "m"
    CpDistiller(TINY).fit(screen, effects="row,column").save(path)
    return path, screen


def _edit(src, dst, **config):
    import shutil

    shutil.copytree(src, dst)
    meta = json.loads((dst / MODEL_FILE).read_text())
    meta["config"].update(config)
    (dst / MODEL_FILE).write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize("field,value", [("hidden_dim", 1e7), ("hidden_dim", 10_000_000), ("latent_dim", 10**9),
                                         ("n_components", 0), ("discriminator_hidden", 2.5)])
def test_absurd_sizes_in_model_json_fail_before_allocating(saved, tmp_path, field, value):
    path = _edit(saved[0], tmp_path / "bad", **{field: value})
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    with pytest.raises(CpDistillerError) as exc:
        CpDistiller.load(path)
    assert time.monotonic() - t0 < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200_000  # KiB: nothing big allocated
    msg = str(exc.value)
    assert MODEL_FILE in msg and field in msg


def test_warm_start_from_a_bad_model_json_is_one_line(saved, tmp_path, capsys):
    path = _edit(saved[0], tmp_path / "bad", hidden_dim=1e7)
    data = tmp_path / "screen.parquet"
    from cpdistiller_core.io import write_profiles

    write_profiles(saved[1], data)
    assert main(["correct", str(data), "--out", str(tmp_path / "run"), "--warm-start", str(path),
                 "--epochs", "1", "--device", "cpu", "--quiet", "--no-preprocess"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "hidden_dim = 10,000,000 is outside the sane range" in err[0]


def test_the_saved_model_itself_loads(saved):
    model = CpDistiller.load(saved[0])
    assert model.config.hidden_dim == 32


def test_estimate_matches_the_real_module():
    levels = {"row": 16, "column": 24, "batch": 3}
    module = CorrectionModule(300, levels, 64, 12, 5, 20)
    n = sum(p.numel() for p in module.parameters())
    assert estimate_parameters(300, levels, 64, 12, 5, 20) == n


def test_total_size_is_bounded_even_when_each_field_is_in_range():
    cfg = CpDistillerConfig(hidden_dim=16_384, latent_dim=50)
    with pytest.raises(CpDistillerError, match=f"limit {MAX_PARAMETERS:,}"):
        check_architecture(cfg, 100_000, {"row": 16}, source="model.json")
    check_architecture(CpDistillerConfig(), 5_000, {"row": 16, "column": 24})  # the paper's sizes pass
    with pytest.raises(CpDistillerError, match="number of row levels"):
        check_architecture(CpDistillerConfig(), 50, {"row": 10**7})
    with pytest.raises(CpDistillerError, match="joint out_dim"):
        check_architecture(CpDistillerConfig(), 50, {"row": 16}, joint={"n_features": 4096, "pool": 4,
                                                                         "out_dim": 10**6})
