"""`cpdistiller jump list|fetch`: JUMP Cell Painting profiles from the Cell Painting Gallery."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import CpDistillerError
from ..progress import TerminalProgress

CONFIRM_BYTES = 2 * 1024**3  # ask before downloading more than this


def register(sub: argparse._SubParsersAction) -> None:
    jump = sub.add_parser("jump", help="list and fetch JUMP (cpg0016) profiles from the Cell Painting Gallery",
                          description="List and fetch JUMP (cpg0016) well-level profiles; cached locally.")
    jsub = jump.add_subparsers(dest="jump_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--source", help="e.g. source_4")
        p.add_argument("--batch", help="e.g. 2021_04_26_Batch1")
        p.add_argument("--type", dest="plate_type", help="plate type: ORF, CRISPR, COMPOUND, TARGET1, TARGET2, …")
        p.add_argument("--metadata-dir", type=Path,
                       help="folder with JUMP metadata tables (plate.csv.gz, well.csv.gz, …) to use offline")
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
    from ..jump import JumpClient

    return JumpClient(cache=args.cache_dir, metadata_dir=args.metadata_dir, workers=workers)


def _list(args: argparse.Namespace) -> int:
    plates = _client(args).list_plates(args.source, args.batch, args.plate_type)
    if plates.empty:
        raise CpDistillerError("no JUMP plates match these filters.")
    if args.plates:
        print(plates.to_string(index=False))
    else:
        summary = (plates.groupby(["Metadata_Source", "Metadata_Batch", "Metadata_PlateType"])
                   .size().rename("plates").reset_index())
        print(summary.to_string(index=False))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from ..io import write_profiles

    client = _client(args, args.workers)
    plates = [p.strip() for p in args.plates.split(",") if p.strip()] if args.plates else None
    selection = client.select(args.source, args.batch, plates, args.plate_type, args.max_plates)
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
                                skip_missing=args.skip_missing, progress=bar)
    write_profiles(profiles, args.out)
    s = profiles.summary()
    print(f"wrote {args.out}: {s['wells']} wells x {s['features']} features from {s['plates']} plates "
          f"({s['negative_controls']} negative controls)")
    return 0
