"""The functional gene groups the demo screen simulates, and the compounds that target them.

Gene symbols are real HGNC symbols of well-known complexes and pathways; the grouping is a small
cpDistiller demo subset (not an Enrichr or MSigDB library). ``demo_gene_sets.gmt`` beside this file is
written from ``GENE_GROUPS`` by :func:`gmt_text` (a test checks they agree).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

GMT_PATH = Path(__file__).with_name("demo_gene_sets.gmt")


@dataclass(frozen=True)
class GeneGroup:
    """A functional group: its genes and the morphology its loss changes.

    ``programs`` weights the simulator's morphological programs (channel, compartment size, texture…)
    that define the group's shared phenotype; ``cell_count`` is the effect on log cell number.
    """

    description: str
    genes: tuple[str, ...]
    programs: dict[str, float] = field(default_factory=dict)
    cell_count: float = 0.0
    active: bool = True


GENE_GROUPS: dict[str, GeneGroup] = {
    "MITOCHONDRIAL_RESPIRATORY_CHAIN": GeneGroup(
        "oxidative phosphorylation complexes I-V",
        ("NDUFA1", "NDUFA4", "NDUFB8", "NDUFS1", "NDUFS2", "NDUFV1", "SDHA", "SDHB", "UQCRC1", "UQCRC2",
         "UQCRFS1", "COX4I1", "COX5A", "ATP5F1A", "ATP5F1B"),
        {"Mito": -1.0, "Texture": 0.6, "Cytoplasm_size": 0.4}, cell_count=-0.3),
    "CYTOSOLIC_RIBOSOME": GeneGroup(
        "large and small cytosolic ribosomal subunits",
        ("RPL3", "RPL5", "RPL7", "RPL11", "RPL19", "RPL23", "RPS3", "RPS6", "RPS14", "RPS19"),
        {"RNA": -1.0, "Nuclei_size": -0.5, "Cells_size": -0.6}, cell_count=-0.5),
    "PROTEASOME": GeneGroup(
        "26S proteasome core and regulatory particles",
        ("PSMA1", "PSMA3", "PSMB1", "PSMB2", "PSMB5", "PSMC2", "PSMC4", "PSMD1", "PSMD2", "PSMD14"),
        {"ER": 1.0, "Cells_size": 0.7, "Granularity": 0.5}, cell_count=-0.7),
    "TIGHT_JUNCTION": GeneGroup(
        "tight junction proteins",
        ("CLDN1", "CLDN4", "CLDN7", "OCLN", "TJP1", "TJP2", "F11R", "CGN"),
        {"AGP": 0.9, "density": -0.7, "RadialDistribution": 0.4}),
    "AUTOPHAGY": GeneGroup(
        "autophagosome formation",
        ("ATG5", "ATG7", "ATG12", "ATG16L1", "BECN1", "ULK1", "PIK3C3", "SQSTM1"),
        {"Granularity": -0.9, "ER": -0.5, "Mito": 0.5}),
    "MITOTIC_CELL_CYCLE": GeneGroup(
        "G2/M transition and mitosis",
        ("CDK1", "CCNB1", "PLK1", "AURKA", "AURKB", "BUB1", "CDC20", "KIF11", "CENPE"),
        {"DNA": 1.0, "Nuclei_size": 0.9, "Correlation": 0.4}, cell_count=-0.6),
    "ACTIN_CYTOSKELETON": GeneGroup(
        "actin filaments and the Arp2/3 complex",
        ("ACTB", "CFL1", "PFN1", "ARPC2", "ARPC3", "ACTR2", "ACTR3", "WASL"),
        {"AGP": -1.0, "Cells_size": -0.6, "Texture": -0.5}),
    "DNA_REPLICATION": GeneGroup(
        "MCM helicase and replicative polymerases",
        ("MCM2", "MCM3", "MCM4", "MCM5", "MCM6", "MCM7", "PCNA", "POLA1"),
        {"DNA": -0.9, "Nuclei_size": -0.7, "Granularity": 0.4}, cell_count=-0.4),
    "OLFACTORY_RECEPTORS": GeneGroup(
        "olfactory receptors, not expressed in the simulated cells (inactive)",
        ("OR1A1", "OR2A4", "OR5A1", "OR7A5", "OR51E2", "OR2W1", "OR10J1", "OR1D2"),
        active=False),
}


@dataclass(frozen=True)
class Compound:
    """A compound with its (pipe-separated in the metadata) targets; inactive ones have potency 0."""

    name: str
    targets: tuple[str, ...]
    potency: float = 1.0


COMPOUNDS: tuple[Compound, ...] = (
    Compound("rotenone", ("NDUFS1", "NDUFS2", "NDUFV1"), 1.2),
    Compound("antimycin A", ("UQCRC1", "UQCRC2", "UQCRFS1"), 1.1),
    Compound("oligomycin A", ("ATP5F1A", "ATP5F1B"), 0.9),
    Compound("bortezomib", ("PSMB5", "PSMB1"), 1.3),
    Compound("carfilzomib", ("PSMB5",), 1.2),
    Compound("MG-132", ("PSMB5", "PSMB1", "PSMA1"), 0.9),
    Compound("cycloheximide", ("RPL3",), 1.1),
    Compound("homoharringtonine", ("RPL3",), 1.2),
    Compound("emetine", ("RPS14",), 1.0),
    Compound("BI-2536", ("PLK1",), 1.3),
    Compound("volasertib", ("PLK1",), 1.2),
    Compound("alisertib", ("AURKA",), 1.0),
    Compound("barasertib", ("AURKB",), 1.0),
    Compound("RO-3306", ("CDK1",), 0.9),
    Compound("ispinesib", ("KIF11",), 1.2),
    Compound("cytochalasin D", ("ACTB",), 1.3),
    Compound("latrunculin B", ("ACTB",), 1.2),
    Compound("CK-666", ("ACTR2", "ACTR3"), 0.8),
    Compound("SBI-0206965", ("ULK1",), 0.8),
    Compound("MRT68921", ("ULK1", "ULK2"), 0.9),
    Compound("SAR405", ("PIK3C3",), 0.9),
    Compound("aphidicolin", ("POLA1",), 1.0),
    Compound("ibuprofen", ("PTGS1", "PTGS2"), 0.0),
    Compound("aspirin", ("PTGS1", "PTGS2"), 0.0),
    Compound("loratadine", ("HRH1",), 0.0),
    Compound("famotidine", ("HRH2",), 0.0),
)

# Positive controls: strong, well-separated phenotypes present on every plate.
POSITIVE_CONTROLS: tuple[Compound, ...] = (
    Compound("AMG900", ("AURKA", "AURKB", "AURKC"), 2.0),
    Compound("FK-866", ("NAMPT",), 2.0),
)
NEGATIVE_CONTROLS: tuple[str, ...] = ("non-targeting", "DMSO")


def gene_sets() -> dict[str, list[str]]:
    """Group name -> gene symbols, in definition order."""
    return {name: list(g.genes) for name, g in GENE_GROUPS.items()}


def gene_to_group() -> dict[str, str]:
    return {gene: name for name, g in GENE_GROUPS.items() for gene in g.genes}


def gmt_text() -> str:
    """The GMT file content: name, description (labelled as the cpDistiller demo subset), genes."""
    lines = [
        "\t".join([name, f"cpDistiller demo subset: {g.description}", *g.genes])
        for name, g in GENE_GROUPS.items()
    ]
    return "\n".join(lines) + "\n"


def read_gmt(path: str | Path = GMT_PATH) -> dict[str, list[str]]:
    """Read a GMT file (name, description, genes… per tab-separated line)."""
    out: dict[str, list[str]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.rstrip("\n").split("\t")
        if len(parts) >= 3:
            out[parts[0]] = [g for g in parts[2:] if g]
    return out


def write_gmt(path: str | Path) -> Path:
    """Write the demo gene sets as GMT (what ``demo-data`` ships beside the profiles)."""
    path = Path(path)
    path.write_text(gmt_text(), encoding="utf-8")
    return path
