"""Adversarial part: gradient reversal, its lambda schedule, soft label targets and discriminators."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:  # type: ignore[override]
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad.neg() * ctx.lam, None


def grad_reverse(x: Tensor, lam: float) -> Tensor:
    """GRL_lambda: identity forward, gradient multiplied by -lambda backward."""
    return _GradReverse.apply(x, float(lam))


class GradientReversal(nn.Module):
    """Module form of ``grad_reverse``; ``lam`` is set by the training loop each step."""

    def __init__(self, lam: float = 1.0) -> None:
        super().__init__()
        self.lam = float(lam)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.lam)


def grl_lambda(progress: float, gamma: float = 10.0) -> float:
    """lambda = 2 / (1 + exp(-gamma * p)) - 1 for p = fraction of training done (0 -> 0, 1 -> ~1)."""
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


def _solve_q(alpha: float, n: int, label: np.ndarray, iters: int = 100) -> np.ndarray:
    """q in (0, 1) with alpha * sum_k q^|k - l| = 1 for each true label l (bisection; the sum rises with q)."""
    k = np.arange(n)[None, :]
    dist = np.abs(k - label[:, None]).astype(np.float64)
    lo, hi = np.zeros(len(label)), np.ones(len(label))
    for _ in range(iters):
        mid = (lo + hi) / 2
        total = alpha * (mid[:, None] ** dist).sum(axis=1)
        too_big = total > 1.0
        hi = np.where(too_big, mid, hi)
        lo = np.where(too_big, lo, mid)
    return (lo + hi) / 2


def ordinal_soft_labels(n: int, alpha: float = 0.75) -> np.ndarray:
    """(n, n) targets for ordered labels: row l is theta_k = alpha * q_l^|k - l|, summing to 1.

    The true label keeps ``alpha``; neighbouring positions get geometrically less, so confusing
    row C with row D costs the discriminator less than confusing it with row P.
    """
    if n < 2:
        raise ValueError("ordinal soft labels need at least 2 levels")
    if alpha * n <= 1.0:
        raise ValueError(f"alpha={alpha} too small for {n} levels: need alpha * n > 1")
    labels = np.arange(n)
    q = _solve_q(alpha, n, labels)
    dist = np.abs(labels[None, :] - labels[:, None])
    theta = alpha * q[:, None] ** dist
    return theta / theta.sum(axis=1, keepdims=True)  # removes the bisection's last ~1e-16


def smooth_labels(n: int, alpha: float = 0.75) -> np.ndarray:
    """(n, n) plain label smoothing for unordered labels (batches): alpha on the true label, rest equal."""
    if n < 2:
        raise ValueError("label smoothing needs at least 2 levels")
    theta = np.full((n, n), (1.0 - alpha) / (n - 1))
    np.fill_diagonal(theta, alpha)
    return theta


def soft_label_cross_entropy(logits: Tensor, target: Tensor, soft_targets: Tensor, eps: float = 0.1,
                             reduction: str = "mean") -> Tensor:
    """(1 - eps) * CE(one-hot) + eps * CE(soft); ``soft_targets`` is the (n, n) table indexed by ``target``."""
    logp = F.log_softmax(logits.float(), dim=-1)
    hard = F.nll_loss(logp, target, reduction="none")
    soft = -(soft_targets[target] * logp).sum(dim=-1)
    loss = (1.0 - eps) * hard + eps * soft
    return loss.mean() if reduction == "mean" else loss


class Discriminator(nn.Module):
    """Predicts one technical label from the latent code: two hidden LeakyReLU layers."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LeakyReLU(),
            nn.Linear(hidden, hidden), nn.LeakyReLU(),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
