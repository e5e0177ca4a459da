"""The training loop: schedules, EMA, batching, device choice, and that training removes position effects."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from engine_screens import small_screen
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from cpdistiller_core.api import CpDistiller
from cpdistiller_core.config import CpDistillerConfig
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.train import (
    EMA,
    _batches,
    amp_settings,
    select_device,
    steps_per_epoch,
    temperature_at,
)


def test_device_selection_and_amp():
    assert select_device("cpu").type == "cpu"
    auto = select_device("auto")
    if torch.cuda.is_available():
        assert auto.type == "cuda"
    else:
        assert auto.type in ("mps", "cpu")
        with pytest.raises(CpDistillerError, match="cuda"):
            select_device("cuda")
    assert amp_settings(torch.device("cuda"), False) == (None, False)
    assert amp_settings(torch.device("cpu"), False) == (None, False)


def test_cpu_autocast_only_with_native_bf16(monkeypatch):
    import cpdistiller_core.train as train_mod

    monkeypatch.setattr(train_mod, "cpu_has_bf16", lambda: True)
    assert amp_settings(torch.device("cpu"), True) == (torch.bfloat16, False)
    monkeypatch.setattr(train_mod, "cpu_has_bf16", lambda: False)
    assert amp_settings(torch.device("cpu"), True) == (None, False)
    assert amp_settings(torch.device("mps"), True) == (None, False)


def test_temperature_schedule():
    cfg = CpDistillerConfig(epochs=200)
    assert temperature_at(cfg, 0) == 1.0
    assert temperature_at(cfg, 10) == pytest.approx(math.exp(-0.125))
    assert temperature_at(cfg, 199) == 0.5
    values = [temperature_at(cfg, e) for e in range(200)]
    assert all(b <= a for a, b in zip(values, values[1:]))


def test_batches_cover_every_well_once_per_epoch():
    rng = np.random.default_rng(0)
    cfg = CpDistillerConfig(batch_size=64, min_steps=0)
    spe = steps_per_epoch(1000, cfg)
    batches = _batches(1000, spe, 64, rng)
    assert len(batches) == 16
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert min(len(b) for b in batches) >= 62  # no size-1 tail batch
    # min_steps stretches short epochs by reusing wells.
    cfg2 = CpDistillerConfig(batch_size=64, epochs=10, min_steps=500)
    assert steps_per_epoch(100, cfg2) == 50
    many = _batches(100, 50, 64, rng)
    assert len(many) == 50 and all(len(b) == 64 for b in many)


def test_ema_update_math():
    lin = torch.nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema = EMA([lin])
    with torch.no_grad():
        lin.weight.fill_(3.0)
    ema.update(0.75)
    ema.update(0.75)
    # 1 -> 0.75*1 + 0.25*3 = 1.5 -> 0.75*1.5 + 0.25*3 = 1.875
    ema.copy_to()
    torch.testing.assert_close(lin.weight, torch.full((2, 2), 1.875))
    assert CpDistillerConfig(epochs=50).ema_alpha == pytest.approx(0.9)


def _discriminability(E: np.ndarray, y: np.ndarray) -> float:
    return float(cross_val_score(LogisticRegression(max_iter=300), E, y, cv=3).mean())


@pytest.mark.slow
def test_training_reduces_row_and_column_discriminability():
    p = small_screen(n_plates=4, position_strength=2.0, seed=0)
    X = (p.X - p.X.mean(0)) / p.X.std(0)
    uncorrected = PCA(10, random_state=0).fit_transform(X)
    model = CpDistiller(CpDistillerConfig(epochs=40, batch_size=32, device="cpu", seed=0, min_steps=0))
    model.fit(p, effects="row,column")
    Z = PCA(10, random_state=0).fit_transform(model.transform(p).X)
    for labels in (p.row, p.col):
        before, after = _discriminability(uncorrected, labels), _discriminability(Z, labels)
        assert after < before - 0.05, (before, after)
    # The training log is complete and the schedules move the right way.
    h = model.history
    assert len(h) == 40
    assert h[0]["lambda"] < h[-1]["lambda"] <= 1.0
    assert h[0]["temperature"] == 1.0 and h[-1]["temperature"] < 1.0
    assert {"recon", "kl_z", "kl_y", "discriminator", "triplet", "acc_row", "acc_column"} <= set(h[-1])
    assert h[-1]["recon"] < h[0]["recon"]


def test_same_seed_same_embedding_on_cpu():
    p = small_screen(n_plates=2, n_features=16, seed=1)
    cfg = CpDistillerConfig(epochs=2, batch_size=64, hidden_dim=32, latent_dim=8, device="cpu", seed=3,
                            min_steps=0)
    a = CpDistiller(cfg).fit(p, effects="row,column").transform(p).X
    b = CpDistiller(cfg).fit(p, effects="row,column").transform(p).X
    np.testing.assert_array_equal(a, b)
    c = CpDistiller(cfg.replace(seed=4)).fit(p, effects="row,column").transform(p).X
    assert not np.array_equal(a, c)


def test_detached_pairs_option_trains():
    p = small_screen(n_plates=2, n_features=16, seed=1)
    cfg = CpDistillerConfig(epochs=2, batch_size=64, hidden_dim=32, latent_dim=8, device="cpu",
                            pair_gradients=False, min_steps=0)
    m = CpDistiller(cfg).fit(p, effects="row,column")
    assert m.history[-1]["triplets"] > 0 and math.isfinite(m.history[-1]["triplet"])
    assert np.isfinite(m.transform(p).X).all()


def _train_masked(labels: np.ndarray, weight: np.ndarray | None, encoder: str = "same") -> dict[str, torch.Tensor]:
    from cpdistiller_core.model.discriminators import ordinal_soft_labels
    from cpdistiller_core.model.gmvae import CorrectionModule
    from cpdistiller_core.train import TrainData, train

    cfg = CpDistillerConfig(epochs=3, batch_size=32, hidden_dim=16, latent_dim=4, device="cpu", seed=0,
                            min_steps=0, amp=False, adversary_encoder=encoder)
    torch.manual_seed(0)
    module = CorrectionModule(6, {"row": 4}, 16, 4, 3, 8)
    X = torch.from_numpy(np.random.default_rng(0).normal(size=(96, 6)).astype(np.float32))
    data = TrainData(X=X, labels={"row": torch.from_numpy(labels)},
                     soft_targets={"row": torch.tensor(ordinal_soft_labels(4), dtype=torch.float32)},
                     adversary_weight={} if weight is None else {"row": torch.from_numpy(weight)})
    result = train(module, data, cfg, torch.device("cpu"))
    assert all(0.0 <= h["acc_row"] <= 1.0 for h in result.history)
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_adversary_weight_restricts_the_discriminators_to_the_weighted_wells():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 96)
    control = np.zeros(96, dtype=np.float32)
    control[::4] = 1.0
    relabelled = labels.copy()
    relabelled[control == 0] = rng.integers(0, 4, int((control == 0).sum()))
    base = _train_masked(labels, control)
    # Labels of unweighted wells do not matter; labels of weighted wells do, and so does the mask.
    same = _train_masked(relabelled, control)
    assert all(torch.equal(base[k], same[k]) for k in base)
    moved = labels.copy()
    moved[control == 1] = (moved[control == 1] + 1) % 4
    assert any(not torch.equal(base[k], v) for k, v in _train_masked(moved, control).items())
    assert any(not torch.equal(base[k], v) for k, v in _train_masked(labels, None).items())


def test_adversary_wells_negcon_needs_controls():
    p = small_screen(n_plates=2, n_features=16, seed=1, with_controls=False)
    cfg = CpDistillerConfig(epochs=1, batch_size=64, hidden_dim=32, latent_dim=8, device="cpu",
                            adversary_wells="negcon", sphering="none", min_steps=0)
    with pytest.raises(CpDistillerError, match=r"adversary_wells .negcon. needs negative-control wells at 2\+ levels"):
        CpDistiller(cfg).fit(p, effects="row,column")


def test_adversary_encoder_all_hides_every_wells_labels_from_frozen_discriminators():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 96)
    control = np.zeros(96, dtype=np.float32)
    control[::4] = 1.0
    relabelled = labels.copy()
    relabelled[control == 0] = rng.integers(0, 4, int((control == 0).sum()))
    base = _train_masked(labels, control, "all")
    # the encoder now learns from the treated wells' labels too (through frozen discriminators) ...
    changed = _train_masked(relabelled, control, "all")
    assert any(not torch.equal(base[k], changed[k]) for k in base if not k.startswith("discriminators."))
    # ... and differs from the controls-only adversary
    assert any(not torch.equal(base[k], v) for k, v in _train_masked(labels, control, "same").items())
