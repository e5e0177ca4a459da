"""Cell Painting Gallery client for JUMP (cpg0016): list plates, fetch well-level profiles, join metadata.

Profiles live in the public ``cellpainting-gallery`` bucket (anonymous HTTPS) at
``cpg0016-jump/<source>/workspace/profiles/<batch>/<plate>/<plate>.parquet``; the metadata tables
(plate, well, ORF, CRISPR, compound, controls) come from the ``jump-cellpainting/datasets`` repository.
Everything fetched is cached under ``cache_dir()/jump`` with the same layout, verified by size and
MD5, so a second fetch, or one on an offline machine, needs no network. Base URLs can be overridden
with ``CPDISTILLER_GALLERY_URL`` / ``CPDISTILLER_JUMP_METADATA_URL`` (e.g. a mirror).
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import requests

from .errors import CpDistillerError, CpDistillerWarning
from .net import (
    OfflineError,
    RemoteFile,
    RemoteFileMissing,
    check_reachable,
    download,
    is_cached,
    make_session,
    remote_info,
)
from .paths import cache_dir
from .profiles import Profiles, Roles
from .progress import ProgressCallback, no_progress

GALLERY_URL = "https://cellpainting-gallery.s3.amazonaws.com"
METADATA_URL = "https://github.com/jump-cellpainting/datasets/raw/main/metadata"
PROFILE_KEY = "cpg0016-jump/{source}/workspace/profiles/{batch}/{plate}/{plate}.parquet"
METADATA_FILES = {
    "plate": "plate.csv.gz",
    "well": "well.csv.gz",
    "orf": "orf.csv.gz",
    "crispr": "crispr.csv.gz",
    "compound": "compound.csv.gz",
    "perturbation_control": "perturbation_control.csv",
}
# Which perturbation table annotates which plate type.
MODALITY_TABLES = {"ORF": ("orf",), "CRISPR": ("crispr",), "COMPOUND": ("compound",),
                   "TARGET1": ("compound",), "TARGET2": ("compound",), "POSCON8": ("compound",),
                   "DMSO": ("compound",), "COMPOUND_EMPTY": ("compound",)}
ROLES = Roles(plate="Metadata_Plate", well="Metadata_Well", batch="Metadata_Batch",
              perturbation="Metadata_JCP2022", control="Metadata_pert_type",
              negative_values=("negcon",), positive_values=("poscon",), annotation="Metadata_Symbol")
OFFLINE_HINT = ("Fetch on a machine with network access and copy the cache folder "
                "(CPDISTILLER_CACHE, default ~/.cache/cpdistiller/jump), or load local Parquet files "
                "with `cpdistiller info FILE` / the Load page.")


@dataclass
class FetchPlan:
    """What a fetch will download: one row per plate with its URL, cache path and size."""

    plates: pd.DataFrame  # Metadata_Source, Metadata_Batch, Metadata_Plate, Metadata_PlateType, url, path, cached, size
    missing: list[str] = field(default_factory=list)  # plates the server does not have

    @property
    def bytes_to_download(self) -> int:
        todo = self.plates[~self.plates["cached"]]
        return int(todo["size"].fillna(0).sum())

    def describe(self) -> str:
        n, cached = len(self.plates), int(self.plates["cached"].sum())
        return (f"{n} plate(s), {cached} already cached, {_human(self.bytes_to_download)} to download"
                + (f"; missing on the server: {', '.join(self.missing)}" if self.missing else ""))


class JumpClient:
    """Lists and fetches JUMP profiles with a local cache. Network is touched only when needed."""

    def __init__(self, gallery_url: str | None = None, metadata_url: str | None = None,
                 cache: Path | None = None, metadata_dir: Path | None = None, workers: int = 4,
                 timeout: float = 1.5) -> None:
        self.gallery_url = (gallery_url or os.environ.get("CPDISTILLER_GALLERY_URL") or GALLERY_URL).rstrip("/")
        self.metadata_url = (metadata_url or os.environ.get("CPDISTILLER_JUMP_METADATA_URL")
                             or METADATA_URL).rstrip("/")
        self.cache = Path(cache) if cache else cache_dir() / "jump"
        self.metadata_dir = Path(metadata_dir) if metadata_dir else None
        self.workers = workers
        self.timeout = timeout
        self._session: requests.Session | None = None
        self._checked: set[str] = set()

    # ----- plumbing ------------------------------------------------------------------------------
    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = make_session()
        return self._session

    def _ensure_online(self, url: str, what: str, needed: str) -> None:
        base = url.split("/", 3)[:3]
        key = "/".join(base)
        if key in self._checked:
            return
        try:
            check_reachable(url, self.timeout, what)
        except OfflineError as exc:
            raise OfflineError(f"{exc} Needed: {needed}. {OFFLINE_HINT}") from None
        self._checked.add(key)

    # ----- metadata --------------------------------------------------------------------------------
    def metadata_path(self, name: str) -> Path:
        """Local path of a metadata table: the user's metadata_dir if it has it, else the cache (fetched)."""
        filename = METADATA_FILES[name]
        if self.metadata_dir and (self.metadata_dir / filename).is_file():
            return self.metadata_dir / filename
        dest = self.cache / "metadata" / filename
        if not is_cached(dest):
            url = f"{self.metadata_url}/{filename}"
            self._ensure_online(url, "the JUMP metadata repository", f"metadata table {filename}")
            download(url, dest, session=self.session)
        return dest

    def metadata(self, name: str) -> pd.DataFrame:
        path = self.metadata_path(name)
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        except (OSError, ValueError) as exc:
            raise CpDistillerError(f"{path}: cannot read JUMP metadata table ({exc}).") from None

    def list_plates(self, source: str | None = None, batch: str | None = None,
                    plate_type: str | None = None) -> pd.DataFrame:
        """Plates in JUMP's plate table, filtered; with the number of plates per source/batch/type."""
        plates = self.metadata("plate")
        _require(plates, ["Metadata_Source", "Metadata_Batch", "Metadata_Plate", "Metadata_PlateType"],
                 self.metadata_path("plate"))
        if source:
            plates = plates[plates["Metadata_Source"] == source]
        if batch:
            plates = plates[plates["Metadata_Batch"] == batch]
        if plate_type:
            plates = plates[plates["Metadata_PlateType"].str.upper() == plate_type.upper()]
        return plates.reset_index(drop=True)

    # ----- profiles --------------------------------------------------------------------------------
    def profile_url(self, source: str, batch: str, plate: str) -> str:
        return f"{self.gallery_url}/{PROFILE_KEY.format(source=source, batch=batch, plate=plate)}"

    def profile_path(self, source: str, batch: str, plate: str) -> Path:
        return self.cache / PROFILE_KEY.format(source=source, batch=batch, plate=plate)

    def select(self, source: str | None = None, batch: str | None = None, plates: Sequence[str] | None = None,
               plate_type: str | None = None, max_plates: int | None = None) -> pd.DataFrame:
        """Rows of the plate table to fetch; errors name plates that are not in JUMP's table."""
        table = self.list_plates(source, batch, plate_type)
        if plates:
            wanted = list(dict.fromkeys(plates))
            unknown = [p for p in wanted if p not in set(table["Metadata_Plate"])]
            if unknown:
                raise CpDistillerError(
                    f"plate(s) {unknown[:5]} not in JUMP's plate table"
                    + (f" for source {source!r}" if source else "") + (f", batch {batch!r}" if batch else "")
                    + (f", type {plate_type!r}" if plate_type else "") + "; see `cpdistiller jump list`."
                )
            table = table[table["Metadata_Plate"].isin(wanted)]
        if table.empty:
            raise CpDistillerError("no JUMP plates match the selection; see `cpdistiller jump list`.")
        if max_plates:
            table = table.head(max_plates)
        return table.reset_index(drop=True)

    def plan(self, selection: pd.DataFrame) -> FetchPlan:
        """Cache status and sizes (HEAD requests, in parallel) for the selected plates."""
        rows = selection.copy()
        rows["url"] = [self.profile_url(s, b, p) for s, b, p in
                       zip(rows["Metadata_Source"], rows["Metadata_Batch"], rows["Metadata_Plate"])]
        rows["path"] = [self.profile_path(s, b, p) for s, b, p in
                        zip(rows["Metadata_Source"], rows["Metadata_Batch"], rows["Metadata_Plate"])]
        rows["cached"] = [is_cached(p) for p in rows["path"]]
        rows["size"] = [p.stat().st_size if c else np.nan for p, c in zip(rows["path"], rows["cached"])]
        rows["remote"] = None
        missing: list[str] = []
        todo = rows.index[~rows["cached"]]
        if len(todo):
            self._ensure_online(rows.at[todo[0], "url"], "the Cell Painting Gallery",
                                f"{len(todo)} uncached plate(s) ({', '.join(rows.loc[todo[:3], 'Metadata_Plate'])}…)")
            with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
                futures = {i: pool.submit(remote_info, self.session, rows.at[i, "url"]) for i in todo}
                for i, fut in futures.items():
                    try:
                        info = fut.result()
                    except RemoteFileMissing:
                        missing.append(rows.at[i, "Metadata_Plate"])
                        continue
                    rows.at[i, "remote"] = info
                    rows.at[i, "size"] = info.size
        return FetchPlan(rows, missing)

    def download_plates(self, plan: FetchPlan, progress: ProgressCallback = no_progress) -> list[Path]:
        """Download what the plan lists (parallel, resumable, verified); returns the local paths."""
        if plan.missing:
            raise CpDistillerError(
                f"plate(s) {plan.missing} are listed in JUMP's plate table but not found in the gallery "
                f"under {self.gallery_url}/cpg0016-jump/; drop them with --skip-missing."
            )
        total = max(plan.bytes_to_download, 1)
        done = [0]
        lock = threading.Lock()

        def on_bytes(n: int) -> None:
            with lock:
                done[0] += n

        todo = plan.plates[~plan.plates["cached"]]
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            futures = [pool.submit(download, row.url, row.path, session=self.session,
                                   expected=row.remote if isinstance(row.remote, RemoteFile) else None,
                                   on_bytes=on_bytes)
                       for row in todo.itertuples()]
            pending = set(futures)
            while pending:  # progress is reported from the calling thread (UI toolkits need that)
                _, pending = concurrent.futures.wait(pending, timeout=0.25)
                progress(min(done[0] / total, 1.0), f"{_human(done[0])} of {_human(total)}")
            for fut in futures:
                fut.result()
        progress(1.0, "downloaded")
        return list(plan.plates["path"])

    def fetch(self, source: str | None = None, batch: str | None = None, plates: Sequence[str] | None = None,
              plate_type: str | None = None, max_plates: int | None = None, skip_missing: bool = False,
              progress: ProgressCallback = no_progress) -> Profiles:
        """Download (or reuse cached) plates and join them with JUMP metadata into one Profiles."""
        selection = self.select(source, batch, plates, plate_type, max_plates)
        plan = self.plan(selection)
        if plan.missing and skip_missing:
            warnings.warn(f"skipping plate(s) missing in the gallery: {plan.missing}", CpDistillerWarning,
                          stacklevel=2)
            plan = FetchPlan(plan.plates[~plan.plates["Metadata_Plate"].isin(plan.missing)].reset_index(drop=True))
        self.download_plates(plan, progress)
        return self.join(plan.plates)

    # ----- joining ---------------------------------------------------------------------------------
    def join(self, plates: pd.DataFrame) -> Profiles:
        """Read the cached plate Parquet files and attach batch, perturbation, gene symbol, control flags."""
        frames = []
        for row in plates.itertuples():
            try:
                df = pd.read_parquet(row.path)
            except Exception as exc:  # pyarrow raises several types for a bad file
                raise CpDistillerError(f"{row.path}: cannot read plate {row.Metadata_Plate} ({exc}); "
                                       "delete it to download again.") from None
            for col, value in (("Metadata_Source", row.Metadata_Source), ("Metadata_Plate", row.Metadata_Plate)):
                if col not in df.columns:
                    df.insert(0, col, value)
            if "Metadata_Well" not in df.columns:
                raise CpDistillerError(f"{row.path}, column 'Metadata_Well': missing in plate {row.Metadata_Plate}.")
            df.insert(2, "Metadata_Batch", row.Metadata_Batch)
            df.insert(3, "Metadata_PlateType", row.Metadata_PlateType)
            frames.append(df)
        features = _shared_features(frames)
        data = pd.concat([f[[c for c in f.columns if c.startswith("Metadata_")] + features] for f in frames],
                         ignore_index=True)
        meta = data[[c for c in data.columns if c.startswith("Metadata_")]]
        meta = self._annotate(meta, set(plates["Metadata_PlateType"]))
        return Profiles(meta=meta, X=data[features].to_numpy(np.float32), features=features, roles=ROLES,
                        source=f"JUMP cpg0016 ({len(plates)} plates)")

    def _annotate(self, meta: pd.DataFrame, plate_types: set[str]) -> pd.DataFrame:
        wells = self.metadata("well")
        _require(wells, ["Metadata_Source", "Metadata_Plate", "Metadata_Well", "Metadata_JCP2022"],
                 self.metadata_path("well"))
        keys = ["Metadata_Source", "Metadata_Plate", "Metadata_Well"]
        meta = meta.drop(columns=[c for c in ("Metadata_JCP2022",) if c in meta.columns])
        out = meta.merge(wells[keys + ["Metadata_JCP2022"]], on=keys, how="left", validate="one_to_one")
        controls = self.metadata("perturbation_control")[["Metadata_JCP2022", "Metadata_pert_type", "Metadata_Name"]]
        out = out.merge(controls, on="Metadata_JCP2022", how="left")
        tables = sorted({t for pt in plate_types for t in MODALITY_TABLES.get(pt.upper(), ())})
        annot = []
        for name in tables:
            table = self.metadata(name)
            cols = [c for c in ("Metadata_JCP2022", "Metadata_Symbol", "Metadata_NCBI_Gene_ID",
                                "Metadata_InChIKey") if c in table.columns]
            annot.append(table[cols])
        if annot:
            table = pd.concat(annot, ignore_index=True).drop_duplicates("Metadata_JCP2022")
            out = out.merge(table, on="Metadata_JCP2022", how="left")
        if "Metadata_Symbol" not in out.columns:
            out["Metadata_Symbol"] = pd.NA
        # Controls take their human-readable name as symbol/perturbation label where none is known.
        out["Metadata_Symbol"] = out["Metadata_Symbol"].fillna(out["Metadata_Name"])
        out["Metadata_pert_type"] = out["Metadata_pert_type"].fillna("trt")
        out.loc[out["Metadata_JCP2022"].isna(), "Metadata_pert_type"] = "unknown"
        unknown = int(out["Metadata_JCP2022"].isna().sum())
        if unknown:
            warnings.warn(f"{unknown} wells have no entry in JUMP's well table (perturbation unknown).",
                          CpDistillerWarning, stacklevel=3)
        out.index = meta.index
        return out


def _shared_features(frames: list[pd.DataFrame]) -> list[str]:
    def feats(df: pd.DataFrame) -> list[str]:
        return [c for c in df.columns if not c.startswith("Metadata_") and pd.api.types.is_numeric_dtype(df[c])]

    shared = feats(frames[0])
    for df in frames[1:]:
        present = set(feats(df))
        shared = [c for c in shared if c in present]
    if not shared:
        raise CpDistillerError("the fetched plates share no numeric feature columns.")
    return shared


def _require(df: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise CpDistillerError(f"{path}: JUMP metadata table lacks column(s) {missing}.")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
