"""Image manifests (CellProfiler LoadData CSV or folder + filename pattern), illumination
correction and Mesmer's channel preparation.

A manifest has one row per *site* (field of view). Besides every input column it resolves, per row,
the plate, well, site and absolute paths of the DNA, RNA and ER images (and their illumination
functions when given). Only those three channels feed the extractor (paper: channel 1 = DNA,
channel 2 = mean(RNA, ER)); AGP and Mito columns are kept as metadata.

Preprocessing of one site (``prepare_site``). The default (``preprocess="paper"``) follows the
published cpDistiller code (``prepare_union.tiff2npz`` + ``npz2embedding``, then deepcell's
``Mesmer.predict``, which runs ``mesmer_preprocess`` again on what it is given):

    DNA, RNA, ER            [H, W] each, read as float32
    illumination correct    image / illum function (CellProfiler CorrectIlluminationApply, "Divide";
                            ``illum="multiply"`` reproduces the reference code's image * illum)
    stack                   [2, H, W]: (DNA, (RNA + ER) / 2)
    histogram normalisation per channel, rescale to [0, 1] then CLAHE, kernel_size = 64
                            (deepcell_toolbox's default, called by npz2embedding)        [paper only]
    log1p(2 x)              nucleus channel only (npz2embedding's ``smooth_matrix_log``)  [paper only]
    percentile threshold    per channel, clip at the 99.9th percentile of non-zero pixels  (Mesmer)
    histogram normalisation per channel, rescale to [0, 1] then CLAHE
                            (``skimage.exposure.equalize_adapthist``, kernel_size = 128);  (Mesmer)
                            a constant channel becomes zeros

``preprocess="mesmer"`` runs only the last two steps (deepcell 0.12.10's ``mesmer_preprocess``, which
has no log step), as this module did before issue #19.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CpDistillerError, example_rows, example_values, where

#: Channels the extractor reads, in LoadData naming (``FileName_Orig{name}``).
CHANNELS: tuple[str, ...] = ("DNA", "RNA", "ER")
PLATE, WELL, SITE = "Metadata_Plate", "Metadata_Well", "Metadata_Site"
#: Phenix / Opera export naming, e.g. r01c01f01p01-ch1sk1fk1fl1.tiff.
#: Site pre-processing: the cpDistiller reference code's chain, or Mesmer's own only.
PREPROCESS_MODES: tuple[str, ...] = ("paper", "mesmer")
#: How the illumination function is applied: CellProfiler's Divide, or the reference code's multiply.
ILLUM_MODES: tuple[str, ...] = ("divide", "multiply")
PHENIX_PATTERN = r"r(?P<row>\d{2})c(?P<col>\d{2})f(?P<site>\d{2})p(?P<plane>\d{2})-ch(?P<channel>\d+)"


@dataclass(frozen=True)
class Manifest:
    """Sites to extract: ``table`` (every input column, one row per site) plus resolved columns.

    ``plate``/``well``/``site`` name the columns of ``table`` with those roles; ``paths`` and
    ``illum`` are DataFrames (same index as ``table``) of absolute paths per channel (``illum`` may be
    None). ``source`` names the manifest for error messages.
    """

    table: pd.DataFrame
    paths: pd.DataFrame
    illum: pd.DataFrame | None
    plate: str = PLATE
    well: str = WELL
    site: str = SITE
    source: str = ""

    def plates(self) -> list[str]:
        """Plate names in order of first appearance."""
        return list(dict.fromkeys(self.table[self.plate].astype(str)))

    def for_plate(self, plate: str) -> Manifest:
        """The rows of one plate."""
        keep = (self.table[self.plate].astype(str) == str(plate)).to_numpy()
        return Manifest(self.table[keep], self.paths[keep], None if self.illum is None else self.illum[keep],
                        self.plate, self.well, self.site, self.source)

    def wells(self) -> list[tuple[str, str, pd.DataFrame]]:
        """(plate, well, site rows sorted by site number) in order of first appearance."""
        t = self.table
        site_num = pd.to_numeric(t[self.site], errors="coerce")
        out = []
        keys = pd.Series(list(zip(t[self.plate].astype(str), t[self.well].astype(str))), index=t.index)
        for key in dict.fromkeys(keys):
            rows = t[(keys == key).to_numpy()]
            rows = rows.iloc[np.argsort(site_num[rows.index].to_numpy(), kind="stable")]
            out.append((key[0], key[1], rows))
        return out


def _resolve(base: Path, path_col: pd.Series | None, name_col: pd.Series) -> pd.Series:
    """Absolute path per row from PathName_* (relative ones are taken from the CSV's folder) + FileName_*."""
    names = name_col.astype(str)
    if path_col is None:
        dirs = pd.Series([str(base)] * len(names), index=names.index)
    else:
        dirs = path_col.astype(str)
    out = [str(Path(d) / n) if os.path.isabs(d) else str(base / d / n) for d, n in zip(dirs, names)]
    return pd.Series(out, index=names.index)


def _check_columns(t: pd.DataFrame, needed: Sequence[str], src: str) -> None:
    missing = [c for c in needed if c not in t.columns]
    if missing:
        raise CpDistillerError(f"{where(src)}missing column(s) {missing}; a LoadData CSV needs "
                               f"{', '.join(needed)} (found {list(t.columns)[:12]}).")


def _check_sites(t: pd.DataFrame, plate: str, well: str, site: str, src: str) -> None:
    for col in (plate, well):
        bad = t[col].isna() | (t[col].astype(str).str.strip() == "")
        if bad.any():
            raise CpDistillerError(f"{where(src, col)}empty values ({example_rows(t.index[bad])}).")
    num = pd.to_numeric(t[site], errors="coerce")
    if num.isna().any():
        bad = t.index[num.isna()]
        raise CpDistillerError(f"{where(src, site)}site numbers must be integers ({example_rows(bad)}: "
                               f"{example_values(t.loc[bad, site])}).")
    dup = t.duplicated([plate, well, site], keep=False)
    if dup.any():
        raise CpDistillerError(f"{where(src)}the same plate/well/site appears twice ({example_rows(t.index[dup])}).")


def read_load_data(csv: str | Path, illum_dir: str | Path | None = None,
                   channels: Sequence[str] = CHANNELS) -> Manifest:
    """Read a CellProfiler LoadData CSV (``FileName_Orig{DNA,RNA,ER,...}``, ``PathName_…``, Metadata_*).

    Illumination functions come from ``FileName_Illum{ch}``/``PathName_Illum{ch}`` columns when present
    (the Gallery's load_data_with_illum.csv), or from ``illum_dir`` holding ``{plate}_Illum{ch}.npy``.
    """
    csv = Path(csv)
    src = str(csv)
    if not csv.is_file():
        raise CpDistillerError(f"{src}: LoadData CSV not found.")
    try:
        t = pd.read_csv(csv, dtype={PLATE: str, WELL: str})
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CpDistillerError(f"{src}: cannot parse as CSV ({exc}).") from exc
    if t.empty:
        raise CpDistillerError(f"{src}: the LoadData CSV has no rows.")
    needed = [PLATE, WELL, SITE] + [f"FileName_Orig{c}" for c in channels]
    _check_columns(t, needed, src)
    _check_sites(t, PLATE, WELL, SITE, src)
    for c in channels:
        bad = t[f"FileName_Orig{c}"].isna()
        if bad.any():
            raise CpDistillerError(f"{where(src, f'FileName_Orig{c}')}empty file names ({example_rows(t.index[bad])}).")
    base = csv.parent
    paths = pd.DataFrame({c: _resolve(base, t.get(f"PathName_Orig{c}"), t[f"FileName_Orig{c}"]) for c in channels},
                         index=t.index)
    illum = None
    if all(f"FileName_Illum{c}" in t.columns for c in channels):
        illum = pd.DataFrame({c: _resolve(base, t.get(f"PathName_Illum{c}"), t[f"FileName_Illum{c}"])
                              for c in channels}, index=t.index)
    elif illum_dir is not None:
        illum = _illum_from_dir(t[PLATE].astype(str), Path(illum_dir), channels)
    return Manifest(t, paths, illum, PLATE, WELL, SITE, src)


def _illum_from_dir(plates: pd.Series, illum_dir: Path, channels: Sequence[str]) -> pd.DataFrame:
    """``{illum_dir}/{plate}_Illum{ch}.npy`` per row (Cell Painting Gallery naming); all must exist."""
    out = pd.DataFrame({c: [str(illum_dir / f"{p}_Illum{c}.npy") for p in plates] for c in channels},
                       index=plates.index)
    missing = sorted({p for c in channels for p in out[c] if not Path(p).is_file()})
    if missing:
        raise CpDistillerError(f"{illum_dir}: illumination file(s) not found: {example_values(missing, 3)} "
                               f"(expected {{plate}}_Illum{{channel}}.npy for channels {list(channels)}).")
    return out


def parse_channel_map(text: str | Mapping[str, str] | None,
                      channels: Sequence[str] = CHANNELS) -> dict[str, str]:
    """'DNA=1,RNA=3,ER=2' -> {'DNA': '1', ...}: which pattern channel number holds each stain."""
    if text is None:
        raise CpDistillerError(f"a filename pattern needs --channel-map naming the channel of each of "
                               f"{list(channels)}, e.g. 'DNA=1,ER=2,RNA=3'.")
    if isinstance(text, Mapping):
        pairs = {str(k): str(v) for k, v in text.items()}
    else:
        pairs = {}
        for item in str(text).split(","):
            if "=" not in item:
                raise CpDistillerError(f"channel map {text!r}: expected NAME=CHANNEL items separated by commas.")
            k, v = item.split("=", 1)
            pairs[k.strip()] = v.strip().lstrip("0") or "0"
    missing = [c for c in channels if c not in pairs]
    if missing:
        raise CpDistillerError(f"channel map {text!r} lacks {missing}.")
    return pairs


def read_pattern_folder(folder: str | Path, pattern: str = PHENIX_PATTERN,
                        channel_map: str | Mapping[str, str] | None = None, plate: str | None = None,
                        illum_dir: str | Path | None = None, channels: Sequence[str] = CHANNELS) -> Manifest:
    """Build a manifest from image files in ``folder`` whose names match ``pattern`` (a regex).

    The pattern needs named groups ``channel``, ``site`` and either ``well`` or ``row`` + ``col``
    (1-based numbers, as Phenix ``r01c01``); an optional ``plate`` group, else ``plate`` (default: the
    folder name). Only plane 1 is used when the pattern has a ``plane`` group. The resulting table has
    LoadData-style columns, so outputs look the same as with a LoadData CSV.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CpDistillerError(f"{folder}: image folder not found.")
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise CpDistillerError(f"filename pattern {pattern!r} is not a valid regular expression ({exc}).") from exc
    groups = set(rx.groupindex)
    if not {"channel", "site"} <= groups or not ({"well"} <= groups or {"row", "col"} <= groups):
        raise CpDistillerError(f"filename pattern {pattern!r} needs named groups 'channel', 'site' and "
                               "'well' (or 'row' and 'col').")
    cmap = parse_channel_map(channel_map, channels)
    by_number = {v: k for k, v in cmap.items()}
    records: dict[tuple[str, str, int], dict[str, str]] = {}
    for f in sorted(folder.iterdir()):
        m = rx.search(f.name)
        if not m or not f.is_file():
            continue
        d = m.groupdict()
        if d.get("plane") is not None and int(d["plane"]) != 1:
            continue
        ch = by_number.get(d["channel"].lstrip("0") or "0")
        if ch is None:
            continue
        if d.get("well"):
            well = d["well"]
        else:
            r = int(d["row"])
            well = f"{_row_letters(r)}{int(d['col']):02d}"
        p = d.get("plate") or plate or folder.name
        rec = records.setdefault((p, well, int(d["site"])), {})
        rec[f"FileName_Orig{ch}"] = f.name
        rec[f"PathName_Orig{ch}"] = str(folder.resolve())
    if not records:
        raise CpDistillerError(f"{folder}: no file matches pattern {pattern!r} for channels {cmap}.")
    rows = [{PLATE: k[0], WELL: k[1], SITE: k[2], **v} for k, v in records.items()]
    t = pd.DataFrame(rows)
    src = f"{folder} (pattern {pattern!r})"
    for c in channels:
        col = f"FileName_Orig{c}"
        if col not in t.columns or t[col].isna().any():
            bad = t.index if col not in t.columns else t.index[t[col].isna()]
            raise CpDistillerError(f"{src}: channel {c} image missing for {len(bad)} site(s), e.g. "
                                   f"{t.loc[bad[:3], [PLATE, WELL, SITE]].to_dict('records')}.")
    t = t.sort_values([PLATE, WELL, SITE], kind="stable").reset_index(drop=True)
    paths = pd.DataFrame({c: _resolve(folder, t[f"PathName_Orig{c}"], t[f"FileName_Orig{c}"]) for c in channels},
                         index=t.index)
    illum = None if illum_dir is None else _illum_from_dir(t[PLATE].astype(str), Path(illum_dir), channels)
    return Manifest(t, paths, illum, PLATE, WELL, SITE, src)


def _row_letters(row: int) -> str:
    """1 -> 'A', 26 -> 'Z', 27 -> 'AA' (1536-well plates)."""
    s = ""
    while row > 0:
        row, rem = divmod(row - 1, 26)
        s = chr(65 + rem) + s
    return s


# ----- pixels ----------------------------------------------------------------------------------------
def read_image(path: str | Path) -> np.ndarray:
    """One 2-D image [H, W] as float32 (TIFF via tifffile; .npy also accepted)."""
    path = Path(path)
    if not path.is_file():
        raise CpDistillerError(f"{path}: image file not found.")
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path)
        else:
            import tifffile

            arr = tifffile.imread(path)
    except Exception as exc:  # corrupt or unsupported files
        raise CpDistillerError(f"{path}: cannot read image ({exc}).") from exc
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise CpDistillerError(f"{path}: expected a single-plane 2-D image, got shape {arr.shape}.")
    return arr.astype(np.float32, copy=False)


def read_illum(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """An illumination function [H, W] (.npy as CellProfiler/the Gallery saves them), checked for shape."""
    path = Path(path)
    if not path.is_file():
        raise CpDistillerError(f"{path}: illumination file not found.")
    try:
        arr = np.squeeze(np.load(path, allow_pickle=False)).astype(np.float32)
    except Exception as exc:
        raise CpDistillerError(f"{path}: cannot read illumination function ({exc}).") from exc
    if arr.shape != tuple(shape):
        raise CpDistillerError(f"{path}: illumination function has shape {arr.shape}, images are {tuple(shape)}.")
    if not np.isfinite(arr).all() or (arr <= 0).any():
        raise CpDistillerError(f"{path}: illumination function must be finite and > 0 everywhere.")
    return arr


def percentile_threshold(channel: np.ndarray, percentile: float = 99.9) -> np.ndarray:
    """Clip a channel [H, W] at the given percentile of its non-zero pixels (deepcell_toolbox)."""
    nz = channel[channel != 0]
    if nz.size == 0:
        return np.zeros_like(channel)
    return np.minimum(channel, np.percentile(nz, percentile)).astype(channel.dtype)


def histogram_normalization(channel: np.ndarray, kernel_size: int | None = 128) -> np.ndarray:
    """Rescale a channel [H, W] to [0, 1] and apply CLAHE (deepcell_toolbox); constant -> zeros.
    ``kernel_size=None`` is skimage's default, 1/8 of the image's height and width."""
    from skimage.exposure import equalize_adapthist, rescale_intensity

    if (channel == channel.flat[0]).all():
        return np.zeros(channel.shape, dtype=np.float32)
    x = rescale_intensity(channel.astype(np.float32), out_range=(0.0, 1.0))
    return equalize_adapthist(x, kernel_size=kernel_size).astype(np.float32)


def mesmer_preprocess(image: np.ndarray, percentile: float = 99.9, kernel_size: int = 128) -> np.ndarray:
    """Mesmer's pre-processing of a [2, H, W] image, channel by channel -> float32 [2, H, W] in [0, 1]."""
    return np.stack([histogram_normalization(percentile_threshold(c, percentile), kernel_size) for c in image])


def reference_preprocess(image: np.ndarray, percentile: float = 99.9, kernel_size: int = 128,
                         first_kernel_size: int | None = None, log_scale: float = 2.0) -> np.ndarray:
    """The cpDistiller reference code's pre-processing of a [2, H, W] image -> float32 [2, H, W] in [0, 1].

    CLAHE on both channels (``npz2embedding`` calls deepcell_toolbox's ``histogram_normalization``
    without a kernel size: skimage's default, 1/8 of the image per axis, 135 px on a 1,080 px site),
    ``log1p(log_scale * x)`` on the nucleus channel, then Mesmer's own ``mesmer_preprocess``
    (percentile clip + CLAHE with ``kernel_size``).
    """
    x = np.stack([histogram_normalization(c, first_kernel_size) for c in image])
    x[0] = np.log1p(log_scale * x[0])
    return mesmer_preprocess(x, percentile, kernel_size)


def _check_mode(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise CpDistillerError(f"unknown {what} {value!r}; use one of {list(allowed)}.")


def prepare_site(paths: Mapping[str, str], illum: Mapping[str, str] | None = None,
                 kernel_size: int = 128, preprocess: str = "paper", illum_mode: str = "divide") -> np.ndarray:
    """Read, illumination-correct and pre-process one site -> float32 [2, H, W] (DNA, mean(RNA, ER)).

    ``preprocess``: ``"paper"`` (the reference code's chain, with the log step) or ``"mesmer"``
    (deepcell's ``mesmer_preprocess`` only); ``illum_mode``: ``"divide"`` (CellProfiler) or
    ``"multiply"`` (the reference code).
    """
    _check_mode(preprocess, PREPROCESS_MODES, "pre-processing")
    _check_mode(illum_mode, ILLUM_MODES, "illumination mode")
    imgs = {}
    for c in CHANNELS:
        img = read_image(paths[c])
        if illum is not None:
            fn = read_illum(illum[c], img.shape)
            img = img / fn if illum_mode == "divide" else img * fn
        imgs[c] = img
    shapes = {c: v.shape for c, v in imgs.items()}
    if len(set(shapes.values())) != 1:
        raise CpDistillerError(f"channel images of one site differ in size: "
                               f"{ {paths[c]: s for c, s in shapes.items()} }.")
    stacked = np.stack([imgs["DNA"], 0.5 * (imgs["RNA"] + imgs["ER"])])
    if preprocess == "paper":
        return reference_preprocess(stacked, kernel_size=kernel_size)
    return mesmer_preprocess(stacked, kernel_size=kernel_size)
