"""CorrectionModule.loss on its own: the documented weighted sum, gradient reversal, adversary weights,
accuracies and the triplet term, checked against hand computations on tiny batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cpdistiller_core.model.discriminators import ordinal_soft_labels, soft_label_cross_entropy
from cpdistiller_core.model.gmvae import CorrectionModule
from cpdistiller_core.model.joint import JointModule
from cpdistiller_core.model.loss import LossBatch, LossContext

N, D = 12, 6
LEVELS = {"row": 4, "column": 3}
ENCODER = ("qy_x", "logits", "qz_xy", "z_mu", "z_var")


def _module(joint: JointModule | None = None) -> CorrectionModule:
    torch.manual_seed(0)
    return CorrectionModule(D, LEVELS, hidden=16, latent=4, n_components=3, discriminator_hidden=8, joint=joint)


def _batch(seed: int = 0, weight: torch.Tensor | None = None, **kw) -> LossBatch:
    g = torch.Generator().manual_seed(seed)
    labels = {e: torch.randint(0, k, (N,), generator=g) for e, k in LEVELS.items()}
    soft = {e: torch.tensor(ordinal_soft_labels(k), dtype=torch.float32) for e, k in LEVELS.items()}
    x = kw.pop("x", None)
    x = torch.randn(N, D, generator=g) if x is None else x
    weights = kw.pop("weights", None)
    if weights is None and weight is not None:
        weights = {e: weight for e in LEVELS}
    return LossBatch(x=x, n=N, labels=labels, soft_targets=soft, adversary_weight=weights, **kw)


def _grads(module: CorrectionModule, prefix: str) -> torch.Tensor:
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                      for k, p in module.named_parameters() if k.startswith(prefix)])


def _encoder_grads(module: CorrectionModule) -> torch.Tensor:
    return torch.cat([_grads(module, f"gmvae.{name}.") for name in ENCODER])


def _run(module: CorrectionModule, batch: LossBatch, ctx: LossContext, seed: int = 1):
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = module.loss(batch, ctx)
    out.loss.backward()
    return out


def _controls() -> torch.Tensor:
    w = torch.zeros(N)
    w[::3] = 1.0
    return w


def test_total_is_the_documented_weighted_sum_of_its_parts():
    module = _module(JointModule(n_features=24, pool=4, out_dim=3, variant="compact"))
    e = torch.randn(N + 4, 24, generator=torch.Generator().manual_seed(5))
    x = torch.randn(N + 4, D, generator=torch.Generator().manual_seed(6))
    batch = _batch(x=x, e=e, anchors=torch.tensor([0, 3]))  # rows 12, 13 positives; 14, 15 negatives
    ctx = LossContext(lam=0.4, temperature=0.8, w_elbo=0.7, w_dis=3.0, w_con=5.0, triplet_margin=1.0)
    torch.manual_seed(1)
    out = module.loss(batch, ctx)
    torch.testing.assert_close(out.elbo, out.recon + out.kl_z + out.kl_y)
    torch.testing.assert_close(out.discriminator, sum(out.discriminator_per_effect.values()))
    assert out.hidden_per_effect == {}  # no adversary weights: no frozen-discriminator term
    expected = 0.7 * (out.elbo + out.joint_recon) + 3.0 * out.discriminator + 5.0 * out.triplet
    torch.testing.assert_close(out.loss.detach(), expected)
    assert out.n_triplets == 2 and out.joint_recon > 0
    terms = out.log_terms()
    assert list(terms) == ["recon", "kl_z", "kl_y", "elbo", "joint_recon", "discriminator", "triplet", "loss"]
    torch.testing.assert_close(terms["triplet"], out.triplet * 2 / N)  # weighted by anchors per well
    # Without discriminators, anchors or images, the total is the weighted ELBO alone.
    plain = CorrectionModule(D, {}, hidden=16, latent=4, n_components=3)
    only = plain.loss(_batch(), LossContext(w_elbo=0.7, w_dis=3.0, w_con=5.0))
    assert only.discriminator is None and only.triplet is None and only.joint_recon is None
    torch.testing.assert_close(only.loss.detach(), 0.7 * only.elbo)


def test_discriminator_terms_and_accuracies_equal_a_hand_computation():
    module, weight = _module(), _controls()
    batch = _batch(weight=weight)
    out = _run(module, batch, LossContext(lam=0.5, soft_label_eps=0.2))
    torch.manual_seed(1)  # the same draws: the loss's first random numbers are the encoder's
    z = module.gmvae.encode(batch.x, 1.0).z.detach()
    for ef in LEVELS:
        logits = module.discriminators[ef](z).detach()
        per_well = soft_label_cross_entropy(logits, batch.labels[ef], batch.soft_targets[ef], 0.2, reduction="none")
        torch.testing.assert_close(out.discriminator_per_effect[ef], (per_well * weight).sum() / weight.sum())
        hits = [int(logits[i].argmax()) == int(batch.labels[ef][i]) for i in range(N) if weight[i] == 1]
        assert float(out.correct[ef]) == sum(hits)
        assert float(out.accuracy[ef]) == pytest.approx(sum(hits) / len(hits))
    assert all(float(out.n_adversary[ef]) == 4.0 for ef in LEVELS)
    # Unweighted: accuracy over every well.
    out_all = _run(module, _batch(), LossContext())
    assert all(out_all.n_adversary[ef] == N for ef in LEVELS) and all(0 <= float(a) <= 1 for a in out_all.accuracy.values())


def test_gradient_reversal_sets_what_the_encoder_learns_from_the_discriminators():
    module, batch = _module(), _batch()

    def encoder_grad(lam: float) -> torch.Tensor:
        _run(module, batch, LossContext(lam=lam, w_elbo=0.0, w_con=0.0, w_dis=1.0))
        assert _grads(module, "discriminators.").abs().sum() > 0  # the discriminators always learn
        return _encoder_grads(module)

    assert torch.count_nonzero(encoder_grad(0.0)) == 0
    g_half, g_one = encoder_grad(0.5), encoder_grad(1.0)
    assert g_one.abs().sum() > 0
    torch.testing.assert_close(g_half, 0.5 * g_one)
    # lambda = 1 is exactly the reversed gradient of the discriminators' own loss.
    module.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    z = module.gmvae.encode(batch.x, 1.0).z
    sum(soft_label_cross_entropy(module.discriminators[ef](z), batch.labels[ef], batch.soft_targets[ef])
        for ef in LEVELS).backward()
    torch.testing.assert_close(g_one, -_encoder_grads(module))


def test_adversary_weight_and_encoder_all_choose_who_learns_from_which_wells():
    module, weight = _module(), _controls()
    relabelled = _batch(weight=weight)
    base = _batch(weight=weight)
    for ef in LEVELS:  # change only the labels of the wells the discriminators do not learn from
        keep = weight == 1
        relabelled.labels[ef][~keep] = (base.labels[ef][~keep] + 1) % LEVELS[ef]

    def grads(batch: LossBatch, encoder: str) -> tuple[torch.Tensor, torch.Tensor]:
        _run(module, batch, LossContext(lam=1.0, w_elbo=0.0, w_con=0.0, adversary_encoder=encoder))
        return _grads(module, "discriminators."), _encoder_grads(module)

    d_same, e_same = grads(base, "same")
    d_same2, e_same2 = grads(relabelled, "same")
    assert torch.equal(d_same, d_same2) and torch.equal(e_same, e_same2)  # unweighted labels are unused
    d_all, e_all = grads(base, "all")
    d_all2, e_all2 = grads(relabelled, "all")
    torch.testing.assert_close(d_all, d_all2)          # discriminators: weighted wells only ...
    assert not torch.allclose(e_all, e_all2)            # ... the encoder hides every well's labels
    torch.testing.assert_close(d_all, d_same)           # same discriminator loss, on a detached z
    # The encoder learns only from the frozen copies, over every well: as from unweighted discriminators.
    _, e_unweighted = grads(_batch(), "same")
    torch.testing.assert_close(e_all, e_unweighted)
    out = _run(module, base, LossContext(lam=1.0, adversary_encoder="all"))
    assert set(out.hidden_per_effect) == set(LEVELS)
    torch.testing.assert_close(out.discriminator, sum(out.discriminator_per_effect[ef] + out.hidden_per_effect[ef]
                                                      for ef in LEVELS))


def test_confusion_pulls_the_encoder_to_uniform_predictions_and_leaves_the_discriminators_alone():
    module, batch = _module(), _batch()
    confused = _run(module, batch, LossContext(lam=1.0, w_elbo=0.0, w_con=0.0, adversary_objective="confusion"))
    d_conf, e_conf = _grads(module, "discriminators."), _encoder_grads(module)
    reversed_ = _run(module, batch, LossContext(lam=1.0, w_elbo=0.0, w_con=0.0))
    torch.testing.assert_close(d_conf, _grads(module, "discriminators."))  # they learn exactly as before
    assert e_conf.abs().sum() > 0 and not torch.allclose(e_conf, _encoder_grads(module))
    torch.testing.assert_close(confused.discriminator_per_effect["row"], reversed_.discriminator_per_effect["row"])
    # the encoder's term: lam x cross-entropy of the discriminators' predictions against uniform
    torch.manual_seed(1)
    z = module.gmvae.encode(batch.x, 1.0).z
    expected = sum(-torch.log_softmax(module.discriminators[ef](z), 1).mean() for ef in LEVELS)
    torch.testing.assert_close(sum(confused.hidden_per_effect.values()), expected.detach())
    # its gradient vanishes when the discriminators predict uniformly (zero weights)
    with torch.no_grad():
        for d in module.discriminators.values():
            for p in d.parameters():
                p.zero_()
    _run(module, batch, LossContext(lam=1.0, w_elbo=0.0, w_con=0.0, adversary_objective="confusion"))
    assert torch.count_nonzero(_encoder_grads(module)) == 0


def _quiet(module: CorrectionModule) -> CorrectionModule:
    """z = mu(x) + noise of sd 1e-3, independent of the Gumbel draw: equal inputs, nearly equal codes."""
    with torch.no_grad():
        module.gmvae.qz_xy[0].weight[:, D:] = 0.0
        module.gmvae.z_var[0].weight.zero_()
        module.gmvae.z_var[0].bias.fill_(-30.0)
    return module


def test_triplet_loss_is_zero_for_equal_positives_and_far_negatives_and_the_margin_for_equal_negatives():
    module = _quiet(_module())
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(2))
    anchors = torch.tensor([0, 1, 2])
    far = torch.cat([x, x[:3], x[:3] + 50.0])
    ctx = LossContext(w_con=1.0, triplet_margin=1.0)
    out = module.loss(_batch(x=far, anchors=anchors), ctx)
    torch.manual_seed(1)
    h = module.head(module.gmvae.encode(far, 1.0).z)
    assert (h[:3] - h[N:N + 3]).norm(dim=1).max() < 1e-2   # positive == anchor
    assert (h[:3] - h[N + 3:]).norm(dim=1).min() > 1.5     # negatives beyond the margin
    assert float(out.triplet) == 0.0
    same = torch.cat([x, x[:3], x[:3]])
    out_same = module.loss(_batch(x=same, anchors=anchors), ctx)
    assert float(out_same.triplet) == pytest.approx(1.0, abs=0.02)
    # Detached pairs (pair_gradients off): the same value, and no gradient reaches the pairs' inputs.
    pairs = x[:3].repeat(2, 1).requires_grad_(True)
    detached = module.loss(_batch(x=x.clone().requires_grad_(True), anchors=anchors, pair_x=pairs), ctx)
    assert float(detached.triplet) == pytest.approx(float(out_same.triplet), abs=0.02)
    detached.loss.backward()
    assert pairs.grad is None


def test_triplet_matches_torch_reference_on_random_codes():
    module = _module()
    x = torch.randn(N + 4, D, generator=torch.Generator().manual_seed(3))
    anchors = torch.tensor([5, 7])
    torch.manual_seed(4)
    out = module.loss(_batch(x=x, anchors=anchors), LossContext(triplet_margin=0.3))
    torch.manual_seed(4)
    h = module.head(module.gmvae.encode(x, 1.0).z).detach()
    want = F.triplet_margin_loss(h[anchors], h[N:N + 2], h[N + 2:], margin=0.3)
    torch.testing.assert_close(out.triplet, want)


@pytest.mark.parametrize("view", ["sample", "mean"])
def test_the_discriminators_and_the_triplet_head_read_the_chosen_view_of_the_code(view):
    module = _module()
    x = torch.randn(N + 4, D, generator=torch.Generator().manual_seed(6))
    batch = _batch(x=x, anchors=torch.tensor([0, 3]))
    ctx = LossContext(lam=1.0, adversary_view=view, triplet_view=view, triplet_margin=1.0)
    out = _run(module, batch, ctx)
    torch.manual_seed(1)  # the same draws as the loss: Gumbel, then z noise
    enc = module.gmvae.encode(batch.x, 1.0)
    code = enc.mu if view == "mean" else enc.z
    assert not torch.allclose(enc.mu, enc.z)  # the views differ, so the test tells them apart
    expected = sum(soft_label_cross_entropy(module.discriminators[ef](code[:N]), batch.labels[ef],
                                            batch.soft_targets[ef], ctx.soft_label_eps) for ef in LEVELS)
    torch.testing.assert_close(out.discriminator, expected.detach())
    h = module.head(code)
    triplet = F.triplet_margin_loss(h[torch.tensor([0, 3])], h[N:N + 2], h[N + 2:], margin=1.0)
    torch.testing.assert_close(out.triplet, triplet.detach())


def test_adversary_weight_applies_to_the_effects_it_names_only():
    module, weight = _module(), _controls()
    row, other = "row", "column"
    base = _batch(weights={row: weight})
    relabelled = _batch(weights={row: weight})
    for ef in (row, other):  # move the labels of the wells outside the weight, for both effects
        keep = weight == 1
        relabelled.labels[ef][~keep] = (base.labels[ef][~keep] + 1) % LEVELS[ef]

    def grads(batch: LossBatch) -> dict[str, torch.Tensor]:
        out = _run(module, batch, LossContext(lam=1.0, w_elbo=0.0, w_con=0.0, adversary_encoder="all"))
        assert float(out.n_adversary[row]) == float(weight.sum()) and out.n_adversary[other] == N
        assert set(out.hidden_per_effect) == {row}  # only the weighted effect hides through a frozen copy
        return {ef: _grads(module, f"discriminators.{ef}.") for ef in (row, other)}

    g, g2 = grads(base), grads(relabelled)
    torch.testing.assert_close(g[row], g2[row])  # the weighted effect learns from its weighted wells only
    assert not torch.allclose(g[other], g2[other])  # the other learns from every well
