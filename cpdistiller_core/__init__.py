"""cpDistiller: correct batch and gradient-influenced row/column effects in Cell Painting profiles.

>>> import cpdistiller_core as cpd
>>> adata = cpd.read_profiles("profiles.csv.gz").to_anndata()    # doctest: +SKIP
>>> cpd.correct(adata, effects="batch,row,column")                 # doctest: +SKIP
>>> adata.obsm["X_cpdistiller"]                                    # doctest: +SKIP

``CpDistiller`` (and with it torch) is imported on first use, so ``import cpdistiller_core`` and the
CLI's ``--help`` stay fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"  # before the imports: submodules read it

from .config import CpDistillerConfig
from .errors import CpDistillerError, CpDistillerWarning
from .io import read_profiles, write_profiles
from .preprocess import PreprocessConfig, PreprocessReport, preprocess
from .profiles import CONTROL_STATUSES, NEGATIVE, POSITIVE, TREATMENT, Embedding, Profiles, Roles
from .tools import correct, evaluate

__all__ = [
    "CONTROL_STATUSES", "NEGATIVE", "POSITIVE", "TREATMENT",
    "CpDistiller", "CpDistillerConfig", "CpDistillerError", "CpDistillerWarning", "Embedding",
    "PreprocessConfig", "PreprocessReport", "Profiles", "Roles", "__version__",
    "correct", "evaluate", "preprocess", "read_profiles", "write_profiles",
]


def __getattr__(name: str) -> Any:
    """``CpDistiller`` on first access (PEP 562): it imports torch."""
    if name == "CpDistiller":
        from .api import CpDistiller

        return CpDistiller
    raise AttributeError(f"module 'cpdistiller_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"CpDistiller"})
