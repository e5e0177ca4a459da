"""Speed and memory of neighbour mining (``neighbors.mine_neighbors``) at 10k / 20k / 40k / 100k wells.

    python benchmarks/bench_neighbors.py                                  # 10k, 20k, 40k, 100k wells
    python benchmarks/bench_neighbors.py --wells 20000 --method exact
    python benchmarks/bench_neighbors.py --threads 1 --json out.json

Data: random low-rank profiles (rank 30 + noise, 1,446 features, the paper's JUMP size) on 16 x 24
plates in 4 batches, with a smooth row/column gradient and a batch shift added, labelled with
batch, row and column (the three effects the paper corrects). Mining is done exactly as the
training does it: PCA (50 PCs) + KNN within / MNN across the levels of each effect, intersection
across effects with the per-anchor fallback.

Each size runs in a fresh process: its peak RSS (``ru_maxrss``) minus the RSS after the data were
made (in chunks, so that is the profiles plus the interpreter) is what mining costs on top of
holding the profiles; a second fresh process measures the
peak memory traced by Python (numpy allocations; faiss's C++ index memory is not traced) unless
``--no-traced``. Figures are printed, nothing is asserted; the last line gives the log-log slope
of mining time against wells (1 = linear, 2 = quadratic). The triplet column times one epoch of
``TripletSampler`` mini-batches of 256 anchors. Timings are only comparable on a quiet
machine: the load average is printed with them, and ``--repeat`` keeps the fastest of a few runs.

Measured on the 2-core development machine shared with other developers (load 4-7), ``--repeat 2``,
method auto, 1 thread:

    wells  seconds  wells/s  peak RSS  mining RSS  traced  method
    10000      5.7     1748    372 MB       60 MB   84 MB  exact
    20000      7.3     2727    432 MB       78 MB   86 MB  approx (2 MNN blocks)
    40000     14.0     2851    598 MB      128 MB  129 MB  approx (4)
   100000     48.1     2081   1135 MB      301 MB  319 MB  approx (10)
    time ~ wells^0.94; method exact at 20k: 9.5 s. Triplet sampling: 2-3e5 triplets/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_data(n: int, n_features: int, seed: int = 0):
    """Low-rank profiles with row/column gradients and batch shifts on 384-well plates.

    Filled in chunks, so making the data never holds more than the profiles themselves.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    n_plates = -(-n // 384)
    plate = np.repeat(np.arange(n_plates), 384)[:n]
    row = np.tile(np.repeat(np.arange(16), 24), n_plates)[:n]
    col = np.tile(np.tile(np.arange(24), 16), n_plates)[:n]
    batch = plate % 4
    rank = 30
    V = rng.standard_normal((rank, n_features), dtype=np.float32)
    grad = rng.standard_normal((2, n_features), dtype=np.float32)
    shift = 0.5 * rng.standard_normal((4, n_features), dtype=np.float32)
    X = np.empty((n, n_features), dtype=np.float32)
    for s in range(0, n, 4096):
        e = min(n, s + 4096)
        X[s:e] = rng.standard_normal((e - s, rank), dtype=np.float32) @ V
        X[s:e] += rng.standard_normal((e - s, n_features), dtype=np.float32)
        X[s:e] += np.outer((row[s:e] - 7.5) / 8, grad[0]) + np.outer((col[s:e] - 11.5) / 12, grad[1])
        X[s:e] += shift[batch[s:e]]
    return X, {"batch": batch, "row": row, "col": col}


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def child(n: int, n_features: int, method: str, n_pcs: int, traced: bool, threads: int) -> dict:
    """Run in a fresh process: make data, mine, report time and memory."""
    sys.path.insert(0, str(REPO))
    import tracemalloc

    import numpy as np
    from sklearn.decomposition import PCA  # noqa: F401  (import cost is not mining cost)

    from cpdistiller_core.neighbors import TripletSampler, mine_neighbors

    X, labels = make_data(n, n_features)
    rss_data = rss_mb()
    if traced:
        tracemalloc.start()
    t0 = time.perf_counter()
    g = mine_neighbors(X, labels, n_pcs=n_pcs, method=method, threads=threads or None)
    seconds = time.perf_counter() - t0
    traced_peak = tracemalloc.get_traced_memory()[1] / 1e6 if traced else None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kB -> MB on Linux
    # one epoch of triplets in mini-batches of 256, 5% of wells as negative controls
    negative = np.random.default_rng(1).random(n) < 0.05
    t1 = time.perf_counter()
    sampled = sum(len(t[0]) for t in TripletSampler(g, negative).epoch(256))
    triplets_per_s = sampled / (time.perf_counter() - t1)
    s = g.stats
    return {
        "wells": n, "features": n_features, "method": method, "seconds": seconds, "wells_per_s": n / seconds,
        "rss_data_mb": rss_data, "peak_rss_mb": peak, "mining_rss_mb": peak - rss_data,
        "traced_peak_mb": traced_peak, "triplets_per_s": triplets_per_s, "pairs": s["pairs"],
        "fallback": s["fallback"],
        "knn_anchors_paper": s["knn_anchors_paper"], "knn_anchors_fallback": s["knn_anchors_fallback"],
        "method_used": s["method_used"], "mnn_blocks": s["mnn_blocks"],
        "indexes": s["indexes"], "timings_s": {k: round(v, 2) for k, v in s["timings_s"].items()},
        "loadavg": os.getloadavg()[0],
    }


def run_child(n: int, args: argparse.Namespace, traced: bool) -> dict:
    env = dict(os.environ)
    call = f"b.child({n}, {args.features}, {args.method!r}, {args.n_pcs}, {traced}, {args.threads})"
    here = str(REPO / "benchmarks")
    code = f"import json, sys; sys.path.insert(0, {here!r}); import bench_neighbors as b; print(json.dumps({call}))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{n} wells failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wells", type=int, nargs="+", default=[10_000, 20_000, 40_000, 100_000])
    ap.add_argument("--features", type=int, default=1446)
    ap.add_argument("--n-pcs", type=int, default=50)
    ap.add_argument("--method", default="auto", choices=["auto", "exact", "approx"])
    ap.add_argument("--threads", type=int, default=1,
                    help="faiss/BLAS threads while mining (default 1, as mine_neighbors; 0: environment)")
    ap.add_argument("--no-traced", action="store_true", help="skip the tracemalloc run")
    ap.add_argument("--repeat", type=int, default=1, help="fresh runs per size; the fastest is shown")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args()

    print(f"neighbour mining, {args.features} features, {args.n_pcs} PCs, method={args.method}, "
          f"threads={args.threads or 'environment'}, cpus={os.cpu_count()}")
    hdr = (f"{'wells':>7} {'seconds':>8} {'wells/s':>8} {'peak RSS':>9} {'mining RSS':>10} {'traced':>8} "
           f"{'pairs':>9} {'used':>7} {'pca/index/knn/mnn/combine s':>30} {'triplets/s':>10} {'load':>5}")
    print(hdr)
    rows = []
    for n in args.wells:
        runs = [run_child(n, args, traced=False) for _ in range(args.repeat)]
        r = min(runs, key=lambda x: x["seconds"])
        r["all_seconds"] = [round(x["seconds"], 1) for x in runs]
        if not args.no_traced:
            r["traced_peak_mb"] = run_child(n, args, traced=True)["traced_peak_mb"]
        rows.append(r)
        t = r["timings_s"]
        split = "/".join(str(t.get(k, "-")) for k in ("pca", "index", "knn", "mnn", "combine"))
        traced = f"{r['traced_peak_mb']:.0f}MB" if r["traced_peak_mb"] is not None else "-"
        print(f"{n:>7} {r['seconds']:>8.1f} {r['wells_per_s']:>8.0f} {r['peak_rss_mb']:>7.0f}MB "
              f"{r['mining_rss_mb']:>8.0f}MB {traced:>8} {r['pairs']:>9} {r['method_used']:>7} {split:>30} "
              f"{r['triplets_per_s']:>10.0f} {r['loadavg']:>5.1f}",
              flush=True)
    if args.repeat > 1:
        print("all runs (s): " + ", ".join(f"{r['wells']}: {r['all_seconds']}" for r in rows))
    if len(rows) >= 2:
        import numpy as np

        ns = np.log([r["wells"] for r in rows])
        ts = np.log([r["seconds"] for r in rows])
        slope = np.polyfit(ns, ts, 1)[0]
        print(f"time ~ wells^{slope:.2f} (1 = linear); fallback: {rows[-1]['fallback']}, "
              f"indexes at {rows[-1]['wells']}: {rows[-1]['indexes']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
