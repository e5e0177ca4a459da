"""Overlapping tiles of a site image and the reverse operation (paper equations 1-2).

For an image side L, tile size s and overlap fraction o, the step is ``d = s * (1 - o)`` (rounded to
an integer number of pixels) and

    n       = max(1, ceil((L - s) / d) + 1)                     (eq. 1: tiles per axis)
    start_i = i * d   for i < n - 1,   start_{n-1} = L - s        (eq. 2: the last tile is aligned
                                                                    to the image border)

For the paper's 1080 x 1080 sites, s = 256 and o = 0.25: d = 192, n = 6, starts
0, 192, 384, 576, 768, 824 -> 36 tiles per site. Images smaller than a tile are zero-padded at the
bottom/right to one tile (n = 1).

``untile`` places per-tile maps (any resolution, e.g. a feature map at 1/8 of the pixels) at the
scaled start positions and averages where tiles overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ..errors import CpDistillerError


def tile_starts(length: int, tile: int = 256, overlap: float = 0.25) -> list[int]:
    """Start positions along one axis (eq. 1-2). ``len(result)`` is the tile count n."""
    if tile < 1 or not 0.0 <= overlap < 1.0:
        raise CpDistillerError(f"invalid tiling: tile={tile}, overlap={overlap} (need tile >= 1, 0 <= overlap < 1).")
    if length < 1:
        raise CpDistillerError(f"cannot tile an image side of {length} pixels.")
    step = max(1, int(round(tile * (1.0 - overlap))))
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / step) + 1
    return [i * step for i in range(n - 1)] + [length - tile]


@dataclass(frozen=True)
class TileGrid:
    """Tile layout of one H x W image: row starts ``ys`` and column starts ``xs`` (pixels)."""

    height: int
    width: int
    tile: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @classmethod
    def for_image(cls, height: int, width: int, tile: int = 256, overlap: float = 0.25) -> TileGrid:
        return cls(height, width, tile, tuple(tile_starts(height, tile, overlap)),
                   tuple(tile_starts(width, tile, overlap)))

    @property
    def n_tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    def positions(self) -> list[tuple[int, int]]:
        """(y, x) start of every tile, row-major: tile k = (ys[k // len(xs)], xs[k % len(xs)])."""
        return [(y, x) for y in self.ys for x in self.xs]


def tile_image(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Cut an image [C, H, W] into tiles [n_tiles, C, s, s] (row-major order of ``grid.positions()``).

    Sides shorter than the tile are zero-padded at the bottom/right.
    """
    if image.ndim != 3 or image.shape[1:] != (grid.height, grid.width):
        raise CpDistillerError(f"image of shape {image.shape} does not match the tile grid "
                               f"({grid.height} x {grid.width}).")
    s = grid.tile
    ph, pw = max(0, s - grid.height), max(0, s - grid.width)
    if ph or pw:
        image = np.pad(image, ((0, 0), (0, ph), (0, pw)))
    out = np.empty((grid.n_tiles, image.shape[0], s, s), dtype=image.dtype)
    for k, (y, x) in enumerate(grid.positions()):
        out[k] = image[:, y:y + s, x:x + s]
    return out


def feature_grid(grid: TileGrid, tile_feature: int) -> tuple[int, int, list[tuple[int, int]]]:
    """Scale a pixel tile grid to a per-tile map of side ``tile_feature``.

    Returns (height_f, width_f, starts_f): the rebuilt map's size ``ceil(L * f / s)`` (at least f)
    and each tile's start in map coordinates, ``round(start * f / s)`` clipped so the last tile ends
    at the map border (exact whenever ``s / f`` divides the starts, e.g. 1080 px with f/s = 1/8).
    """
    f, s = tile_feature, grid.tile
    hf = max(f, math.ceil(grid.height * f / s))
    wf = max(f, math.ceil(grid.width * f / s))
    starts = [(min(int(round(y * f / s)), hf - f), min(int(round(x * f / s)), wf - f))
              for y, x in grid.positions()]
    return hf, wf, starts


def untile(tiles: Tensor, grid: TileGrid) -> Tensor:
    """Rebuild one map from per-tile maps: tiles [n_tiles, C, f, f] -> [C, Hf, Wf] (overlaps averaged).

    ``f`` may differ from the pixel tile size; positions are scaled by ``f / s`` (see ``feature_grid``).
    With f = s and identity tiles from ``tile_image`` this reconstructs the input image exactly.
    """
    if tiles.ndim != 4 or tiles.shape[0] != grid.n_tiles or tiles.shape[2] != tiles.shape[3]:
        raise CpDistillerError(f"expected {grid.n_tiles} square tile maps [n, C, f, f], got {tuple(tiles.shape)}.")
    f = tiles.shape[2]
    hf, wf, starts = feature_grid(grid, f)
    acc = tiles.new_zeros((tiles.shape[1], hf, wf))
    cnt = tiles.new_zeros((1, hf, wf))
    for k, (y, x) in enumerate(starts):
        acc[:, y:y + f, x:x + f] += tiles[k]
        cnt[:, y:y + f, x:x + f] += 1
    out = acc / cnt.clamp_min(1)
    # Crop the zero padding of images smaller than a tile.
    h_real = max(1, math.ceil(grid.height * f / grid.tile))
    w_real = max(1, math.ceil(grid.width * f / grid.tile))
    return out[:, :h_real, :w_real]
