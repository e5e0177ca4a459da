"""The extractor's settings (torch-free, so the CLI can build its flags without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CpDistillerError
from ..settings import setting
from .images import ILLUM_MODES, PREPROCESS_MODES

VIEWS = ("paper", "spatial")


@dataclass(frozen=True)
class FeatureSettings:
    """Tiling and pooling of the extractor (defaults are the paper's)."""

    tile: int = setting(256, "tile size in pixels (a multiple of 32)", label="Tile", group="basic",
                        range=(32, 4096))
    overlap: float = setting(0.25, "tile overlap (fraction of a tile)", label="Overlap", range=(0.0, 0.9))
    pool: int = setting(16, "max-pool kernel = stride", label="Pool", range=(1, 256))
    view: str = setting("paper", "paper: the published layout (1,296 values per 1080 px site); spatial: the true "
                        "feature map", label="View", group="basic", choices=VIEWS)
    batch_size: int = setting(32, "tiles per network batch", label="Batch size", range=(1, 4096))
    #: site pre-processing (images.PREPROCESS_MODES): the reference code's chain with its log step
    preprocess: str = setting("paper", "site pre-processing: paper (the reference code: CLAHE and log1p on the "
                              "nucleus channel, then Mesmer's own) or mesmer (Mesmer's own only)",
                              label="Pre-processing", group="departure", choices=PREPROCESS_MODES, paper="paper")
    #: illumination function (images.ILLUM_MODES): CellProfiler's divide; "multiply" = the reference code
    illum: str = setting("divide", "apply the illumination function by dividing (CellProfiler's convention for "
                         "the Gallery's files) or multiplying (the reference code)", label="Illumination",
                         group="departure", choices=ILLUM_MODES, paper="multiply")

    def __post_init__(self) -> None:
        if self.tile % 32 or self.tile < 32:
            raise CpDistillerError(f"tile size must be a multiple of 32 (ResNet-50 stride), got {self.tile}.")
        if self.view not in VIEWS:
            raise CpDistillerError(f"unknown feature view {self.view!r}; use one of {VIEWS}.")
        if self.preprocess not in PREPROCESS_MODES:
            raise CpDistillerError(f"unknown pre-processing {self.preprocess!r}; use one of {PREPROCESS_MODES}.")
        if self.illum not in ILLUM_MODES:
            raise CpDistillerError(f"unknown illumination mode {self.illum!r}; use one of {ILLUM_MODES}.")
        if self.pool < 1 or self.batch_size < 1:
            raise CpDistillerError("pool and batch size must be positive.")
