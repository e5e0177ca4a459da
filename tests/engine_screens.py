"""Tiny simulated screens for the correction-engine tests (fast: a few hundred wells, tens of features)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cpdistiller_core.profiles import Profiles, Roles


def small_screen(n_plates: int = 4, n_features: int = 32, n_batches: int = 2, seed: int = 0,
                 position_strength: float = 2.0, batch_strength: float = 1.0, n_perts: int = 12,
                 with_controls: bool = True) -> Profiles:
    """96-well plates with smooth row and column gradients, a batch shift, and perturbation signal.

    Every perturbation sits in a different well on each plate (shuffled layouts), so position is
    a technical effect separable from biology.
    """
    rng = np.random.default_rng(seed)
    nr, nc = 8, 12
    bio = rng.normal(0.0, 1.5, (n_perts, n_features))
    row_dir, col_dir = rng.normal(0, 1, n_features), rng.normal(0, 1, n_features)
    batch_dir = rng.normal(0, 1, (n_batches, n_features))
    meta_rows, X = [], []
    for plate in range(n_plates):
        layout = rng.permutation(nr * nc)
        for w in range(nr * nc):
            r, c = divmod(w, nc)
            k = layout[w] % (n_perts + 4)
            neg = with_controls and k >= n_perts
            signal = 0.0 if neg else bio[k % n_perts]
            # Gradients: a smooth function of row and of column, as from edge/temperature effects.
            pos = position_strength * ((r / (nr - 1) - 0.5) * 2 * row_dir + np.cos(np.pi * c / (nc - 1)) * col_dir)
            X.append(rng.normal(0, 1, n_features) + signal + pos + batch_strength * batch_dir[plate % n_batches])
            meta_rows.append({
                "Metadata_Plate": f"P{plate}", "Metadata_Well": f"{chr(65 + r)}{c + 1:02d}",
                "Metadata_Batch": f"B{plate % n_batches}",
                "Metadata_pert": "DMSO" if neg else f"cpd{k % n_perts}",
                "Metadata_note": f"n{plate}-{w}",
            })
    meta = pd.DataFrame(meta_rows)
    roles = Roles(plate="Metadata_Plate", well="Metadata_Well", batch="Metadata_Batch",
                  perturbation="Metadata_pert", control="Metadata_pert",
                  negative_values=("DMSO",) if with_controls else ())
    return Profiles(meta, np.asarray(X, dtype=np.float32), [f"Cells_f{i}" for i in range(n_features)], roles,
                    source="simulated")
