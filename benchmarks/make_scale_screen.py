"""A JUMP-sized synthetic screen written to Parquet plate by plate, in bounded memory.

    python benchmarks/make_scale_screen.py --wells 100000 --out /tmp/screen_100k.parquet
    python benchmarks/make_scale_screen.py --wells 1000000 --features 1446 --out /tmp/screen_1m.parquet

Layout: 12 batches; plates of 384 wells (16 x 24) and 1,536 wells (32 x 48), mixed the way JUMP mixes
sources (every third batch uses 1,536-well plates, as sources 1 and 9 do). Each plate carries
perturbations from a library (shared low-rank phenotypes, as in ``datasets.simulator``: every
perturbation is a point in a 16-program space loaded onto CellProfiler-named features), 1 in 12 wells
are negative controls (``Metadata_control_type = negcon``, perturbation ``DMSO``), spread over the
plate. Technical effects follow the demo simulator's model in standardised units:

    x = batch_scale * (biology + noise) + batch_shift + plate_offset + row_gradient + column_gradient + edge

with smooth monotone row/column gradients whose direction and amplitude vary per batch.

Memory: only the current plate (at most 1,536 x features float32, ~9 MB at 1,446 features) and the
fixed parameter tables (library x programs, programs x features, one direction vector per batch) are
held; each plate is one Parquet row group. Generation is deterministic in ``--seed`` and independent of
the demo simulator (the demo's outputs do not change).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_BATCHES = 12
N_PROGRAMS = 16
N_LIBRARY = 4000
NEGCON_EVERY = 12
COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")
FAMILIES = ("AreaShape_Zernike", "Intensity_MeanIntensity", "Texture_SumAverage", "Granularity",
            "RadialDistribution_FracAtD", "Correlation_Pearson")
CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")


def feature_names(n: int) -> list[str]:
    """``n`` distinct CellProfiler-style names (Compartment_Family_Channel_index)."""
    out = []
    i = 0
    while len(out) < n:
        c, f, ch = COMPARTMENTS[i % 3], FAMILIES[(i // 3) % 6], CHANNELS[(i // 18) % 5]
        out.append(f"{c}_{f}_{ch}_{i // 90}")
        i += 1
    return out


def plate_shape(batch: int) -> tuple[int, int]:
    """(rows, columns): every third batch uses 1,536-well plates."""
    return (32, 48) if batch % 3 == 2 else (16, 24)


def plate_plan(n_wells: int) -> list[tuple[int, int]]:
    """(batch, wells) per plate, batches in turn, until at least ``n_wells`` wells are planned."""
    plan, total, p = [], 0, 0
    while total < n_wells:
        b = p % N_BATCHES
        r, c = plate_shape(b)
        plan.append((b, r * c))
        total += r * c
        p += 1
    return plan


@dataclass
class ScreenModel:
    """The fixed parameters of a screen: library phenotypes, loadings, batch and position effects."""

    loadings: np.ndarray      # programs x features
    library: np.ndarray       # N_LIBRARY x programs (row 0: DMSO, no phenotype)
    batch_shift: np.ndarray   # batches x features
    batch_scale: np.ndarray   # batches
    row_dir: np.ndarray       # batches x features (unit RMS)
    col_dir: np.ndarray       # batches x features
    edge_dir: np.ndarray      # features
    amp: np.ndarray           # batches x 2 (row, column gradient amplitudes)

    @classmethod
    def make(cls, n_features: int, rng: np.random.Generator) -> ScreenModel:
        def unit(v: np.ndarray) -> np.ndarray:
            return (v / np.sqrt((v ** 2).mean(axis=-1, keepdims=True))).astype(np.float32)

        # Each program loads on a random ~20 % of features (correlated features, as in the demo).
        loadings = rng.normal(0, 1, (N_PROGRAMS, n_features)) * (rng.random((N_PROGRAMS, n_features)) < 0.2)
        library = rng.normal(0, 1, (N_LIBRARY, N_PROGRAMS)) * (rng.random((N_LIBRARY, 1)) < 0.5) * 0.8
        library[0] = 0.0
        return cls(loadings.astype(np.float32), library.astype(np.float32),
                   (0.6 * rng.normal(0, 1, (N_BATCHES, n_features))).astype(np.float32),
                   rng.uniform(0.8, 1.25, N_BATCHES).astype(np.float32),
                   unit(rng.normal(0, 1, (N_BATCHES, n_features))), unit(rng.normal(0, 1, (N_BATCHES, n_features))),
                   unit(rng.normal(0, 1, n_features)), rng.uniform(0.3, 0.7, (N_BATCHES, 2)).astype(np.float32))

    def plate(self, batch: int, plate_idx: int, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
        """Metadata columns and the float32 feature block of one plate."""
        n_rows, n_cols = plate_shape(batch)
        r, c = np.divmod(np.arange(n_rows * n_cols), n_cols)
        neg = (np.arange(r.size) % NEGCON_EVERY) == (plate_idx % NEGCON_EVERY)
        pert = rng.integers(1, N_LIBRARY, r.size)
        pert[neg] = 0
        X = rng.standard_normal((r.size, self.loadings.shape[1]), dtype=np.float32)
        X += self.library[pert] @ self.loadings
        X *= self.batch_scale[batch]
        X += self.batch_shift[batch] + 0.2 * rng.standard_normal(self.loadings.shape[1], dtype=np.float32)
        fr, fc = r / (n_rows - 1), c / (n_cols - 1)
        grad_r = (1 / (1 + np.exp(-8 * (fr - 0.5))) + 0.5 * np.expm1(2 * fr) / np.expm1(2)).astype(np.float32)
        grad_c = (1 / (1 + np.exp(-8 * (fc - 0.5))) + 0.5 * np.expm1(2 * fc) / np.expm1(2)).astype(np.float32)
        X += self.amp[batch, 0] * grad_r[:, None] * self.row_dir[batch]
        X += self.amp[batch, 1] * grad_c[:, None] * self.col_dir[batch]
        edge = ((r == 0) | (r == n_rows - 1) | (c == 0) | (c == n_cols - 1)).astype(np.float32)
        X += 0.5 * edge[:, None] * self.edge_dir
        letters = _row_names(n_rows)
        meta = {
            "Metadata_Batch": np.full(r.size, f"batch_{batch:02d}"),
            "Metadata_Plate": np.full(r.size, f"P{plate_idx:05d}"),
            "Metadata_Well": np.array([f"{letters[i]}{j + 1:02d}" for i, j in zip(r, c)]),
            "Metadata_Row": letters[r],
            "Metadata_Column": (c + 1).astype(np.int64),
            "Metadata_pert_iname": np.where(neg, "DMSO", np.char.add("pert_", pert.astype(str))),
            "Metadata_control_type": np.where(neg, "negcon", "trt"),
        }
        return meta, X


def _row_names(n: int) -> np.ndarray:
    """Plate row names: A..P, then AA..AF for 1,536-well plates (JUMP's convention)."""
    single = [chr(65 + i) for i in range(min(n, 26))]
    return np.array(single + ["A" + chr(65 + i) for i in range(n - 26)] if n > 26 else single)


def plates(n_wells: int, n_features: int, seed: int = 0) -> Iterator[tuple[dict, np.ndarray]]:
    """Yield (metadata, features) plate by plate; at least ``n_wells`` wells in all."""
    rng = np.random.default_rng(seed)
    model = ScreenModel.make(n_features, rng)
    for i, (b, _) in enumerate(plate_plan(n_wells)):
        yield model.plate(b, i, np.random.default_rng([seed, i]))


def make_profiles(n_wells: int, n_features: int = 1446, seed: int = 0):
    """The same screen in memory as Profiles (one float32 matrix filled plate by plate)."""
    import pandas as pd

    from cpdistiller_core.profiles import Profiles, Roles

    plan = plate_plan(n_wells)
    X = np.empty((sum(w for _, w in plan), n_features), dtype=np.float32)
    metas, start = [], 0
    for meta, block in plates(n_wells, n_features, seed):
        X[start:start + len(block)] = block
        start += len(block)
        metas.append(pd.DataFrame(meta))
    roles = Roles(plate="Metadata_Plate", well="Metadata_Well", batch="Metadata_Batch",
                  perturbation="Metadata_pert_iname", control="Metadata_control_type", negative_values=("negcon",))
    return Profiles(meta=pd.concat(metas, ignore_index=True), X=X, features=feature_names(n_features), roles=roles)


def write_screen(path: str | Path, n_wells: int, n_features: int = 1446, seed: int = 0) -> dict:
    """Write the screen to ``path`` (Parquet, one row group per plate); returns a summary."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = feature_names(n_features)
    writer = None
    wells = plates_written = 0
    t0 = time.perf_counter()
    try:
        for meta, X in plates(n_wells, n_features, seed):
            cols = {**{k: pa.array(v) for k, v in meta.items()},
                    **{f: pa.array(X[:, j]) for j, f in enumerate(names)}}
            table = pa.table(cols)
            if writer is None:
                writer = pq.ParquetWriter(str(path), table.schema, compression="snappy")
            writer.write_table(table)
            wells += X.shape[0]
            plates_written += 1
    finally:
        if writer is not None:
            writer.close()
    return {"path": str(path), "wells": wells, "plates": plates_written, "features": n_features,
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wells", type=int, required=True, help="at least this many wells (whole plates)")
    ap.add_argument("--features", type=int, default=1446)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    print(write_screen(args.out, args.wells, args.features, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
