"""Joint training module for image features (cpDistiller paper, equations 3-5).

The extractor gives one vector ``E`` per well: for Mesmer features 11,664 values = 9 sites x
(9 x 9 positions x 16 values of the tile view, see docs/extractor.md). The module refines it and the
result is concatenated with the CellProfiler features and fed to the GMVAE; everything trains together.

Two variants (``variant``; docs/model.md lists the differences):

``"paper"`` (default) follows the published implementation (``GMVAE_DL`` / ``PCAAttentionBlock``).
F > (pool - 1)^2 (65 for pool 9); S = ceil(sqrt(F)), P = (S // pool)^2, D = ``out_dim``::

    E            [B, F]
    V            [B, 1, S, S] = E laid out row-major on a square (11,664 = 108 x 108)
    E_pooled     [B, P]       = MaxPool2d(kernel = stride = pool)(V), flattened     (108 -> 12 x 12 = 144)
    Y1           [B, D]       = linear "PCA" layer (initialised from a PCA of E_pooled)
    Y2           [B, D]       = LeakyReLU(W1 · (R ⊙ σ(Conv1d(AvgPool(R)))) + b1), R = E_pooled [B, 1, P]
    out          [B, P]       = W2 · LeakyReLU(Y1 + Y2) + b2   -> concatenated with the CellProfiler features

There is no loss of its own (``recon_loss`` is None): the module learns through the GMVAE, which
reconstructs ``[x, out]``. When F is not a perfect square (the reference then stops with a
ValueError), the unused cells of the square are -inf and never win a maximum.

``"compact"`` (ours, the earlier default, kept to load old models and as an option)::

    E_pooled     [B, F // pool] = AvgPool1d(kernel = stride = pool)(E)          (11,664 -> 1,296)
    Y1           [B, D]         = linear "PCA" layer
    Y2           [B, F // pool] = R ⊙ σ(Conv1d(AvgPool(R)))  (ECA, C channels, flattened)
    z_e          [B, D]         = Y1 + (W1 · Y2 + b1)   -> concatenated with the CellProfiler features
    recon_loss   [B]            = mean((W2 · z_e + b2 - E_pooled)^2); the GMVAE sees z_e as a fixed target

With one channel (the published C = 1) the 1-D convolution across channels has kernel size 1 (ECA's
rule ``k = |(log2 C + 1) / 2|`` made odd), so the attention is a learned gate on the well's mean.
Any per-well embedding table (Mesmer features, DeepProfiler / CNN features) can be ``E``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import CpDistillerError

#: The paper's size of the PCA / attention layers (z_e in the compact variant).
DEFAULT_OUT_DIM = 32
DEFAULT_POOL = 9
#: ``"paper"``: the reference code's module; ``"compact"``: ours before issue #19.
VARIANTS = ("paper", "compact")
DEFAULT_VARIANT = "paper"
#: The variant of models saved before the variant was recorded in model.json.
LEGACY_VARIANT = "compact"


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise CpDistillerError(f"unknown joint module variant {variant!r}; choose one of {list(VARIANTS)}.")
    return variant


def square_side(n_features: int) -> int:
    """Side of the square the paper variant lays ``n_features`` values on: ceil(sqrt(n))."""
    return math.isqrt(max(int(n_features) - 1, 0)) + 1


def pooled_size(n_features: int, pool: int = DEFAULT_POOL, variant: str = DEFAULT_VARIANT) -> int:
    """Length of ``E_pooled``: ``(side // pool)^2`` (paper) or ``n_features // pool`` (compact)."""
    if _check_variant(variant) == "paper":
        return (square_side(n_features) // int(pool)) ** 2
    return int(n_features) // int(pool)


def eca_kernel_size(channels: int, b: int = 1, gamma: int = 2) -> int:
    """ECA-Net's adaptive 1-D kernel size for ``channels`` channels (always odd, at least 1)."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


def _too_few(n_features: int, pool: int, variant: str) -> CpDistillerError:
    need = (pool - 1) ** 2 + 1 if variant == "paper" else pool  # paper: a square of side >= pool
    how = f"{pool} x {pool} max-pooling window of the paper's joint module" if variant == "paper" else \
        f"pooling window ({pool})"
    return CpDistillerError(f"{n_features} image features are fewer than the {how} (need at least {need}).")


def pool_tensor(E: Tensor, pool: int = DEFAULT_POOL, variant: str = DEFAULT_VARIANT) -> Tensor:
    """E [B, F] -> E_pooled [B, P]: 2-D max-pool on the square view (paper) or 1-D mean (compact)."""
    n, f = E.shape
    if pooled_size(f, pool, variant) < 1:
        raise _too_few(f, pool, variant)
    if variant == "compact":
        return F.avg_pool1d(E.unsqueeze(1), pool, pool).squeeze(1)
    side = square_side(f)
    if side * side != f:
        E = torch.cat([E, E.new_full((n, side * side - f), float("-inf"))], dim=1)
    return F.max_pool2d(E.reshape(n, 1, side, side), pool, pool).reshape(n, -1)


def pool_features(E: np.ndarray | Tensor, pool: int = DEFAULT_POOL, variant: str = DEFAULT_VARIANT) -> np.ndarray:
    """Pool rows of E [N, F] as the joint module of ``variant`` does -> float64 [N, P].

    Compact: mean of windows of ``pool`` values (a trailing remainder is dropped, as
    ``nn.AvgPool1d`` does). Paper: maximum of ``pool`` x ``pool`` windows of the square view.
    """
    X = E.detach().cpu().numpy() if isinstance(E, Tensor) else np.asarray(E)
    X = X.astype(np.float64, copy=False)
    if X.ndim != 2:
        raise CpDistillerError(f"image features must be a 2-D table (wells x features), got shape {X.shape}.")
    return pool_tensor(torch.from_numpy(np.ascontiguousarray(X)), pool, _check_variant(variant)).numpy()


def compute_pca_init(E_train: np.ndarray | Tensor, pool: int = DEFAULT_POOL,
                     out_dim: int = DEFAULT_OUT_DIM, seed: int = 0, variant: str = DEFAULT_VARIANT) -> np.ndarray:
    """PCA of the pooled training features, packed for ``JointModule(pca_init=...)``.

    Args:
        E_train: [N, F] extractor features of the training wells (N >= 2).
        variant: the joint module's variant (it decides the pooling).
    Returns:
        [out_dim + 1, P] float32: rows 0..out_dim-1 are the principal axes (unit vectors, by decreasing
        variance), the last row is the mean of ``E_pooled``. When N or P is smaller than ``out_dim``,
        the missing axes are zero rows (those outputs start at 0 and are learnt).
    """
    from sklearn.decomposition import PCA

    X = pool_features(E_train, pool, variant)
    if X.shape[0] < 2:
        raise CpDistillerError(f"need at least 2 wells to initialise the PCA layer, got {X.shape[0]}.")
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
        raise CpDistillerError(f"image features contain NaN/inf (rows {bad[:5].tolist()}).")
    k = min(out_dim, X.shape[0] - 1, X.shape[1])
    pca = PCA(n_components=k, svd_solver="full" if max(X.shape) < 500 else "randomized", random_state=seed)
    pca.fit(X)
    out = np.zeros((out_dim + 1, X.shape[1]), dtype=np.float32)
    out[:k] = pca.components_
    out[-1] = pca.mean_
    return out


class ChannelAttention(nn.Module):
    """ECA channel attention: x ⊙ σ(Conv1d(AvgPool(x))) for x [B, C, L] -> [B, C, L]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = eca_kernel_size(channels)
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=k // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=2, keepdim=True)                     # [B, C, 1]  AvgPool over positions
        a = self.conv(s.transpose(1, 2)).transpose(1, 2)    # [B, C, 1]  1-D conv across channels
        return x * torch.sigmoid(a)


class JointModule(nn.Module):
    """Refines per-well image features E [B, n_features] into the values fused with the CellProfiler
    features (paper eq. 3-5; the module docstring gives both variants' shapes).

    ``forward`` returns ``(fused [B, fused_dim], recon_loss)``. ``recon_loss`` is None for the paper
    variant (it learns through the GMVAE's reconstruction of the fused values) and, for the compact
    variant, the per-well [B] mean squared error of reconstructing ``E_pooled`` from ``z_e``, to add
    (weighted) to the training loss while the GMVAE treats ``z_e`` as a fixed target.
    """

    def __init__(self, n_features: int, pool: int = DEFAULT_POOL, out_dim: int = DEFAULT_OUT_DIM,
                 pca_init: np.ndarray | None = None, attention_channels: int = 1,
                 variant: str = DEFAULT_VARIANT) -> None:
        super().__init__()
        self.variant = _check_variant(variant)
        self.n_features, self.pool, self.out_dim = int(n_features), int(pool), int(out_dim)
        self.n_pooled = pooled_size(n_features, pool, variant)
        if self.n_pooled < 1:
            raise _too_few(self.n_features, self.pool, variant)
        if attention_channels < 1 or self.n_pooled % attention_channels:
            raise CpDistillerError(
                f"attention_channels={attention_channels} must divide the pooled length {self.n_pooled}."
            )
        self.attention_channels = int(attention_channels)
        self.pca = nn.Linear(self.n_pooled, self.out_dim)                     # Y1
        self.attention = ChannelAttention(self.attention_channels)            # Y2
        self.attention_linear = nn.Linear(self.n_pooled, self.out_dim)        # W1, b1
        self.decoder = nn.Linear(self.out_dim, self.n_pooled)                 # W2, b2
        if pca_init is not None:
            self.load_pca(pca_init)

    @property
    def fused_dim(self) -> int:
        """Width of what is concatenated with the CellProfiler features (P for paper, D for compact)."""
        return self.n_pooled if self.variant == "paper" else self.out_dim

    def config(self) -> dict[str, int | str]:
        """Constructor arguments, to rebuild the module before ``load_state_dict`` (with pca_init=None)."""
        return {"n_features": self.n_features, "pool": self.pool, "out_dim": self.out_dim,
                "attention_channels": self.attention_channels, "variant": self.variant}

    @torch.no_grad()
    def load_pca(self, pca_init: np.ndarray) -> None:
        """Set the PCA layer from ``compute_pca_init``'s [out_dim + 1, n_pooled] array."""
        arr = np.asarray(pca_init, dtype=np.float32)
        if arr.shape != (self.out_dim + 1, self.n_pooled):
            raise CpDistillerError(
                f"pca_init has shape {arr.shape}; expected ({self.out_dim + 1}, {self.n_pooled}) "
                f"(out_dim + 1 rows: principal axes then the mean of the pooled features)."
            )
        comps, mean = torch.from_numpy(arr[:-1]), torch.from_numpy(arr[-1])
        self.pca.weight.copy_(comps)
        self.pca.bias.copy_(-(comps @ mean))

    def pooled(self, E: Tensor) -> Tensor:
        """E [B, n_features] -> E_pooled [B, n_pooled]."""
        if E.ndim != 2 or E.shape[1] != self.n_features:
            raise CpDistillerError(
                f"image features have shape {tuple(E.shape)}; the joint module expects [B, {self.n_features}]."
            )
        return pool_tensor(E, self.pool, self.variant)

    def forward(self, E: Tensor) -> tuple[Tensor, Tensor | None]:
        """E [B, n_features] -> (fused [B, fused_dim], recon_loss [B] or None)."""
        Ep = self.pooled(E)                                                   # [B, P]
        y1 = self.pca(Ep)                                                     # [B, D]
        r = Ep.reshape(Ep.shape[0], self.attention_channels, -1)              # [B, C, P/C]
        y2 = self.attention_linear(self.attention(r).reshape(Ep.shape[0], -1))  # [B, D]
        if self.variant == "paper":
            return self.decoder(F.leaky_relu(y1 + F.leaky_relu(y2))), None    # [B, P]
        z_e = y1 + y2                                                         # [B, D]
        recon_loss = (self.decoder(z_e) - Ep).pow(2).mean(dim=1)              # [B]
        return z_e, recon_loss


def joint_from_settings(settings: dict) -> JointModule:
    """Rebuild a JointModule from model.json's ``joint`` settings; files written before the variant
    was recorded hold the compact variant."""
    return JointModule(**{"variant": LEGACY_VARIANT, **settings})


def fused_width(settings: dict) -> int:
    """Width the joint module described by ``settings`` adds to the GMVAE input (no module built)."""
    s = {"variant": LEGACY_VARIANT, "pool": DEFAULT_POOL, "out_dim": DEFAULT_OUT_DIM, **settings}
    return pooled_size(s["n_features"], s["pool"], s["variant"]) if s["variant"] == "paper" else int(s["out_dim"])
