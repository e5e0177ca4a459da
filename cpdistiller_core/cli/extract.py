"""`cpdistiller extract` (images -> per-well Mesmer features) and `cpdistiller convert-mesmer`."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract", help="extract per-well Mesmer image features (one Parquet file per plate)",
        description="Extract the paper's Mesmer (C5_reduced) features from Cell Painting images: "
                    "illumination-correct, DNA + mean(RNA, ER), CLAHE, 256 px tiles with 25%% overlap, "
                    "max-pool, 9 sites per well -> 11,664 values per well. Resumes an interrupted run.",
    )
    p.add_argument("manifest", help="LoadData CSV, or an image folder together with --pattern")
    p.add_argument("--out", required=True, help="output folder ({plate}.parquet per plate)")
    p.add_argument("--weights", help="converted Mesmer weights (see `cpdistiller convert-mesmer`)")
    p.add_argument("--random-weights", action="store_true",
                   help="TESTS ONLY: untrained random weights; stamped into every output row")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-weights")
    p.add_argument("--pattern", help="filename regex for an image folder (default: Phenix r01c01f01p01-ch1)")
    p.add_argument("--channel-map", help="pattern channel per stain, e.g. 'DNA=1,ER=2,RNA=3'")
    p.add_argument("--plate", help="plate name for an image folder (default: the folder name)")
    p.add_argument("--illum-dir", help="folder with {plate}_Illum{DNA,RNA,ER}.npy illumination functions")
    p.add_argument("--sites", type=int, help="sites per well (default: the largest count found; all wells must have it)")
    from ..extractor.settings import FeatureSettings
    from ..settings import add_arguments

    add_arguments(p, FeatureSettings, "feature settings (FeatureSettings; defaults: the paper's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (autocast fp16 on CUDA)")
    p.add_argument("--workers", type=int, default=4, help="threads decoding and pre-processing images")
    p.add_argument("--checkpoint-every", type=int, default=16, help="wells between resume checkpoints")
    p.add_argument("--no-dask", action="store_true", help="run plates one after another in this process")
    p.add_argument("--scheduler", help="Dask scheduler address (default: a LocalCluster)")
    p.add_argument("--dask-workers", type=int, default=2, help="LocalCluster worker processes")
    p.add_argument("--retries", type=int, default=2, help="retries of a failed plate")
    p.add_argument("--torch-threads", type=int, help="torch threads per Dask worker")
    p.set_defaults(func=run_extract)

    c = sub.add_parser(
        "convert-mesmer", help="convert the Mesmer SavedModel to a torch state dict (needs TensorFlow once)",
        description="Convert the MultiplexSegmentation SavedModel folder (from DeepCell with your token, or "
                    "unpacked from the public MultiplexSegmentation-9.tar.gz archive the cpDistiller reference "
                    "code downloads; needs TensorFlow 2.x for this step) or a Keras .h5 weights file (h5py "
                    "only) into the weights file `cpdistiller extract --weights` reads. See docs/extractor.md.",
    )
    c.add_argument("src", help="MultiplexSegmentation SavedModel folder or Keras .h5 file")
    c.add_argument("dst", help="output .pt file")
    c.set_defaults(func=run_convert)


def run_extract(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..extractor.distributed import extract_plates
    from ..extractor.features import FeatureSettings
    from ..extractor.images import PHENIX_PATTERN, read_load_data, read_pattern_folder
    from ..extractor.run import WeightsSpec
    from ..progress import TerminalProgress

    weights = WeightsSpec(path=args.weights, random=args.random_weights, seed=args.seed)
    weights.check()
    if args.random_weights:
        print("warning: --random-weights: features come from an UNTRAINED network (tests only); "
              "every output row is stamped.", file=sys.stderr)
    src = Path(args.manifest)
    if src.is_dir():
        manifest = read_pattern_folder(src, args.pattern or PHENIX_PATTERN, args.channel_map, args.plate,
                                       args.illum_dir)
    else:
        manifest = read_load_data(src, args.illum_dir)
    from ..settings import changes_from_args

    settings = FeatureSettings(**changes_from_args(args, FeatureSettings))
    with TerminalProgress("extract") as bar:
        summaries = extract_plates(manifest, args.out, weights, settings, n_sites=args.sites, device=args.device,
                                   workers=args.workers, checkpoint_every=args.checkpoint_every,
                                   use_dask=not args.no_dask, scheduler=args.scheduler,
                                   n_workers=args.dask_workers, retries=args.retries,
                                   torch_threads=args.torch_threads, progress=bar)
    for s in summaries:
        print(json.dumps(s))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from ..extractor.convert import convert_mesmer

    print(json.dumps(convert_mesmer(args.src, args.dst)))
    return 0
