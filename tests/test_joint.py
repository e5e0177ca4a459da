"""Joint training module (paper eq. 3-5): shapes, PCA initialisation, attention, a training step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.model.joint import (
    DEFAULT_OUT_DIM,
    ChannelAttention,
    JointModule,
    compute_pca_init,
    eca_kernel_size,
    pool_features,
)


def _features(n: int = 64, f: int = 11664, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 5))
    basis = rng.normal(size=(5, f))
    return (latent @ basis + 0.1 * rng.normal(size=(n, f))).astype(np.float32)


def test_paper_shapes() -> None:
    m = JointModule(11664)
    assert m.n_pooled == 1296 and m.out_dim == DEFAULT_OUT_DIM == 32
    z, loss = m(torch.from_numpy(_features(8)))
    assert z.shape == (8, 32) and loss.shape == (8,)
    assert torch.isfinite(z).all() and (loss >= 0).all()


def test_pooling_is_windowed_mean() -> None:
    E = np.arange(2 * 20, dtype=np.float32).reshape(2, 20)
    P = pool_features(E, pool=9)
    assert P.shape == (2, 2)
    np.testing.assert_allclose(P[0], [E[0, :9].mean(), E[0, 9:18].mean()])
    m = JointModule(20, pool=9, out_dim=3)
    np.testing.assert_allclose(m.pooled(torch.from_numpy(E)).numpy(), P, rtol=1e-6)


def test_pca_layer_reproduces_pca() -> None:
    E = _features(40, 900)
    init = compute_pca_init(E, pool=9, out_dim=8)
    assert init.shape == (9, 100)
    m = JointModule(900, pool=9, out_dim=8, pca_init=init)
    with torch.no_grad():
        y1 = m.pca(m.pooled(torch.from_numpy(E))).numpy()
    ref = PCA(n_components=8, svd_solver="full").fit(pool_features(E, 9)).transform(pool_features(E, 9))
    np.testing.assert_allclose(np.abs(y1), np.abs(ref), atol=1e-3)  # PCA sign is arbitrary
    # Variance of Y1 decreases along the axes, as PCA's does.
    v = y1.var(axis=0)
    assert v[0] > v[3] > v[7]


def test_pca_init_with_few_wells_pads_zero_axes() -> None:
    init = compute_pca_init(_features(5, 90), pool=9, out_dim=8)
    assert init.shape == (9, 10)
    assert np.allclose(init[4:8], 0) and not np.allclose(init[:4], 0)


def test_channel_attention_gates_channels() -> None:
    att = ChannelAttention(4)
    assert eca_kernel_size(1) == 1 and eca_kernel_size(64) % 2 == 1
    x = torch.randn(3, 4, 10)
    y = att(x)
    ratio = y / x
    # One gate per (well, channel), in (0, 1), shared by all positions of that channel.
    assert torch.allclose(ratio, ratio[..., :1].expand_as(ratio), atol=1e-5)
    assert ((ratio > 0) & (ratio < 1)).all()


def test_training_step_reduces_reconstruction_and_updates_all_parts() -> None:
    torch.manual_seed(0)
    E = torch.from_numpy(_features(64, 900))
    m = JointModule(900, pool=9, out_dim=8, pca_init=compute_pca_init(E.numpy(), 9, 8), attention_channels=4)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    _, loss0 = m(E)
    for _ in range(60):
        z, loss = m(E)
        total = loss.mean() + 1e-3 * z.pow(2).mean()
        opt.zero_grad()
        total.backward()
        opt.step()
    _, loss1 = m(E)
    assert loss1.mean() < 0.5 * loss0.mean()
    for k, v in m.state_dict().items():
        assert not torch.equal(v, before[k]), f"{k} was not trained"


def test_bad_inputs_raise() -> None:
    with pytest.raises(CpDistillerError, match="pooling window"):
        JointModule(5, pool=9)
    m = JointModule(90, pool=9, out_dim=4)
    with pytest.raises(CpDistillerError, match=r"expects \[B, 90\]"):
        m(torch.zeros(2, 91))
    with pytest.raises(CpDistillerError, match="pca_init has shape"):
        m.load_pca(np.zeros((3, 10)))
    with pytest.raises(CpDistillerError, match="NaN"):
        compute_pca_init(np.full((4, 90), np.nan), 9, 4)


def test_rebuild_from_config_and_state() -> None:
    E = torch.from_numpy(_features(16, 900))
    m = JointModule(900, pool=9, out_dim=6, pca_init=compute_pca_init(E.numpy(), 9, 6), attention_channels=4)
    m2 = JointModule(**m.config())
    m2.load_state_dict(m.state_dict())
    z1, l1 = m(E)
    z2, l2 = m2(E)
    assert torch.equal(z1, z2) and torch.equal(l1, l2)


def test_on_extracted_features(tmp_path) -> None:
    """The extractor's per-well table feeds the module directly (random-weight features, tiny images)."""
    from test_extractor_images import make_plate

    from cpdistiller_core.extractor.features import FeatureSettings
    from cpdistiller_core.extractor.images import read_load_data
    from cpdistiller_core.extractor.run import WeightsSpec, extract_plate, read_features

    torch.set_num_threads(1)
    csv = make_plate(tmp_path, "P1", ["A01", "A02", "A03", "A04"], sites=2, size=64, illum=False)
    extract_plate(read_load_data(csv), tmp_path / "out", WeightsSpec(random=True),
                  FeatureSettings(tile=64, pool=4), device="cpu", workers=1)
    prof = read_features(tmp_path / "out")
    m = JointModule(prof.n_features, out_dim=3, pca_init=compute_pca_init(prof.X, 9, 3))
    z, loss = m(torch.from_numpy(prof.X))
    assert z.shape == (4, 3) and loss.shape == (4,) and torch.isfinite(z).all()
