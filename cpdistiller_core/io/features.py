"""Which columns are features: CellProfiler measurement names, or a given list / regex."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from ..errors import CpDistillerError, example_values, where

# CellProfiler object/compartment names seen in profiles (JUMP, LINCS, VarChAMP, cmQTL, cell injury...).
FEATURE_PREFIXES: tuple[str, ...] = (
    "Cells_", "Nuclei_", "Cytoplasm_", "Image_", "PreNuclei_", "Mito_", "Mitochondria_",
    "Speckles_", "Foci_", "Spots_", "Neurites_", "Nucleoli_", "Organelles_", "Cell_", "Nucleus_",
)
# Image_ columns that describe the acquisition, not the biology: they stay metadata.
_IMAGE_NON_FEATURES = re.compile(
    r"^Image_(Metadata|FileName|PathName|URL|MD5Digest|Width|Height|Scaling|Series|Frame|Group|"
    r"ExecutionTime|ModuleError|ImageNumber|ImageSet|Channel|Count|Stack|Plane|Timepoint)(_|$)"
)


def feature_columns(columns: Iterable[str], features: Sequence[str] | None = None,
                    feature_regex: str | None = None, source: str | None = None) -> list[str]:
    """Which columns are features: the given list, those matching the regex, or CellProfiler names."""
    cols = [str(c) for c in columns]
    if features is not None:
        present = set(cols)
        missing = [f for f in features if f not in present]
        if missing:
            raise CpDistillerError(
                f"{where(source)}{len(missing)} requested feature column(s) not found: {example_values(missing)}."
            )
        return list(dict.fromkeys(features))
    if feature_regex is not None:
        try:
            rx = re.compile(feature_regex)
        except re.error as exc:
            raise CpDistillerError(f"invalid feature regex {feature_regex!r}: {exc}.") from None
        return [c for c in cols if rx.search(c)]
    return [c for c in cols if is_cellprofiler_feature(c)]


def is_cellprofiler_feature(name: str) -> bool:
    """True for CellProfiler measurement names ('Cells_AreaShape_Area'), False for metadata."""
    return name.startswith(FEATURE_PREFIXES) and not _IMAGE_NON_FEATURES.match(name)
