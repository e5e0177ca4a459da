"""Neighbour preservation and control collapse on constructed data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from cpdistiller_core import metrics as M
from tests.test_metrics import emb_of, make_screen


def test_neighbor_preservation_identity_is_one_and_random_is_chance():
    p = make_screen(n_perts=20)
    score, n = M.neighbor_preservation(p, p, k=10)
    assert score == pytest.approx(1.0) and n == int((~p.negative_mask).sum())
    rand = emb_of(p, np.random.default_rng(3).normal(size=(p.n_wells, 20)))
    score, _ = M.neighbor_preservation(rand, p, k=10)
    assert score < 0.15  # chance is k / n = 10 / 160


def test_neighbor_preservation_rotation_invariant_and_row_order_fallback():
    p = make_screen(n_perts=20)
    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(20, 20)))
    rotated = emb_of(p, p.X @ Q)
    assert M.neighbor_preservation(rotated, p)[0] == pytest.approx(1.0)
    # reference rows in another order: matched by plate + well
    perm = np.random.default_rng(1).permutation(p.n_wells)
    assert M.neighbor_preservation(rotated, p.subset(perm))[0] == pytest.approx(1.0)
    # duplicate keys -> falls back to row order when lengths match
    meta = p.meta.assign(Metadata_Plate="P0", Metadata_Well=p.meta["Metadata_Well"])
    dup = p.replace(meta=meta)
    assert M.neighbor_preservation(emb_of(dup, p.X @ Q), dup)[0] == pytest.approx(1.0)
    with pytest.raises(M.MetricUnavailable, match="cannot match"):
        M.neighbor_preservation(emb_of(dup, p.X), dup.subset(np.arange(50)))


def test_neighbor_preservation_only_among_selected_wells():
    p = make_screen(n_perts=20)
    # scramble only the negative controls: treatment neighbourhoods (computed among treatments) unchanged
    Z = p.X.copy()
    neg = p.negative_mask
    Z[neg] = np.random.default_rng(2).normal(size=(int(neg.sum()), 20)) * 100
    assert M.neighbor_preservation(emb_of(p, Z), p)[0] == pytest.approx(1.0)
    assert M.neighbor_preservation(emb_of(p, Z), p, wells="negative")[0] < 0.5


def test_control_collapse_collapsed_near_zero_spread_near_one():
    p = make_screen(n_perts=20, signal=3.0, noise=1.0)
    assert M.control_collapse(p)[0] > 0.9  # controls vary like replicates (same noise)
    Z = p.X.copy()
    neg = p.negative_mask
    Z[neg] = Z[neg].mean(axis=0) + (Z[neg] - Z[neg].mean(axis=0)) * 0.01
    score, n = M.control_collapse(emb_of(p, Z))
    assert score < 0.05 and n == int(neg.sum())
    # scale invariant
    assert M.control_collapse(emb_of(p, Z * 1000))[0] == pytest.approx(score)


def test_control_collapse_needs_controls_and_replicates():
    p = make_screen(n_perts=20)
    trt = np.flatnonzero(~p.negative_mask)
    first = trt[np.unique(p.perturbation[trt].astype(str), return_index=True)[1]]
    one_each = p.subset(np.sort(np.r_[np.flatnonzero(p.negative_mask), first]))
    with pytest.raises(M.MetricUnavailable, match="two or more wells"):
        M.control_collapse(one_each)
    with pytest.raises(M.MetricUnavailable, match="negative"):
        M.control_collapse(p.subset(~p.negative_mask))
