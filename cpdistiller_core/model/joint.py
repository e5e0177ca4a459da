"""Joint training module for image features (cpDistiller paper, equations 3-5).

The extractor gives one vector ``E`` per well (11,664 values for Mesmer features: 9 sites x
36 x 36 x 1). The module refines it into ``z_e`` (``out_dim`` values) that is concatenated with the
CellProfiler features and fed to the GMVAE; everything is trained together.

Shapes (B = wells in the batch, F = ``n_features``, P = F // pool, D = ``out_dim``, C = attention
channels, P must be divisible by C):

    E            [B, F]
    E_pooled     [B, P]      = AvgPool1d(kernel = stride = pool)(E)            (eq. 3)
    Y1           [B, D]      = linear "PCA" layer, initialised from a PCA of E_pooled
    R            [B, C, P/C] = Reshape(E_pooled)
    Y2           [B, P]      = R ⊙ σ(Conv1d(AvgPool(R)))  (ECA channel attention, flattened)  (eq. 4)
    z_e          [B, D]      = Y1 + (W1 · Y2 + b1)                                          (eq. 5)
    recon        [B, P]      = decoder(z_e), a linear map back to E_pooled
    recon_loss   [B]         = mean over P of (recon - E_pooled)^2

The published implementation reshapes into a single channel (C = 1); with one channel the 1-D
convolution over channels has kernel size 1 (ECA's rule ``k = |(log2 C + 1) / 2|`` made odd), so the
attention is a learned gate on the well's mean response. ``attention_channels`` allows more.
Any per-well embedding table (Mesmer features, DeepProfiler / CNN features) can be ``E``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import CpDistillerError

#: The paper's size of the refined image representation z_e.
DEFAULT_OUT_DIM = 32
DEFAULT_POOL = 9


def pooled_size(n_features: int, pool: int = DEFAULT_POOL) -> int:
    """Length of ``E_pooled`` for ``n_features`` inputs: ``n_features // pool``."""
    return int(n_features) // int(pool)


def eca_kernel_size(channels: int, b: int = 1, gamma: int = 2) -> int:
    """ECA-Net's adaptive 1-D kernel size for ``channels`` channels (always odd, at least 1)."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


def pool_features(E: np.ndarray | Tensor, pool: int = DEFAULT_POOL) -> np.ndarray:
    """Average-pool rows of E [N, F] in windows of ``pool`` (kernel = stride) -> [N, F // pool].

    A trailing remainder of fewer than ``pool`` values is dropped, as ``nn.AvgPool1d`` does.
    """
    X = E.detach().cpu().numpy() if isinstance(E, Tensor) else np.asarray(E)
    X = X.astype(np.float64, copy=False)
    if X.ndim != 2:
        raise CpDistillerError(f"image features must be a 2-D table (wells x features), got shape {X.shape}.")
    P = pooled_size(X.shape[1], pool)
    if P < 1:
        raise CpDistillerError(f"{X.shape[1]} image features are fewer than the pooling window ({pool}).")
    return X[:, : P * pool].reshape(X.shape[0], P, pool).mean(axis=2)


def compute_pca_init(E_train: np.ndarray | Tensor, pool: int = DEFAULT_POOL,
                     out_dim: int = DEFAULT_OUT_DIM, seed: int = 0) -> np.ndarray:
    """PCA of the pooled training features, packed for ``JointModule(pca_init=...)``.

    Args:
        E_train: [N, F] extractor features of the training wells (N >= 2).
    Returns:
        [out_dim + 1, P] float32: rows 0..out_dim-1 are the principal axes (unit vectors, by decreasing
        variance), the last row is the mean of ``E_pooled``. When N or P is smaller than ``out_dim``,
        the missing axes are zero rows (those outputs start at 0 and are learnt).
    """
    from sklearn.decomposition import PCA

    X = pool_features(E_train, pool)
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
    """Refines per-well image features E [B, n_features] into z_e [B, out_dim] (paper eq. 3-5).

    ``forward`` returns ``(z_e, recon_loss)``; ``recon_loss`` [B] is the per-well mean squared error
    of reconstructing ``E_pooled`` from ``z_e``. Add its mean (weighted) to the training loss.
    """

    def __init__(self, n_features: int, pool: int = DEFAULT_POOL, out_dim: int = DEFAULT_OUT_DIM,
                 pca_init: np.ndarray | None = None, attention_channels: int = 1) -> None:
        super().__init__()
        self.n_features, self.pool, self.out_dim = int(n_features), int(pool), int(out_dim)
        self.n_pooled = pooled_size(n_features, pool)
        if self.n_pooled < 1:
            raise CpDistillerError(f"{n_features} image features are fewer than the pooling window ({pool}).")
        if attention_channels < 1 or self.n_pooled % attention_channels:
            raise CpDistillerError(
                f"attention_channels={attention_channels} must divide the pooled length {self.n_pooled}."
            )
        self.attention_channels = int(attention_channels)
        self.avg_pool = nn.AvgPool1d(kernel_size=self.pool, stride=self.pool)
        self.pca = nn.Linear(self.n_pooled, self.out_dim)                     # Y1
        self.attention = ChannelAttention(self.attention_channels)            # Y2
        self.attention_linear = nn.Linear(self.n_pooled, self.out_dim)        # W1, b1
        self.decoder = nn.Linear(self.out_dim, self.n_pooled)
        if pca_init is not None:
            self.load_pca(pca_init)

    def config(self) -> dict[str, int]:
        """Constructor arguments, to rebuild the module before ``load_state_dict`` (with pca_init=None)."""
        return {"n_features": self.n_features, "pool": self.pool, "out_dim": self.out_dim,
                "attention_channels": self.attention_channels}

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
        return self.avg_pool(E.unsqueeze(1)).squeeze(1)

    def forward(self, E: Tensor) -> tuple[Tensor, Tensor]:
        """E [B, n_features] -> (z_e [B, out_dim], recon_loss [B])."""
        Ep = self.pooled(E)                                                   # [B, P]
        y1 = self.pca(Ep)                                                     # [B, D]
        r = Ep.reshape(Ep.shape[0], self.attention_channels, -1)              # [B, C, P/C]
        y2 = self.attention(r).reshape(Ep.shape[0], -1)                       # [B, P]
        z_e = y1 + self.attention_linear(y2)                                  # [B, D]
        recon = self.decoder(z_e)                                             # [B, P]
        recon_loss = (recon - Ep).pow(2).mean(dim=1)                          # [B]
        return z_e, recon_loss
