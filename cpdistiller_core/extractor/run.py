"""Per-plate extraction with resume: images -> one Parquet file of per-well vectors per plate.

Output layout of ``out_dir``:

    {plate}.parquet        one row per well: every manifest column (values that differ between the
                           well's sites are joined with ';' in site order), Metadata_ExtractorWeights,
                           Metadata_ExtractorSites, then the feature columns (float32)
    {plate}.json           provenance: weights, settings, counts, timings
    .partial/{plate}/      while a plate runs: config.json + chunk_XXXXX.parquet every
                           ``checkpoint_every`` wells; a rerun with the same settings resumes there

Files are written atomically (temporary name + rename), so a killed run leaves no half file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..errors import CpDistillerError, example_values
from ..progress import ProgressCallback, no_progress
from .features import Extractor, FeatureSettings, feature_names, well_vector
from .images import CHANNELS, Manifest, prepare_site
from .mesmer import MesmerC5Reduced, random_init

WEIGHTS_COLUMN = "Metadata_ExtractorWeights"
SITES_COLUMN = "Metadata_ExtractorSites"
RANDOM_STAMP = "RANDOM-UNTRAINED-WEIGHTS(test only, not a model)"
#: Where the published Mesmer weights come from (docs/extractor.md, "Getting the weights").
MESMER_ARCHIVE_URL = "https://deepcell-data.s3-us-west-1.amazonaws.com/saved-models/MultiplexSegmentation-9.tar.gz"
NO_WEIGHTS_MESSAGE = (
    "no Mesmer weights given: extraction needs the published Mesmer model, converted once. Get the "
    "MultiplexSegmentation SavedModel folder either from DeepCell (with your DeepCell token, "
    "deepcell's Mesmer() saves it under ~/.deepcell/models/) or from the public archive the "
    f"cpDistiller reference code downloads ({MESMER_ARCHIVE_URL}, unpacked); then run "
    "`cpdistiller convert-mesmer FOLDER mesmer_c5.pt` (needs TensorFlow 2.x for that step only; a Keras "
    ".h5 weights file needs only h5py) and pass --weights mesmer_c5.pt. See docs/extractor.md."
)


@dataclass(frozen=True)
class WeightsSpec:
    """Where the network's weights come from: a converted state dict file, or random (tests only)."""

    path: str | None = None
    random: bool = False
    seed: int = 0

    def check(self) -> None:
        if self.random and self.path:
            raise CpDistillerError("give either --weights or --random-weights, not both.")
        if not self.random and not self.path:
            raise CpDistillerError(NO_WEIGHTS_MESSAGE)
        if self.path and not Path(self.path).is_file():
            raise CpDistillerError(f"{self.path}: weights file not found. {NO_WEIGHTS_MESSAGE}")

    def stamp(self) -> str:
        """Identity written into every output row: the weights file hash, or the random-weights stamp."""
        self.check()
        if self.random:
            return f"{RANDOM_STAMP} seed={self.seed}"
        h = hashlib.sha256()
        with open(self.path, "rb") as fh:  # type: ignore[arg-type]
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return f"mesmer:{Path(self.path).name}:sha256={h.hexdigest()[:16]}"  # type: ignore[arg-type]


def load_model(spec: WeightsSpec) -> MesmerC5Reduced:
    """The network with converted Mesmer weights (strict key check) or, for tests, random weights."""
    spec.check()
    model = MesmerC5Reduced()
    if spec.random:
        return random_init(model, spec.seed).eval()
    try:
        blob = torch.load(spec.path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CpDistillerError(f"{spec.path}: cannot read weights ({exc}); expected a file written by "
                               "`cpdistiller convert-mesmer`.") from exc
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise CpDistillerError(f"{spec.path}: not a state dict written by `cpdistiller convert-mesmer`.")
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CpDistillerError(f"{spec.path}: weights do not fit the Mesmer network (missing "
                               f"{example_values(missing, 3) or 'none'}; unexpected {example_values(unexpected, 3) or 'none'}).")
    bad = [k for k in state if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise CpDistillerError(f"{spec.path}: weight shapes differ for {example_values(bad, 3)}.")
    model.load_state_dict(state, strict=False)
    return model.eval()


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when available, else 'cpu'."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CpDistillerError(f"device {device!r} requested but CUDA is not available.")
    return device


def sites_per_well(manifest: Manifest, n_sites: int | None = None) -> int:
    """Check every well has the same number of sites (``n_sites``, default the largest count seen)."""
    keys = [manifest.table[manifest.plate].astype(str), manifest.table[manifest.well].astype(str)]
    counts = manifest.table.groupby(keys, sort=False).size()
    expected = int(n_sites) if n_sites else int(counts.max())
    bad = counts[counts != expected]
    if len(bad):
        shown = [f"{p}/{w} ({c} sites)" for (p, w), c in bad.head(5).items()]
        raise CpDistillerError(f"{manifest.source}: wells must all have {expected} sites for per-well vectors "
                               f"of equal length; {len(bad)} differ: {', '.join(shown)}.")
    return expected


def well_metadata(rows: pd.DataFrame) -> dict[str, object]:
    """One well's metadata from its site rows: constant values kept, varying ones joined by ';'."""
    out: dict[str, object] = {}
    for col in rows.columns:
        vals = rows[col]
        if vals.nunique(dropna=False) <= 1:
            out[col] = vals.iloc[0]
        else:
            out[col] = ";".join("" if pd.isna(v) else str(v) for v in vals)
    return out


def _config(spec: WeightsSpec, settings: FeatureSettings, n_sites: int, stamp: str) -> dict:
    return {"weights": stamp, "random_weights": spec.random, "settings": asdict(settings), "n_sites": n_sites,
            "channels": {"1": "DNA", "2": "mean(RNA, ER)"}, "preprocessing": "illum -> percentile 99.9 -> CLAHE(128)"}


def _write_parquet(df: pd.DataFrame, path: Path, meta: dict) -> None:
    """Parquet with the extraction's config under the key ``io`` reads: with the store's roles and
    feature list, so `read_profiles` / `correct --image-features` take the ``mesmer_*`` columns as
    features (without them the reader found no features in the extractor's own output)."""
    from ..io.common import _STORE_KEY, _STORE_VERSION

    features = [c for c in df.columns if c.startswith("mesmer_")]
    store = {"format": "cpdistiller-image-features", "version": _STORE_VERSION, "kind": "image_features",
             "roles": {"plate": "Metadata_Plate", "well": "Metadata_Well"}, "features": features,
             "metadata_columns": [c for c in df.columns if c not in set(features)], **meta}
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           _STORE_KEY.encode(): json.dumps(store).encode()})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _atomic_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def plate_file(out_dir: str | Path, plate: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(plate))
    return Path(out_dir) / f"{safe}.parquet"


def extract_plate(manifest: Manifest, out_dir: str | Path, weights: WeightsSpec,
                  settings: FeatureSettings | None = None, n_sites: int | None = None, device: str = "auto",
                  workers: int = 4, checkpoint_every: int = 16, model: MesmerC5Reduced | None = None,
                  progress: ProgressCallback = no_progress,
                  on_well: Callable[[str], None] | None = None) -> dict:
    """Extract one plate (``manifest`` holds one plate's sites) into ``out_dir/{plate}.parquet``.

    Resumes from ``out_dir/.partial/{plate}`` when a previous run with the same settings stopped.
    ``workers`` threads decode TIFFs and pre-process sites ahead of the network. Returns a summary dict
    (plate, path, wells, wells_computed, tiles, seconds, resumed_wells, skipped).
    """
    settings = settings or FeatureSettings()
    plates = manifest.plates()
    if len(plates) != 1:
        raise CpDistillerError(f"extract_plate needs the sites of one plate, got {len(plates)} plates.")
    plate = plates[0]
    n_sites = sites_per_well(manifest, n_sites)
    stamp = weights.stamp()
    config = _config(weights, settings, n_sites, stamp)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = plate_file(out_dir, plate)
    summary = {"plate": plate, "path": str(final)}
    if final.is_file():
        return _already_extracted(final, config, summary, progress)
    partial = _partial_dir(out_dir, final, config)
    done: set[str] = set()
    for c in sorted(partial.glob("chunk_*.parquet")):
        done.update(pd.read_parquet(c, columns=[manifest.well])[manifest.well].astype(str))
    wells = manifest.wells()
    todo = [w for w in wells if w[1] not in done]
    t0 = time.perf_counter()
    extractor = None
    if todo:
        model = model if model is not None else load_model(weights)
        extractor = Extractor(model, settings, resolve_device(device))
        writer = _ChunkWriter(partial, config, n_sites, checkpoint_every)

        def report(i: int, well: str) -> None:
            if on_well is not None:
                on_well(well)
            progress((len(done) + i + 1) / len(wells), f"{plate}: {well}")

        _extract_wells(manifest, todo, extractor, writer, stamp, n_sites, workers, plate, report)
    df = _assemble(partial, manifest, wells, plate)
    tiles = extractor.tiles_seen if extractor is not None else 0
    summary.update({"skipped": False, "wells": int(df.shape[0]), "wells_computed": len(todo),
                    "resumed_wells": len(done), "tiles": int(tiles), "seconds": round(time.perf_counter() - t0, 3),
                    "n_features": int(sum(1 for c in df.columns if c.startswith("mesmer_")))})
    _write_parquet(df, final, {"config": config, "summary": summary})
    _atomic_json(final.with_suffix(".json"), {"config": config, "summary": summary})
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.parent.rmdir()
    except OSError:
        pass
    progress(1.0, f"{plate}: done")
    return summary


def _already_extracted(final: Path, config: dict, summary: dict, progress: ProgressCallback) -> dict:
    """The summary of a plate extracted before with the same settings; an error if they differ."""
    old = json.loads(pq.read_schema(final).metadata.get(b"cpdistiller", b"{}"))
    if old.get("config") != config:
        raise CpDistillerError(f"{final}: exists with different extraction settings or weights; "
                               "use another output folder or remove it.")
    progress(1.0, f"{summary['plate']}: already extracted")
    return {**summary, "skipped": True, "wells": pq.read_metadata(final).num_rows, "wells_computed": 0,
            "tiles": 0, "seconds": 0.0, "resumed_wells": 0}


def _partial_dir(out_dir: Path, final: Path, config: dict) -> Path:
    """``out_dir/.partial/<plate>``: the chunks of an interrupted run, resumed only with the same settings."""
    partial = out_dir / ".partial" / final.stem
    partial.mkdir(parents=True, exist_ok=True)
    cfg_path = partial / "config.json"
    if cfg_path.is_file() and json.loads(cfg_path.read_text()) != config:
        raise CpDistillerError(f"{partial}: an interrupted run with different settings or weights is there; "
                               "remove that folder or use another output folder.")
    _atomic_json(cfg_path, config)
    return partial


class _ChunkWriter:
    """Collects well vectors and writes them as ``chunk_NNNNN.parquet`` every ``every`` wells."""

    def __init__(self, partial: Path, config: dict, n_sites: int, every: int) -> None:
        self.partial, self.config, self.n_sites, self.every = partial, config, n_sites, every
        self.next_chunk = len(list(partial.glob("chunk_*.parquet")))
        self.rows: list[dict] = []
        self.vectors: list[np.ndarray] = []
        self.site_len: int | None = None

    def add(self, meta: dict, vector: np.ndarray) -> None:
        self.rows.append(meta)
        self.vectors.append(vector)

    def flush_if_full(self) -> None:
        if len(self.rows) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        names = feature_names(self.n_sites, self.site_len or 0)
        df = pd.concat([pd.DataFrame(self.rows), pd.DataFrame(np.stack(self.vectors), columns=names)], axis=1)
        _write_parquet(df, self.partial / f"chunk_{self.next_chunk:05d}.parquet", {"config": self.config})
        self.next_chunk += 1
        self.rows, self.vectors = [], []


def _extract_wells(manifest: Manifest, todo: list, extractor: Extractor, writer: _ChunkWriter, stamp: str,
                   n_sites: int, workers: int, plate: str, report: Callable[[int, str], None]) -> None:
    """Run the network over the wells still to do; ``workers`` threads decode and pre-process ahead."""
    def load(item: tuple[str, str, pd.DataFrame]) -> list[np.ndarray]:
        out = []
        for idx in item[2].index:
            paths = {c: manifest.paths.at[idx, c] for c in CHANNELS}
            illum = None if manifest.illum is None else {c: manifest.illum.at[idx, c] for c in CHANNELS}
            out.append(prepare_site(paths, illum, preprocess=extractor.settings.preprocess,
                                    illum_mode=extractor.settings.illum))
        return out

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        window = max(2, 2 * workers)  # pre-process up to 2 * workers wells ahead of the network
        futures = [pool.submit(load, w) for w in todo[:window]]
        for i, item in enumerate(todo):
            if i + window < len(todo):
                futures.append(pool.submit(load, todo[i + window]))
            images = futures[i].result()
            futures[i] = None  # free memory
            site_vecs = extractor.sites_features(images)
            if writer.site_len is None:
                writer.site_len = site_vecs[0].shape[0]
            elif site_vecs[0].shape[0] != writer.site_len:
                raise CpDistillerError(f"{plate}/{item[1]}: site images differ in size from earlier wells.")
            meta = well_metadata(item[2])
            meta[WEIGHTS_COLUMN] = stamp
            meta[SITES_COLUMN] = n_sites
            writer.add(meta, well_vector(site_vecs))
            report(i, item[1])  # before the flush: a well whose callback fails is computed again on resume
            writer.flush_if_full()
        writer.flush()


def _assemble(partial: Path, manifest: Manifest, wells: list, plate: str) -> pd.DataFrame:
    """Every chunk of the plate, in the manifest's well order; an error if a well is missing."""
    parts = [pd.read_parquet(c) for c in sorted(partial.glob("chunk_*.parquet"))]
    df = pd.concat(parts, ignore_index=True)
    order = {w: k for k, (_, w, _) in enumerate(wells)}
    df = df.iloc[np.argsort(df[manifest.well].astype(str).map(order).to_numpy(), kind="stable")]
    df = df.reset_index(drop=True)
    if df.shape[0] != len(wells):
        raise CpDistillerError(f"{plate}: {df.shape[0]} wells extracted but {len(wells)} expected; "
                               f"remove {partial} and run again.")
    return df


def read_features(out_dir: str | Path, plates: list[str] | None = None):
    """Read extracted plates back as ``Profiles`` (plate = Metadata_Plate, well = Metadata_Well)."""
    from ..profiles import Profiles, Roles

    out_dir = Path(out_dir)
    files = [plate_file(out_dir, p) for p in plates] if plates else sorted(out_dir.glob("*.parquet"))
    if not files:
        raise CpDistillerError(f"{out_dir}: no extracted plates (*.parquet) found.")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CpDistillerError(f"extracted plate file(s) not found: {example_values(missing, 3)}.")
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    feats = [c for c in df.columns if c.startswith("mesmer_")]
    meta = df.drop(columns=feats)
    return Profiles(meta=meta, X=df[feats].to_numpy(np.float32), features=feats,
                    roles=Roles(plate="Metadata_Plate", well="Metadata_Well"), source=str(out_dir))


def align_features(features, profiles) -> np.ndarray:
    """Rows of extracted ``features`` (Profiles) matched to ``profiles`` (Profiles) by plate and well.

    Returns [profiles.n_wells, features.n_features] float32 in ``profiles``' row order, ready to be
    the joint module's input E. Wells of ``profiles`` without image features raise CpDistillerError.
    """
    key = pd.Index([f"{p}\t{w}" for p, w in zip(features.plate, features.well)])
    if key.has_duplicates:
        dup = key[key.duplicated()]
        raise CpDistillerError(f"{features.source}: the same plate/well appears twice in the image features "
                               f"({example_values([d.replace(chr(9), '/') for d in dup], 3)}).")
    want = [f"{p}\t{w}" for p, w in zip(profiles.plate, profiles.well)]
    pos = key.get_indexer(want)
    if (pos < 0).any():
        miss = [want[i].replace("\t", "/") for i in np.flatnonzero(pos < 0)]
        raise CpDistillerError(f"{features.source}: no image features for {len(miss)} of {len(want)} wells of "
                               f"{profiles.source or 'the profiles'} (e.g. {example_values(miss, 3)}); "
                               "plate names must match between the two tables.")
    return features.X[pos]
