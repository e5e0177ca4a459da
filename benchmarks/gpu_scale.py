"""GPU figures for issue 18, time-boxed (< 10 min in all): train 100k and 1M wells with CUDA + bf16 AMP.

    python benchmarks/gpu_scale.py                      # 100k x 50 epochs, 1M x 2 epochs, 540 s box
    python benchmarks/gpu_scale.py --budget 300 --out /tmp/gpu

Needs a CUDA GPU (exits with status 2 and says so otherwise). Per size it builds the synthetic JUMP-like
screen of ``make_scale_screen.py`` in memory (384- and 1,536-well plates, 12 batches, 1,446 features,
negative controls; z-scored per feature, the shape ``preprocess`` hands over; preprocessing is CPU work,
measured by ``bench_scale.py``), fits ``CpDistiller`` on ``cuda`` with ``amp=True`` (bf16 autocast where
the GPU has bf16, else fp16 + GradScaler: ``train.amp_settings``) and transforms every well. Recorded:
neighbour mining (on the CPU, as on every device), training time and steps, ms per step,
wells x epochs per second, the 50-epoch extrapolation for sizes trained on fewer epochs, transform time,
peak GPU memory (``torch.cuda.max_memory_allocated``) and peak host RSS.

Time box: a size starts only when the budget left covers its estimate (from the previous size's
throughput); figures are written after every size to ``<out>/gpu_scale.json`` and ``gpu_scale.md``
(default ``benchmarks/results/``), so a kill at the box still leaves the finished sizes.
Target (issue 18): 100k wells x 50 epochs <= 60 s of training on one H100/H200-class GPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def zscored(profiles):
    import numpy as np

    X = profiles.X  # standardised in place: one copy of the matrix on the host
    mean = X.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = X.std(axis=0, dtype=np.float64).astype(np.float32)
    X -= mean
    X /= np.maximum(std, 1e-8)
    return profiles


def one_size(n: int, epochs: int, seed: int, device: str = "cuda") -> dict:
    import torch
    from make_scale_screen import make_profiles

    from cpdistiller_core.api import CpDistiller

    t0 = time.perf_counter()
    profiles = zscored(make_profiles(n, 1446, seed))
    gen_s = time.perf_counter() - t0
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = CpDistiller(epochs=epochs, device=device, amp=True, seed=seed, min_steps=0)
    model.fit(profiles, effects="batch,row,column")
    t1 = time.perf_counter()
    model.transform(profiles, batch_size=65536)
    if cuda:
        torch.cuda.synchronize()
    transform_s = time.perf_counter() - t1
    tm, info = model.timings, model.train_info
    per_epoch = tm["train_s"] / epochs
    return {
        "wells": profiles.n_wells, "features": profiles.n_features, "epochs": epochs, "steps": info["steps"],
        "amp_dtype": info.get("amp_dtype"), "gpu": torch.cuda.get_device_name(0) if cuda else "none (CPU smoke run)",
        "generate_s": round(gen_s, 1), "mining_s": round(tm["neighbors_s"], 1),
        "train_s": round(tm["train_s"], 1), "ms_per_step": round(1000 * tm["train_s"] / info["steps"], 2),
        "wells_epochs_per_s": round(profiles.n_wells * epochs / tm["train_s"]),
        "train_50_epochs_s": round(50 * per_epoch, 1), "extrapolated": epochs != 50,
        "fit_s": round(tm["fit_s"], 1), "transform_s": round(transform_s, 1),
        "gpu_peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "host_peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def markdown(rows: list[dict]) -> str:
    out = ["| wells | epochs | autocast | mining | training | ms/step | 50 epochs | transform | GPU peak | host peak |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fifty = f"{r['train_50_epochs_s']} s" + (" (extrapolated)" if r["extrapolated"] else "")
        out.append(f"| {r['wells']:,} | {r['epochs']} | {r['amp_dtype'] or 'float32'} | {r['mining_s']} s | {r['train_s']} s "
                   f"| {r['ms_per_step']} | {fifty} | {r['transform_s']} s | {r['gpu_peak_gb'] or 'n/a'} GB "
                   f"| {r['host_peak_gb']} GB |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000:50,1000000:2", help="wells:epochs, comma-separated")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for everything (default 540)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--cpu-smoke", action="store_true", help="check the script on the CPU (tiny sizes only)")
    args = ap.parse_args(argv)
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_scale: no CUDA GPU visible (torch.cuda.is_available() is False); nothing measured.",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    rate = None  # seconds per (well x epoch) from the last size, incl. mining and generation
    for item in args.sizes.split(","):
        n, epochs = (int(v) for v in item.split(":"))
        left = args.budget - (time.perf_counter() - start)
        estimate = None if rate is None else rate * n * (epochs + 3)
        if estimate is not None and estimate > left:
            print(f"skipping {n:,} wells x {epochs} epochs: ~{estimate:.0f} s estimated, {left:.0f} s left")
            continue
        t = time.perf_counter()
        row = one_size(n, epochs, args.seed, "cpu" if args.cpu_smoke else "cuda")
        rate = (time.perf_counter() - t) / (n * (epochs + 3))
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "gpu_scale.json").write_text(json.dumps(rows, indent=1))
        (out / "gpu_scale.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
