"""Probe: does re-normalising the corrected profiles per plate on their negative controls close the gap to the truth?

    .venv/bin/python benchmarks/probe_renormalise.py sim/position3 sim/base sim/negcon5 sim/locked \
        [--out benchmarks/results/probe_renormalise.csv]

The preprocessing divides each plate by its negative controls' spread (MAD). Where position effects are
strong, that spread is mostly position, and it differs from plate to plate with where the controls sit;
the additive correction cannot undo a per-plate scale. This fits the defaults (seed 0), takes the
corrected profiles (``CpDistiller.transform_with_corrected_features``), scales each plate's features so that its
corrected controls have the median spread of all plates (centred on their median), and scores the PCA of
the result beside the defaults' own embedding (``ablation.score``: the field scorecard and the
retrieval and truth measures). One seed: a probe, not a default.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation  # noqa: E402

from cpdistiller_core import CpDistiller, CpDistillerConfig, baselines  # noqa: E402
from cpdistiller_core.profiles import Profiles  # noqa: E402


def renormalise(profiles: Profiles) -> Profiles:
    """Each plate centred on its negative controls' median and scaled to the plates' median control MAD."""
    X = np.asarray(profiles.X, np.float64).copy()
    plates = np.asarray(profiles.plate).astype(str)
    stats = {}
    for plate in np.unique(plates):
        controls = X[(plates == plate) & profiles.negative_mask]
        median = np.median(controls, axis=0)
        stats[plate] = (median, np.maximum(np.median(np.abs(controls - median), axis=0) * 1.4826, 1e-6))
    typical = np.median(np.stack([mad for _, mad in stats.values()]), axis=0)
    for plate, (median, mad) in stats.items():
        rows = plates == plate
        X[rows] = (X[rows] - median) / mad * typical
    return profiles.with_features(X.astype(np.float32), profiles.features)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="+", help="data sets as in ablation.py (sim/... or a shared set)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "probe_renormalise.csv")
    ap.add_argument("--null-size", type=int, default=2000)
    args = ap.parse_args(argv)
    ns = argparse.Namespace(null_size=args.null_size, write_truth=None)
    rows = []
    for name in args.data:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            profiles, truth, pairs, cfg = ablation.load(name, ns)
            reference = baselines.uncorrected(profiles)
            model = CpDistiller(CpDistillerConfig(seed=0)).fit(profiles, effects=("batch", "row", "column"))
            embedding, corrected = model.transform_with_corrected_features(profiles)
            for variant, emb in (("defaults", embedding),
                                 ("defaults, renormalised", baselines.uncorrected(renormalise(corrected)))):
                rows.append({"data": name, "variant": variant, "seed": 0,
                             **ablation.score(emb, reference, truth, pairs, cfg)})
                print(rows[-1]["data"], variant, round(rows[-1]["overall"], 3), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
