"""cpDistiller: correct batch and gradient-influenced row/column effects in Cell Painting profiles."""

from .errors import CpDistillerError, CpDistillerWarning
from .profiles import CONTROL_STATUSES, NEGATIVE, POSITIVE, TREATMENT, Embedding, Profiles, Roles

__version__ = "0.1.0"

__all__ = [
    "CONTROL_STATUSES", "NEGATIVE", "POSITIVE", "TREATMENT",
    "CpDistillerError", "CpDistillerWarning", "Embedding", "Profiles", "Roles", "__version__",
]
