"""Time and memory of the whole scorecard (`metrics.evaluate`) on synthetic screens of growing size.

    .venv/bin/python benchmarks/bench_metrics.py [--wells 20000,100000] [--dims 50] [--null-size 10000]

A screen of 384-well plates (32 negative controls per plate, 4 plates per batch), perturbations with
4 replicates at different positions on different plates, a row/column gradient and a batch shift;
the "embedding" is the profiles themselves and the baseline a noisy copy (for neighbour
preservation). Prints one line per size with the wall time of each step of the scorecard, the CPU
time and the peak resident memory (ru_maxrss, whole process). Single process; numpy/BLAS threads as
the environment sets them.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cpdistiller_core.metrics import EvaluationConfig, evaluate  # noqa: E402
from cpdistiller_core.profiles import Profiles, Roles  # noqa: E402


def synthetic_screen(n_wells: int, dims: int, seed: int = 0) -> tuple[Profiles, Profiles]:
    rng = np.random.default_rng(seed)
    n_plates = max(2, n_wells // 384)
    wells = [(r, c) for r in range(16) for c in range(24)]
    ctrl = [w for w in wells if w[1] in (0, 23)]  # 32 per plate
    trt = [w for w in wells if w[1] not in (0, 23)]
    n_perts = n_plates * len(trt) // 4
    order = np.arange(n_plates * len(trt)) % n_perts
    rng.shuffle(order)
    rows = []
    k = 0
    for p in range(n_plates):
        for r, c in wells:
            if (r, c) in ctrl:
                pert = "DMSO"
            else:
                pert = f"p{order[k]}"
                k += 1
            rows.append((f"P{p}", f"{chr(65 + r)}{c + 1:02d}", f"B{p // 4}", pert, r, c))
    meta = pd.DataFrame(rows, columns=["Metadata_Plate", "Metadata_Well", "Metadata_Batch", "Metadata_pert",
                                       "_r", "_c"])
    centre = rng.normal(size=(n_perts + 1, dims)) * 1.5
    code = np.where(meta["Metadata_pert"] == "DMSO", n_perts,
                    pd.to_numeric(meta["Metadata_pert"].str[1:], errors="coerce").fillna(0).astype(int))
    X = centre[code] + rng.normal(size=(len(meta), dims))
    X += np.outer(meta["_r"].to_numpy() / 15 - 0.5, rng.normal(size=dims))
    X += rng.normal(size=(n_plates // 4 + 1, dims))[meta["Metadata_Plate"].str[1:].astype(int) // 4] * 0.5
    meta = meta.drop(columns=["_r", "_c"])
    roles = Roles(plate="Metadata_Plate", well="Metadata_Well", batch="Metadata_Batch",
                  perturbation="Metadata_pert", control="Metadata_pert", negative_values=("DMSO",))
    feats = [f"emb_{i}" for i in range(dims)]
    emb = Profiles(meta=meta, X=X.astype(np.float32), features=feats, roles=roles)
    base = emb.replace(X=(X + rng.normal(size=X.shape) * 0.3).astype(np.float32))
    return emb, base


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wells", default="20000,100000")
    ap.add_argument("--dims", type=int, default=50)
    ap.add_argument("--null-size", type=int, default=10000)
    args = ap.parse_args(argv)
    for n in [int(x) for x in args.wells.split(",")]:
        emb, base = synthetic_screen(n, args.dims)
        steps: list[tuple[str, float]] = []
        t_last = [time.perf_counter()]

        def progress(_frac: float, msg: str, steps: list = steps, t_last: list = t_last) -> None:
            now = time.perf_counter()
            steps.append((msg.split(": ", 1)[-1], now - t_last[0]))
            t_last[0] = now

        cpu0, t0 = time.process_time(), time.perf_counter()
        card = evaluate(emb, method="synthetic", baseline=base, config=EvaluationConfig(null_size=args.null_size),
                        progress=progress)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        missing = card.scores[card.scores["value"].isna()]
        print(f"{emb.n_wells} wells x {args.dims} dims ({len(np.unique(emb.plate))} plates): wall {wall:.0f} s, "
              f"CPU {cpu:.0f} s, peak RSS {peak_gb:.2f} GB, {len(missing)} metrics missing")
        print("  " + ", ".join(f"{name} {dt:.0f}s" for name, dt in steps if dt >= 0.5))
        if len(missing):
            print("  missing: " + "; ".join(f"{m}[{e}]: {n[9:80]}" if e else f"{m}: {n[9:80]}"
                                          for m, e, n in zip(missing["metric"], missing["effect"], missing["note"])))
        s = card.summary().iloc[0]
        print("  " + ", ".join(f"{k} {v:.3f}" for k, v in s.items() if k in ("technical", "biological", "overall",
                                                                             "position")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
