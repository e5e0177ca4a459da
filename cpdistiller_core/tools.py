"""One call for notebooks: ``cpd.correct(adata)`` / ``cpd.correct(df)`` and ``cpd.evaluate``.

``correct`` reads an AnnData or a pycytominer-layout DataFrame exactly as a file (same role detection,
errors and warnings), preprocesses it, trains cpDistiller (or applies a fitted one) and puts the
embedding back row for row: wells that preprocessing dropped get NaN rows and
``cpdistiller_used = False``, so the result always lines up with the input.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import CpDistillerError, CpDistillerWarning
from .preprocess import MODEL_PREPROCESS_FILE as PREPROCESS_FILE
from .profiles import Embedding, Profiles, Roles
from .progress import ProgressCallback

if TYPE_CHECKING:
    import anndata

    from .api import CpDistiller
    from .metrics import Scorecard
    from .preprocess import PreprocessConfig, PreprocessReport

DEFAULT_KEY = "X_cpdistiller"
UNS_KEY = "cpdistiller"
USED_COLUMN = "cpdistiller_used"  # .obs column of an AnnData
FRAME_USED_COLUMN = "Metadata_cpdistiller_used"  # DataFrame column (pycytominer: metadata prefix)
DEFAULT_EFFECTS = "batch,row,column"


@dataclasses.dataclass
class _Result:
    Z: np.ndarray  # (n_input_wells, d), NaN rows for wells not used
    used: np.ndarray
    names: list[str]
    info: dict[str, Any]
    input_features: list[str]  # the feature columns read from the input


# ----- correct -------------------------------------------------------------------------------------
def correct(data: anndata.AnnData | pd.DataFrame, effects: str | Sequence[str] = DEFAULT_EFFECTS,
            key_added: str = DEFAULT_KEY, *, copy: bool = False, roles: Roles | Mapping[str, Any] | None = None,
            strict: bool = False, model: CpDistiller | str | Path | None = None, preprocess: bool = True,
            preprocess_config: PreprocessConfig | Mapping[str, Any] | None = None,
            features: Sequence[str] | None = None, feature_regex: str | None = None,
            summary: bool = True, save_model: str | Path | None = None,
            progress: ProgressCallback | None = None, **config: Any) -> anndata.AnnData | pd.DataFrame:
    """Remove batch / row / column effects; the embedding goes back next to the input, row for row.

    Parameters
    ----------
    data : anndata.AnnData or pandas.DataFrame
        Well-level profiles. AnnData: ``.obs`` metadata, ``X`` (dense or sparse) features.
        DataFrame: pycytominer layout, ``Metadata_`` columns and CellProfiler feature columns.
    effects : str or sequence, default ``"batch,row,column"``
        Technical effects to remove. Without a batch column, batch is left out with a warning
        (an error with ``strict=True``). Ignored when applying a fitted ``model``.
    key_added : str, default ``"X_cpdistiller"``
        ``.obsm`` key of the embedding (AnnData).
    copy : bool, default False
        AnnData: work on a copy and return it instead of modifying ``data``.
    roles : Roles or dict, optional
        Overrides of the detected roles, e.g. ``{"batch": "Metadata_Source", "negative_values": ["DMSO"]}``.
    strict : bool, default False
        Raise instead of leaving NaN rows when preprocessing drops wells, and instead of dropping the
        batch effect when there is no batch column.
    model : CpDistiller or path, optional
        A fitted model (or a saved model / run directory) to apply to new plates with its stored
        preprocessing; missing features are refused with their names. An unfitted CpDistiller is
        fitted here (its settings are used) and keeps its preprocessing for later calls.
    preprocess : bool, default True
        False: the features are already normalised and selected.
    preprocess_config : PreprocessConfig or dict, optional
        Preprocessing settings (default: the paper's).
    features, feature_regex : optional
        Which columns / variables are features (default: CellProfiler names; all of X for AnnData).
    summary : bool, default True
        Compute the "did it help?" verdict (``verdict.did_it_help``: replicate and annotation mAP,
        neighbour preservation, control collapse, row/column/batch variance, each against the
        uncorrected PCA-50); every check that is not good is also a warning.
    save_model : path, optional
        Save the fitted model and its preprocessing there (reuse with ``model=path``).
    progress : callable, optional
        ``progress(fraction, message)`` during training.
    **config
        :class:`~cpdistiller_core.config.CpDistillerConfig` settings, e.g. ``epochs=50``, ``seed=1``,
        ``device="cpu"``. Not together with ``model=`` (a model keeps its own settings).

    Returns
    -------
    anndata.AnnData or pandas.DataFrame
        AnnData (``data`` itself, or the copy): ``.obsm[key_added]``, ``.obs["cpdistiller_used"]``
        and ``.uns["cpdistiller"]`` (settings, versions, roles, dropped wells, warnings, ``did_it_help``).
        DataFrame (new): every metadata column, ``cpd_0…cpd_49`` and ``Metadata_cpdistiller_used``,
        same index as ``data``; the run information in ``.attrs["cpdistiller"]``.

    Examples
    --------
    >>> import cpdistiller_core as cpd
    >>> adata = cpd.read_profiles("cell_injury.csv.gz").to_anndata()        # doctest: +SKIP
    >>> cpd.correct(adata, effects="batch,row,column")                       # doctest: +SKIP
    >>> adata.obsm["X_cpdistiller"].shape                                    # doctest: +SKIP
    (1948, 50)
    >>> out = cpd.correct(df, effects="row,column", epochs=20)               # doctest: +SKIP
    >>> cpd.correct(new_adata, model="my_model/")                            # doctest: +SKIP
    """
    kind = _kind(data)
    if kind == "AnnData" and copy:
        data = data.copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = _run(data, effects, roles, strict, model, preprocess, preprocess_config, features, feature_regex,
                   summary, save_model, progress, config)
    res.info["warnings"] = list(dict.fromkeys(str(w.message) for w in caught))
    res.info["key_added"] = key_added
    for w in caught:  # the notebook still shows them
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if kind == "AnnData":
        data.obsm[key_added] = res.Z
        data.obs[USED_COLUMN] = res.used
        data.uns[UNS_KEY] = _uns_safe(res.info)
        return data
    return _frame_result(data, res)


def _kind(data: Any) -> str:
    from .io import _in_memory_kind

    kind = _in_memory_kind(data)
    if kind is None:
        hint = (" For Profiles use CpDistiller().fit_transform(preprocess(profiles)[0])."
                if isinstance(data, Profiles) else " Read files with cpd.read_profiles(path).to_anndata().")
        raise CpDistillerError(f"correct expects an AnnData or a pandas DataFrame, not {type(data).__name__}.{hint}")
    return kind


def _run(data: Any, effects: str | Sequence[str], roles: Any, strict: bool, model: Any, preprocess: bool,
         preprocess_config: Any, features: Sequence[str] | None, feature_regex: str | None, summary: bool,
         save_model: str | Path | None, progress: ProgressCallback | None, config: dict[str, Any]) -> _Result:
    from .api import CpDistiller, package_versions
    from .io import read_profiles_with_report

    profiles, load = read_profiles_with_report(
        data, roles, features=features, feature_regex=feature_regex,
        dtype=np.float64 if preprocess else np.float32)  # raw values keep full precision until normalised
    if model is not None and config:
        raise CpDistillerError(f"settings {sorted(config)} and model= together: a model keeps its own settings "
                               "(give them to CpDistiller(...), or leave out model=).")
    fitted, prep = _resolve_model(model, preprocess)
    applied = fitted is not None
    if fitted is None:
        pp, prep_report = _preprocess(profiles, preprocess, preprocess_config)
    elif prep is not None:
        pp, prep_report = prep.apply_with_report(profiles)
    else:
        pp, prep_report = profiles, None
    used, pos = _used_rows(profiles, pp)
    if strict and not used.all():
        raise CpDistillerError(_dropped_message(profiles, used, prep_report))
    if fitted is None:
        fitted = model if model is not None else CpDistiller(_config(config))
        eff = _effects(profiles, effects, strict)
        fitted.fit(pp, effects=eff, progress=progress)
        fitted.preprocess_report = prep_report  # kept with the model for cpd.correct(new, model=...)
    emb = fitted.transform(pp)
    if save_model is not None:
        _save(fitted, prep_report, Path(save_model))
    Z = np.full((profiles.n_wells, emb.n_features), np.nan, dtype=np.float32)
    Z[pos] = emb.X
    info = {"method": "cpDistiller", "effects": list(fitted.effects), "n_wells": profiles.n_wells,
            "n_used": int(used.sum()), "dropped_wells": _dropped_wells(profiles, used, prep_report),
            "roles": profiles.roles.to_dict(), "role_reasons": load.role_reasons,
            "config": fitted.config.to_dict(), "preprocess": _prep_info(prep_report, preprocess),
            "model": "applied a fitted model" if applied else "fitted here", "train": fitted.train_info,
            "versions": package_versions()}
    if summary:
        info["did_it_help"] = _did_it_help(fitted, pp, emb)
    return _Result(Z, used, list(emb.features), info, list(profiles.features))


def _config(config: dict[str, Any]) -> Any:
    from .config import CpDistillerConfig

    base = config.pop("config", None)
    if base is not None and not isinstance(base, CpDistillerConfig):
        raise CpDistillerError("config= must be a CpDistillerConfig; give single settings as keywords (epochs=50).")
    base = base or CpDistillerConfig()
    if not config:
        return base
    return CpDistillerConfig.from_dict({**base.to_dict(), **config})


def _resolve_model(model: Any, preprocess: bool) -> tuple[CpDistiller | None, PreprocessReport | None]:
    """(fitted model or None to fit one, the preprocessing to apply with it)."""
    from .api import CpDistiller

    if model is None:
        return None, None
    if isinstance(model, (str, Path)):
        from .runs import load_fitted

        model = load_fitted(model)  # a run directory or a model directory, with its preprocessing
    if not isinstance(model, CpDistiller):
        raise CpDistillerError(f"model= must be a CpDistiller or a saved model directory, not {type(model).__name__}.")
    if model.module is None:
        return None, None  # unfitted: fit it here with its own settings
    prep = getattr(model, "preprocess_report", None)
    if prep is None and preprocess:
        raise CpDistillerError(
            "this model carries no preprocessing (it was not fitted by cpd.correct or saved with "
            f"{PREPROCESS_FILE}): pass preprocess=False if the data are already preprocessed the same way.")
    return model, prep if preprocess else None


def _preprocess(profiles: Profiles, preprocess: bool, cfg: Any) -> tuple[Profiles, PreprocessReport | None]:
    from .preprocess import PreprocessConfig
    from .preprocess import preprocess as run_preprocess

    if not preprocess:
        return profiles, None
    if isinstance(cfg, Mapping):
        cfg = PreprocessConfig.from_dict(cfg)
    return run_preprocess(profiles, cfg or PreprocessConfig())


def _effects(profiles: Profiles, effects: str | Sequence[str], strict: bool) -> tuple[str, ...]:
    from .config import parse_effects

    eff = parse_effects(effects)
    if "batch" in eff and profiles.roles.batch is None:
        msg = ("no batch column: the batch effect is not corrected (name one with roles={'batch': ...}, "
               "or choose effects='row,column').")
        if strict or eff == ("batch",):
            raise CpDistillerError(f"{profiles.source}: {msg}")
        warnings.warn(f"{profiles.source}: {msg}", CpDistillerWarning, stacklevel=4)
        eff = tuple(e for e in eff if e != "batch")
    return eff


def _keys(p: Profiles) -> pd.Index:
    return pd.Index(p.plate.astype(str)) + "\x1f" + pd.Index(p.well.astype(str))


def _used_rows(profiles: Profiles, pp: Profiles) -> tuple[np.ndarray, np.ndarray]:
    """Which input wells the preprocessed profiles kept, and where each preprocessed well sits in the input
    ((plate, well) pairs are unique: read_profiles checks)."""
    pos = _keys(profiles).get_indexer(_keys(pp))
    if (pos < 0).any():
        raise CpDistillerError("preprocessing returned wells that are not in the input (internal error).")
    used = np.zeros(profiles.n_wells, dtype=bool)
    used[pos] = True
    return used, pos


def _dropped_wells(profiles: Profiles, used: np.ndarray, report: PreprocessReport | None) -> list[dict[str, Any]]:
    reasons = {(d["plate"], d["well"]): d.get("reason", "") for d in (report.dropped_rows if report else [])}
    return [{"row": int(i), "plate": str(profiles.plate[i]), "well": str(profiles.well[i]),
             "reason": reasons.get((str(profiles.plate[i]), str(profiles.well[i])), "dropped by preprocessing")}
            for i in np.flatnonzero(~used)]


def _dropped_message(profiles: Profiles, used: np.ndarray, report: PreprocessReport | None) -> str:
    rows = _dropped_wells(profiles, used, report)
    shown = "; ".join(f"row {r['row']} (plate {r['plate']} well {r['well']}): {r['reason']}" for r in rows[:3])
    more = f" (+{len(rows) - 3} more)" if len(rows) > 3 else ""
    return (f"{profiles.source}: preprocessing dropped {len(rows)} of {profiles.n_wells} wells: {shown}{more}. "
            "strict=True refuses this; use strict=False (NaN rows, cpdistiller_used=False) or "
            "preprocess_config={'nan_rows': 'zero'} to keep them.")


def _prep_info(report: PreprocessReport | None, preprocess: bool) -> dict[str, Any] | str:
    if report is None:
        return "skipped (preprocess=False)" if not preprocess else "none"
    return {"config": report.config.to_dict(), **report.summary()}


def _save(model: CpDistiller, prep: PreprocessReport | None, directory: Path) -> None:
    model.save(directory)
    if prep is not None:
        prep.save(directory / PREPROCESS_FILE)


def _frame_result(df: pd.DataFrame, res: _Result) -> pd.DataFrame:
    fset = set(res.input_features)
    new = set(res.names) | {FRAME_USED_COLUMN}
    meta = df.loc[:, [c for c in df.columns if str(c) not in fset and str(c) not in new]]
    emb = pd.DataFrame(res.Z, index=df.index, columns=res.names)
    out = pd.concat([meta, emb], axis=1)
    out[FRAME_USED_COLUMN] = res.used
    out.attrs[UNS_KEY] = res.info
    return out


def _uns_safe(obj: Any) -> Any:
    """Values AnnData can write to .h5ad: no None (dropped from dicts, 'None' in lists), no tuples."""
    if isinstance(obj, Mapping):
        return {str(k): _uns_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        items = [_uns_safe(v) if v is not None else "None" for v in obj]
        if items and all(isinstance(v, Mapping) for v in items):
            return {str(i): v for i, v in enumerate(items)}  # h5ad cannot store a list of dicts
        return items
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, str):
        return str(obj)  # also str subclasses such as torch's TorchVersion
    if isinstance(obj, (int, float, bool, np.ndarray)):
        return obj
    return str(obj)


# ----- did it help? ---------------------------------------------------------------------------------
def _did_it_help(model: CpDistiller, pp: Profiles, emb: Embedding) -> dict[str, Any]:
    """``verdict.model_verdict`` (the runs' verdict.json) as a dict keyed by check; a warning per problem."""
    from .verdict import model_verdict

    verdict = model_verdict(model, emb, pp)
    verdict.warn(stacklevel=4)
    checks = {c["name"]: {k: v for k, v in c.items() if k != "name"} for c in verdict.to_dict()["checks"]}
    return {"status": verdict.status, "checks": checks}


# ----- evaluate ------------------------------------------------------------------------------------
def evaluate(data: anndata.AnnData | pd.DataFrame | Profiles, key: str = DEFAULT_KEY, *,
             roles: Roles | Mapping[str, Any] | None = None, features: Sequence[str] | None = None,
             method: str | None = None, **settings: Any) -> Scorecard:
    """Score an embedding with the project's scorecard (technical and biological metrics).

    Parameters
    ----------
    data : AnnData, DataFrame, Embedding or Profiles
        AnnData: the embedding in ``.obsm[key]``. DataFrame: the ``cpd_*`` columns (or ``features``).
        Rows with NaN (wells ``correct`` did not use) are left out.
    key : str, default ``"X_cpdistiller"``
        The ``.obsm`` key (AnnData).
    roles : Roles or dict, optional
        Role overrides; by default those ``correct`` used (stored in ``uns``/``attrs``), else detected.
    features : list of str, optional
        DataFrame columns holding the embedding (default: ``cpd_*``).
    method : str, optional
        The name in the scorecard (default ``"cpDistiller"`` after ``correct``, else ``key``).
    **settings
        :class:`~cpdistiller_core.metrics.EvaluationConfig` fields, e.g. ``null_size=1000``.

    Returns
    -------
    Scorecard
        ``.scores`` (tidy), ``.wide()``, ``.summary()``; plot with
        ``cpdistiller_core.plots.scores.scorecard_bars``.

    Examples
    --------
    >>> card = cpd.evaluate(adata)                                # doctest: +SKIP
    >>> card.summary()                                            # doctest: +SKIP
    """
    from .metrics import EvaluationConfig
    from .metrics import evaluate as run_evaluate

    emb = _embedding_of(data, key, roles, features, method)
    known = {f.name for f in dataclasses.fields(EvaluationConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise CpDistillerError(f"unknown evaluation setting(s) {unknown}; known: {sorted(known)}.")
    return run_evaluate(emb, method=emb.method, config=EvaluationConfig(**settings))


def _embedding_of(data: Any, key: str, roles: Any, features: Sequence[str] | None,
                  method: str | None) -> Embedding:
    from .io import read_profiles

    if isinstance(data, Profiles):
        finite = np.isfinite(data.X).all(axis=1)
        sub = data if finite.all() else data.subset(rows=finite)
        name = method or getattr(data, "method", None) or "embedding"
        return Embedding(meta=sub.meta, X=sub.X, features=sub.features, roles=sub.roles, source=sub.source,
                         method=name, provenance=dict(getattr(data, "provenance", {})))
    kind = _kind(data)
    if kind == "AnnData":
        if key not in data.obsm:
            raise CpDistillerError(f"AnnData: no .obsm[{key!r}] (keys: {sorted(data.obsm.keys())}); run cpd.correct first.")
        Z = np.asarray(data.obsm[key], dtype=np.float32)
        names = [f"cpd_{i}" for i in range(Z.shape[1])]
        frame = data.obs.reset_index(drop=True).copy()
        frame.columns = [str(c) for c in frame.columns]
        run = data.uns.get(UNS_KEY, {})
    else:
        names = list(features) if features is not None else [c for c in map(str, data.columns) if c.startswith("cpd_")]
        if not names:
            raise CpDistillerError("DataFrame: no embedding columns (cpd_0…); pass features=[...].")
        Z = data[names].to_numpy(dtype=np.float32)
        frame = data.drop(columns=names).reset_index(drop=True)
        run = data.attrs.get(UNS_KEY, {})
    finite = np.isfinite(Z).all(axis=1)
    frame = pd.concat([frame.loc[finite].reset_index(drop=True),
                       pd.DataFrame(Z[finite], columns=names)], axis=1)
    spec = roles if roles is not None else _stored_roles(run, frame)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CpDistillerWarning)  # load warnings were shown by correct
        p = read_profiles(frame, spec, features=names, source=kind)
    name = method or ("cpDistiller" if run.get("method") == "cpDistiller" and key == run.get("key_added", key)
                      else key)
    return Embedding(meta=p.meta, X=p.X, features=p.features, roles=p.roles, source=p.source, method=name)


def _stored_roles(run: Mapping[str, Any], frame: pd.DataFrame) -> Roles | None:
    stored = run.get("roles") if isinstance(run, Mapping) else None
    if not isinstance(stored, Mapping):
        return None
    known = {f.name for f in dataclasses.fields(Roles)}
    d: dict[str, Any] = {}
    for k, v in stored.items():
        if k in known:
            v = v.tolist() if isinstance(v, np.ndarray) else v
            d[k] = None if isinstance(v, str) and v in ("None", "") else v
    if any(isinstance(v, str) and v not in frame.columns for k, v in d.items()
           if k not in ("negative_values", "positive_values", "plate_format")):
        return None  # obs changed since correct: detect again
    if "plate_format" in d and d["plate_format"] is not None and not isinstance(d["plate_format"], (int, np.integer)):
        d["plate_format"] = None
    return Roles.from_dict(d)

