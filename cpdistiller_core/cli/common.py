"""Input arguments shared by every subcommand that reads profiles, and their translation to Profiles.

Usage in a subcommand module::

    p = subparsers.add_parser("preprocess", help=...)
    add_input_arguments(p)          # positional FILE..., --mapping, --plate-col, ...
    ...
    profiles = profiles_from_args(args)
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from ..errors import CpDistillerError
from ..io import LoadReport, read_mapping, read_profiles_with_report
from ..io.formats import readable_hint
from ..profiles import Profiles

# Role name -> argparse destination of its column flag.
_COLUMN_FLAGS = {
    "plate": "plate_col", "well": "well_col", "row": "row_col", "column": "column_col",
    "batch": "batch_col", "perturbation": "perturbation_col", "control": "control_col",
    "annotation": "annotation_col",
}


def add_input_arguments(parser: argparse.ArgumentParser, *, positional: bool = True) -> None:
    """Add the profile input arguments: FILE... (``args.inputs``) and the column-mapping options."""
    if positional:
        parser.add_argument("inputs", nargs="+", metavar="FILE",
                            help=f"profile file(s): {readable_hint()}; several files "
                                 "are combined on their shared features")
    g = parser.add_argument_group(
        "input columns", "auto-detected from pycytominer/JUMP names when omitted; a column flag set to "
        "'none' unsets that role (e.g. --batch-col none)")
    g.add_argument("--mapping", metavar="FILE",
                   help="YAML/JSON file mapping roles to columns, e.g. 'plate: Plate', 'well: Well', "
                        "'negative_values: [Negative]'; flags below override it")
    g.add_argument("--plate-col", metavar="COL", help="plate column (e.g. Metadata_Plate)")
    g.add_argument("--well-col", metavar="COL", help="well column: 'A01', 'A1' or 'r01c01' names")
    g.add_argument("--row-col", metavar="COL", help="row column (letters or 1-based numbers), with --column-col")
    g.add_argument("--column-col", metavar="COL", help="column-number column (1-based), with --row-col")
    g.add_argument("--batch-col", metavar="COL", help="batch column")
    g.add_argument("--perturbation-col", metavar="COL", help="perturbation (compound, gene, allele) column")
    g.add_argument("--control-col", metavar="COL", help="column marking controls (e.g. Metadata_pert_type)")
    g.add_argument("--negative", metavar="VALUE[,VALUE]", action="append",
                   help="negative-control value(s) in the control column, e.g. DMSO or negcon (repeatable)")
    g.add_argument("--positive", metavar="VALUE[,VALUE]", action="append",
                   help="positive-control value(s) in the control column (repeatable)")
    g.add_argument("--annotation-col", metavar="COL", help="annotation column (gene symbol, MOA, target)")
    g.add_argument("--features-regex", metavar="REGEX",
                   help="feature columns: those whose names match REGEX (default: numeric CellProfiler "
                        "columns Cells_/Nuclei_/Cytoplasm_/Image_...)")
    g.add_argument("--plate-format", type=int, choices=(96, 384, 1536),
                   help="plate format (default: the smallest holding every well)")
    g.add_argument("--sep", metavar="CHAR", help="separator of text files: ',', ';', 'tab' or '|' (default: detected)")
    g.add_argument("--decimal", choices=(".", ","), help="decimal mark of text files (default: detected)")
    g.add_argument("--batch-from-file", action="store_true",
                   help="each input file is its own batch (adds Metadata_Batch when no batch column exists)")


def role_overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The role mapping given on the command line: --mapping file, then flags over it."""
    spec: dict[str, Any] = {}
    if getattr(args, "mapping", None):
        spec.update(read_mapping(args.mapping))
    for role, dest in _COLUMN_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            spec[role] = None if value.strip().lower() in ("", "none") else value
    for role, dest in (("negative_values", "negative"), ("positive_values", "positive")):
        values = getattr(args, dest, None)
        if values:
            spec[role] = [v.strip() for item in values for v in item.split(",") if v.strip()]
    if getattr(args, "plate_format", None):
        spec["plate_format"] = args.plate_format
    return spec


def load_from_args(args: argparse.Namespace, *, emit_warnings: bool = True,
                   dtype: type = np.float32) -> tuple[Profiles, LoadReport]:
    """Read ``args.inputs`` with the mapping options; also returns the load report (role reasons...).

    ``dtype=np.float64`` keeps raw CellProfiler values at full precision for normalisation."""
    inputs = getattr(args, "inputs", None)
    if not inputs:
        raise CpDistillerError("no input files given.")
    spec = role_overrides_from_args(args)
    features = spec.pop("features", None)
    regex = getattr(args, "features_regex", None) or spec.pop("feature_regex", None)
    spec.pop("feature_regex", None)
    return read_profiles_with_report(list(inputs), spec or None, features=features, feature_regex=regex,
                                     batch_from_file=bool(getattr(args, "batch_from_file", False)),
                                     emit_warnings=emit_warnings, dtype=dtype,
                                     sep=getattr(args, "sep", None), decimal=getattr(args, "decimal", None))


def profiles_from_args(args: argparse.Namespace, dtype: type = np.float32) -> Profiles:
    """Read the profiles named by :func:`add_input_arguments` options (warnings go to stderr)."""
    return load_from_args(args, dtype=dtype)[0]


def add_image_features_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """--image-features FILE|DIR: per-well extractor features (``cpdistiller extract`` output)."""
    parser.add_argument("--image-features", metavar="FILE|DIR",
                        help="per-well image features written by `cpdistiller extract` (a Parquet file, or a "
                             "folder of one file per plate; Metadata_Plate, Metadata_Well, mesmer_* columns), "
                             f"joined on plate + well: {what}")


def image_features_from_args(args: argparse.Namespace) -> Profiles | None:
    """The image features named by --image-features, or None."""
    path = getattr(args, "image_features", None)
    if not path:
        return None
    from ..runs import read_image_features

    return read_image_features(path)
