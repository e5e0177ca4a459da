"""What the dashboard holds between pages, and the calls behind its buttons (no widgets here).

Session-state keys are named here so every page (including other developers' pages) reads the same:

- ``DATASET_KEY`` -> :class:`Dataset`: the loaded profiles, how they were loaded, their preprocessing.
- ``RUN_KEY`` -> str: the run directory the Explorer and Plate-map pages show.
- ``SESSION_ID_KEY`` -> str: a random id naming this session's workspace.

Each session has a workspace ``<app data dir>/sessions/<session id>/`` holding its uploads
(``uploads/``, sanitised names that can never point outside it) and its runs (``runs/``); a session
lists only its own runs. The workspace has a size quota, uploads older than a day are deleted, and
the number of jobs running at once is capped (:class:`cpdistiller_core.access.Limits`). Server paths
are read only under the data root (:func:`cpdistiller_core.access.under_data_root`), and errors about
those files never quote their cells. A correction is one job (``jobs.submit``) running
``runs.run_correction`` in a separate process; reference methods are added to the run by another job
(``runs.add_references``). Everything about a run directory goes through ``runs.Run``.
"""

from __future__ import annotations

import functools
import re
import unicodedata
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cpdistiller_core import jobs
from cpdistiller_core.access import Limits, under_data_root
from cpdistiller_core.errors import CpDistillerError, hide_cell_values
from cpdistiller_core.io.formats import SUFFIXES, readable_hint
from cpdistiller_core.paths import app_data_dir, atomic_write_bytes
from cpdistiller_core.profiles import Profiles
from cpdistiller_core.runs import (
    JOB_INPUT_NAME,
    Run,
    RunSpec,
    add_references,
    read_image_features,
    run_apply,
    run_correction,
)

DATASET_KEY = "cpd_dataset"
RUN_KEY = "cpd_run_dir"
SESSION_ID_KEY = "cpd_session_id"

SUPPORTED_SUFFIXES = SUFFIXES  # io.formats.FORMATS: the one table of profile formats
UPLOAD_TYPES = sorted({s.rsplit(".", 1)[-1] for s in SUFFIXES})  # what the browser's file picker offers
EXPORT_FORMATS = ("parquet", "csv", "h5ad")  # the embedding downloads offered (all written by io.write_profiles)
MAX_UPLOAD_MB = 1024  # keep in sync with server.maxUploadSize in .streamlit/config.toml
CORRECTION_TARGET = jobs.target_name(run_correction)
REFERENCE_TARGET = jobs.target_name(add_references)
APPLY_TARGET = jobs.target_name(run_apply)
EXTRACTOR_INPUT_NAME = "extractor"  # the job's copy of the image features (run_correction's extractor=)
ROLE_FIELDS = ("plate", "well", "row", "column", "batch", "perturbation", "control", "annotation")


@dataclass
class Dataset:
    """The dataset the session works on: raw profiles, how they were loaded, and their preprocessing."""

    name: str
    raw: Profiles
    origin: str = "upload"                 # 'demo', 'upload', 'path'
    files: list[str] = field(default_factory=list)
    role_reasons: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    preprocess_enabled: bool = True        # preprocess before correction (with preprocess_config or defaults)
    preprocess_config: Any = None          # the PreprocessConfig last applied, None: defaults
    preprocessed: Profiles | None = None
    preprocess_report: Any = None
    truth: Any = None                      # the demo's ground truth, when known
    already_normalized: str | None = None  # preprocess.looks_normalized's sentence, when it fires

    @property
    def current(self) -> Profiles:
        """What a correction would be trained on: the preprocessed profiles if any, else the raw ones."""
        return self.preprocessed if self.preprocessed is not None else self.raw


# ----- uploads ------------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_filename(name: str, default: str = "upload") -> str:
    """A safe base name: no directories, no '..', no leading dot, only [A-Za-z0-9._-], <= 120 chars."""
    text = unicodedata.normalize("NFKD", str(name or "")).encode("ascii", "ignore").decode("ascii")
    text = text.replace("\\", "/").split("/")[-1]
    text = _UNSAFE.sub("_", text).strip("._- ")
    text = re.sub(r"\.{2,}", ".", text)
    if not text:
        text = default
    if len(text) > 120:  # keep the (possibly double) extension
        suffix = "".join(Path(text).suffixes)[-20:]
        text = text[: 120 - len(suffix)] + suffix
    return text


def has_supported_suffix(name: str) -> bool:
    low = name.lower()
    return any(low.endswith(s) for s in SUPPORTED_SUFFIXES)


_SESSION_ID = re.compile(r"^[0-9a-f]{32}$")


def workspace_dir(session_id: str) -> Path:
    """``<app data dir>/sessions/<session id>``: this session's uploads and runs (the id is sanitised)."""
    safe = sanitize_filename(session_id, default="session")
    path = app_data_dir() / "sessions" / safe
    path.mkdir(parents=True, exist_ok=True)
    return path


def session_upload_dir(session_id: str) -> Path:
    """Where the session's uploads go: ``<workspace>/uploads``."""
    path = workspace_dir(session_id) / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def session_runs_root(session_id: str) -> Path:
    """Where the session's runs go: ``<workspace>/runs`` (other sessions' runs are never listed)."""
    return jobs.runs_root(workspace_dir(session_id) / "runs")


def valid_session_id(text: str | None) -> bool:
    """Whether ``text`` looks like an id from :func:`new_session_id` (for ids carried in the URL)."""
    return bool(text) and bool(_SESSION_ID.match(str(text)))


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and not f.is_symlink())


def workspace_usage_mb(session_id: str) -> float:
    """Disk space used by the session's uploads and runs, in MB."""
    return _folder_bytes(workspace_dir(session_id)) / 1e6


def check_quota(session_id: str, adding_bytes: int = 0, limits: Limits | None = None) -> None:
    """Refuse work that would take the session's workspace over its quota."""
    limits = limits or Limits.from_env()
    used = workspace_usage_mb(session_id)
    if used + adding_bytes / 1e6 > limits.workspace_mb:
        raise CpDistillerError(
            f"this session's workspace would hold {used + adding_bytes / 1e6:,.0f} MB, over its quota of "
            f"{limits.workspace_mb:,.0f} MB; delete old runs (Correct page) or ask the administrator to raise "
            "CPDISTILLER_WORKSPACE_MB.")


def cleanup_old_uploads(max_age_h: float | None = None, now: float | None = None) -> int:
    """Delete uploaded files older than ``max_age_h`` hours in every session; returns how many."""
    import time

    max_age_h = Limits.from_env().upload_max_age_h if max_age_h is None else max_age_h
    cutoff = (time.time() if now is None else now) - max_age_h * 3600
    removed = 0
    for folder in (app_data_dir() / "sessions").glob("*/uploads"):
        for f in folder.iterdir():
            try:
                if f.is_file() and f.stat().st_mtime < cutoff:
                    f.unlink()
                    removed += 1
            except OSError:  # another session removed it first
                pass
    return removed


def running_jobs(session_id: str | None = None) -> int:
    """Jobs not finished, in one session's workspace or (None) in every session."""
    roots = ([workspace_dir(session_id) / "runs"] if session_id else
             list((app_data_dir() / "sessions").glob("*/runs")))
    count = 0
    for root in roots:
        if not root.is_dir():
            continue
        for run in root.iterdir():
            try:
                count += (run / jobs.JOB_FILE).exists() and not jobs.status(run).finished
            except CpDistillerError:
                continue
    return count


def check_job_capacity(session_id: str | None, limits: Limits | None = None) -> None:
    """Refuse a new job when the session or the server already runs as many as allowed."""
    limits = limits or Limits.from_env()
    if session_id and running_jobs(session_id) >= limits.max_jobs_per_session:
        raise CpDistillerError(f"this session already runs {limits.max_jobs_per_session} job(s); wait for it "
                               "to finish or cancel it.")
    if running_jobs(None) >= limits.max_jobs:
        raise CpDistillerError(f"the server already runs {limits.max_jobs} job(s) (its limit); try again when "
                               "one has finished.")


def check_size(profiles: Profiles, limits: Limits | None = None) -> None:
    """Refuse datasets beyond the server's wells x features limit (CPDISTILLER_MAX_CELLS)."""
    limits = limits or Limits.from_env()
    cells = profiles.n_wells * profiles.n_features
    if cells > limits.max_cells:
        raise CpDistillerError(f"{profiles.n_wells:,} wells x {profiles.n_features:,} features is over this "
                               f"server's limit of {limits.max_cells:,.0f} values; use the command line "
                               "(cpdistiller correct) for larger screens.")


def new_session_id() -> str:
    return uuid.uuid4().hex


def save_uploads(files: Iterable[tuple[str, bytes]], session_id: str) -> list[Path]:
    """Write uploaded (name, bytes) pairs into the session's upload folder; returns their paths.

    Names are sanitised and de-duplicated; a name with an unsupported extension is refused with a
    message naming the accepted formats.
    """
    files = list(files)
    for name, data in files:
        if len(data) > MAX_UPLOAD_MB * 1e6:
            raise CpDistillerError(f"{name!r}: {len(data) / 1e6:,.0f} MB, over the upload limit of {MAX_UPLOAD_MB} MB.")
    cleanup_old_uploads()
    check_quota(session_id, sum(len(d) for _, d in files))
    dest = session_upload_dir(session_id).resolve()
    out: list[Path] = []
    used: set[str] = set()
    for name, data in files:
        safe = sanitize_filename(name)
        if not has_supported_suffix(safe):
            raise CpDistillerError(
                f"{name!r}: unsupported file type; upload {readable_hint()} files."
            )
        stem, n = safe, 1
        while safe in used:
            n += 1
            suffix = "".join(Path(stem).suffixes)
            safe = f"{stem[: len(stem) - len(suffix)]}-{n}{suffix}"
        used.add(safe)
        path = (dest / safe).resolve()
        if path.parent != dest:  # belt and braces: sanitize_filename already forbids this
            raise CpDistillerError(f"{name!r}: refused, the name points outside the upload folder.")
        atomic_write_bytes(path, data)
        out.append(path)
    return out


def server_paths(text: str, kind: str = "file") -> list[Path]:
    """Paths typed by the user (one per line or comma-separated), each under the data root
    (``$CPDISTILLER_DATA_ROOT``; unset: refused); ``kind='file'`` also requires a profile format."""
    items = [s.strip().strip('"').strip("'") for s in re.split(r"[\n,]", text or "") if s.strip()]
    if not items:
        raise CpDistillerError("give at least one file path on the server.")
    paths = []
    for item in items:
        p = under_data_root(item, kind)
        if kind == "file" and not has_supported_suffix(p.name):
            raise CpDistillerError(f"{item}: unsupported file type; use {readable_hint()}.")
        paths.append(p)
    return paths


def read_server_file(item: str, reader: Any, kind: str = "file") -> Any:
    """``reader(path)`` on a server path under the data root; its errors never quote cell contents, and
    an unexpected error is reported by type only (its text could hold what the file holds)."""
    path = under_data_root(item, kind)
    try:
        with hide_cell_values():
            return reader(path)
    except CpDistillerError:
        raise
    except Exception as exc:  # noqa: BLE001 - library errors can echo cell contents
        raise CpDistillerError(f"{item}: cannot read this file ({type(exc).__name__}).") from None


# ----- loading ------------------------------------------------------------------------------------
def _nothing() -> Any:
    import contextlib

    return contextlib.nullcontext()


def load_files(paths: Sequence[Path], roles: Mapping[str, Any] | None = None, *, batch_from_file: bool = False,
               name: str | None = None, origin: str = "upload", source: str | None = None,
               feature_regex: str | None = None) -> Dataset:
    """Read profile files (roles auto-detected, ``roles`` overrides applied) into a Dataset.

    ``feature_regex`` chooses the feature columns when they are not CellProfiler-named."""
    from cpdistiller_core.io import read_profiles_with_report

    paths = [Path(p) for p in paths]
    try:
        with hide_cell_values() if origin == "path" else _nothing():
            profiles, report = read_profiles_with_report(
                [str(p) for p in paths], dict(roles) if roles else None, batch_from_file=batch_from_file,
                feature_regex=feature_regex or None,
                source=source if len(paths) == 1 else None, emit_warnings=False,
                dtype=np.float64)  # raw values keep full precision until the Load page normalises them
    except CpDistillerError:
        raise
    except Exception as exc:  # noqa: BLE001 - a library's message may quote the file's cells
        if origin != "path":
            raise
        raise CpDistillerError(f"{', '.join(p.name for p in paths)}: cannot read ({type(exc).__name__}).") from None
    from cpdistiller_core.preprocess import looks_normalized

    label = name or (paths[0].name if len(paths) == 1 else f"{len(paths)} files")
    return Dataset(name=label, raw=profiles, origin=origin, files=[str(p) for p in paths],
                   role_reasons=dict(report.role_reasons), warnings=list(report.warnings),
                   already_normalized=looks_normalized(profiles))


JUMP_DATASETS = {"cpg0016": "JUMP production (cpg0016)", "cpg0000": "JUMP pilot CPJUMP1 (cpg0000)"}


def jump_client(metadata_dir: str | None = None, dataset: str = "cpg0016") -> Any:
    """The Cell Painting Gallery client with the app's cache (network only when something is missing);
    ``dataset`` 'cpg0000' is the JUMP pilot."""
    from cpdistiller_core.jump import JumpClient, PilotClient

    folder = under_data_root(metadata_dir, "dir") if metadata_dir else None
    return (PilotClient if dataset == "cpg0000" else JumpClient)(metadata_dir=folder)


def load_jump(client: Any, plates: pd.DataFrame, progress: Any = None) -> Dataset:
    """Fetch (or reuse cached) JUMP plates chosen from ``client.list_plates()`` rows into a Dataset."""
    from cpdistiller_core.io import validate

    if plates.empty:
        raise CpDistillerError("choose at least one JUMP plate.")
    plan = client.plan(plates)
    kw = {"progress": progress} if progress else {}
    client.download_plates(plan, **kw)
    profiles = client.join(plan.plates)
    names = list(plates["Metadata_Plate"])
    label = (f"JUMP {client.dataset} {plates['Metadata_Source'].iloc[0]}: "
             + ", ".join(names[:3]) + (" …" if len(names) > 3 else ""))
    reasons = {r: f"JUMP metadata tables ({client.dataset})" for r in ROLE_FIELDS if getattr(profiles.roles, r)}
    return Dataset(name=label, raw=profiles, origin="jump", files=[str(p) for p in plan.plates["path"]],
                   role_reasons=reasons, warnings=validate(profiles))


def load_demo(seed: int = 0) -> Dataset:
    """The built-in simulated screen (known batch, row and column effects)."""
    from cpdistiller_core.datasets import load_demo as cached_demo
    from cpdistiller_core.io import validate

    demo = cached_demo(seed=seed)
    profiles = demo.profiles

    return Dataset(name=f"demo screen (seed {seed})", raw=profiles, origin="demo", files=[],
                   role_reasons={r: "built-in demo" for r in ROLE_FIELDS if getattr(profiles.roles, r)},
                   warnings=validate(profiles), truth=getattr(demo, "truth", None))


def with_roles(dataset: Dataset, overrides: Mapping[str, Any]) -> Dataset:
    """Re-resolve the roles of a loaded dataset with the user's overrides (preprocessing is reset)."""
    from cpdistiller_core.io import resolve_roles, validate

    roles, reasons = resolve_roles(dataset.raw.meta, dict(overrides), dataset.raw.source or None,
                                   stored=dataset.raw.roles)
    raw = dataset.raw.replace(roles=roles)
    return Dataset(name=dataset.name, raw=raw, origin=dataset.origin, files=dataset.files,
                   role_reasons={**dataset.role_reasons, **reasons}, warnings=validate(raw), truth=dataset.truth,
                   already_normalized=dataset.already_normalized)


def apply_preprocessing(dataset: Dataset, config: Any) -> Dataset:
    """Run the core preprocessing (or none when ``config`` is None) and keep its report."""
    from cpdistiller_core.preprocess import preprocess

    if config is None:
        return Dataset(**{**dataset.__dict__, "preprocess_enabled": False, "preprocess_config": None,
                          "preprocessed": None, "preprocess_report": None})
    check_size(dataset.raw)
    out, report = preprocess(dataset.raw, config)
    return Dataset(**{**dataset.__dict__, "preprocess_enabled": True, "preprocess_config": config,
                      "preprocessed": out, "preprocess_report": report})


# ----- runs ---------------------------------------------------------------------------------------
def load_image_features(path_text: str | None = None, upload: tuple[str, bytes] | None = None,
                        session_id: str | None = None) -> Profiles | None:
    """Per-well image features (``cpdistiller extract`` output) from a server path under the data root
    (a Parquet file or a folder of them) or an uploaded Parquet file; None when neither is given."""
    if upload is not None:
        if not session_id:
            raise CpDistillerError("uploads need a session.")
        if not upload[0].lower().endswith(".parquet"):
            raise CpDistillerError(f"{upload[0]!r}: image features are a Parquet file (`cpdistiller extract`).")
        path = save_uploads([upload], session_id)[0]
        return read_image_features(path).replace(source=upload[0])
    if path_text and path_text.strip():
        return read_server_file(path_text.strip(), read_image_features, kind="any")
    return None


def _job_objects(dataset: Dataset, extractor: Profiles | None) -> dict[str, Profiles]:
    objects = {JOB_INPUT_NAME: dataset.raw}
    if extractor is not None:
        objects[EXTRACTOR_INPUT_NAME] = extractor
    return objects


def launch_correction(dataset: Dataset, config: Mapping[str, Any], effects: Sequence[str],
                      root: Path | None = None, session_id: str | None = None,
                      extractor: Profiles | None = None) -> Path:
    """Start ``runs.run_correction`` on the dataset in a separate process; returns the run directory.

    The raw profiles and the preprocessing settings go to the run (so the run directory holds the
    model's preprocessing and can be re-run), not the already-preprocessed copy. With ``session_id``
    the run goes to that session's workspace, within its quota and the server's job limits.
    ``extractor``: per-well image features (:func:`load_image_features`) to train the joint module on.
    """
    from cpdistiller_core.config import CpDistillerConfig
    from cpdistiller_core.preprocess import PreprocessConfig

    if not list(effects):
        raise CpDistillerError("choose at least one effect to correct (batch, row or column).")
    preprocess = (dataset.preprocess_config or PreprocessConfig()) if dataset.preprocess_enabled else False
    # validated here: errors show before a process starts
    spec = RunSpec.build(CpDistillerConfig.from_dict(dict(config)), list(effects), preprocess)
    if "batch" in spec.effects and dataset.raw.batch is None:
        raise CpDistillerError("no batch column: set the 'batch' role on the Load page or do not correct batch.")
    meta = {"dataset": dataset.name, "effects": ",".join(spec.effects), "epochs": spec.config.epochs,
            "wells": dataset.raw.n_wells, "features": dataset.raw.n_features,
            "image_features": None if extractor is None else extractor.source}
    root = _job_root(dataset, root, session_id, extractor)
    return jobs.submit(run_correction, jobs.new_run_dir(root), kwargs={"spec": spec.to_dict()},
                       objects=_job_objects(dataset, extractor), meta=meta)


def _job_root(dataset: Dataset, root: Path | None, session_id: str | None, extractor: Profiles | None) -> Path | None:
    """Size, quota and job-capacity checks before a job on the dataset starts; the runs folder to use."""
    check_size(dataset.raw)
    if session_id:
        check_quota(session_id, dataset.raw.X.nbytes + (0 if extractor is None else extractor.X.nbytes))
        root = root or session_runs_root(session_id)
    check_job_capacity(session_id)
    return root


def launch_apply(dataset: Dataset, run_dir: Path | str, root: Path | None = None, session_id: str | None = None,
                 extractor: Profiles | None = None) -> Path:
    """Apply a finished run's model (with its stored preprocessing) to the dataset's raw profiles in a
    separate process (``runs.run_apply``); returns the new run directory, which records ``applied_from``
    and is shown by the Explorer and Plate-map pages like any run."""
    source = Run.open(run_dir)
    if source.status != "finished":
        raise CpDistillerError(f"{source.path.name}: the run is {source.status}; apply a finished run's model.")
    meta = {"dataset": dataset.name, "effects": ",".join(source.effects), "applied_from": source.path.name,
            "wells": dataset.raw.n_wells, "features": dataset.raw.n_features,
            "image_features": None if extractor is None else extractor.source}
    root = _job_root(dataset, root, session_id, extractor)
    return jobs.submit(run_apply, jobs.new_run_dir(root, prefix="apply"), kwargs={"source": str(source.path)},
                       objects=_job_objects(dataset, extractor), meta=meta)


def launch_references(run_dir: Path, methods: Sequence[str], root: Path | None = None,
                      session_id: str | None = None) -> Path:
    """Start ``runs.add_references`` for a finished run in a separate process; returns the job directory."""
    from cpdistiller_core.baselines import BASELINES

    unknown = [m for m in methods if m not in BASELINES]
    if unknown or not methods:
        raise CpDistillerError(f"choose reference methods among {', '.join(BASELINES)} (got {list(methods)}).")
    run_dir = Path(run_dir)
    if session_id:
        check_quota(session_id)
        root = root or session_runs_root(session_id)
    check_job_capacity(session_id)
    return jobs.submit(add_references, jobs.new_run_dir(root, prefix="ref"),
                       kwargs={"run": str(run_dir), "methods": list(methods)},
                       meta={"run": run_dir.name, "methods": ",".join(methods)})


@functools.lru_cache(maxsize=4)
def _spaces(run_dir: str, stamp: tuple) -> dict[str, Profiles]:
    return Run.open(run_dir).spaces()


def run_spaces(run_dir: Path | str, references: bool = True) -> dict[str, Profiles]:
    """``Run.spaces`` of a run, read again only when its embeddings change (a few runs kept in memory)."""
    spaces = _spaces(str(run_dir), Run(run_dir).stamp())
    if references:
        return dict(spaces)
    return {k: spaces[k] for k in ("uncorrected", "cpDistiller")}


def session_runs(session_id: str | None) -> list[dict[str, Any]]:
    """The session's correction runs, newest first (no session: the shared runs folder, CLI/tests only)."""
    root = session_runs_root(session_id) if session_id else None
    return [r for r in jobs.list_runs(root) if r["target"] in (CORRECTION_TARGET, APPLY_TARGET)]


def finished_runs(session_id: str | None = None) -> list[dict[str, Any]]:
    """The session's correction runs that completed, newest first (as listed by the job runner)."""
    return [r for r in session_runs(session_id) if r["status"] == jobs.DONE]


BACKGROUND_UMAP_WELLS = 20_000  # embeddings with more wells get their UMAP from a background job


def background_umap(X: np.ndarray, params: Any, registry: dict[str, str]) -> jobs.JobState:
    """The state of the background job computing ``reduce(X, params)`` into the disk cache; the job is
    started the first time a content + parameters key is asked for (``registry``: key -> job folder,
    kept in the session). Jobs live under the cache folder, apart from correction runs."""
    from cpdistiller_core.paths import cache_dir
    from cpdistiller_core.reduce import cache_key, reduce_to_cache

    key = cache_key(X, params)
    known = registry.get(key)
    if known is None or not (Path(known) / jobs.JOB_FILE).exists():
        run_dir = jobs.new_run_dir(root=cache_dir() / "umap_jobs", prefix="umap")
        jobs.submit(reduce_to_cache, run_dir, objects={"X": np.ascontiguousarray(X, dtype=np.float32)},
                    kwargs={"method": params.method, "n_neighbors": params.n_neighbors,
                            "min_dist": params.min_dist, "random_state": params.random_state},
                    meta={"what": f"{params.method.upper()} of {X.shape[0]:,} wells"})
        registry[key] = known = str(run_dir)
    return jobs.status(Path(known))


def guess_column(columns: Sequence[str], words: Sequence[str]) -> int | None:
    """Position of the first column whose name contains one of ``words`` (case-insensitive), else None."""
    return next((i for i, c in enumerate(columns) if any(w in c.lower() for w in words)), None)


def export_embedding(emb: Profiles, fmt: str, tmp_dir: Path) -> bytes:
    """An embedding (or the corrected profiles) as Parquet, CSV or h5ad bytes (through io.write_profiles)."""
    from cpdistiller_core.io import write_profiles

    fmt = fmt.lower()
    if fmt not in EXPORT_FORMATS:
        raise CpDistillerError(f"unknown export format {fmt!r}; use {', '.join(EXPORT_FORMATS)}.")
    path = Path(tmp_dir) / f"embedding.{fmt}"
    write_profiles(emb, path, format=fmt)
    return path.read_bytes()


def cuda_available() -> tuple[bool, str]:
    """Whether torch sees a CUDA GPU, and its name (or what training will use instead)."""
    try:
        import torch

        if torch.cuda.is_available():
            return True, torch.cuda.get_device_name(0)
    except Exception as exc:  # a broken CUDA install is reported, not fatal
        return False, f"CUDA check failed: {exc}"
    from cpdistiller_core.train import cpu_has_bf16

    precision = "bf16 autocast: this CPU has native bf16" if cpu_has_bf16() else "float32"
    return False, f"no CUDA GPU visible to torch; training runs on the CPU ({precision})"
