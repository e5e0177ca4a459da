"""Per-site and per-well features from Mesmer's ``C5_reduced`` layer (the paper's extractor).

For one pre-processed site [2, H, W] (paper: H = W = 1080, tile s = 256, overlap 0.25):

    tiles                 [n, 2, s, s]          n = 36 (6 x 6, ``tiling.tile_image``)
    C5_reduced            [n, 256, s/32, s/32]  = [36, 256, 8, 8]
    tile view             [n, 16, s/8, s/8]     = [36, 16, 32, 32]   (see below)
    untile                [16, Hf, Wf]          = [16, 135, 135]     Hf = ceil(H / 8), overlaps averaged
    max-pool 16 (ceil)    [16, Ph, Pw]          = [16, 9, 9]         Ph = ceil(Hf / 16)
    flatten (y, x, c)     [Ph * Pw * 16]        = [1296]
    well = 9 sites concatenated in site order   = [11664]

The *tile view* is the layout of the published cpDistiller extractor: each tile's C5_reduced tensor,
in Keras' channels-last order [s/32, s/32, 256], is read as a [s/8, s/8, 16] array (same memory, a
reshape), so one row of the view holds two neighbouring feature positions of one feature row, 16
channel blocks each. Untiling and pooling then run on that view. It is kept because it is what makes
the paper's 1,296 values per site and 11,664 per well; ``view="spatial"`` instead rebuilds the true
[256, H/32, W/32] feature map (tiles placed at round(start / 32)) and max-pools it
with the same kernel (16 feature cells), giving 256 x ceil(H/512)^2 values per site.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import CpDistillerError
from .images import ILLUM_MODES, PREPROCESS_MODES  # noqa: F401 - re-exported
from .mesmer import MesmerC5Reduced
from .settings import VIEWS, FeatureSettings  # noqa: F401 - re-exported
from .tiling import TileGrid, tile_image, untile


def tile_view(c5: Tensor, view: str = "paper") -> Tensor:
    """C5_reduced [n, 256, h, w] -> per-tile maps to untile: paper [n, 16, 4h, 4w] or spatial (unchanged)."""
    if view == "spatial":
        return c5
    n, c, h, w = c5.shape
    nhwc = c5.permute(0, 2, 3, 1).reshape(n, 4 * h, 4 * w, c // 16)   # Keras memory order, reshaped
    return nhwc.permute(0, 3, 1, 2)


def pool_flatten(fmap: Tensor, pool: int) -> Tensor:
    """Feature map [C, H, W] -> max-pool (kernel = stride = pool, partial last window kept) -> [Ph*Pw*C]
    flattened in (y, x, channel) order, as Keras' channels-last Flatten."""
    k = min(pool, fmap.shape[1], fmap.shape[2])
    pooled = F.max_pool2d(fmap.unsqueeze(0), kernel_size=k, stride=k, ceil_mode=True)[0]
    return pooled.permute(1, 2, 0).reshape(-1)


def site_feature_length(height: int, width: int, settings: FeatureSettings) -> int:
    """Length of one site's vector for an H x W image (1296 for the paper's settings)."""
    grid = TileGrid.for_image(height, width, settings.tile, settings.overlap)
    s = settings.tile
    if settings.view == "paper":
        f, c = s // 8, 16
    else:
        f, c = s // 32, 256
    hf = max(1, -(-grid.height * f // s))
    wf = max(1, -(-grid.width * f // s))
    k = min(settings.pool, hf, wf)
    return (-(-hf // k)) * (-(-wf // k)) * c


class Extractor:
    """Runs the network on tiles in batches (autocast on CUDA) and turns sites into vectors."""

    def __init__(self, model: MesmerC5Reduced, settings: FeatureSettings | None = None,
                 device: str | torch.device = "cpu", amp: bool | None = None) -> None:
        self.settings = settings or FeatureSettings()
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.amp = (self.device.type == "cuda") if amp is None else bool(amp)
        self.tiles_seen = 0

    @torch.inference_mode()
    def c5_reduced(self, tiles: np.ndarray | Tensor) -> Tensor:
        """tiles [n, 2, s, s] -> C5_reduced [n, 256, s/32, s/32] (float32, on CPU), in batches."""
        t = torch.as_tensor(tiles, dtype=torch.float32)
        outs = []
        bs = self.settings.batch_size
        for i in range(0, t.shape[0], bs):
            x = t[i:i + bs].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                y = self.model(x)
            outs.append(y.float().cpu())
        self.tiles_seen += t.shape[0]
        return torch.cat(outs)

    def site_features(self, image: np.ndarray) -> np.ndarray:
        """One pre-processed site [2, H, W] -> its feature vector (float32, ``site_feature_length``)."""
        return self.sites_features([image])[0]

    def sites_features(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Several sites at once (their tiles share batches) -> one vector per site."""
        s = self.settings
        grids, chunks = [], []
        for img in images:
            if img.ndim != 3 or img.shape[0] != 2:
                raise CpDistillerError(f"a pre-processed site must be [2, H, W], got {img.shape}.")
            g = TileGrid.for_image(img.shape[1], img.shape[2], s.tile, s.overlap)
            grids.append(g)
            chunks.append(tile_image(img.astype(np.float32, copy=False), g))
        c5 = self.c5_reduced(np.concatenate(chunks))
        out, k = [], 0
        for g in grids:
            maps = tile_view(c5[k:k + g.n_tiles], s.view)
            k += g.n_tiles
            out.append(pool_flatten(untile(maps, g), s.pool).numpy().astype(np.float32))
        return out


def well_vector(site_vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate site vectors in site order -> [n_sites * site_length] (11,664 for 9 paper sites)."""
    lengths = {v.shape for v in site_vectors}
    if len(lengths) != 1:
        raise CpDistillerError(f"sites of one well gave vectors of different lengths {sorted(lengths)}: "
                               "all sites of a well must have the same image size.")
    return np.concatenate(site_vectors)


def feature_names(n_sites: int, site_length: int, prefix: str = "mesmer") -> list[str]:
    """Column names ``{prefix}_s{site}_{i:04d}``: site number (1-based, in order) then position."""
    return [f"{prefix}_s{k + 1}_{i:04d}" for k in range(n_sites) for i in range(site_length)]
