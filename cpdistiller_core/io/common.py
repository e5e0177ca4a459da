"""What every part of reading needs: the read options, where notes go, and the stored-metadata keys."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from ..errors import CpDistillerError, CpDistillerWarning

PathLike = str | os.PathLike
InputLike = PathLike | BinaryIO

SIDECAR_SUFFIX = ".cpdistiller.json"
_STORE_KEY = "cpdistiller"
# h5ad: roles and feature list live in uns[H5AD_STORE_KEY]; uns["cpdistiller"] is the run summary.
H5AD_STORE_KEY = "cpdistiller_io"
_STORE_VERSION = 1

_SEP_NAMES = {"tab": "\t", "\\t": "\t", "semicolon": ";", "comma": ",", "pipe": "|"}


@dataclass(frozen=True)
class ReadOptions:
    """Settings of one read, passed explicitly to every reader.

    ``dtype`` is the precision of the feature matrix: float64 matters for raw CellProfiler values
    whose spread is below float32 resolution (e.g. Costes correlations near 1.0), where MAD
    normalisation of float32 copies can differ by many MAD units. ``sep`` / ``decimal`` are the
    given separator and decimal mark of text files (None: detect them).
    """

    features: Sequence[str] | None = None
    feature_regex: str | None = None
    dtype: type = np.float32
    sep: str | None = None
    decimal: str | None = None

    @classmethod
    def checked(cls, features: Sequence[str] | None = None, feature_regex: str | None = None,
                dtype: type = np.float32, sep: str | None = None, decimal: str | None = None) -> ReadOptions:
        """Options from user values: float32/float64 only; --sep/--decimal checked ('tab' names the tab)."""
        if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise CpDistillerError(f"feature dtype must be float32 or float64, not {dtype!r}.")
        if sep is not None:
            sep = _SEP_NAMES.get(sep.lower(), sep)
            if len(sep) != 1 or sep in "\"\r\n" or sep.isalnum() or sep == ".":
                raise CpDistillerError(f"--sep must be one character such as ',', ';', 'tab' or '|', not {sep!r}.")
        if decimal is not None and decimal not in (".", ","):
            raise CpDistillerError(f"--decimal must be '.' or ',', not {decimal!r}.")
        if sep is not None and sep == decimal:
            raise CpDistillerError("--sep and --decimal cannot both be ','.")
        return cls(features, feature_regex, np.dtype(dtype).type, sep, decimal)

    @property
    def full_precision(self) -> bool:
        return self.dtype is np.float64


def note(notes: list[str] | None, message: str) -> None:
    """Collect ``message`` in ``notes`` (a read's report), or emit it as a CpDistillerWarning when None."""
    if notes is None:
        warnings.warn(message, CpDistillerWarning, stacklevel=3)
    else:
        notes.append(message)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (for messages quoting a library's error)."""
    return " ".join(str(exc).split()) or type(exc).__name__
