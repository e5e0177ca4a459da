"""What the mined triplet partners share: a perturbation (biology) or a row (well position)?

For each data set, mines KNN/MNN pairs as training does (``neighbors.mine_neighbors`` over batch, row
and column) in each mining space (``CpDistillerConfig.neighbor_space``) and prints, per pair kind, the
share of partners of treated wells with the anchor's perturbation, the share of all partners in the
anchor's row, and the share of treated wells' partners that are negative controls.

    python benchmarks/mining_pairs.py --only demo,sim/base,sim/position3
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import ablation  # noqa: E402

from cpdistiller_core.neighbors import KIND_KNN, KIND_MNN, mine_neighbors  # noqa: E402
from cpdistiller_core.training_data import _mining_space  # noqa: E402

EFFECTS = ("batch", "row", "column")


def pair_shares(profiles, space: str) -> dict[str, tuple[float, float, float]]:
    """Per pair kind: (same perturbation among treated anchors, same row, partner is a control)."""
    X = profiles.X.astype(np.float32)
    labels = {e: np.asarray(profiles.labels(e)) for e in EFFECTS}
    mined, _ = _mining_space(profiles, X, EFFECTS, space, None)
    graph = mine_neighbors(mined, labels, seed=0)
    anchor = np.repeat(np.arange(graph.n), np.diff(graph.indptr))
    partner = np.asarray(graph.indices)
    pert, neg, row = np.asarray(profiles.perturbation), profiles.negative_mask, labels["row"]
    out = {}
    for flag, kind in ((KIND_KNN, "KNN"), (KIND_MNN, "MNN")):
        sel = (graph.kind & flag) > 0
        a, b = anchor[sel], partner[sel]
        treated = ~neg[a]
        out[kind] = (float(np.mean(pert[a][treated] == pert[b][treated])), float(np.mean(row[a] == row[b])),
                     float(np.mean(neg[b][treated])))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="demo,sim/base,sim/position3")
    ap.add_argument("--spaces", default="input,negcon_linear")
    args = ap.parse_args(argv)
    load_args = argparse.Namespace(null_size=100, write_truth=None)
    print("data | space | KNN same perturbation / same row / control | MNN same perturbation / same row / control")
    for name in args.only.split(","):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            profiles = ablation.load(name, load_args)[0]
        for space in args.spaces.split(","):
            shares = pair_shares(profiles, space)
            cells = [" / ".join(f"{v:.3f}" for v in shares[k]) for k in ("KNN", "MNN")]
            print(f"{name} | {space} | {cells[0]} | {cells[1]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
