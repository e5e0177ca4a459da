"""Reading and writing well-level profiles: formats, role detection and mapping, validation.

``read_profiles`` reads CSV/TSV (optionally gzipped), Parquet and AnnData ``.h5ad`` files (the table
in :mod:`.formats`) into a :class:`~cpdistiller_core.profiles.Profiles`. What a file really holds is
sniffed, not taken from its name (:mod:`.sniff`): magic bytes (Parquet, HDF5, gzip; workbooks and
saved web pages are named as such), the text encoding (UTF-8, else cp1252 / Latin-1), the separator
and the decimal mark (:func:`sniff_dialect`). Features are the numeric CellProfiler measurement
columns (``Cells_``, ``Nuclei_``, ``Cytoplasm_``, ``Image_``… prefixes) unless a list or regex is
given; every other column is metadata and is kept untouched, in its original order. Roles (plate,
well, batch, perturbation, control status, annotation) are auto-detected from pycytominer / JUMP
naming conventions (:func:`explain_roles` says why each was chosen) and can be overridden by a
dict, a :class:`Roles`, or a small YAML/JSON mapping file.

``write_profiles`` stores roles (and an Embedding's method/provenance) with the data: in the
Parquet schema metadata, the h5ad ``uns``, or a ``<file>.cpdistiller.json`` sidecar next to a CSV,
so that reading back restores them exactly.

A read's settings travel as a :class:`ReadOptions`; its notes (what was detected, dropped or
assumed) are collected in a list passed down explicitly, or warned when none is given.
Row numbers in messages are 0-based data rows (the header is not counted).
"""

from __future__ import annotations

from .combine import CombineReport, combine
from .common import H5AD_STORE_KEY, SIDECAR_SUFFIX, InputLike, PathLike, ReadOptions
from .features import FEATURE_PREFIXES, feature_columns, is_cellprofiler_feature
from .formats import FORMATS, SUFFIXES, FileFormat, file_stem, format_of, get_format, split_suffix
from .formats import format_of as _format_of  # the name cli/prep.py imports
from .read import LoadReport, read_mapping, read_profiles, read_profiles_with_report
from .readers import _in_memory_kind
from .roles import (
    ANNOTATION_NAMES,
    BATCH_NAMES,
    COLUMN_NAMES,
    CONTROL_NAMES,
    JUMP_NEGATIVE_CONTROLS,
    JUMP_POSITIVE_CONTROLS,
    NEGATIVE_VALUES,
    PERTURBATION_NAMES,
    PLATE_NAMES,
    POSITIVE_VALUES,
    ROW_NAMES,
    WELL_NAMES,
    RoleDetection,
    detect_roles,
    explain_roles,
    resolve_roles,
)
from .sniff import TextDialect, detect_encoding, sniff_content, sniff_dialect
from .validate import check_duplicates, validate
from .write import write_profiles
from .writers import _store_info, _writable_meta

__all__ = [
    "ANNOTATION_NAMES", "BATCH_NAMES", "COLUMN_NAMES", "CONTROL_NAMES", "FEATURE_PREFIXES", "FORMATS",
    "H5AD_STORE_KEY", "JUMP_NEGATIVE_CONTROLS", "JUMP_POSITIVE_CONTROLS", "NEGATIVE_VALUES",
    "PERTURBATION_NAMES", "PLATE_NAMES", "POSITIVE_VALUES", "ROW_NAMES", "SIDECAR_SUFFIX", "WELL_NAMES",
    "SUFFIXES", "CombineReport", "FileFormat", "InputLike", "LoadReport", "PathLike", "ReadOptions", "RoleDetection",
    "TextDialect", "check_duplicates", "combine", "detect_encoding", "detect_roles", "explain_roles",
    "feature_columns", "file_stem", "format_of", "get_format", "is_cellprofiler_feature", "read_mapping", "read_profiles",
    "read_profiles_with_report", "resolve_roles", "sniff_content", "sniff_dialect", "split_suffix", "validate",
    "write_profiles",
    # used by other engine modules (profiles.py, tools.py, cli/prep.py)
    "_format_of", "_in_memory_kind", "_store_info", "_writable_meta",
]
