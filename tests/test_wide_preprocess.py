"""Wide inputs (far more features than wells): the correlation step never holds F x F in float64.

The blockwise path must select exactly what the whole-matrix path (checked against pycytominer in
test_preprocess.py) selects, on real profiles; and its memory must stay a fraction of one F x F matrix.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core.preprocess import correlation_threshold

LINCS = "lincs_a549/SQ00015054_normalized_feature_select.csv.gz"
CELL_INJURY = "cell_injury/fs_plate_holdout.csv.gz"


def _matrix(path: Path) -> tuple[np.ndarray, list[str]]:
    df = pd.read_csv(path, low_memory=False)
    names = [c for c in df.columns if c.startswith(("Cells_", "Nuclei_", "Cytoplasm_"))]
    return df[names].to_numpy(np.float32), names


@pytest.mark.parametrize("dataset", [LINCS, CELL_INJURY])
@pytest.mark.parametrize("threshold", [0.9, 0.5])
def test_blockwise_selection_equals_whole_matrix(shared_data, dataset, threshold):
    X, names = _matrix(shared_data / dataset)
    whole = correlation_threshold(X, names, threshold)
    p = X.shape[1]
    for rows in (1, 37, p // 3):  # row blocks of the lower triangle, including a single row
        blocks = correlation_threshold(X, names, threshold, block_bytes=8 * p * rows)
        assert blocks == sorted(blocks, key=names.index)
        assert sorted(blocks) == sorted(whole), (dataset, threshold, rows)
    if threshold == 0.5:
        assert whole  # the real profiles do have correlated features to drop


def test_blockwise_keeps_memory_below_one_feature_by_feature_matrix(shared_data):
    X, names = _matrix(shared_data / LINCS)
    rng = np.random.default_rng(0)
    # 80 wells x 6,000 features from the real ones (noisy copies: many correlated pairs)
    base = X[:80]
    copies = [base + rng.normal(scale=0.3, size=base.shape).astype(np.float32) * (k > 0) for k in range(14)]
    wide = np.concatenate(copies, axis=1)[:, :6000]
    wide_names = [f"{n}_{k}" for k in range(14) for n in names][:6000]
    full_bytes = 6000 * 6000 * 8
    tracemalloc.start()
    try:
        dropped = correlation_threshold(wide, wide_names, 0.9, block_bytes=32 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < full_bytes / 3, f"peak {peak / 2**20:.0f} MiB vs F x F {full_bytes / 2**20:.0f} MiB"
    # every noisy copy of a feature correlates > 0.9 with its original: most copies go
    assert len(dropped) > 3000
    small = correlation_threshold(wide[:, :1500], wide_names[:1500], 0.9)  # whole-matrix path
    assert sorted(small) == sorted(correlation_threshold(wide[:, :1500], wide_names[:1500], 0.9,
                                                         block_bytes=8 * 1500 * 100))
