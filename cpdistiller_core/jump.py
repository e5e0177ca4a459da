"""Cell Painting Gallery client for JUMP: list plates, fetch well-level profiles, join metadata.

Two data sets:

- **cpg0016** (JUMP production, :class:`JumpClient`): profiles in the public ``cellpainting-gallery``
  bucket (anonymous HTTPS) at ``cpg0016-jump/<source>/workspace/profiles/<batch>/<plate>/<plate>.parquet``;
  the metadata tables (plate, well, ORF, CRISPR, compound, controls) come from the
  ``jump-cellpainting/datasets`` repository.
- **cpg0000** (the JUMP pilot CPJUMP1, A549 and U2OS, compounds, CRISPR guides and ORFs at two time
  points each; :class:`PilotClient`): per-plate pycytominer CSVs at
  ``cpg0000-jump-pilot/source_4/workspace/profiles/<batch>/<plate>/<plate>_<level>.csv.gz``; the plate
  table (``experiment-metadata.tsv``) and the compound/CRISPR/ORF tables come from the
  ``jump-cellpainting/2024_Chandrasekaran_NatureMethods`` repository. This is the data of the
  cpDistiller paper's retrieval tasks (sister guides, gene–compound pairs).

Everything fetched is cached under ``cache_dir()/jump`` with the same layout, verified by size and
MD5, so a second fetch, or one on an offline machine, needs no network. Base URLs can be overridden
with ``CPDISTILLER_GALLERY_URL`` / ``CPDISTILLER_JUMP_METADATA_URL`` /
``CPDISTILLER_PILOT_METADATA_URL`` (e.g. a mirror).
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    """Lists and fetches JUMP (cpg0016) profiles with a local cache. Network is touched only when needed."""

    dataset = "cpg0016"
    gallery_prefix = "cpg0016-jump"
    metadata_files: dict[str, str] = METADATA_FILES
    metadata_env = "CPDISTILLER_JUMP_METADATA_URL"
    default_metadata_url = METADATA_URL

    def __init__(self, gallery_url: str | None = None, metadata_url: str | None = None,
                 cache: Path | None = None, metadata_dir: Path | None = None, workers: int = 4,
                 timeout: float = 1.5) -> None:
        self.gallery_url = (gallery_url or os.environ.get("CPDISTILLER_GALLERY_URL") or GALLERY_URL).rstrip("/")
        self.metadata_url = (metadata_url or os.environ.get(self.metadata_env)
                             or self.default_metadata_url).rstrip("/")
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
        filename = self.metadata_files[name]
        if self.metadata_dir and (self.metadata_dir / Path(filename).name).is_file():
            return self.metadata_dir / Path(filename).name
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
               plate_type: str | None = None, max_plates: int | None = None, **filters: Any) -> pd.DataFrame:
        """Rows of the plate table to fetch; errors name plates that are not in JUMP's table.

        ``filters`` are the data set's further plate-table filters (the pilot's ``cell_type``, ``time``)."""
        table = self.list_plates(source, batch, plate_type, **filters)
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
                f"under {self.gallery_url}/{self.gallery_prefix}/; drop them with --skip-missing."
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
              progress: ProgressCallback = no_progress, **filters: Any) -> Profiles:
        """Download (or reuse cached) plates and join them with JUMP metadata into one Profiles."""
        selection = self.select(source, batch, plates, plate_type, max_plates, **filters)
        plan = self.plan(selection)
        if plan.missing and skip_missing:
            warnings.warn(f"skipping plate(s) missing in the gallery: {plan.missing}", CpDistillerWarning,
                          stacklevel=2)
            plan = FetchPlan(plan.plates[~plan.plates["Metadata_Plate"].isin(plan.missing)].reset_index(drop=True))
        self.download_plates(plan, progress)
        return self.join(plan.plates)

    # ----- joining ---------------------------------------------------------------------------------
    def join(self, plates: pd.DataFrame) -> Profiles:
        """Read the cached plate files and attach batch, perturbation, gene symbol, control flags."""
        frames = [self._plate_frame(row) for row in plates.itertuples()]
        features = _shared_features(frames)
        data = pd.concat([f[[c for c in f.columns if c.startswith("Metadata_")] + features] for f in frames],
                         ignore_index=True)
        meta = data[[c for c in data.columns if c.startswith("Metadata_")]]
        meta = self._annotate(meta, set(plates["Metadata_PlateType"]))
        return Profiles(meta=meta, X=data[features].to_numpy(np.float32), features=features,
                        roles=self._roles(meta), source=f"JUMP {self.dataset} ({len(plates)} plates)")

    def _roles(self, meta: pd.DataFrame) -> Roles:
        return ROLES

    def _read_plate(self, path: Path) -> pd.DataFrame:
        return pd.read_parquet(path)

    def _plate_frame(self, row: Any) -> pd.DataFrame:
        """One cached plate file with the plate table's columns (source, batch, type, …) in front."""
        try:
            df = self._read_plate(row.path)
        except Exception as exc:  # pyarrow / the CSV reader raise several types for a bad file
            raise CpDistillerError(f"{row.path}: cannot read plate {row.Metadata_Plate} ({exc}); "
                                   "delete it to download again.") from None
        for col, value in (("Metadata_Source", row.Metadata_Source), ("Metadata_Plate", row.Metadata_Plate)):
            if col not in df.columns:
                df.insert(0, col, value)
        if "Metadata_Well" not in df.columns:
            raise CpDistillerError(f"{row.path}, column 'Metadata_Well': missing in plate {row.Metadata_Plate}.")
        extra = [c for c in row._fields if c.startswith("Metadata_") and c not in df.columns]
        for k, col in enumerate(extra):
            df.insert(2 + k, col, getattr(row, col))
        return df

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



# ----- the JUMP pilot (cpg0000, CPJUMP1) -----------------------------------------------------------
PILOT_METADATA_URL = "https://raw.githubusercontent.com/jump-cellpainting/2024_Chandrasekaran_NatureMethods/main"
PILOT_PROFILE_KEY = "cpg0000-jump-pilot/{source}/workspace/profiles/{batch}/{plate}/{plate}_{level}.csv.gz"
PILOT_LEVELS = ("normalized_feature_select_negcon_batch", "normalized_feature_select_batch",
                "normalized_negcon", "normalized", "augmented")
PILOT_METADATA_FILES = {
    "plate": "benchmark/output/experiment-metadata.tsv",
    "compound": "metadata/external_metadata/JUMP-Target-1_compound_metadata_targets.tsv",
    "crispr": "metadata/moa/JUMP-Target-1_crispr_metadata.tsv",
    "orf": "metadata/external_metadata/JUMP-Target-1_orf_metadata.tsv",
}
# experiment-metadata.tsv column -> plate-table column (kept on every well)
PILOT_PLATE_COLUMNS = {"Batch": "Metadata_Batch", "Assay_Plate_Barcode": "Metadata_Plate",
                       "Perturbation": "Metadata_PlateType", "Plate_Map_Name": "Metadata_Plate_Map_Name",
                       "Cell_type": "Metadata_Cell_type", "Time": "Metadata_Time", "Density": "Metadata_Density",
                       "Antibiotics": "Metadata_Antibiotics", "Cell_line": "Metadata_Cell_line",
                       "Time_delay": "Metadata_Time_delay", "Times_imaged": "Metadata_Times_imaged",
                       "Anomaly": "Metadata_Anomaly"}
PILOT_POSITIVE = ("poscon_cp", "poscon_diverse", "poscon_orf", "poscon")
PILOT_SOURCE = "source_4"


class PilotClient(JumpClient):
    """The JUMP pilot CPJUMP1 (cpg0000): 51 384-well plates of A549 and U2OS cells, compounds, CRISPR
    guides and ORFs, each at a short and a long time point, plus re-imaged batches.

    Wells are annotated from the Chandrasekaran et al. 2024 tables on ``Metadata_broad_sample``:
    ``Metadata_Symbol`` is the gene a guide or ORF perturbs (empty for compounds),
    ``Metadata_target_list`` a compound's targets (``|``-separated, empty for guides and ORFs), and
    ``Metadata_control_type`` the control flag (``negcon``: DMSO, non-targeting guides, negative-control
    ORFs). These are the columns of the paper's retrieval tasks (:data:`cpdistiller_core.analysis.retrieval.RECIPES`).
    A barcode imaged in several batches (the time-delay studies) gets the batch's ``Time_delay`` appended
    to ``Metadata_Plate`` when more than one of them is fetched; ``Metadata_Assay_Plate_Barcode`` keeps it.
    """

    dataset = "cpg0000"
    gallery_prefix = "cpg0000-jump-pilot"
    metadata_files = PILOT_METADATA_FILES
    metadata_env = "CPDISTILLER_PILOT_METADATA_URL"
    default_metadata_url = PILOT_METADATA_URL

    def __init__(self, *args: Any, level: str = PILOT_LEVELS[0], **kw: Any) -> None:
        if level not in PILOT_LEVELS:
            raise CpDistillerError(f"profile level {level!r} is not one of the pilot's: {', '.join(PILOT_LEVELS)}.")
        super().__init__(*args, **kw)
        self.level = level

    def metadata(self, name: str) -> pd.DataFrame:
        path = self.metadata_path(name)
        try:
            return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""])
        except (OSError, ValueError) as exc:
            raise CpDistillerError(f"{path}: cannot read CPJUMP1 metadata table ({exc}).") from None

    def list_plates(self, source: str | None = None, batch: str | None = None, plate_type: str | None = None,
                    cell_type: str | None = None, time: str | int | None = None) -> pd.DataFrame:
        """Plates of CPJUMP1's experiment table (CellProfiler batches; the ``_DL`` DeepProfiler batch is left out)."""
        raw = self.metadata("plate")
        _require(raw, list(PILOT_PLATE_COLUMNS)[:4], self.metadata_path("plate"))
        plates = raw.rename(columns=PILOT_PLATE_COLUMNS)
        plates = plates[~plates["Metadata_Batch"].str.endswith("_DL")]
        plates.insert(0, "Metadata_Source", PILOT_SOURCE)
        plates["Metadata_PlateType"] = plates["Metadata_PlateType"].str.upper()
        plates["Metadata_Assay_Plate_Barcode"] = plates["Metadata_Plate"]
        keep = pd.Series(True, index=plates.index)
        for col, value in (("Metadata_Source", source), ("Metadata_Batch", batch), ("Metadata_Time", time)):
            if value is not None and value != "":
                keep &= plates[col] == str(value)
        if plate_type:
            keep &= plates["Metadata_PlateType"] == plate_type.upper()
        if cell_type:
            keep &= plates["Metadata_Cell_type"].str.upper() == cell_type.upper()
        return plates[keep].reset_index(drop=True)

    def profile_url(self, source: str, batch: str, plate: str) -> str:
        return f"{self.gallery_url}/{PILOT_PROFILE_KEY.format(source=source, batch=batch, plate=plate, level=self.level)}"

    def profile_path(self, source: str, batch: str, plate: str) -> Path:
        return self.cache / PILOT_PROFILE_KEY.format(source=source, batch=batch, plate=plate, level=self.level)

    def _read_plate(self, path: Path) -> pd.DataFrame:
        return pd.read_csv(path, low_memory=False)

    def join(self, plates: pd.DataFrame) -> Profiles:
        plates = plates.copy()
        repeated = plates["Metadata_Plate"].duplicated(keep=False)
        if repeated.any():
            plates.loc[repeated, "Metadata_Plate"] = (plates.loc[repeated, "Metadata_Plate"] + "_"
                                                      + plates.loc[repeated, "Metadata_Time_delay"])
        return super().join(plates)

    def _plate_frame(self, row: Any) -> pd.DataFrame:
        df = super()._plate_frame(row)
        df["Metadata_Plate"] = row.Metadata_Plate  # the file names the barcode; repeated barcodes are renamed
        if "Metadata_broad_sample" not in df.columns:
            raise CpDistillerError(f"{row.path}, column 'Metadata_broad_sample': missing in plate "
                                   f"{row.Metadata_Assay_Plate_Barcode}; the pilot's wells are annotated from it.")
        return df

    def _roles(self, meta: pd.DataFrame) -> Roles:
        batch = "Metadata_Batch" if meta["Metadata_Batch"].nunique() > 1 else "Metadata_Plate"
        return Roles(plate="Metadata_Plate", well="Metadata_Well", batch=batch,
                     perturbation="Metadata_broad_sample", control="Metadata_control_type",
                     negative_values=("negcon",), positive_values=PILOT_POSITIVE, annotation="Metadata_Symbol")

    def _annotate(self, meta: pd.DataFrame, plate_types: set[str]) -> pd.DataFrame:
        modality = meta["Metadata_PlateType"].str.lower()
        sample = meta["Metadata_broad_sample"].astype("string").str.strip().replace("", pd.NA)
        meta = meta.assign(Metadata_broad_sample=sample.fillna(modality.map({"compound": "DMSO"})).fillna("empty"))
        table = self._perturbation_table(sorted({pt.lower() for pt in plate_types}))
        out = meta.merge(table, on="Metadata_broad_sample", how="left", suffixes=("", "_table"))
        for col in [c for c in out.columns if c.endswith("_table")]:
            base = col[: -len("_table")]
            out[base] = out[base].where(out[base].notna() & (out[base].astype(str) != ""), out[col])
            out = out.drop(columns=col)
        dmso = out["Metadata_broad_sample"] == "DMSO"
        out.loc[dmso, "Metadata_pert_type"] = "control"
        out.loc[dmso, "Metadata_control_type"] = "negcon"
        out["Metadata_pert_type"] = out["Metadata_pert_type"].fillna("unknown")
        unknown = int((out["Metadata_pert_type"] == "unknown").sum())
        if unknown:
            warnings.warn(f"{unknown} wells have a broad_sample that CPJUMP1's tables do not list "
                          "(perturbation unknown).", CpDistillerWarning, stacklevel=3)
        out.index = meta.index
        return out

    def _perturbation_table(self, modalities: list[str]) -> pd.DataFrame:
        """broad_sample -> Symbol / target_list / pert_iname / pert_type / control_type for the modalities."""
        parts = []
        for name in modalities:
            if name not in PILOT_METADATA_FILES:
                continue
            t = self.metadata(name)
            _require(t, ["broad_sample", "pert_type"], self.metadata_path(name))
            gene = t["gene"] if name != "compound" and "gene" in t.columns else pd.Series(pd.NA, index=t.index)
            targets = (t["target_list"] if "target_list" in t.columns else t.get("gene", pd.Series(pd.NA, index=t.index)))
            parts.append(pd.DataFrame({
                "Metadata_broad_sample": t["broad_sample"], "Metadata_Symbol": gene,
                "Metadata_target_list": targets if name == "compound" else pd.NA,
                "Metadata_pert_iname": t["pert_iname"] if "pert_iname" in t.columns else pd.NA,
                "Metadata_pert_type": t["pert_type"], "Metadata_control_type": t.get("control_type")}))
        if not parts:
            return pd.DataFrame(columns=["Metadata_broad_sample"])
        table = pd.concat(parts, ignore_index=True).dropna(subset=["Metadata_broad_sample"])
        return table.drop_duplicates("Metadata_broad_sample")


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
