"""`Profiles`: well-level metadata + float32 feature matrix + resolved roles; `Embedding`: a corrected one.

A Profiles keeps every input metadata column in its original order (``meta``) and never edits it;
the roles say which columns mean plate, well, batch, perturbation, control status and annotation.
Derived, standardised values (0-based row/column, 'A01' well names, control status) are exposed as
arrays, computed once at construction. Operations return new objects.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import CpDistillerError, example_rows, where
from .layout import PlateGeometry, check_in_geometry, infer_geometry, parse_wells, well_names

if TYPE_CHECKING:
    import anndata

NEGATIVE, POSITIVE, TREATMENT = "negative", "positive", "treatment"
CONTROL_STATUSES = (NEGATIVE, POSITIVE, TREATMENT)


@dataclass(frozen=True)
class Roles:
    """Which metadata column plays which role. Column names refer to ``Profiles.meta``.

    Either ``well`` (one column like 'A01' or 'r01c01') or both ``row`` and ``column`` must be set.
    Control status comes from the ``control`` column: values in ``negative_values`` are negative
    controls, values in ``positive_values`` positive controls, anything else a treatment.

    Examples
    --------
    >>> from cpdistiller_core import Roles
    >>> Roles(plate="Plate", well="Well", control="Control Type", negative_values=("Negative",)).columns()
    ['Plate', 'Well', 'Control Type']
    """

    plate: str
    well: str | None = None
    row: str | None = None
    column: str | None = None
    batch: str | None = None
    perturbation: str | None = None
    control: str | None = None
    negative_values: tuple[str, ...] = ()
    positive_values: tuple[str, ...] = ()
    annotation: str | None = None
    plate_format: int | None = None  # 96 / 384 / 1536; inferred when None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["negative_values"] = list(self.negative_values)
        d["positive_values"] = list(self.positive_values)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Roles:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CpDistillerError(
                f"unknown role(s) {sorted(unknown)} in column mapping; known roles: {sorted(known)}."
            )
        kw = dict(d)
        for key in ("negative_values", "positive_values"):
            if key in kw:
                v = kw[key]
                kw[key] = (v,) if isinstance(v, str) else tuple(str(x) for x in (v or ()))
        return cls(**kw)

    def columns(self) -> list[str]:
        """Metadata columns referenced by the roles."""
        names = [self.plate, self.well, self.row, self.column, self.batch, self.perturbation,
                 self.control, self.annotation]
        return [n for n in dict.fromkeys(names) if n]


@dataclass(frozen=True, eq=False)
class Profiles:
    """Well-level profiles: ``meta`` (every input column), ``X`` (n_wells x n_features float32).

    Build one with :func:`cpdistiller_core.read_profiles` (files), :meth:`from_frame` (a pandas
    DataFrame in pycytominer layout) or :meth:`from_anndata`; roles are detected the same way for all.

    Examples
    --------
    >>> import cpdistiller_core as cpd
    >>> p = cpd.read_profiles("profiles.csv.gz")                      # doctest: +SKIP
    >>> p.n_wells, p.n_features, p.roles.plate                        # doctest: +SKIP
    (1948, 352, 'Plate')
    >>> adata = p.to_anndata()                                        # doctest: +SKIP
    """

    meta: pd.DataFrame
    X: np.ndarray
    features: list[str]
    roles: Roles
    source: str = ""
    # X is stored as float32 unless full_precision is set and X is float64: raw CellProfiler values
    # whose spread is below float32 resolution keep it until normalised (see io.read_profiles).
    full_precision: bool = False
    # Derived at construction (not arguments):
    plate: np.ndarray = field(init=False, repr=False)
    row: np.ndarray = field(init=False, repr=False)
    col: np.ndarray = field(init=False, repr=False)
    well: np.ndarray = field(init=False, repr=False)
    control: np.ndarray = field(init=False, repr=False)
    geometry: PlateGeometry = field(init=False, repr=False)

    def __post_init__(self) -> None:
        meta, roles, src = self.meta, self.roles, self.source or None
        X = np.asarray(self.X)
        keep64 = self.full_precision and X.dtype == np.float64
        X = np.ascontiguousarray(X, dtype=np.float64 if keep64 else np.float32)
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "features", list(self.features))
        if X.ndim != 2 or X.shape[0] != len(meta) or X.shape[1] != len(self.features):
            raise CpDistillerError(
                f"{where(src)}feature matrix shape {X.shape} does not match {len(meta)} rows x "
                f"{len(self.features)} features."
            )
        missing = [c for c in roles.columns() if c not in meta.columns]
        if missing:
            raise CpDistillerError(f"{where(src)}role column(s) {missing} not found in the metadata.")
        plate = meta[roles.plate]
        if plate.isna().any():
            raise CpDistillerError(
                f"{where(src, roles.plate)}empty plate names ({example_rows(meta.index[plate.isna()])})."
            )
        if roles.well:
            row, col = parse_wells(meta[roles.well], src, roles.well)
        elif roles.row and roles.column:
            row, col = _parse_row_col(meta, roles.row, roles.column, src)
        else:
            raise CpDistillerError(
                f"{where(src)}no well column: set the 'well' role (e.g. 'Metadata_Well') or both 'row' and 'column'."
            )
        well_col = roles.well or roles.row
        geometry = infer_geometry(row, col, roles.plate_format, src, meta.index, well_col)
        check_in_geometry(row, col, geometry, meta.index, src, well_col)
        object.__setattr__(self, "plate", plate.astype(str).to_numpy(dtype=object))
        object.__setattr__(self, "row", row)
        object.__setattr__(self, "col", col)
        object.__setattr__(self, "well", well_names(row, col))
        object.__setattr__(self, "geometry", geometry)
        object.__setattr__(self, "control", self._control_status())

    # ----- derived roles -------------------------------------------------------------------------
    def _control_status(self) -> np.ndarray:
        out = np.full(len(self.meta), TREATMENT, dtype=object)
        col = self.roles.control
        if not col:
            return out
        values = self.meta[col].astype("string").str.strip()
        if self.roles.negative_values:
            out[values.isin(self.roles.negative_values).fillna(False).to_numpy(bool)] = NEGATIVE
        if self.roles.positive_values:
            out[values.isin(self.roles.positive_values).fillna(False).to_numpy(bool)] = POSITIVE
        return out

    @property
    def batch(self) -> np.ndarray | None:
        """Batch label per well (str), or None when no batch role is set."""
        if not self.roles.batch:
            return None
        return self.meta[self.roles.batch].astype("string").fillna("NA").to_numpy(dtype=object)

    @property
    def perturbation(self) -> np.ndarray:
        """Perturbation label per well (str); negative controls without a name get 'negative_control'."""
        if not self.roles.perturbation:
            return np.where(self.control == NEGATIVE, "negative_control", self.well).astype(object)
        return self.meta[self.roles.perturbation].astype("string").fillna("NA").to_numpy(dtype=object)

    @property
    def annotation(self) -> np.ndarray | None:
        if not self.roles.annotation:
            return None
        return self.meta[self.roles.annotation].astype("string").to_numpy(dtype=object)

    @property
    def negative_mask(self) -> np.ndarray:
        return self.control == NEGATIVE

    @property
    def n_wells(self) -> int:
        return self.X.shape[0]

    @property
    def n_features(self) -> int:
        return self.X.shape[1]

    def labels(self, effect: str) -> np.ndarray:
        """Technical label per well for an effect: 'batch', 'plate', 'row' or 'column' (alias 'col')."""
        if effect == "batch":
            b = self.batch
            if b is None:
                raise CpDistillerError(f"{where(self.source or None)}no batch column: set the 'batch' role.")
            return b
        if effect == "plate":
            return self.plate
        if effect == "row":
            return self.row
        if effect in ("column", "col"):
            return self.col
        raise CpDistillerError(f"unknown technical effect {effect!r}; use batch, plate, row or column.")

    # ----- pandas / AnnData ----------------------------------------------------------------------
    @classmethod
    def from_frame(cls, df: pd.DataFrame, roles: Roles | Mapping[str, Any] | None = None, *,
                   features: Sequence[str] | None = None, feature_regex: str | None = None,
                   source: str | None = None, dtype: type = np.float32) -> Profiles:
        """Profiles from a DataFrame in pycytominer layout (``Metadata_`` columns + feature columns).

        Features, roles, checks and warnings are exactly those of :func:`~cpdistiller_core.io.read_profiles`
        on a file with the same columns (a named index becomes leading metadata column(s)).

        Parameters
        ----------
        df : pandas.DataFrame
            One row per well. Never modified.
        roles : Roles or dict, optional
            A Roles used as is, or partial overrides of the detected roles, e.g.
            ``{"plate": "Plate", "negative_values": ["DMSO"]}``.
        features, feature_regex : optional
            The feature columns (default: the CellProfiler measurement columns).
        source : str, optional
            Name used in messages (default ``"DataFrame"``).
        dtype : float32 (default) or float64
            float64 keeps raw CellProfiler values at full precision until they are normalised.

        Returns
        -------
        Profiles

        Examples
        --------
        >>> import pandas as pd, cpdistiller_core as cpd
        >>> df = pd.read_csv("profiles.csv.gz")                          # doctest: +SKIP
        >>> p = cpd.Profiles.from_frame(df, roles={"batch": "Metadata_Batch"})  # doctest: +SKIP
        """
        from .io import read_profiles

        if not isinstance(df, pd.DataFrame):
            raise CpDistillerError(f"from_frame expects a pandas DataFrame, not {type(df).__name__}.")
        return read_profiles(df, roles, features=features, feature_regex=feature_regex, source=source,
                             dtype=dtype)

    @classmethod
    def from_anndata(cls, adata: anndata.AnnData, roles: Roles | Mapping[str, Any] | None = None, *,
                     features: Sequence[str] | None = None, feature_regex: str | None = None,
                     source: str | None = None, dtype: type = np.float32) -> Profiles:
        """Profiles from an AnnData: ``.obs`` is the metadata, ``X`` (dense or sparse) the features.

        Exactly as reading the same object from an ``.h5ad`` file: roles are restored when the AnnData
        was made by cpDistiller, detected from ``.obs`` otherwise; meaningful ``obs_names`` (also
        duplicated ones) are kept as an ``obs_names`` metadata column. The AnnData is never modified.

        Parameters
        ----------
        adata : anndata.AnnData
            One observation per well.
        roles, features, feature_regex, source, dtype
            As for :meth:`from_frame` (source defaults to ``"AnnData"``).

        Returns
        -------
        Profiles

        Examples
        --------
        >>> import anndata, cpdistiller_core as cpd
        >>> adata = anndata.read_h5ad("profiles.h5ad")                   # doctest: +SKIP
        >>> p = cpd.Profiles.from_anndata(adata, roles={"plate": "Metadata_Plate"})  # doctest: +SKIP
        """
        from .io import _in_memory_kind, read_profiles

        if _in_memory_kind(adata) != "AnnData":
            raise CpDistillerError(f"from_anndata expects an anndata.AnnData, not {type(adata).__name__}.")
        return read_profiles(adata, roles, features=features, feature_regex=feature_regex, source=source,
                             dtype=dtype)

    def to_anndata(self) -> anndata.AnnData:
        """An AnnData: metadata in ``.obs`` (every column, original order), features in ``X``/``var``;
        roles and the feature list in ``.uns["cpdistiller_io"]`` so that :meth:`from_anndata` and a
        written ``.h5ad`` restore them.

        Returns
        -------
        anndata.AnnData
            ``obs_names`` are the ``obs_names`` column when there is one, else ``"0"…"n-1"``.

        Examples
        --------
        >>> import cpdistiller_core as cpd
        >>> adata = cpd.read_profiles("profiles.csv.gz").to_anndata()    # doctest: +SKIP
        >>> adata.write_h5ad("profiles.h5ad")                             # doctest: +SKIP
        """
        return _to_anndata(self, self.X.copy(), self.features, {})

    # ----- new objects ---------------------------------------------------------------------------
    def replace(self, **changes: Any) -> Profiles:
        """A copy with some fields replaced (meta, X, features, roles, source)."""
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        kw.update(changes)
        return type(self)(**kw)

    def with_features(self, X: np.ndarray, features: Sequence[str]) -> Profiles:
        """New features; full precision survives only while the new matrix is float64 too."""
        X = np.asarray(X)
        return self.replace(X=X, features=list(features),
                            full_precision=self.full_precision and X.dtype == np.float64)

    def subset(self, rows: np.ndarray | Sequence[int] | None = None,
               features: Sequence[str] | None = None) -> Profiles:
        """Rows by boolean mask or positions, features by name; metadata index is kept."""
        meta, X, names = self.meta, self.X, self.features
        if rows is not None:
            rows = np.asarray(rows)
            meta = meta.iloc[np.flatnonzero(rows) if rows.dtype == bool else rows]
            X = X[rows]
        if features is not None:
            pos = {f: i for i, f in enumerate(names)}
            unknown = [f for f in features if f not in pos]
            if unknown:
                raise CpDistillerError(f"unknown feature(s) {unknown[:5]}.")
            X = np.take(X, [pos[f] for f in features], axis=1)  # C-ordered: X[:, idx] would need a 2nd copy
            names = list(features)
        return self.replace(meta=meta, X=X, features=names)

    def to_frame(self) -> pd.DataFrame:
        """Metadata columns (original order) followed by feature columns."""
        feats = pd.DataFrame(self.X, columns=self.features, index=self.meta.index)
        return pd.concat([self.meta, feats], axis=1)

    def summary(self) -> dict[str, Any]:
        """Counts for `cpdistiller info` and the dashboard."""
        neg = self.negative_mask
        per_plate = pd.Series(neg).groupby(self.plate).sum().astype(int)
        return {
            "source": self.source,
            "wells": self.n_wells,
            "features": self.n_features,
            "plates": int(len(np.unique(self.plate))),
            "batches": None if self.batch is None else int(len(np.unique(self.batch))),
            "plate_format": self.geometry.n_wells,
            "perturbations": int(len(np.unique(self.perturbation[~neg]))) if (~neg).any() else 0,
            "negative_controls": int(neg.sum()),
            "positive_controls": int((self.control == POSITIVE).sum()),
            "negative_controls_per_plate": per_plate.to_dict(),
            "nan_values": int(np.isnan(self.X).sum()),
            "inf_values": int(np.isinf(self.X).sum()),
            "roles": self.roles.to_dict(),
        }


@dataclass(frozen=True, eq=False)
class Embedding(Profiles):
    """A corrected (or reference-method) embedding: Profiles whose features are ``cpd_0…`` or similar.

    Examples
    --------
    >>> import cpdistiller_core as cpd
    >>> pp, report = cpd.preprocess(cpd.read_profiles("profiles.csv.gz"))      # doctest: +SKIP
    >>> emb = cpd.CpDistiller(epochs=50).fit_transform(pp, effects="row,column")  # doctest: +SKIP
    >>> emb.to_anndata(pp).obsm["X_cpdistiller"].shape                         # doctest: +SKIP
    (1948, 50)
    """

    method: str = "uncorrected"
    provenance: dict[str, Any] = field(default_factory=dict)

    def obsm_key(self) -> str:
        """The AnnData ``.obsm`` key of this embedding: ``X_cpdistiller`` for cpDistiller, ``X_<method>``."""
        return "X_" + (re.sub(r"\W+", "_", self.method.lower()).strip("_") or "embedding")

    def to_anndata(self, profiles: Profiles | None = None, key: str | None = None,
                   layers: Mapping[str, Profiles] | None = None) -> anndata.AnnData:
        """An AnnData with the embedding in ``.obsm[key]`` and the metadata in ``.obs``.

        Parameters
        ----------
        profiles : Profiles, optional
            The profiles the embedding was computed from (same wells, same order), whose features
            become ``X``/``var``. Without them ``X`` has no columns.
        key : str, optional
            The ``.obsm`` key (default :meth:`obsm_key`, ``"X_cpdistiller"``).
        layers : mapping of str to Profiles, optional
            More matrices over the same wells and the same features as ``profiles`` (e.g. the corrected
            profiles), each into ``.layers[name]``; needs ``profiles``.

        Returns
        -------
        anndata.AnnData

        Examples
        --------
        >>> adata = emb.to_anndata(preprocessed)                  # doctest: +SKIP
        >>> adata.obsm["X_cpdistiller"].shape                     # doctest: +SKIP
        (1948, 50)
        """
        key = key or self.obsm_key()
        extra: dict[str, Any] = {"obsm_key": key}
        if profiles is None:
            X, names = np.zeros((self.n_wells, 0), dtype=np.float32), []
        else:
            _check_same_wells(self, profiles)
            X, names = profiles.X.copy(), list(profiles.features)
            extra["input_features"] = names
        adata = _to_anndata(self, X, names, extra)
        adata.obsm[key] = self.X.copy()
        for name, layer in (layers or {}).items():
            adata.layers[name] = _layer_matrix(self, profiles, name, layer)
        return adata

    @classmethod
    def from_profiles(cls, profiles: Profiles, Z: np.ndarray, method: str, prefix: str = "cpd_",
                      provenance: Mapping[str, Any] | None = None) -> Embedding:
        """Wrap a (n_wells x d) array with the metadata and roles of ``profiles``."""
        return cls(meta=profiles.meta, X=Z, features=[f"{prefix}{i}" for i in range(Z.shape[1])],
                   roles=profiles.roles, source=profiles.source, method=method,
                   provenance=dict(provenance or {}))


def _parse_row_col(meta: pd.DataFrame, row_col: str, col_col: str, src: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Separate row/column columns: rows as letters ('A') or 1-based numbers, columns 1-based numbers."""
    rows_raw = meta[row_col].astype("string").str.strip()
    numeric = pd.to_numeric(rows_raw, errors="coerce")
    letters = rows_raw.str.upper().str.fullmatch(r"[A-Z]{1,2}").fillna(False)
    rows = np.full(len(meta), -1, dtype=np.int64)
    ok_num = numeric.notna().to_numpy()
    rows[ok_num] = numeric[ok_num].astype(int).to_numpy() - 1
    let = letters.to_numpy(bool) & ~ok_num
    if let.any():
        r, _ = parse_wells(rows_raw[let] + "01", src, row_col)
        rows[let] = r
    bad = rows < 0
    if bad.any():
        raise CpDistillerError(
            f"{where(src, row_col)}cannot parse row values ({example_rows(meta.index[bad])}); "
            "expected letters ('A') or 1-based numbers."
        )
    cols_num = pd.to_numeric(meta[col_col], errors="coerce")
    bad = cols_num.isna().to_numpy() | (cols_num < 1).fillna(True).to_numpy()
    if bad.any():
        raise CpDistillerError(
            f"{where(src, col_col)}cannot parse column numbers ({example_rows(meta.index[bad])}); expected 1-based numbers."
        )
    return rows, cols_num.astype(int).to_numpy() - 1


def _to_anndata(p: Profiles, X: np.ndarray, var_names: Sequence[str], extra: Mapping[str, Any]) -> anndata.AnnData:
    import anndata

    from .io import H5AD_STORE_KEY, _store_info, _writable_meta
    from .paths import json_default

    obs = _writable_meta(p.meta).reset_index(drop=True)
    if "obs_names" in obs.columns:
        obs.index = pd.Index(obs["obs_names"].astype(str).to_numpy(), name=None)
    else:
        obs.index = pd.Index([str(i) for i in range(len(obs))])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*names are not unique", category=UserWarning)
        adata = anndata.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index([str(v) for v in var_names])))
    adata.uns[H5AD_STORE_KEY] = json.dumps({**_store_info(p), **extra}, default=json_default)
    return adata


def _layer_matrix(emb: Profiles, profiles: Profiles | None, name: str, layer: Profiles) -> np.ndarray:
    """``layer``'s matrix for ``.layers[name]``: the wells of ``emb``, the features of ``profiles``."""
    if profiles is None:
        raise CpDistillerError(f"layer {name!r} needs the input profiles: its columns are their features.")
    _check_same_wells(emb, layer)
    if list(layer.features) != list(profiles.features):
        raise CpDistillerError(f"layer {name!r} has {len(layer.features)} features, not the {len(profiles.features)} "
                               "input features in the same order.")
    return np.asarray(layer.X).copy()


def _check_same_wells(emb: Profiles, profiles: Profiles) -> None:
    same = profiles.n_wells == emb.n_wells and bool(
        np.array_equal(profiles.plate, emb.plate) and np.array_equal(profiles.well, emb.well))
    if not same:
        raise CpDistillerError(
            f"the profiles ({profiles.n_wells} wells) are not the wells of the embedding ({emb.n_wells} wells, "
            "same plates and wells in the same order): pass the preprocessed profiles the embedding was "
            "computed from."
        )
