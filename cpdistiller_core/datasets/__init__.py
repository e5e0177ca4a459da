"""The built-in demo screen: a simulated Cell Painting screen with known biology and technical effects.

``make_demo_screen()`` builds it (deterministic by seed); ``load_demo()`` caches the default one for the
dashboard; ``demo_gene_sets.gmt`` holds the simulated functional groups for offline enrichment.
"""

from __future__ import annotations

from functools import lru_cache

from ..profiles import Profiles
from .genesets import (
    COMPOUNDS,
    GENE_GROUPS,
    GMT_PATH,
    NEGATIVE_CONTROLS,
    POSITIVE_CONTROLS,
    Compound,
    GeneGroup,
    gene_sets,
    gene_to_group,
    gmt_text,
    read_gmt,
    write_gmt,
)
from .simulator import DemoScreen, feature_catalog, make_demo_screen

__all__ = [
    "COMPOUNDS", "GENE_GROUPS", "GMT_PATH", "NEGATIVE_CONTROLS", "POSITIVE_CONTROLS", "Compound", "DemoScreen",
    "GeneGroup", "demo_gene_sets", "demo_profiles", "feature_catalog", "gene_sets", "gene_to_group", "gmt_text",
    "load_demo", "make_demo_screen", "read_gmt", "write_gmt",
]


def load_demo(seed: int = 0, n_batches: int = 3, plates_per_batch: int = 4, n_features: int = 300) -> DemoScreen:
    """The demo screen, built once per setting and cached (treat it as read-only)."""
    return _cached_demo(int(seed), int(n_batches), int(plates_per_batch), int(n_features))


@lru_cache(maxsize=4)
def _cached_demo(seed: int, n_batches: int, plates_per_batch: int, n_features: int) -> DemoScreen:
    return make_demo_screen(seed=seed, n_batches=n_batches, plates_per_batch=plates_per_batch,
                            n_features=n_features)


def demo_profiles(truth: bool = False, seed: int = 0) -> Profiles:
    """The default demo screen's measured profiles (or, with ``truth=True``, its ground truth)."""
    screen = load_demo(seed=seed)
    return screen.truth if truth else screen.profiles


def demo_gene_sets() -> dict[str, list[str]]:
    """The shipped GMT of the demo's functional groups (group -> genes)."""
    return read_gmt(GMT_PATH)
