"""Joint training module (paper eq. 3-5): both variants' shapes, PCA initialisation, attention, a training
step, the fit/save/load path and models saved before the variant was recorded."""

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
    joint_from_settings,
    pool_features,
)

C = "compact"


def _features(n: int = 64, f: int = 11664, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 5))
    basis = rng.normal(size=(5, f))
    return (latent @ basis + 0.1 * rng.normal(size=(n, f))).astype(np.float32)


def test_paper_shapes() -> None:
    """Reference code: 11,664 = 108 x 108, max-pool 9 -> 12 x 12 = 144 values, fused with CellProfiler."""
    m = JointModule(11664)
    assert m.variant == "paper" and m.n_pooled == 144 and m.fused_dim == 144
    assert m.out_dim == DEFAULT_OUT_DIM == 32 and m.pca.weight.shape == (32, 144)
    out, loss = m(torch.from_numpy(_features(8)))
    assert out.shape == (8, 144) and loss is None and torch.isfinite(out).all()


def test_paper_pooling_is_2d_max_on_the_square_view() -> None:
    E = _features(3)
    want = E.reshape(3, 12, 9, 12, 9).max(axis=(2, 4)).reshape(3, 144)  # 108 x 108 in 9 x 9 blocks
    np.testing.assert_array_equal(pool_features(E), want)
    np.testing.assert_array_equal(JointModule(11664).pooled(torch.from_numpy(E)).numpy(), want)


def test_paper_forward_is_the_reference_formula() -> None:
    """out = W2 LeakyReLU(Y1 + LeakyReLU(W1 (R * sigmoid(w * mean(R))) + b1)) + b2, computed by hand."""
    torch.manual_seed(1)
    m = JointModule(11664)
    E = _features(4)
    Ep = pool_features(E)
    lin = {k: v.detach().double().numpy() for k, v in m.state_dict().items()}

    def leaky(a: np.ndarray) -> np.ndarray:
        return np.where(a > 0, a, 0.01 * a)

    gate = 1 / (1 + np.exp(-lin["attention.conv.weight"].item() * Ep.mean(axis=1, keepdims=True)))
    y1 = Ep @ lin["pca.weight"].T + lin["pca.bias"]
    y2 = leaky((Ep * gate) @ lin["attention_linear.weight"].T + lin["attention_linear.bias"])
    want = leaky(y1 + y2) @ lin["decoder.weight"].T + lin["decoder.bias"]
    with torch.no_grad():
        got = m(torch.from_numpy(E))[0].double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_paper_non_square_input_never_pools_the_padding() -> None:
    E = _features(2, 672)  # 26 x 26 canvas, the last 4 cells unused -> 2 x 2 windows
    P = pool_features(E)
    canvas = np.full((2, 676), -np.inf)
    canvas[:, :672] = E
    np.testing.assert_array_equal(P, canvas.reshape(2, 26, 26)[:, :18, :18].reshape(2, 2, 9, 2, 9).max(axis=(2, 4))
                                  .reshape(2, 4))
    assert np.isfinite(P).all()
    assert JointModule(65).n_pooled == 1  # 9 x 9 canvas, 16 unused cells
    with pytest.raises(CpDistillerError, match="at least 65"):
        JointModule(64)


def test_compact_shapes() -> None:
    m = JointModule(11664, variant=C)
    assert m.n_pooled == 1296 and m.out_dim == m.fused_dim == DEFAULT_OUT_DIM == 32
    z, loss = m(torch.from_numpy(_features(8)))
    assert z.shape == (8, 32) and loss.shape == (8,)
    assert torch.isfinite(z).all() and (loss >= 0).all()


def test_pooling_is_windowed_mean() -> None:
    E = np.arange(2 * 20, dtype=np.float32).reshape(2, 20)
    P = pool_features(E, pool=9, variant=C)
    assert P.shape == (2, 2)
    np.testing.assert_allclose(P[0], [E[0, :9].mean(), E[0, 9:18].mean()])
    m = JointModule(20, pool=9, out_dim=3, variant=C)
    np.testing.assert_allclose(m.pooled(torch.from_numpy(E)).numpy(), P, rtol=1e-6)


def test_pca_layer_reproduces_pca() -> None:
    E = _features(40, 900)
    init = compute_pca_init(E, pool=9, out_dim=8, variant=C)
    assert init.shape == (9, 100)
    m = JointModule(900, pool=9, out_dim=8, pca_init=init, variant=C)
    with torch.no_grad():
        y1 = m.pca(m.pooled(torch.from_numpy(E))).numpy()
    ref = PCA(n_components=8, svd_solver="full").fit(pool_features(E, 9, C)).transform(pool_features(E, 9, C))
    np.testing.assert_allclose(np.abs(y1), np.abs(ref), atol=1e-3)  # PCA sign is arbitrary
    # Variance of Y1 decreases along the axes, as PCA's does.
    v = y1.var(axis=0)
    assert v[0] > v[3] > v[7]


def test_pca_init_with_few_wells_pads_zero_axes() -> None:
    init = compute_pca_init(_features(5, 90), pool=9, out_dim=8, variant=C)
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
    m = JointModule(900, pool=9, out_dim=8, pca_init=compute_pca_init(E.numpy(), 9, 8, variant=C),
                    attention_channels=4, variant=C)
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
        JointModule(5, pool=9, variant=C)
    with pytest.raises(CpDistillerError, match="variant"):
        JointModule(900, variant="avg")
    m = JointModule(90, pool=9, out_dim=4, variant=C)
    with pytest.raises(CpDistillerError, match=r"expects \[B, 90\]"):
        m(torch.zeros(2, 91))
    with pytest.raises(CpDistillerError, match="pca_init has shape"):
        m.load_pca(np.zeros((3, 10)))
    with pytest.raises(CpDistillerError, match="NaN"):
        compute_pca_init(np.full((4, 90), np.nan), 9, 4)


@pytest.mark.parametrize("variant", ["paper", "compact"])
def test_rebuild_from_config_and_state(variant: str) -> None:
    E = torch.from_numpy(_features(16, 900))
    m = JointModule(900, pool=9, out_dim=6, pca_init=compute_pca_init(E.numpy(), 9, 6, variant=variant),
                    attention_channels=1, variant=variant)
    m2 = JointModule(**m.config())
    m2.load_state_dict(m.state_dict())
    (z1, l1), (z2, l2) = m(E), m2(E)
    assert torch.equal(z1, z2) and (l1 is None if variant == "paper" else torch.equal(l1, l2))


def test_settings_without_variant_are_the_compact_module() -> None:
    """model.json files written before issue #19 hold no variant: they describe the compact module."""
    m = joint_from_settings({"n_features": 11664, "pool": 9, "out_dim": 32})
    assert m.variant == "compact" and m.fused_dim == 32 and m.config()["variant"] == "compact"
    assert joint_from_settings({"n_features": 11664, "pool": 9, "out_dim": 32, "variant": "paper"}).fused_dim == 144


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
    m = JointModule(prof.n_features, out_dim=3, pca_init=compute_pca_init(prof.X, 9, 3, variant=C), variant=C)
    z, loss = m(torch.from_numpy(prof.X))
    assert z.shape == (4, 3) and loss.shape == (4,) and torch.isfinite(z).all()
    m = JointModule(prof.n_features, out_dim=3, pca_init=compute_pca_init(prof.X, 9, 3))
    out, _ = m(torch.from_numpy(prof.X))
    assert out.shape == (4, m.n_pooled) and torch.isfinite(out).all()


# ----- through CpDistiller: fit, transform, save, load -------------------------------------------
def _screen_and_images(n_img: int = 324):
    from engine_screens import small_screen

    from cpdistiller_core.profiles import Profiles

    screen = small_screen(n_plates=2, n_features=20)
    rng = np.random.default_rng(0)
    img = Profiles(screen.meta[["Metadata_Plate", "Metadata_Well"]].reset_index(drop=True),
                   rng.normal(size=(screen.n_wells, n_img)).astype(np.float32),
                   [f"img_{i}" for i in range(n_img)],
                   screen.roles.__class__(plate="Metadata_Plate", well="Metadata_Well"))
    return screen, img


def _tiny(**kw):
    from cpdistiller_core.config import CpDistillerConfig

    base = dict(epochs=2, batch_size=64, hidden_dim=32, latent_dim=8, n_components=4, discriminator_hidden=16,
                device="cpu")
    return CpDistillerConfig(**{**base, **kw})


def test_fit_default_is_the_paper_module_and_trains_it_through_the_gmvae() -> None:
    from cpdistiller_core.api import CpDistiller

    torch.set_num_threads(1)
    screen, img = _screen_and_images()  # 324 = 18 x 18 -> 2 x 2 = 4 pooled values
    m = CpDistiller(_tiny()).fit(screen, effects="row,column", extractor=img)
    j = m.module.joint
    assert j.variant == "paper" and j.n_pooled == 4 and m.module.n_gmvae_input == 20 + 4
    assert m.joint_settings["variant"] == "paper"
    assert "joint_recon" not in m.history[-1]  # no loss of its own, as in the reference
    init = compute_pca_init(img.X, 9, 32, m.config.seed)  # what the PCA layer started from
    assert not np.allclose(j.pca.weight.detach().cpu().numpy(), init[:-1], atol=1e-4)
    Z = m.transform(screen, extractor=img).X
    shuffled = img.with_features(img.X[np.random.default_rng(1).permutation(img.n_wells)], img.features)
    assert not np.allclose(m.transform(screen, extractor=shuffled).X, Z)


def test_compact_option_and_old_saved_models_load(tmp_path) -> None:
    import json

    from cpdistiller_core.api import MODEL_FILE, CpDistiller

    torch.set_num_threads(1)
    screen, img = _screen_and_images()
    m = CpDistiller(_tiny(joint_module="compact")).fit(screen, effects="row,column", extractor=img)
    assert m.module.joint.variant == "compact" and m.module.n_gmvae_input == 20 + 32
    assert "joint_recon" in m.history[-1]
    Z = m.transform(screen, extractor=img).X
    m.save(tmp_path / "model")
    # Make it look like a model.json written before the variant was recorded.
    meta_path = tmp_path / "model" / MODEL_FILE
    meta = json.loads(meta_path.read_text())
    assert meta["joint"]["variant"] == "compact"
    del meta["joint"]["variant"], meta["config"]["joint_module"]
    meta_path.write_text(json.dumps(meta))
    old = CpDistiller.load(tmp_path / "model")
    assert old.module.joint.variant == "compact"
    np.testing.assert_array_equal(old.transform(screen, extractor=img).X, Z)
    # Fine-tuning an old model keeps its module.
    tuned = CpDistiller(_tiny(epochs=1)).fit(screen, effects="row,column", extractor=img,
                                              warm_start=tmp_path / "model")
    assert tuned.module.joint.variant == "compact" and tuned.joint_settings["variant"] == "compact"


def test_saved_settings_are_checked_for_the_variant() -> None:
    from cpdistiller_core.config import CpDistillerConfig
    from cpdistiller_core.model.bounds import check_architecture
    from cpdistiller_core.model.joint import fused_width

    assert fused_width({"n_features": 11664, "pool": 9, "out_dim": 32, "variant": "paper"}) == 144
    assert fused_width({"n_features": 11664, "pool": 9, "out_dim": 32}) == 32  # no variant: compact
    check_architecture(CpDistillerConfig(), 50, {"row": 16}, joint={"n_features": 11664, "pool": 9, "out_dim": 32,
                                                                    "variant": "paper"})
    with pytest.raises(CpDistillerError, match="variant 'mean'"):
        check_architecture(CpDistillerConfig(), 50, {"row": 16}, joint={"n_features": 11664, "pool": 9,
                                                                        "out_dim": 32, "variant": "mean"})


@pytest.mark.parametrize("variant", ["paper", "compact"])
def test_what_the_gmvae_reconstructs(variant: str) -> None:
    """Paper: no loss of its own (the GMVAE reconstructs its output with the CellProfiler features, as in
    the reference code). Compact: its own reconstruction loss is added (z_e is the GMVAE's fixed target)."""
    from cpdistiller_core.model.gmvae import CorrectionModule
    from cpdistiller_core.model.loss import LossBatch, LossContext

    torch.manual_seed(0)
    joint = JointModule(100, out_dim=3, variant=variant)  # paper: 10 x 10 -> 1 pooled value
    module = CorrectionModule(6, {}, hidden=16, latent=4, n_components=3, joint=joint)
    assert module.n_gmvae_input == 6 + joint.fused_dim
    g = torch.Generator().manual_seed(1)
    batch = LossBatch(x=torch.randn(8, 6, generator=g), n=8, labels={}, soft_targets={},
                      e=torch.randn(8, 100, generator=g))
    out = module.loss(batch, LossContext(w_elbo=1.0, w_dis=0.0, w_con=0.0))
    assert (out.joint_recon is None) == (variant == "paper")
    own = 0.0 if variant == "paper" else out.joint_recon
    torch.testing.assert_close(out.loss.detach(), out.elbo + own)
    # The paper module has no loss of its own, so every gradient it gets comes through the GMVAE.
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in joint.parameters())
