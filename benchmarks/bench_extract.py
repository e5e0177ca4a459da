"""Benchmark the image-feature extractor: network tiles/s, pre-processing s/site, end-to-end wells/s.

Synthetic Cell Painting sites (blob cells in 5 stains, 1080 x 1080 uint16 TIFFs by default) are
written to a temporary folder with a LoadData CSV; the network uses random weights (speed does not
depend on the weight values; outputs of this script are timings only, never features).

    python benchmarks/bench_extract.py                    # 1 well x 9 sites of 1080 px, all CPU threads
    python benchmarks/bench_extract.py --wells 2 --device cuda --batch-size 64

Prints one line per measurement.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import torch

from cpdistiller_core.extractor.features import Extractor, FeatureSettings
from cpdistiller_core.extractor.images import prepare_site, read_load_data
from cpdistiller_core.extractor.run import WeightsSpec, extract_plate, load_model, resolve_device

STAINS = ("DNA", "RNA", "ER", "AGP", "Mito")


def write_plate(root: Path, wells: int, sites: int, size: int, seed: int = 0) -> Path:
    """Blob-cell TIFFs + LoadData CSV for one plate; returns the CSV path."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rows = []
    for w in range(wells):
        well = f"{chr(65 + w // 24)}{w % 24 + 1:02d}"
        for s in range(1, sites + 1):
            centres = rng.uniform(0, size, size=(int(size * size / 4000), 2))
            row = {"Metadata_Plate": "BENCH", "Metadata_Well": well, "Metadata_Site": s}
            for k, stain in enumerate(STAINS):
                img = np.full((size, size), 100.0, np.float32)
                r = 3.0 + 2 * k
                for cy, cx in centres:
                    y0, y1 = int(max(0, cy - 3 * r)), int(min(size, cy + 3 * r + 1))
                    x0, x1 = int(max(0, cx - 3 * r)), int(min(size, cx + 3 * r + 1))
                    img[y0:y1, x0:x1] += 2000 * np.exp(-((yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2)
                                                       / (2 * r * r))
                name = f"{well}_s{s}_{stain}.tiff"
                tifffile.imwrite(root / name, (img + rng.normal(0, 10, img.shape)).clip(0, 65535).astype(np.uint16))
                row[f"FileName_Orig{stain}"] = name
                row[f"PathName_Orig{stain}"] = str(root)
            rows.append(row)
    csv = root / "load_data.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wells", type=int, default=1)
    ap.add_argument("--sites", type=int, default=9)
    ap.add_argument("--size", type=int, default=1080)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--workers", type=int, default=2, help="pre-processing threads")
    ap.add_argument("--tile-batches", type=int, default=2, help="timed batches for tiles/s")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    spec = WeightsSpec(random=True)
    settings = FeatureSettings(batch_size=args.batch_size)
    info = {"device": device, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "amp": device.startswith("cuda"), "weights": "random (timing only)"}
    print(json.dumps({"setup": info}))

    model = load_model(spec)
    ex = Extractor(model, settings, device)
    x = np.random.default_rng(0).random((args.batch_size, 2, 256, 256), dtype=np.float32)
    ex.c5_reduced(x[:2])  # warm-up
    t = time.perf_counter()
    for _ in range(args.tile_batches):
        ex.c5_reduced(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    print(json.dumps({"network_tiles_per_s": round(args.tile_batches * args.batch_size / dt, 2),
                      "batch_size": args.batch_size}))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        csv = write_plate(root, args.wells, args.sites, args.size)
        print(json.dumps({"synthetic_images_written_s": round(time.perf_counter() - t, 2)}))
        m = read_load_data(csv)
        idx = m.table.index[0]
        t = time.perf_counter()
        site = prepare_site({c: m.paths.at[idx, c] for c in ("DNA", "RNA", "ER")})
        print(json.dumps({"preprocess_s_per_site": round(time.perf_counter() - t, 3), "site_shape": list(site.shape)}))
        t = time.perf_counter()
        summary = extract_plate(m, root / "out", spec, settings, device=device, workers=args.workers,
                                model=model)
        dt = time.perf_counter() - t
        print(json.dumps({"wells": summary["wells"], "tiles": summary["tiles"], "seconds": round(dt, 2),
                          "end_to_end_wells_per_s": round(summary["wells"] / dt, 5),
                          "end_to_end_tiles_per_s": round(summary["tiles"] / dt, 2),
                          "features_per_well": summary["n_features"]}))


if __name__ == "__main__":
    main()
