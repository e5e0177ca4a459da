"""A simulated Cell Painting screen with known biology and known technical effects.

Wells of 384-well plates (several batches x plates) carry CRISPR-style gene perturbations from real
functional groups, compounds targeting some of those genes, inactive perturbations, negative and
positive controls. Features are CellProfiler-named and correlated through shared "morphological
programs" (one per channel, per compartment size, per feature family...). Each group shares a
low-rank phenotype; each gene adds its own part; compounds resemble their targets.

Measured profiles = truth + technical effects, in standardised units before the per-feature raw
scale is applied:

    measured = batch_scale * (biology + noise) + batch_shift + plate_offset
               + row_gradient(row) + column_gradient(col) + edge(row, col)

Row and column gradients are smooth monotone nonlinear functions of the row/column index (a
logistic step plus an accelerating exponential), whose shape, amplitude and feature direction vary a
little per batch; edge effects hit the outer ring (corners most). ``truth`` holds ``biology + noise``
on the same raw scale with the same metadata, so corrected profiles can be compared with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CpDistillerError
from ..layout import row_letters
from ..profiles import Profiles, Roles
from .genesets import (
    COMPOUNDS,
    GENE_GROUPS,
    NEGATIVE_CONTROLS,
    POSITIVE_CONTROLS,
    gene_sets,
)

CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")
COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")
N_ROWS, N_COLS = 16, 24
REPLICATES = 3  # wells per treatment per plate map
# dose_by_column: a treated well's dose is set by its column (cycling through these), as in cell_injury
DOSES_UM = (10.0, 3.0, 1.0)
DOSE_RESPONSE = (1.0, 0.6, 0.35)  # the share of the perturbation's effect at each dose
POSCON_WELLS = 16

_AREASHAPE = ("Area", "Perimeter", "FormFactor", "Eccentricity", "Solidity", "Extent", "Compactness",
              "MajorAxisLength", "MinorAxisLength", "MaxFeretDiameter", "MeanRadius", "Zernike_0_0",
              "Zernike_2_0", "Zernike_4_2")
_INTENSITY = ("MeanIntensity", "MedianIntensity", "IntegratedIntensity", "StdIntensity", "MaxIntensity",
              "LowerQuartileIntensity", "UpperQuartileIntensity", "MADIntensity", "MassDisplacement",
              "MeanIntensityEdge")
_TEXTURE = ("AngularSecondMoment", "Contrast", "Correlation", "Entropy", "InverseDifferenceMoment",
            "SumAverage", "SumEntropy", "SumVariance", "Variance", "DifferenceVariance", "InfoMeas1")
_RADIAL = ("FracAtD", "MeanFrac", "RadialCV")
_NEIGHBORS = ("NumberOfNeighbors_Adjacent", "PercentTouching_Adjacent", "FirstClosestDistance_Adjacent",
              "SecondClosestDistance_Adjacent")
# log10 raw-scale ranges per feature family (what CellProfiler values roughly look like)
_RAW_RANGE = {"AreaShape": (0.0, 3.3), "Intensity": (-1.7, 0.3), "Texture": (-1.0, 1.5),
              "Granularity": (-0.5, 1.0), "RadialDistribution": (-1.0, -0.1), "Correlation": (-0.7, -0.05),
              "Neighbors": (0.0, 1.5)}
_FAMILIES = ("Texture", "Granularity", "RadialDistribution", "Correlation")


@dataclass
class DemoScreen:
    """The demo screen: ``profiles`` (with technical effects), ``truth`` (without; same metadata and
    features), ``gene_sets`` (group -> genes), ``perturbations`` (one row per perturbation: modality,
    symbol, targets, group, whether it has a phenotype and its strength), ``features`` (feature
    catalogue: compartment, family, channel) and ``params`` (the generating settings)."""

    profiles: Profiles
    truth: Profiles
    gene_sets: dict[str, list[str]]
    perturbations: pd.DataFrame
    features: pd.DataFrame
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def roles(self) -> Roles:
        return self.profiles.roles


# ----- features --------------------------------------------------------------------------------------
def feature_catalog() -> pd.DataFrame:
    """Every CellProfiler-style feature the simulator can emit: name, compartment, family, channel(s)."""
    rows: list[tuple[str, str, str, str | None, str | None]] = []
    pairs = [(a, b) for i, a in enumerate(CHANNELS) for b in CHANNELS[i + 1:]]
    for comp in COMPARTMENTS:
        rows += [(f"{comp}_AreaShape_{m}", comp, "AreaShape", None, None) for m in _AREASHAPE]
        for a, b in pairs:
            rows.append((f"{comp}_Correlation_Correlation_{a}_{b}", comp, "Correlation", a, b))
            rows.append((f"{comp}_Correlation_Overlap_{a}_{b}", comp, "Correlation", a, b))
        rows += [(f"{comp}_Granularity_{k}_{ch}", comp, "Granularity", ch, None)
                 for ch in CHANNELS for k in range(1, 17)]
        rows += [(f"{comp}_Intensity_{m}_{ch}", comp, "Intensity", ch, None) for m in _INTENSITY for ch in CHANNELS]
        if comp != "Cytoplasm":
            rows += [(f"{comp}_Neighbors_{m}", comp, "Neighbors", None, None) for m in _NEIGHBORS]
        rows += [(f"{comp}_RadialDistribution_{m}_{ch}_{k}of4", comp, "RadialDistribution", ch, None)
                 for m in _RADIAL for ch in CHANNELS for k in range(1, 5)]
        rows += [(f"{comp}_Texture_{m}_{ch}_3_00_256", comp, "Texture", ch, None) for m in _TEXTURE for ch in CHANNELS]
    return pd.DataFrame(rows, columns=["feature", "compartment", "family", "channel", "channel2"])


def _select_features(catalog: pd.DataFrame, n: int) -> pd.DataFrame:
    """n features spread over compartments x families (round robin), kept in catalogue order."""
    if not 10 <= n <= len(catalog):
        raise CpDistillerError(f"n_features must be between 10 and {len(catalog)} (got {n}).")
    buckets = [list(idx) for _, idx in catalog.groupby(["compartment", "family"], sort=False).groups.items()]
    # spread picks inside each bucket (every channel/measurement), not just its first names
    spread = [[b[i] for i in np.argsort(np.arange(len(b)) * 7919 % len(b), kind="stable")] for b in buckets]
    chosen: list[int] = []
    k = 0
    while len(chosen) < n:
        for b in spread:
            if k < len(b) and len(chosen) < n:
                chosen.append(b[k])
        k += 1
    return catalog.loc[sorted(chosen)].reset_index(drop=True)


def _program_loadings(feats: pd.DataFrame, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """(k programs x p features) loadings; each feature's column has unit norm."""
    names = list(CHANNELS) + [f"{c}_size" for c in COMPARTMENTS] + list(_FAMILIES) + ["density"] + [
        f"generic_{i}" for i in range(3)]
    p = len(feats)
    F = np.zeros((len(names), p))
    fam, comp = feats["family"].to_numpy(), feats["compartment"].to_numpy()
    ch1, ch2 = feats["channel"].to_numpy(dtype=object), feats["channel2"].to_numpy(dtype=object)

    def load(i: int, mask: np.ndarray, strength: float) -> None:
        sign = np.where(rng.random(p) < 0.75, 1.0, -1.0)
        F[i] += mask * strength * sign * rng.normal(1.0, 0.3, p)

    for i, ch in enumerate(CHANNELS):
        load(i, (ch1 == ch) | (ch2 == ch), 1.0)
    for j, c in enumerate(COMPARTMENTS):
        size = (comp == c) & ((fam == "AreaShape") | (feats["feature"].str.contains("IntegratedIntensity")).to_numpy())
        load(len(CHANNELS) + j, size, 1.0)
    base = len(CHANNELS) + len(COMPARTMENTS)
    for j, f in enumerate(_FAMILIES):
        load(base + j, fam == f, 0.7)
    load(base + len(_FAMILIES), (fam == "Neighbors") | ((comp == "Cells") & (fam == "AreaShape")), 1.0)
    F[-3:] = rng.normal(0, 0.35, (3, p))
    F += rng.normal(0, 0.1, F.shape)  # every feature picks up a little of every program
    F /= np.linalg.norm(F, axis=0, keepdims=True)
    return F, names


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


# ----- perturbations ---------------------------------------------------------------------------------
def _library(F: np.ndarray, programs: list[str], rng: np.random.Generator, effect_size: float
             ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Perturbation table, their standardised feature effects (n_perts x p) and log cell-count effects."""
    k, p = F.shape
    prog = {n: i for i, n in enumerate(programs)}
    rows: list[dict[str, Any]] = []
    effects: list[np.ndarray] = []
    counts: list[float] = []
    gene_latent: dict[str, np.ndarray] = {}
    gene_count: dict[str, float] = {}
    for gname, group in GENE_GROUPS.items():
        sig = rng.normal(0, 0.3, k)
        for pname, w in group.programs.items():
            sig[prog[pname]] += w
        sig = _unit(sig)
        for gene in group.genes:
            strength = float(rng.uniform(0.6, 1.4)) if group.active else 0.0
            latent = strength * _unit(sig + 0.5 * _unit(rng.normal(size=k)))
            gene_latent[gene] = latent
            gene_count[gene] = strength * group.cell_count
            own = strength * 0.3 * rng.normal(size=p)
            effects.append(effect_size * (latent @ F + own))
            counts.append(gene_count[gene] + rng.normal(0, 0.05) * strength)
            rows.append({"perturbation": gene, "modality": "crispr", "symbol": gene, "target": gene,
                         "pathway": gname, "pert_type": "trt", "active": group.active, "strength": strength})
    g2g = {gene: name for name, g in GENE_GROUPS.items() for gene in g.genes}
    for cpd, pert_type in [(c, "trt") for c in COMPOUNDS] + [(c, "poscon") for c in POSITIVE_CONTROLS]:
        known = [t for t in cpd.targets if t in gene_latent]
        if known and cpd.potency > 0:
            latent = cpd.potency * _unit(np.mean([_unit(gene_latent[t]) for t in known], axis=0)
                                         + 0.35 * _unit(rng.normal(size=k)))
            count = cpd.potency * float(np.mean([gene_count[t] for t in known]))
        elif cpd.potency > 0:  # a target outside the simulated groups: its own phenotype
            latent = cpd.potency * _unit(rng.normal(size=k))
            count = -0.5 * cpd.potency
        else:
            latent, count = np.zeros(k), 0.0
        own = cpd.potency * 0.3 * rng.normal(size=p)
        effects.append(effect_size * (latent @ F + own))
        counts.append(count)
        groups = sorted({g2g[t] for t in known}) if cpd.potency > 0 else []
        rows.append({"perturbation": cpd.name, "modality": "compound", "symbol": None,
                     "target": "|".join(cpd.targets), "pathway": "|".join(groups) if groups else None,
                     "pert_type": pert_type, "active": cpd.potency > 0, "strength": cpd.potency})
    for name in NEGATIVE_CONTROLS:
        effects.append(np.zeros(p))
        counts.append(0.0)
        rows.append({"perturbation": name, "modality": "crispr" if name == "non-targeting" else "compound",
                     "symbol": None, "target": None, "pathway": None, "pert_type": "negcon", "active": False,
                     "strength": 0.0})
    table = pd.DataFrame(rows)
    return table, np.asarray(effects), np.asarray(counts)


def _plate_map(table: pd.DataFrame, rng: np.random.Generator, negcon_fraction: float | None = None,
               layout_index: int = 0, replicates_in_row: bool = False) -> np.ndarray:
    """Perturbation index for each of the 384 wells (row-major): negative controls spread over the
    whole plate (one per 4x3 block, edges included) plus any spare wells, positive controls and
    ``REPLICATES`` wells per treatment at random positions.

    ``negcon_fraction``: share of the plate given to negative controls (default: whatever the library
    leaves free, ~10 %). When the treatments then do not all fit, each plate map carries a different
    slice of the library (``layout_index`` picks it), ``REPLICATES`` wells each; spare wells get
    extra replicates of that slice. ``replicates_in_row``: a treatment's wells are laid side by side in
    one row (as a dose series or a replicate strip), see ``_place_treatments``."""
    pert_type = table["pert_type"].to_numpy()
    trt = np.flatnonzero(pert_type == "trt")
    pos = np.flatnonzero(pert_type == "poscon")
    neg = np.flatnonzero(pert_type == "negcon")
    n_wells = N_ROWS * N_COLS
    if negcon_fraction is not None:
        return _plate_map_fraction(trt, pos, neg, negcon_fraction, layout_index, rng, replicates_in_row)
    free = n_wells - len(trt) * REPLICATES - POSCON_WELLS
    if free < 32:
        raise CpDistillerError("the demo library does not fit a 384-well plate.")
    out = np.full(n_wells, -1)
    block_neg = _block_wells(rng)
    rest = np.setdiff1d(np.arange(n_wells), block_neg)
    rng.shuffle(rest)
    extra = rest[: free - len(block_neg)]
    negs = np.concatenate([block_neg, extra])
    out[negs] = neg[np.arange(len(negs)) % len(neg)]
    rest = rest[free - len(block_neg):]
    out[rest[:POSCON_WELLS]] = pos[np.arange(POSCON_WELLS) % len(pos)]
    _place_treatments(out, rest[POSCON_WELLS:], np.repeat(trt, REPLICATES), rng, replicates_in_row)
    return out


def _place_treatments(out: np.ndarray, wells: np.ndarray, treatments: np.ndarray, rng: np.random.Generator,
                      in_row: bool) -> None:
    """Put ``treatments`` (one entry per well) into ``wells`` of the plate map ``out``: at random, or
    with each treatment's wells next to each other along a row (rows taken in a random order, so a
    treatment's row differs between plate maps; a treatment at the end of a row continues on the next)."""
    if not in_row:
        rng.shuffle(treatments)
        out[wells] = treatments
        return
    row_rank = rng.permutation(N_ROWS)[wells // N_COLS]
    ordered = wells[np.lexsort((wells % N_COLS, row_rank))]
    names, counts = np.unique(treatments, return_counts=True)
    order = rng.permutation(len(names))
    out[ordered] = np.repeat(names[order], counts[order])


def _block_wells(rng: np.random.Generator) -> np.ndarray:
    """One random well in each 4 x 3 block of the plate (32 wells covering it evenly)."""
    wells = []
    for br in range(0, N_ROWS, 4):
        for bc in range(0, N_COLS, 3):
            wells.append((br + rng.integers(4)) * N_COLS + bc + rng.integers(3))
    return np.array(wells)


def _plate_map_fraction(trt: np.ndarray, pos: np.ndarray, neg: np.ndarray, fraction: float,
                        layout_index: int, rng: np.random.Generator, replicates_in_row: bool = False) -> np.ndarray:
    """A plate map with ``fraction`` of the wells as negative controls (see ``_plate_map``)."""
    n_wells = N_ROWS * N_COLS
    n_neg = int(round(fraction * n_wells))
    n_trt_wells = n_wells - n_neg - POSCON_WELLS
    if not 0.01 <= fraction <= 0.8 or n_trt_wells < REPLICATES:
        raise CpDistillerError(f"negcon_fraction must leave room for treatments (got {fraction}).")
    block = _block_wells(rng)
    if n_neg <= len(block):
        negs = rng.choice(block, n_neg, replace=False)
    else:
        others = rng.permutation(np.setdiff1d(np.arange(n_wells), block))
        negs = np.concatenate([block, others[: n_neg - len(block)]])
    out = np.full(n_wells, -1)
    out[negs] = neg[np.arange(n_neg) % len(neg)]
    rest = rng.permutation(np.flatnonzero(out < 0))
    out[rest[:POSCON_WELLS]] = pos[np.arange(POSCON_WELLS) % len(pos)]
    n_fit = min(len(trt), n_trt_wells // REPLICATES)
    start = (layout_index * n_fit) % len(trt)
    chosen = trt[(start + np.arange(n_fit)) % len(trt)]
    treatments = np.resize(np.repeat(chosen, REPLICATES), n_trt_wells)
    _place_treatments(out, rest[POSCON_WELLS:], treatments, rng, replicates_in_row)
    return out


# ----- technical effects ----------------------------------------------------------------------------
def _gradient(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two smooth monotone profiles over n positions, in [-1, 1]: a logistic step and an exponential rise."""
    x = np.linspace(0.0, 1.0, n)
    c, w = rng.uniform(0.35, 0.65), rng.uniform(0.18, 0.32)
    s = np.tanh((x - c) / w)
    step = 2 * (s - s[0]) / (s[-1] - s[0]) - 1
    tau = rng.uniform(0.25, 0.4)
    e = np.expm1(x / tau) / np.expm1(1 / tau)
    return step, 2 * e - 1


def _direction(F: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dense feature-space direction (through the programs, plus a feature-specific part), unit RMS."""
    v = rng.normal(size=F.shape[0]) @ F + 0.35 * rng.normal(size=F.shape[1])
    return v / np.sqrt(np.mean(v**2))


DEMO_ROLES = Roles(plate="Metadata_Plate", well="Metadata_Well", batch="Metadata_Batch",
                   perturbation="Metadata_pert_iname", control="Metadata_pert_type",
                   negative_values=("negcon",), positive_values=("poscon",), annotation="Metadata_pathway",
                   plate_format=384)


def _edge_map() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row and column index of every well of a 384-well plate, and the edge-effect strength per well
    (outer ring 1, corners 1.6, second ring 0.3)."""
    well_row = np.repeat(np.arange(N_ROWS), N_COLS)
    well_col = np.tile(np.arange(N_COLS), N_ROWS)
    edge = ((well_row == 0) | (well_row == N_ROWS - 1)).astype(float) + (
        (well_col == 0) | (well_col == N_COLS - 1)).astype(float)  # 2 at corners
    edge = np.where(edge > 0, 1.0 + 0.6 * (edge - 1), 0.0)
    inner = ((well_row == 1) | (well_row == N_ROWS - 2) | (well_col == 1) | (well_col == N_COLS - 2)) & (edge == 0)
    return well_row, well_col, edge + 0.3 * inner


def _batch_technical(F: np.ndarray, p: int, rng: np.random.Generator, row_dirs: list[np.ndarray],
                     col_dirs: list[np.ndarray], edge_dir: np.ndarray,
                     positions: tuple[np.ndarray, np.ndarray, np.ndarray],
                     strengths: tuple[float, float, float, float]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One batch's technical effects: shift, per-feature scale, well-position effect (wells x features)
    and the cell-count effect per well. The order of random draws is part of the demo's definition."""
    well_row, well_col, edge = positions
    batch_effect, row_effect, column_effect, edge_effect = strengths
    shift = batch_effect * 0.9 * _direction(F, rng)
    scale = np.exp(batch_effect * rng.normal(0, 0.12, p))
    r1, r2 = _gradient(N_ROWS, rng)
    c1, c2 = _gradient(N_COLS, rng)
    amp = rng.uniform(0.8, 1.25, 5)
    tech_pos = (
        row_effect * (amp[0] * 1.0 * np.outer(r1[well_row], _unit_rms(row_dirs[0] + 0.3 * _direction(F, rng)))
                      + amp[1] * 0.5 * np.outer(r2[well_row], _unit_rms(row_dirs[1] + 0.3 * _direction(F, rng))))
        + column_effect * (amp[2] * 1.1 * np.outer(c1[well_col], _unit_rms(col_dirs[0] + 0.3 * _direction(F, rng)))
                           + amp[3] * 0.5 * np.outer(c2[well_col], _unit_rms(col_dirs[1] + 0.3 * _direction(F, rng))))
        + edge_effect * amp[4] * np.outer(edge, edge_dir)
    )
    count_tech = 0.1 * batch_effect * rng.normal() - 0.25 * edge_effect * edge + 0.06 * row_effect * r1[well_row] \
        + 0.06 * column_effect * c1[well_col]
    return shift, scale, tech_pos, count_tech


def make_demo_screen(seed: int = 0, n_batches: int = 3, plates_per_batch: int = 4, n_features: int = 300,
                     n_layouts: int | None = None, effect_size: float = 3.0, row_effect: float = 0.8,
                     column_effect: float = 0.8, edge_effect: float = 0.8, batch_effect: float = 1.0,
                     plate_effect: float = 0.35, noise: float = 1.0,
                     negcon_fraction: float | None = None, replicates_in_row: bool = False,
                     dose_by_column: bool = False, same_well_replicates: bool = False) -> DemoScreen:
    """Simulate the demo screen (deterministic by ``seed``).

    Sizes: ``n_batches`` x ``plates_per_batch`` 384-well plates, ``n_features`` CellProfiler features.
    Plates use ``n_layouts`` randomised plate maps (default: half as many as plates, so pairs of plates
    in different batches share a map). Effect arguments scale each component (in noise-SD units; 0
    switches it off): ``effect_size`` the biology, ``row_effect``/``column_effect`` the gradients,
    ``edge_effect`` the outer ring, ``batch_effect`` the batch shift and scale, ``plate_effect`` the
    plate offsets. ``negcon_fraction`` sets the share of negative-control wells per plate (default
    ~10 %, what the library leaves free); ``n_layouts=1`` locks every perturbation to one position
    on every plate. ``replicates_in_row`` lays each treatment's wells side by side in one row of each
    plate map, as in screens with dose series or replicate strips along rows (lincs_a549, cell_injury):
    replicates then share their row effect, so replicate-based scores reward keeping it.
    ``dose_by_column`` gives each treated well a dose set by its column (10, 3, 1 µM in turn, in
    ``Metadata_dose_uM``; the effect scaled by 1, 0.6, 0.35), as cell_injury lays out its dose series:
    the column effect among the treatments is then partly the dose response, which the truth keeps.
    ``same_well_replicates`` names each treated well of a plate map as its own perturbation
    (``<name>_w1``, ``_w2``, ...: clones or alleles with the same effect, ``Metadata_Symbol`` and
    target kept), so a perturbation's replicates are the plates that share its map; with
    ``n_layouts=1`` every replicate sits in the same well, as in arrayed ORF screens imaged on
    replicate plates (varchamp_b14): row and column are then both tied to the perturbations, and only
    the clones of one treatment, in different wells, share biology across positions.
    """
    if n_batches < 1 or plates_per_batch < 1:
        raise CpDistillerError("the demo screen needs at least one batch and one plate per batch.")
    n_plates = n_batches * plates_per_batch
    n_layouts = n_layouts or max(1, n_plates // 2)
    if not 1 <= n_layouts <= n_plates:
        raise CpDistillerError(f"n_layouts must be between 1 and the number of plates ({n_plates}).")
    rng = np.random.default_rng(seed)
    feats = _select_features(feature_catalog(), n_features)
    p = len(feats)
    F, programs = _program_loadings(feats, rng)
    table, effects, count_effects = _library(F, programs, rng, effect_size)
    layouts = [_plate_map(table, rng, negcon_fraction, i, replicates_in_row) for i in range(n_layouts)]
    n_wells = N_ROWS * N_COLS
    well_row, well_col, edge = _edge_map()

    # raw scale of each feature
    lo_hi = np.array([_RAW_RANGE[f] for f in feats["family"]])
    mu = 10 ** rng.uniform(lo_hi[:, 0], lo_hi[:, 1])
    sd = mu * rng.uniform(0.08, 0.25, p)

    # redundant measurements (Area vs Perimeter, Mean vs Median intensity...): a share of features are
    # near-copies of another feature of the same compartment and family, as in real CellProfiler output
    parent, rho = _redundancy(feats, rng)
    dup = np.flatnonzero(parent >= 0)

    # directions shared by all batches, perturbed per batch
    row_dirs = [_direction(F, rng) for _ in range(2)]
    col_dirs = [_direction(F, rng) for _ in range(2)]
    edge_dir = _direction(F, rng)

    meta_parts: list[pd.DataFrame] = []
    truth_parts: list[np.ndarray] = []
    meas_parts: list[np.ndarray] = []
    plate_no = 0
    for b in range(n_batches):
        batch = f"Batch{b + 1}"
        shift, scale, tech_pos, count_tech = _batch_technical(
            F, p, rng, row_dirs, col_dirs, edge_dir, (well_row, well_col, edge),
            (batch_effect, row_effect, column_effect, edge_effect))
        for j in range(plates_per_batch):
            layout_id = plate_no % n_layouts
            pert = layouts[layout_id]
            plate = f"B{b + 1}_P{j + 1:02d}"
            lat = rng.normal(size=(n_wells, F.shape[0]))
            well_noise = noise * (0.55 * (lat @ F) + 0.835 * rng.normal(size=(n_wells, p)))
            dose_um, response = _doses(table, pert, well_col, dose_by_column)
            bio = effects[pert] * response[:, None] + well_noise
            offset = plate_effect * _direction(F, rng)
            measured = scale * bio + shift + offset + tech_pos
            for arr in (bio, measured):
                arr[:, dup] = rho[dup] * arr[:, parent[dup]] + np.sqrt(1 - rho[dup] ** 2) * arr[:, dup]
            truth_parts.append(mu + sd * bio)
            meas_parts.append(mu + sd * measured)
            log_count = np.log(2200) + count_effects[pert] * response + count_tech + 0.12 * rng.normal(size=n_wells)
            well_meta = _plate_meta(table, pert, batch, plate, f"MAP{layout_id + 1:02d}", log_count, well_row,
                                    well_col)
            if same_well_replicates:
                well_meta["Metadata_pert_iname"] = _name_wells(well_meta)
            if dose_by_column:
                well_meta.insert(well_meta.columns.get_loc("Metadata_pert_iname") + 1, "Metadata_dose_uM", dose_um)
            meta_parts.append(well_meta)
            plate_no += 1
    meta = pd.concat(meta_parts, ignore_index=True)
    names = feats["feature"].tolist()
    roles = DEMO_ROLES
    profiles = Profiles(meta, np.vstack(meas_parts), names, roles, source="cpDistiller demo screen")
    truth = Profiles(meta, np.vstack(truth_parts), names, roles, source="cpDistiller demo screen (ground truth)")
    params = {"seed": seed, "n_batches": n_batches, "plates_per_batch": plates_per_batch,
              "n_features": p, "n_layouts": n_layouts, "effect_size": effect_size, "row_effect": row_effect,
              "column_effect": column_effect, "edge_effect": edge_effect, "batch_effect": batch_effect,
              "plate_effect": plate_effect, "noise": noise, "negcon_fraction": negcon_fraction,
              "replicates_in_row": replicates_in_row, "dose_by_column": dose_by_column,
              "same_well_replicates": same_well_replicates}
    return DemoScreen(profiles=profiles, truth=truth, gene_sets=gene_sets(), perturbations=table,
                      features=feats, params=params)


def _name_wells(meta: pd.DataFrame) -> np.ndarray:
    """Each treated well's perturbation named by its occurrence in the plate map (``<name>_w<k>``,
    k counted in well order), controls unchanged."""
    names = meta["Metadata_pert_iname"].astype(str)
    k = names.groupby(names).cumcount() + 1
    treated = meta["Metadata_pert_type"].to_numpy() == "trt"
    return np.where(treated, names + "_w" + k.astype(str), names).astype(object)


def _doses(table: pd.DataFrame, pert: np.ndarray, well_col: np.ndarray, by_column: bool
           ) -> tuple[np.ndarray, np.ndarray]:
    """Each well's dose (µM; NaN for controls) and the share of its perturbation's effect it shows."""
    treated = table["pert_type"].to_numpy()[pert] == "trt"
    if not by_column:
        return np.full(len(pert), np.nan), np.ones(len(pert))
    level = well_col % len(DOSES_UM)
    return (np.where(treated, np.asarray(DOSES_UM)[level], np.nan),
            np.where(treated, np.asarray(DOSE_RESPONSE)[level], 1.0))


def _redundancy(feats: pd.DataFrame, rng: np.random.Generator, share: float = 0.35
                ) -> tuple[np.ndarray, np.ndarray]:
    """For each feature, the feature it nearly copies (-1: none) and the mixing weight (0.9-0.99)."""
    p = len(feats)
    parent = np.full(p, -1)
    rho = np.zeros(p)
    for _, idx in feats.groupby(["compartment", "family"], sort=False).groups.items():
        idx = np.asarray(idx)
        if len(idx) < 2:
            continue
        is_dup = rng.random(len(idx)) < share
        is_dup[0] = False
        originals = idx[~is_dup]
        for i in idx[is_dup]:
            parent[i] = rng.choice(originals)
            rho[i] = rng.uniform(0.9, 0.99)
    return parent, rho


def _unit_rms(v: np.ndarray) -> np.ndarray:
    return v / np.sqrt(np.mean(v**2))


def _plate_meta(table: pd.DataFrame, pert: np.ndarray, batch: str, plate: str, plate_map: str,
                log_count: np.ndarray, well_row: np.ndarray, well_col: np.ndarray) -> pd.DataFrame:
    t = table.iloc[pert]
    rows = [row_letters(int(r)) for r in well_row]
    return pd.DataFrame({
        "Metadata_Batch": batch,
        "Metadata_Plate": plate,
        "Metadata_Well": [f"{r}{c + 1:02d}" for r, c in zip(rows, well_col)],
        "Metadata_Row": rows,
        "Metadata_Column": well_col + 1,
        "Metadata_plate_map_name": plate_map,
        "Metadata_pert_iname": t["perturbation"].to_numpy(),
        "Metadata_Symbol": t["symbol"].to_numpy(),
        "Metadata_modality": t["modality"].to_numpy(),
        "Metadata_pert_type": t["pert_type"].to_numpy(),
        "Metadata_target": t["target"].to_numpy(),
        "Metadata_pathway": t["pathway"].to_numpy(),
        "Metadata_Count_Cells": np.round(np.exp(log_count)).astype(np.int64),
    })
