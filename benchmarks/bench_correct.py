"""Speed and memory of the correction engine: neighbour mining + training at 10k / 20k / 40k wells.

    python benchmarks/bench_correct.py                         # 10k, 20k, 40k wells, 50 epochs
    python benchmarks/bench_correct.py --wells 100000 --epochs 2   # 100k must at least run
    python benchmarks/bench_correct.py --wells 20000 --json out.json

Data: the demo simulator (``datasets.make_demo_screen``: 384-well plates in 4 batches, row/column
gradients, edge and batch effects). The simulator's feature catalogue stops at 845 features, so the
remaining ones up to ``--features`` (default 1,446, the paper's JUMP size) are noisy random mixtures
of the simulated ones: same technical structure, realistic correlation, the right matrix size.
Profiles are z-scored per feature (the shape ``preprocess`` hands over; preprocessing itself is timed
in its own benchmark).

Each size runs in a fresh process that reads the profiles from Parquet and calls
``CpDistiller.fit``; its peak RSS (``ru_maxrss``) is therefore what a `cpdistiller correct` run of that
size costs, reading included. Figures are printed; nothing is asserted. Note the machine's load: the
timings are only comparable on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_profiles(n_wells: int, n_features: int, seed: int = 0):
    from cpdistiller_core.datasets.simulator import feature_catalog, make_demo_screen

    n_batches = 4
    plates_per_batch = max(1, round(n_wells / 384 / n_batches))
    base = min(n_features, len(feature_catalog()))
    demo = make_demo_screen(seed=seed, n_batches=n_batches, plates_per_batch=plates_per_batch, n_features=base)
    p = demo.profiles
    del demo
    X = p.X.astype(np.float32)
    X = (X - X.mean(0)) / np.maximum(X.std(0), 1e-8)
    names = list(p.features)
    if n_features > base:
        rng = np.random.default_rng(seed)
        extra = n_features - base
        mix = rng.normal(0, 1, (base, extra)).astype(np.float32) * (rng.random((base, extra)) < 0.02)
        E = X @ mix
        E = (E - E.mean(0)) / np.maximum(E.std(0), 1e-8) + 0.5 * rng.normal(0, 1, E.shape).astype(np.float32)
        X = np.hstack([X, E.astype(np.float32)])
        names += [f"Cells_Mixture_{i}" for i in range(extra)]
    X = (X - X.mean(0)) / np.maximum(X.std(0), 1e-8)
    return p.with_features(X.astype(np.float32), names)


def run_one(path: str, epochs: int, effects: str, device: str, seed: int, overrides: dict | None = None) -> dict:
    """In the child process: read, fit, report timings and peak RSS."""
    import torch

    from cpdistiller_core.api import CpDistiller
    from cpdistiller_core.config import CpDistillerConfig
    from cpdistiller_core.io import read_profiles

    t0 = time.perf_counter()
    p = read_profiles(path)
    read_s = time.perf_counter() - t0
    model = CpDistiller(CpDistillerConfig(epochs=epochs, device=device, seed=seed, **(overrides or {})))
    model.fit(p, effects=effects)
    t1 = time.perf_counter()
    model.transform(p)
    transform_s = time.perf_counter() - t1
    n = p.n_wells
    tm = model.timings
    return {
        "wells": n, "features": p.n_features, "epochs": epochs, "effects": effects, "device": str(model.device),
        "torch_threads": torch.get_num_threads(), "read_s": round(read_s, 2),
        "neighbors_s": round(tm["neighbors_s"], 2), "train_s": round(tm["train_s"], 2),
        "fit_s": round(tm["fit_s"], 2), "transform_s": round(transform_s, 2),
        "mining_wells_per_s": round(n / tm["neighbors_s"]), "training_wells_per_s": round(n * epochs / tm["train_s"]),
        "steps": model.train_info["steps"], "autocast": model.train_info.get("amp_dtype") or "float32",
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "anchors_with_positive": model.neighbor_stats.get("anchors_with_positive"),
        "final_acc": {k: round(v, 3) for k, v in model.history[-1].items() if k.startswith("acc_")},
    }


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wells", type=int, nargs="+", default=[10000, 20000, 40000])
    ap.add_argument("--features", type=int, default=1446)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--effects", default="batch,row,column")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="config override, e.g. --set pair_gradients=false --set min_steps=0 (repeatable)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.child:
        print(json.dumps(run_one(args.child, args.epochs, args.effects, args.device, args.seed, overrides)))
        return 0

    import torch

    from cpdistiller_core.io import write_profiles

    print(f"cpDistiller correction benchmark: {args.features} features, {args.epochs} epochs, effects "
          f"{args.effects}, overrides {overrides or 'none'}; {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.wells:
            path = Path(tmp) / f"screen_{n}.parquet"
            write_profiles(make_profiles(n, args.features, args.seed), path)
            load_before = load_average()
            out = subprocess.run([sys.executable, __file__, "--child", str(path), "--epochs", str(args.epochs),
                                  "--effects", args.effects, "--device", args.device, "--seed", str(args.seed),
                                  *[a for item in args.set for a in ("--set", item)]],
                                 capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
                return out.returncode
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["load_before"], row["load_after"] = load_before, load_average()
            rows.append(row)
            print(f"{row['wells']:>7} wells: mining {row['neighbors_s']:7.1f} s ({row['mining_wells_per_s']:>7} wells/s) | "
                  f"training {row['train_s']:7.1f} s ({row['training_wells_per_s']:>6} wells/s, {row['steps']} steps, "
                  f"{row['autocast']}) | "
                  f"fit total {row['fit_s']:7.1f} s | transform {row['transform_s']:.1f} s | "
                  f"peak RSS {row['peak_rss_mb']} MB | load {row['load_before']} -> {row['load_after']}",
                  flush=True)
            path.unlink()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
