"""`cpdistiller jump list|fetch`: JUMP Cell Painting profiles from the Cell Painting Gallery."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import CpDistillerError
from ..progress import TerminalProgress

DATASETS = ("cpg0016", "cpg0000")

CONFIRM_BYTES = 2 * 1024**3  # ask before downloading more than this


def register(sub: argparse._SubParsersAction) -> None:
    jump = sub.add_parser("jump", help="list and fetch JUMP profiles (cpg0016, the pilot cpg0000) from the "
                                       "Cell Painting Gallery",
                          description="List and fetch JUMP well-level profiles; cached locally. --dataset cpg0000 "
                                      "is the pilot CPJUMP1 (A549/U2OS; compounds, CRISPR guides, ORFs at two "
                                      "time points), the data of the cpDistiller paper's retrieval tasks.")
    jsub = jump.add_subparsers(dest="jump_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", choices=DATASETS, default="cpg0016",
                       help="cpg0016: JUMP production (default); cpg0000: the JUMP pilot CPJUMP1")
        p.add_argument("--source", help="e.g. source_4")
        p.add_argument("--batch", help="e.g. 2021_04_26_Batch1; the pilot: 2020_11_04_CPJUMP1, …")
        p.add_argument("--type", dest="plate_type",
                       help="plate type: ORF, CRISPR, COMPOUND, TARGET1, TARGET2, … (the pilot: COMPOUND, CRISPR, ORF)")
        p.add_argument("--cell-type", help="the pilot only: A549 or U2OS")
        p.add_argument("--time", help="the pilot only: hours of treatment (24, 48, 96, 144)")
        p.add_argument("--level", help="the pilot only: which pycytominer profiles, e.g. normalized_negcon "
                                        "(default normalized_feature_select_negcon_batch, the paper's benchmark files)")
        p.add_argument("--metadata-dir", type=Path,
                       help="folder with the metadata tables (cpg0016: plate.csv.gz, well.csv.gz, …; cpg0000: "
                            "experiment-metadata.tsv and the JUMP-Target-1_* tables) to use offline")
        p.add_argument("--cache-dir", type=Path, help="download cache (default: $CPDISTILLER_CACHE/jump)")

    lst = jsub.add_parser("list", help="list sources, batches and plates")
    common(lst)
    lst.add_argument("--plates", action="store_true", help="one line per plate instead of a summary")
    lst.set_defaults(func=_list)

    fetch = jsub.add_parser("fetch", help="download plates and join metadata into one profiles file")
    common(fetch)
    fetch.add_argument("--plates", help="comma-separated plate names (default: every plate matching the filters)")
    fetch.add_argument("--max-plates", type=int, help="take at most this many plates")
    fetch.add_argument("--out", type=Path, required=True, help="output file (.parquet, .csv, .h5ad)")
    fetch.add_argument("--workers", type=int, default=4, help="parallel downloads (default 4)")
    fetch.add_argument("--skip-missing", action="store_true", help="skip plates the gallery does not have")
    fetch.add_argument("--dry-run", action="store_true", help="only print what would be downloaded")
    fetch.add_argument("-y", "--yes", action="store_true", help=f"do not ask before downloads over {CONFIRM_BYTES >> 30} GB")
    fetch.set_defaults(func=_fetch)


def _client(args: argparse.Namespace, workers: int = 4):
    from ..jump import JumpClient, PilotClient

    common = {"cache": args.cache_dir, "metadata_dir": args.metadata_dir, "workers": workers}
    if args.dataset == "cpg0000":
        return PilotClient(**({"level": args.level} if args.level else {}), **common)
    pilot_only = [flag for flag, value in (("--cell-type", args.cell_type), ("--time", args.time),
                                           ("--level", args.level)) if value]
    if pilot_only:
        raise CpDistillerError(f"{', '.join(pilot_only)} filter(s) the pilot's plates; add --dataset cpg0000.")
    return JumpClient(**common)


def _filters(args: argparse.Namespace) -> dict:
    """The pilot's extra plate filters (none for cpg0016)."""
    return {"cell_type": args.cell_type, "time": args.time} if args.dataset == "cpg0000" else {}


def _list(args: argparse.Namespace) -> int:
    plates = _client(args).list_plates(args.source, args.batch, args.plate_type, **_filters(args))
    if plates.empty:
        raise CpDistillerError("no JUMP plates match these filters.")
    if args.plates:
        print(plates.to_string(index=False))
    else:
        keys = ["Metadata_Source", "Metadata_Batch", "Metadata_PlateType"]
        keys += [c for c in ("Metadata_Cell_type", "Metadata_Time") if c in plates.columns]
        summary = plates.groupby(keys).size().rename("plates").reset_index()
        print(summary.to_string(index=False))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from ..io import write_profiles

    client = _client(args, args.workers)
    plates = [p.strip() for p in args.plates.split(",") if p.strip()] if args.plates else None
    selection = client.select(args.source, args.batch, plates, args.plate_type, args.max_plates, **_filters(args))
    plan = client.plan(selection)
    print(f"JUMP fetch: {plan.describe()}", file=sys.stderr)
    if args.dry_run:
        print(plan.plates[["Metadata_Source", "Metadata_Batch", "Metadata_Plate", "Metadata_PlateType",
                           "cached", "size"]].to_string(index=False))
        return 0
    if plan.bytes_to_download > CONFIRM_BYTES and not args.yes:
        if not sys.stdin.isatty():
            raise CpDistillerError(f"{plan.describe()}: more than {CONFIRM_BYTES >> 30} GB; rerun with --yes.")
        if input("Download? [y/N] ").strip().lower() not in ("y", "yes"):
            return 1
    with TerminalProgress("download") as bar:
        profiles = client.fetch(args.source, args.batch, plates, args.plate_type, args.max_plates,
                                skip_missing=args.skip_missing, progress=bar, **_filters(args))
    write_profiles(profiles, args.out)
    s = profiles.summary()
    print(f"wrote {args.out}: {s['wells']} wells x {s['features']} features from {s['plates']} plates "
          f"({s['negative_controls']} negative controls)")
    return 0
