"""Tiling (paper eq. 1-2), untiling, the Mesmer network's shapes/names and the feature layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.extractor.features import (
    Extractor,
    FeatureSettings,
    feature_names,
    pool_flatten,
    site_feature_length,
    tile_view,
    well_vector,
)
from cpdistiller_core.extractor.mesmer import MesmerC5Reduced, random_init
from cpdistiller_core.extractor.tiling import TileGrid, tile_image, tile_starts, untile


def test_paper_site_tiling() -> None:
    assert tile_starts(1080, 256, 0.25) == [0, 192, 384, 576, 768, 824]
    assert TileGrid.for_image(1080, 1080).n_tiles == 36


@pytest.mark.parametrize("length", [32, 100, 256, 257, 448, 449, 500, 1080, 1024, 2160])
@pytest.mark.parametrize("tile,overlap", [(256, 0.25), (64, 0.25), (128, 0.5), (64, 0.0)])
def test_tile_count_and_starts_follow_equations(length: int, tile: int, overlap: float) -> None:
    starts = tile_starts(length, tile, overlap)
    step = round(tile * (1 - overlap))
    n_eq = 1 if length <= tile else math.ceil((length - tile) / step) + 1       # eq. 1
    assert len(starts) == n_eq
    if length > tile:
        assert starts[:-1] == [i * step for i in range(n_eq - 1)]              # eq. 2
        assert starts[-1] == length - tile                                      # last tile on the border
        # Tiles cover the image and neighbours overlap by at least o * s.
        assert all(b - a <= step for a, b in zip(starts, starts[1:]))
        assert starts[-1] + tile == length
    else:
        assert starts == [0]


@pytest.mark.parametrize("h,w", [(1080, 1080), (300, 200), (64, 64), (50, 90)])
def test_untiling_identity_map_reconstructs_image(h: int, w: int) -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, h, w)).astype(np.float32)
    grid = TileGrid.for_image(h, w, tile=64 if max(h, w) < 1000 else 256, overlap=0.25)
    tiles = tile_image(img, grid)
    assert tiles.shape == (grid.n_tiles, 2, grid.tile, grid.tile)
    rebuilt = untile(torch.from_numpy(tiles), grid).numpy()
    np.testing.assert_allclose(rebuilt, img, atol=1e-6)


def test_untiling_scales_positions_for_lower_resolution_maps() -> None:
    """Per-tile maps at 1/8 resolution (average-pooled tiles) untile to the pooled image."""
    rng = np.random.default_rng(1)
    img = rng.normal(size=(1, 1080, 1080)).astype(np.float32)
    grid = TileGrid.for_image(1080, 1080)
    small = F.avg_pool2d(torch.from_numpy(tile_image(img, grid)), 8)          # [36, 1, 32, 32]
    rebuilt = untile(small, grid)
    assert rebuilt.shape == (1, 135, 135)
    np.testing.assert_allclose(rebuilt.numpy(), F.avg_pool2d(torch.from_numpy(img)[None], 8)[0].numpy(),
                               atol=1e-5)


def test_tile_view_is_the_keras_channels_last_reshape() -> None:
    c5 = torch.randn(3, 256, 8, 8)
    view = tile_view(c5, "paper")
    assert view.shape == (3, 16, 32, 32)
    ref = c5.permute(0, 2, 3, 1).numpy().reshape(3, 32, 32, 16)                # what Keras memory holds
    np.testing.assert_array_equal(view.permute(0, 2, 3, 1).numpy(), ref)
    assert tile_view(c5, "spatial") is c5


def test_pool_flatten_order_and_partial_window() -> None:
    fmap = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 5, 5)
    v = pool_flatten(fmap, 4)                                                  # ceil(5/4) = 2 windows
    assert v.shape == (2 * 2 * 2,)
    # (y, x, c) order: first two values are channel 0 and 1 of the top-left window.
    assert v[0] == fmap[0, :4, :4].max() and v[1] == fmap[1, :4, :4].max()
    assert v[-1] == fmap[1, 4:, 4:].max()


def test_paper_lengths() -> None:
    s = FeatureSettings()
    assert site_feature_length(1080, 1080, s) == 1296
    assert len(feature_names(9, 1296)) == 11664
    assert feature_names(9, 1296)[1296] == "mesmer_s2_0000"
    with pytest.raises(CpDistillerError, match="multiple of 32"):
        FeatureSettings(tile=100)
    with pytest.raises(CpDistillerError, match="different lengths"):
        well_vector([np.zeros(4), np.zeros(5)])


def test_network_shapes_names_and_location() -> None:
    m = MesmerC5Reduced()
    keys = m.state_dict().keys()
    for k in ["layers.conv_channels.weight", "layers.conv1_conv.weight", "layers.conv1_bn.running_var",
              "layers.conv2_block1_0_conv.weight", "layers.conv4_block6_3_bn.weight",
              "layers.conv5_block3_2_conv.bias", "layers.C5_reduced.weight"]:
        assert k in keys
    assert m.layers["conv_channels"].in_channels == 4
    n_conv = sum(isinstance(x, torch.nn.Conv2d) for x in m.layers.values())
    assert n_conv == 1 + 1 + 16 * 3 + 4 + 1       # conv_channels, conv1, 16 blocks x 3, 4 shortcuts, C5_reduced
    loc = MesmerC5Reduced.location_channels(torch.zeros(1, 2, 4, 5))
    assert loc[0, 0, :, 0].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert loc[0, 1, 0, :].tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    random_init(m)
    with torch.no_grad():
        y = m.eval()(torch.rand(2, 2, 64, 64))
    assert y.shape == (2, 256, 2, 2) and torch.isfinite(y).all()


def test_extractor_site_vector_matches_manual_pipeline() -> None:
    torch.manual_seed(0)
    model = random_init(MesmerC5Reduced(), seed=3)
    s = FeatureSettings(tile=64, pool=4, batch_size=5)
    ex = Extractor(model, s)
    img = np.random.default_rng(2).random((2, 100, 100)).astype(np.float32)
    v = ex.site_features(img)
    grid = TileGrid.for_image(100, 100, 64, 0.25)
    with torch.no_grad():
        c5 = model(torch.from_numpy(tile_image(img, grid)))
    manual = pool_flatten(untile(tile_view(c5), grid), 4).numpy()
    np.testing.assert_allclose(v, manual, rtol=1e-4, atol=1e-4)
    assert v.shape == (site_feature_length(100, 100, s),)
    assert ex.tiles_seen == grid.n_tiles
    spatial = Extractor(model, FeatureSettings(tile=64, pool=4, view="spatial")).site_features(img)
    assert spatial.shape == (site_feature_length(100, 100, FeatureSettings(tile=64, pool=4, view="spatial")),)
    assert site_feature_length(1080, 1080, FeatureSettings(view="spatial")) == 256 * 3 * 3
