"""The nn.Modules: gradient reversal, its schedule, soft label targets, GMVAE terms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cpdistiller_core.model.discriminators import (
    Discriminator,
    GradientReversal,
    grad_reverse,
    grl_lambda,
    ordinal_soft_labels,
    smooth_labels,
    soft_label_cross_entropy,
)
from cpdistiller_core.model.gmvae import GMVAE, CorrectionModule
from cpdistiller_core.model.heads import ProjectionHead


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0, 2.5])
def test_grl_identity_forward_and_reversed_scaled_backward(lam):
    torch.manual_seed(0)
    x = torch.randn(5, 4, requires_grad=True)
    w = torch.randn(5, 4)
    y = grad_reverse(x, lam)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -lam * w)
    # Module form, inside a network: the gradient reaching the input is the plain one times -lambda.
    x2 = torch.randn(3, 4, requires_grad=True)
    lin = torch.nn.Linear(4, 2)
    lin(x2).sum().backward()
    plain = x2.grad.clone()
    x2.grad = None
    lin(GradientReversal(lam)(x2)).sum().backward()
    assert torch.allclose(x2.grad, -lam * plain)


def test_grl_lambda_schedule():
    assert grl_lambda(0.0) == 0.0
    assert grl_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert grl_lambda(1.0) > 0.9999
    assert grl_lambda(0.5, gamma=10) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    values = [grl_lambda(p) for p in np.linspace(0, 1, 21)]
    assert all(b > a for a, b in zip(values, values[1:]))
    assert grl_lambda(-1.0) == 0.0 and grl_lambda(2.0) == grl_lambda(1.0)


@pytest.mark.parametrize("n", list(range(2, 25)))
def test_ordinal_soft_labels(n):
    alpha = 0.75
    theta = ordinal_soft_labels(n, alpha)
    assert theta.shape == (n, n)
    np.testing.assert_allclose(theta.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.diag(theta), alpha, atol=1e-9)
    for label in sorted({0, n // 2, n - 1}):
        row = theta[label]
        # Geometric decay away from the true label on both sides: theta_k = alpha * q^|k - l|.
        left, right = row[:label + 1][::-1], row[label:]
        for side in (left, right):
            assert np.all(np.diff(side) < 0)
        if n > 2:
            near = row[label + 1] if label + 1 < n else row[label - 1]
            q = near / alpha
            assert 0 < q < 1
            np.testing.assert_allclose(row, alpha * q ** np.abs(np.arange(n) - label), rtol=1e-9)
    assert np.all(theta > 0)


def test_ordinal_soft_labels_two_levels_closed_form():
    # alpha * (1 + q) = 1  ->  q = 1 / alpha - 1
    np.testing.assert_allclose(ordinal_soft_labels(2, 0.75), [[0.75, 0.25], [0.25, 0.75]])
    with pytest.raises(ValueError):
        ordinal_soft_labels(1)
    with pytest.raises(ValueError):
        ordinal_soft_labels(3, alpha=0.3)


def test_batch_smoothing_is_unordered():
    theta = smooth_labels(4, 0.75)
    np.testing.assert_allclose(theta.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.diag(theta), 0.75)
    off = theta[~np.eye(4, dtype=bool)]
    np.testing.assert_allclose(off, 0.25 / 3)


def test_soft_label_cross_entropy_mixes_hard_and_soft_terms():
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    target = torch.tensor([0, 1, 2, 3, 4, 2])
    table = torch.tensor(ordinal_soft_labels(5, 0.75), dtype=torch.float32)
    logp = torch.log_softmax(logits, dim=1)
    hard = -logp[torch.arange(6), target]
    soft = -(table[target] * logp).sum(1)
    got = soft_label_cross_entropy(logits, target, table, eps=0.1)
    assert torch.allclose(got, (0.9 * hard + 0.1 * soft).mean())
    assert torch.allclose(soft_label_cross_entropy(logits, target, table, eps=0.0),
                          torch.nn.functional.cross_entropy(logits, target))
    # An off-by-one prediction costs less than an off-by-four one under the soft term.
    near = torch.full((1, 5), -10.0)
    near[0, 1] = 10.0
    far = torch.full((1, 5), -10.0)
    far[0, 4] = 10.0
    t0 = torch.tensor([0])
    assert soft_label_cross_entropy(near, t0, table, 1.0) < soft_label_cross_entropy(far, t0, table, 1.0)


def test_gmvae_shapes_and_elbo_terms():
    torch.manual_seed(0)
    model = GMVAE(n_input=12, hidden=16, latent=3, n_components=4)
    x = torch.randn(7, 12)
    enc = model.encode(x, temperature=1.0)
    assert enc.logits.shape == (7, 4) and enc.z.shape == (7, 3)
    assert torch.all(enc.var > 0)
    torch.testing.assert_close(enc.y.sum(1), torch.ones(7))
    x_hat = model.decode(enc.z)
    recon, kl_z, kl_y = model.elbo_terms(x, enc, x_hat)
    torch.testing.assert_close(recon, ((x_hat - x) ** 2).sum(1))
    assert torch.all(kl_z >= -1e-5)
    # KL(q(y|x) || Uniform(K)) lies in [0, log K].
    assert torch.all(kl_y >= -1e-6) and torch.all(kl_y <= math.log(4) + 1e-6)
    # The KL to the uniform prior is computed from K: uniform logits give 0.
    enc.logits = torch.zeros(7, 4)
    _, _, kl0 = model.elbo_terms(x, enc, x_hat)
    torch.testing.assert_close(kl0, torch.zeros(7))
    # Closed form KL_z: equal distributions give 0.
    p_mu, p_var = model.prior(enc.y)
    enc.mu, enc.var = p_mu.detach(), p_var.detach()
    _, kl_same, _ = model.elbo_terms(x, enc, x_hat)
    torch.testing.assert_close(kl_same, torch.zeros(7), atol=1e-5, rtol=0)


def test_posterior_mean_is_deterministic_and_uses_final_temperature():
    torch.manual_seed(0)
    model = GMVAE(n_input=6, hidden=8, latent=2, n_components=3).eval()
    x = torch.randn(4, 6)
    a, b = model.posterior_mean(x), model.posterior_mean(x)
    assert torch.equal(a, b)
    model.temperature.fill_(0.5)
    assert not torch.equal(model.posterior_mean(x), a)
    assert "temperature" in model.state_dict()


def test_correction_module_layout():
    m = CorrectionModule(10, {"row": 8, "column": 12}, hidden=16, latent=4, n_components=3,
                         discriminator_hidden=8)
    assert set(m.discriminators) == {"row", "column"}
    assert m.discriminators["column"](torch.randn(2, 4)).shape == (2, 12)
    rep = {id(p) for mod in m.representation_modules() for p in mod.parameters()}
    assert not rep & {id(p) for p in m.discriminators.parameters()}
    assert isinstance(m.head, ProjectionHead) and m.head(torch.randn(2, 4)).shape == (2, 4)
    assert isinstance(m.discriminators["row"], Discriminator)
    assert m.embed(torch.randn(5, 10)).shape == (5, 4)
