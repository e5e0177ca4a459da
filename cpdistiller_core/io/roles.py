"""Column roles: the naming vocabularies (pycytominer, JUMP), detection with reasons, and overrides."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..errors import CpDistillerError, example_cells, example_values, where
from ..profiles import Roles
from .common import note
from .features import is_cellprofiler_feature

# Known column names per role, in priority order; matching is case-insensitive, exact case preferred.
PLATE_NAMES = ("Metadata_Plate", "Metadata_Assay_Plate_Barcode", "Metadata_Barcode", "Metadata_PlateID",
               "Image_Metadata_Plate", "Plate", "Plate_ID", "PlateID", "Barcode")
WELL_NAMES = ("Metadata_Well", "Image_Metadata_Well", "Metadata_well_position", "Metadata_WellID",
              "Well", "Well_ID", "WellID", "WellName", "Well Name")
ROW_NAMES = ("Metadata_Row", "Image_Metadata_Row", "Metadata_WellRow", "Row")
COLUMN_NAMES = ("Metadata_Col", "Metadata_Column", "Image_Metadata_Col", "Image_Metadata_Column",
                "Metadata_WellColumn", "Col", "Column")
BATCH_NAMES = ("Metadata_Batch", "Image_Metadata_Batch", "Batch", "Metadata_Source")
PERTURBATION_NAMES = (
    "Metadata_JCP2022", "Metadata_broad_sample", "Metadata_gene_allele", "Metadata_pert_iname",
    "Metadata_Symbol", "Metadata_target_gene", "Metadata_gene_symbol", "Metadata_Gene",
    "Metadata_pert_id", "Metadata_pert_name", "Metadata_Compound", "Metadata_Treatment",
    "Metadata_Perturbation", "Metadata_sgRNA", "Compound Name", "Compound", "Treatment", "Perturbation",
)
ANNOTATION_NAMES = (
    "Metadata_moa", "Metadata_Symbol", "Metadata_gene_symbol", "Metadata_Gene", "Metadata_target",
    "Metadata_target_gene", "Metadata_pathway", "Metadata_Annotation", "injury_type", "MOA", "Target",
)
CONTROL_NAMES = (
    "Metadata_control_type", "Metadata_pert_type", "Metadata_node_type", "Metadata_broad_sample_type",
    "Metadata_Control", "Metadata_negcon", "Control Type", "Control_Type", "control_type", "Control",
)
# Control-status vocabularies (lower case).
NEGATIVE_VALUES = frozenset({
    "negcon", "negative", "negative control", "negative_control", "neg_con", "neg", "nc", "control",
    "ctrl", "dmso", "empty", "untreated", "mock", "vehicle", "non-targeting", "nontargeting",
    "non_targeting", "no_guide", "no-guide", "negcon_orf", "negcon_crispr", "negcon_compound",
})
POSITIVE_VALUES = frozenset({
    "poscon", "positive", "positive control", "positive_control", "pos_con", "pos", "pc", "cpc",
    "poscon_orf", "poscon_cp", "poscon_diverse", "poscon_crispr",
})
# In a perturbation column only unambiguous names count ('PC' is also a gene symbol).
_NEGATIVE_PERTURBATIONS = frozenset({
    "dmso", "control", "negcon", "empty", "untreated", "mock", "vehicle", "non-targeting",
    "nontargeting", "non_targeting", "no_guide", "no-guide",
})
# JUMP-CP control perturbations (Metadata_JCP2022), as listed in JUMP's perturbation_control.csv.
JUMP_NEGATIVE_CONTROLS = frozenset({
    "JCP2022_033924",  # DMSO
    "JCP2022_800001", "JCP2022_800002",  # CRISPR no-guide, non-targeting
    "JCP2022_915128", "JCP2022_915129", "JCP2022_915130", "JCP2022_915131",  # ORF BFP, HcRed, LUCIFERASE, LacZ
})
JUMP_POSITIVE_CONTROLS = frozenset({
    "JCP2022_037716", "JCP2022_025848", "JCP2022_046054", "JCP2022_035095", "JCP2022_064022",
    "JCP2022_050797", "JCP2022_012818", "JCP2022_085227", "JCP2022_805264", "JCP2022_915132",
})
_COLUMN_ROLES = ("plate", "well", "row", "column", "batch", "perturbation", "control", "annotation")


@dataclass
class RoleDetection:
    """Detected roles and, per role, a sentence saying why that column (or nothing) was chosen."""

    roles: Roles
    reasons: dict[str, str]


def detect_roles(df: pd.DataFrame, source: str | None = None) -> Roles:
    """Auto-detect roles from pycytominer / JUMP naming conventions (see :func:`explain_roles`)."""
    return explain_roles(df, source).roles


def explain_roles(df: pd.DataFrame, source: str | None = None, *,
                  given: Mapping[str, Any] | None = None) -> RoleDetection:
    """Detect roles and say why each was chosen. Raises when no plate or well column is found.

    ``given`` (a partial mapping) supplies plate / well / row+column that need not be detected;
    apply the rest of it with :func:`resolve_roles`.
    """
    cols = [str(c) for c in df.columns if not is_cellprofiler_feature(str(c))]
    reasons: dict[str, str] = {}
    found: dict[str, Any] = {}
    given = given or {}

    plate = ((_resolve_column(cols, str(given["plate"]), "plate", source), "set by the mapping")
             if given.get("plate") else _unambiguous(df, cols, PLATE_NAMES, "plate", source))
    if plate is None:
        raise CpDistillerError(
            f"{where(source)}no plate column found (looked for {', '.join(PLATE_NAMES[:3])}, 'Plate'…); "
            f"name it with --plate-col or a mapping{_suggest(cols, 'plate')}."
        )
    found["plate"], reasons["plate"] = plate[0], plate[1]

    mapped_well = bool(given.get("well") or (given.get("row") and given.get("column")))
    well = None if mapped_well else _unambiguous(df, cols, WELL_NAMES, "well", source)
    if mapped_well:
        pass  # set by the mapping
    elif well is not None:
        found["well"], reasons["well"] = well
    else:
        row, col = _match(cols, ROW_NAMES), _match(cols, COLUMN_NAMES)
        if row is None or col is None:
            raise CpDistillerError(
                f"{where(source)}no well column found (looked for 'Metadata_Well', 'Well', or "
                f"'Metadata_Row' + 'Metadata_Col'); name it with --well-col or --row-col/--column-col"
                f"{_suggest(cols, 'well', 'row', 'col')}."
            )
        found["row"], reasons["row"] = row
        found["column"], reasons["column"] = col
        reasons["well"] = "no well column; wells from separate row and column columns"

    batch = _match(cols, BATCH_NAMES)
    if batch is None:
        batch = _fuzzy_batch(df, cols, exclude={found["plate"]})
    if batch is not None:
        found["batch"], reasons["batch"] = batch
    else:
        reasons["batch"] = "no batch column found (a batch column with several values, or --batch-from-file)"

    pert = _match(cols, PERTURBATION_NAMES)
    if pert is not None:
        found["perturbation"], reasons["perturbation"] = pert
    else:
        reasons["perturbation"] = "no perturbation column found; wells are identified by position"

    ann = _match([c for c in cols if c != found.get("perturbation")], ANNOTATION_NAMES)
    if ann is not None:
        found["annotation"], reasons["annotation"] = ann
    else:
        reasons["annotation"] = "no annotation column (gene symbol, MOA, target) found"

    control = _detect_control(df, cols, found.get("perturbation"))
    found.update(control[0])
    reasons["control"] = control[1]
    return RoleDetection(Roles(**found), reasons)


def _match(cols: Sequence[str], candidates: Sequence[str]) -> tuple[str, str] | None:
    """First candidate present (exact case preferred, then case-insensitive) -> (column, reason)."""
    lower: dict[str, list[str]] = {}
    for c in cols:
        lower.setdefault(c.lower().strip(), []).append(c)
    for cand in candidates:
        hits = lower.get(cand.lower())
        if not hits:
            continue
        col = cand if cand in hits else hits[0]
        how = "known column name" if col == cand else f"case-insensitive match for {cand!r}"
        others = [h for h in hits if h != col]
        also = f" (ignored {', '.join(map(repr, others))})" if others else ""
        return col, f"{how} {col!r}{also}"
    return None


def _unambiguous(df: pd.DataFrame, cols: Sequence[str], candidates: Sequence[str], role: str,
                 source: str | None) -> tuple[str, str] | None:
    """Like :func:`_match`, but two candidate columns that group the wells differently (e.g. 'Plate'
    and 'Metadata_Plate' with other plates) are an error naming both and the flag that chooses."""
    first = _match(cols, candidates)
    if first is None:
        return None
    others = [c for c in cols if c != first[0] and _match([c], candidates) is not None]
    clash = [c for c in others if not _same_grouping(df[first[0]], df[c])]
    if not clash:
        return first
    raise _ambiguous_role(role, first[0], clash, source)


def _ambiguous_role(role: str, first: str, clash: Sequence[str], source: str | None) -> CpDistillerError:
    names = " and ".join(repr(c) for c in [first, *clash])
    return CpDistillerError(
        f"{where(source)}{len(clash) + 1} columns look like the {role} column ({names}) and they group the "
        f"wells differently; choose one with --{role}-col (e.g. --{role}-col {first!r}) or "
        f"'{role}: <column>' in a --mapping file."
    )


def _same_grouping(a: pd.Series, b: pd.Series) -> bool:
    """True when the two columns split the rows into the same groups (one is a relabelling of the other)."""
    codes_a = pd.factorize(a.astype(str), use_na_sentinel=False)[0]
    codes_b = pd.factorize(b.astype(str), use_na_sentinel=False)[0]
    pairs = len(set(zip(codes_a.tolist(), codes_b.tolist())))
    return pairs == codes_a.max(initial=-1) + 1 == codes_b.max(initial=-1) + 1


def _fuzzy_batch(df: pd.DataFrame, cols: Sequence[str], exclude: set[str]) -> tuple[str, str] | None:
    """A column whose name contains the word 'batch' and whose values look like a few labels."""
    for c in cols:
        if c in exclude or not re.search(r"(^|[^a-z])batch([^a-z]|$)", c.lower()):
            continue
        n = df[c].nunique(dropna=True)
        if 2 <= n <= max(2, len(df) // 2):
            return c, f"column name {c!r} contains 'batch' and holds {n} labels"
    return None


def _control_values(s: pd.Series, vocab: frozenset[str]) -> list[str]:
    vals = pd.unique(s.dropna().astype(str).str.strip())
    return sorted(v for v in vals if v.lower() in vocab or (vocab is NEGATIVE_VALUES and v.lower().startswith("negcon"))
                  or (vocab is POSITIVE_VALUES and v.lower().startswith("poscon")))


def _detect_control(df: pd.DataFrame, cols: Sequence[str], perturbation: str | None) -> tuple[dict[str, Any], str]:
    candidates: list[str] = []
    lower = {c.lower().strip(): c for c in reversed(cols)}
    for cand in CONTROL_NAMES:
        c = next((x for x in cols if x == cand), None) or lower.get(cand.lower())
        if c and c not in candidates:
            candidates.append(c)
    positives_only: tuple[str, list[str]] | None = None
    for c in candidates:
        neg = _control_values(df[c], NEGATIVE_VALUES)
        pos = _control_values(df[c], POSITIVE_VALUES)
        if neg:
            return ({"control": c, "negative_values": tuple(neg), "positive_values": tuple(pos)},
                    f"control column {c!r}: negative controls {neg}"
                    + (f", positive controls {pos}" if pos else "") + ", anything else a treatment")
        if pos and positives_only is None:
            positives_only = (c, pos)
    if perturbation:
        vals = pd.unique(df[perturbation].dropna().astype(str).str.strip())
        neg = sorted(v for v in vals if v.lower() in _NEGATIVE_PERTURBATIONS or v.upper() in JUMP_NEGATIVE_CONTROLS)
        pos = sorted(v for v in vals if v.upper() in JUMP_POSITIVE_CONTROLS)
        if neg:
            jump = " (JUMP control identifiers)" if any(v.upper() in JUMP_NEGATIVE_CONTROLS for v in neg) else ""
            return ({"control": perturbation, "negative_values": tuple(neg), "positive_values": tuple(pos)},
                    f"perturbation column {perturbation!r} names negative controls {neg}"
                    + (f" and positive controls {pos}" if pos else "") + jump)
    if positives_only:
        c, pos = positives_only
        return ({"control": c, "positive_values": tuple(pos)},
                f"control column {c!r} has positive controls {pos} but no negative controls")
    return {}, "no negative controls found (no control column and no DMSO/CONTROL/negcon values)"


def _suggest(cols: Sequence[str], *words: str) -> str:
    hits = [c for c in cols if any(w in c.lower() for w in words)]
    return f" (columns that might be it: {example_values(hits)})" if hits else ""


def resolve_roles(meta: pd.DataFrame, spec: Roles | Mapping[str, Any] | None, source: str | None = None,
                  stored: Roles | None = None, *, notes: list[str] | None = None) -> tuple[Roles, dict[str, str]]:
    """Roles for ``meta``: ``spec`` if a Roles, else stored/detected roles with ``spec`` overrides.

    Reasons cover every detected role, or with ``stored`` roles only those the overrides changed.
    Notes (given control values that do not occur) go to ``notes``, or are warned when it is None.
    """
    if isinstance(spec, Roles):
        return spec, {r: "given" for r in _COLUMN_ROLES if getattr(spec, r)}
    if stored is not None:
        base, reasons = stored, {}  # only the overrides get new reasons
    else:
        det = explain_roles(meta, source, given=spec)
        base, reasons = det.roles, det.reasons
    if not spec:
        return base, reasons
    return _apply_overrides(meta, base, dict(reasons), spec, source, notes)


def _apply_overrides(meta: pd.DataFrame, base: Roles, reasons: dict[str, str], spec: Mapping[str, Any],
                     source: str | None, notes: list[str] | None = None) -> tuple[Roles, dict[str, str]]:
    known = {f.name for f in dataclasses.fields(Roles)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise CpDistillerError(f"unknown role(s) {unknown} in the column mapping; known roles: {sorted(known)}.")
    kw = base.to_dict()
    cols = [str(c) for c in meta.columns]
    for role in _COLUMN_ROLES:
        if role not in spec:
            continue
        value = spec[role]
        if value is None or value == "":
            kw[role] = None
            reasons[role] = "unset by the mapping"
            continue
        kw[role] = _resolve_column(cols, str(value), role, source)
        reasons[role] = f"set by the mapping to {kw[role]!r}"
    if "well" in spec and spec["well"] and not ({"row", "column"} & set(spec)):
        kw["row"] = kw["column"] = None
    if ({"row", "column"} <= set(spec)) and spec["row"] and spec["column"] and "well" not in spec:
        kw["well"] = None
        reasons["well"] = "wells from the mapped row and column columns"
    if "plate_format" in spec and spec["plate_format"] is not None:
        try:
            kw["plate_format"] = int(spec["plate_format"])
        except (TypeError, ValueError):
            raise CpDistillerError(f"plate format must be 96, 384 or 1536, not {spec['plate_format']!r}.") from None

    neg_given = _as_values(spec.get("negative_values"))
    pos_given = _as_values(spec.get("positive_values"))
    control_changed = "control" in spec and kw["control"] != base.control
    if control_changed and kw["control"]:
        neg = _control_values(meta[kw["control"]], NEGATIVE_VALUES)
        pos = _control_values(meta[kw["control"]], POSITIVE_VALUES)
        kw["negative_values"], kw["positive_values"] = neg, pos
        reasons["control"] = (f"set by the mapping to {kw['control']!r}; negative controls {neg}"
                              + (f", positive controls {pos}" if pos else ""))
    elif (neg_given or pos_given) and (kw["control"] is None or (
            "control" not in spec and not _occurs(meta[kw["control"]], neg_given + pos_given))):
        # The given values live elsewhere than in the detected control column (e.g. DMSO in the
        # perturbation column): use the column that holds them.
        kw["control"] = _column_with_values(meta, neg_given + pos_given, kw, source)
        kw["negative_values"], kw["positive_values"] = [], []
        reasons["control"] = f"column {kw['control']!r} holds the given control values"
    elif kw["control"] is None:
        kw["negative_values"], kw["positive_values"] = [], []
    if kw["control"] and neg_given:
        kw["negative_values"] = _match_values(meta[kw["control"]], neg_given, kw["control"], source, notes)
    if kw["control"] and pos_given:
        kw["positive_values"] = _match_values(meta[kw["control"]], pos_given, kw["control"], source, notes)
    if kw["control"] and (neg_given or pos_given):
        reasons["control"] = (f"column {kw['control']!r}: negative controls {list(kw['negative_values'])}, "
                              f"positive controls {list(kw['positive_values'])} (given)")
    if kw["well"] is None and not (kw["row"] and kw["column"]):
        raise CpDistillerError(f"{where(source)}no well column: set --well-col, or both --row-col and --column-col.")
    return Roles.from_dict(kw), reasons


def _occurs(s: pd.Series, values: Sequence[str]) -> bool:
    present = {str(v).strip().lower() for v in pd.unique(s.dropna())}
    return any(v.lower() in present for v in values)


def _as_values(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [x.strip() for x in v.split(",") if x.strip()]
    return [str(x).strip() for x in v if str(x).strip()]


def _resolve_column(cols: Sequence[str], name: str, role: str, source: str | None) -> str:
    if name in cols:
        return name
    hits = [c for c in cols if c.lower().strip() == name.lower().strip()]
    if len(hits) == 1:
        return hits[0]
    raise CpDistillerError(
        f"{where(source)}the {role} column {name!r} is not in the file{_suggest(cols, *name.lower().split('_')[-1:])}."
    )


def _match_values(s: pd.Series, given: Sequence[str], column: str, source: str | None,
                  notes: list[str] | None = None) -> list[str]:
    """Given control values -> the spellings present in the column (case-insensitive)."""
    present = {v.lower(): v for v in pd.unique(s.dropna().astype(str).str.strip())}
    out, missing = [], []
    for g in given:
        if g in present.values():
            out.append(g)
        elif g.lower() in present:
            out.append(present[g.lower()])
        else:
            missing.append(g)
    if missing:
        note(notes, f"{where(source, column)}control value(s) {missing} do not occur; values there include "
                    f"{example_cells(list(present.values()))}.")
    return list(dict.fromkeys(out + missing))


def _column_with_values(meta: pd.DataFrame, values: Sequence[str], kw: Mapping[str, Any],
                        source: str | None) -> str:
    """The column holding the given control values: perturbation first, then any text column."""
    wanted = {v.lower() for v in values}
    order = [kw.get("perturbation")] + [c for c in meta.columns if c != kw.get("perturbation")]
    for c in order:
        if not c or c not in meta.columns or pd.api.types.is_float_dtype(meta[c]):
            continue
        vals = {str(v).strip().lower() for v in pd.unique(meta[c].dropna())}
        if wanted & vals:
            return str(c)
    raise CpDistillerError(
        f"{where(source)}no column holds the control value(s) {list(values)}; name it with --control-col."
    )
