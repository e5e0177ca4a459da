"""The image joint module's two variants on the demo screen with a synthetic extractor table.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/joint_variants.py [--epochs 10] [--seeds 0]

No real Mesmer features are available offline, so each well gets a synthetic 11,664-value image vector
(the paper's size, a 108 x 108 square): the well's log-scaled, z-scored CellProfiler measurement
(biology + technical effects + noise) plus independent noise of the same size, through a fixed random
projection and a ReLU. This tests the plumbing and whether the module passes image information on; it cannot
rank the variants on real Mesmer features (their spatial/channel layout is not simulated).

Rows: uncorrected (PCA-50), CellProfiler only, ``joint_module="paper"`` and ``"compact"``; scores from
``verdict.did_it_help`` (replicate-vs-control mAP, annotation consistency mAP, kNN overlap with the
uncorrected profiles, and per effect 1 - the variance of the negative controls it explains: higher is
better everywhere), seconds to fit.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cpdistiller_core.api import CpDistiller  # noqa: E402
from cpdistiller_core.datasets import demo_profiles  # noqa: E402
from cpdistiller_core.preprocess import PreprocessConfig, preprocess  # noqa: E402
from cpdistiller_core.profiles import Profiles, Roles  # noqa: E402
from cpdistiller_core.verdict import did_it_help  # noqa: E402


def synthetic_image_features(n_out: int = 11664, noise: float = 1.0, seed: int = 0) -> Profiles:
    """Biology + technical effects of the demo wells, fresh noise, random projection to ``n_out``."""
    measured = demo_profiles()
    rng = np.random.default_rng(seed)

    def z(a: np.ndarray) -> np.ndarray:
        a = np.log(np.clip(a, 1e-6, None))
        return (a - a.mean(0)) / (a.std(0) + 1e-9)

    meas = z(measured.X)
    latent = meas + noise * rng.normal(size=meas.shape)           # same biology + technical, other noise
    W = rng.normal(size=(latent.shape[1], n_out)) / np.sqrt(latent.shape[1])
    E = np.maximum(latent @ W, 0) + 0.05 * rng.normal(size=(latent.shape[0], n_out))  # ReLU-like maps
    roles = Roles(plate=measured.roles.plate, well=measured.roles.well)
    return Profiles(measured.meta[[roles.plate, roles.well]].copy(), E.astype(np.float32),
                    [f"img_{i}" for i in range(n_out)], roles)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", default="0")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    prof, _ = preprocess(demo_profiles(), PreprocessConfig())
    ext = synthetic_image_features()
    print("variant,seed,fit_s,replicate_mAP,consistency_mAP,neighbours,row,column,batch")
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, variant in (("cellprofiler_only", None), ("paper", "paper"), ("compact", "compact")):
            kw = {} if variant is None else {"joint_module": variant}
            m = CpDistiller(epochs=args.epochs, seed=seed, device="cpu", **kw)
            t = time.time()
            m.fit(prof, effects=("batch", "row", "column"), extractor=None if variant is None else ext)
            fit_s = time.time() - t
            emb = m.transform(prof, extractor=None if variant is None else ext)
            verdict = did_it_help(emb, prof)
            keys = ("replicates", "relations", "neighbours", "row", "column", "batch")
            if variant is None:  # the uncorrected PCA-50 (neighbour overlap with itself is 1 by definition)
                before = {c.name: c.uncorrected for c in verdict.checks}
                print(f"uncorrected,{seed},0," + ",".join("" if before.get(k) is None else f"{before[k]:.3f}"
                                                         for k in keys), flush=True)
            checks = {c.name: c.corrected for c in verdict.checks}
            vals = [checks.get(k) for k in keys]
            print(f"{name},{seed},{fit_s:.0f}," + ",".join("" if v is None else f"{v:.3f}" for v in vals),
                  flush=True)


if __name__ == "__main__":
    main()
