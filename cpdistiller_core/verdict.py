""""Did it help?": a corrected embedding against the uncorrected profiles on cheap measures.

Every run writes one (``verdict.json``) and the CLI, the Python API and the dashboard show it. Each
check compares the embedding with the uncorrected input (PCA-50 of the same preprocessed
profiles) and gets a status — ``good``, ``warn`` or ``bad`` — and one sentence a biologist can act
on. The measures are the fast ones of ``metrics`` (copairs with a small null; kNN among treatment
wells), so a verdict costs seconds, not the full scorecard (``cpdistiller evaluate``).

| check | measure | bad when |
|---|---|---|
| replicates | replicate-vs-control mAP (replicates in different wells) | below uncorrected by > 0.10 |
| relations | annotation consistency mAP (perturbations sharing a gene/MoA) | below uncorrected by > 0.10 |
| neighbours | kNN overlap of treatment wells with the uncorrected profiles | < 0.10 (near random) |
| controls | control spread relative to replicate spread (``control_collapse``) | < 0.2 x uncorrected |
| row / column / batch | 1 - variance explained by the effect among negative controls | (never bad; warn when its share falls by < 0.02 and was ≥ 5 %) |

A ``warn`` threshold sits halfway (0.02 for the mAPs, 0.5 x for controls, 0.25 for neighbours). Sphering
on negative controls shrinks the controls' own spread by design (0.3-0.45 x uncorrected on the shared
sets), so it reads ``warn``, not ``bad``; a collapsed adversary reaches 0.01 x.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import metrics
from .errors import CpDistillerError, CpDistillerWarning
from .profiles import Embedding, Profiles

if TYPE_CHECKING:
    from .api import CpDistiller

WARNING_PREFIX = "did it help? "  # the verdict's warnings (a run keeps the others as its notes)

STATUSES = ("good", "warn", "bad")
# A technical effect counts as removed when its share of the controls' variation falls by at least this
# much, unless it explained less than TECHNICAL_NEGLIGIBLE of it to begin with.
TECHNICAL_GAIN, TECHNICAL_NEGLIGIBLE = 0.02, 0.05


@dataclass
class Check:
    """One measure, corrected vs uncorrected, with its status and the sentence shown to the user."""

    name: str
    measure: str
    corrected: float | None
    uncorrected: float | None
    status: str
    sentence: str


@dataclass
class Verdict:
    """The checks of one embedding; ``status`` is the worst of them."""

    checks: list[Check] = field(default_factory=list)

    @property
    def status(self) -> str:
        worst = max((STATUSES.index(c.status) for c in self.checks), default=0)
        return STATUSES[worst]

    def problems(self) -> list[Check]:
        """Checks that are not good, worst first."""
        return sorted((c for c in self.checks if c.status != "good"), key=lambda c: -STATUSES.index(c.status))

    def warn(self, stacklevel: int = 2) -> None:
        """One warning per check that is not good, each starting with ``WARNING_PREFIX``."""
        for check in self.problems():
            warnings.warn(f"{WARNING_PREFIX}{check.name}: {check.sentence}", CpDistillerWarning,
                          stacklevel=stacklevel + 1)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "checks": [asdict(c) for c in self.checks]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        return cls([Check(**c) for c in d.get("checks", [])])

    def table(self) -> pd.DataFrame:
        """One row per check: check, corrected, uncorrected, status, what it means."""
        return pd.DataFrame([{"check": c.name, "corrected": c.corrected, "uncorrected": c.uncorrected,
                              "status": c.status, "what it means": c.sentence} for c in self.checks])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def format(self) -> str:
        """Plain-text table for the terminal."""
        lines = [f"Did it help? {self.status.upper()}",
                 f"  {'check':<11} {'corrected':>9} {'uncorrected':>11}  status"]
        for c in self.checks:
            lines.append(f"  {c.name:<11} {_fmt(c.corrected):>9} {_fmt(c.uncorrected):>11}  {c.status:<5} "
                         f"{c.sentence}")
        return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _try(fn: Any) -> float | None:
    try:
        value = fn()
    except metrics.MetricUnavailable:
        return None
    value = value[0] if isinstance(value, tuple) else value
    return None if value is None or not np.isfinite(value) else float(value)


def _map_check(name: str, measure: str, corrected: float | None, uncorrected: float | None,
               what: str) -> Check | None:
    if corrected is None or uncorrected is None:
        return None
    diff = corrected - uncorrected
    if diff < -0.10:
        status, sentence = "bad", f"{what} clearly less than before correction: the correction removed biology."
    elif diff < -0.02:
        status, sentence = "warn", f"{what} a little less than before correction."
    else:
        status, sentence = "good", f"{what} at least as well as before correction."
    return Check(name, measure, corrected, uncorrected, status, sentence)


def _mean_map(fn: Any) -> float | None:
    return _try(lambda: float(fn()["mean_average_precision"].mean()))


def did_it_help(embedding: Embedding, profiles: Profiles, *, uncorrected: Embedding | None = None,
                null_size: int = 1000, seed: int = 0, left_out: Sequence[str] = (),
                learnt_from_controls: Sequence[str] = ()) -> Verdict:
    """Compare ``embedding`` with the uncorrected ``profiles`` on the cheap "did it help?" measures.

    Parameters
    ----------
    embedding
        The corrected embedding (wells in the same order as ``profiles``, or matched by plate + well).
    profiles
        The preprocessed profiles the embedding was computed from.
    uncorrected
        Their uncorrected embedding; default PCA-50 of ``profiles`` (``baselines.uncorrected``).
    null_size, seed
        copairs null size and seed for the mAP measures.
    left_out
        Effects the model left uncorrected on purpose (``train_info["effects_skipped"]``: tied to the
        treatments); their checks say so.
    learnt_from_controls
        Effects the correction was fitted on the negative controls for (the controls' additive model of
        ``input_correction``, or a discriminator that learns from the controls): the controls' check is
        then in-sample, and says so with the number of wells at levels without a control.

    Returns
    -------
    Verdict
        One :class:`Check` per measure the data allow (missing roles skip a check).

    Examples
    --------
    >>> from cpdistiller_core.datasets import make_demo_screen
    >>> from cpdistiller_core import baselines, preprocess
    >>> profiles, _ = preprocess.preprocess(make_demo_screen().profiles)
    >>> did_it_help(baselines.sphering(profiles), profiles).status in ("good", "warn", "bad")
    True
    """
    from . import baselines

    ref = uncorrected if uncorrected is not None else baselines.uncorrected(profiles)
    checks: list[Check | None] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        act = [_mean_map(lambda e=e: metrics.phenotypic_activity(e, null_size=null_size, seed=seed))
               for e in (embedding, ref)]
        checks.append(_map_check("replicates", "replicate-vs-control mAP", *act,
                                 "Replicate wells of a perturbation find each other"))
        if embedding.roles.annotation:
            con = [_mean_map(lambda e=e: metrics.phenotypic_consistency(e, null_size=null_size, seed=seed))
                   for e in (embedding, ref)]
            checks.append(_map_check("relations", "annotation consistency mAP", *con,
                                     "Perturbations that share an annotation "
                                     f"({embedding.roles.annotation}) find each other"))
        checks.append(_neighbour_check(_try(lambda: metrics.neighbor_preservation(embedding, ref))))
        checks.append(_collapse_check(_try(lambda: metrics.control_collapse(embedding)),
                                      _try(lambda: metrics.control_collapse(ref))))
        for effect in ("row", "column", "batch"):
            checks.append(_technical_check(effect, embedding, ref, profiles, effect in left_out,
                                           effect in learnt_from_controls))
    return Verdict([c for c in checks if c is not None])


def model_verdict(model: CpDistiller, embedding: Embedding, profiles: Profiles) -> Verdict:
    """:func:`did_it_help` for a fitted model's embedding: the verdict every run writes.

    The uncorrected reference is the PCA-50 of the profiles standardised as the model standardises its
    input (each feature by its mean and sd), so the comparison is not moved by the features' units:
    with the plain PCA, cell_injury's row, left uncorrected, read as falling from 11 % to 6 % of the
    controls' variation. With sphering (itself a correction) the plain PCA is used. Effects the model
    left out on purpose (``train_info["effects_skipped"]``) say so, unless the controls' additive model
    removed them instead; effects learnt from the negative controls say that their check is in-sample.
    """
    from . import baselines

    transform = model.input_transform
    reference = None
    if transform is not None and transform.whitening is None:
        columns = [profiles.features.index(f) for f in model.features]
        X = (profiles.X[:, columns] - transform.mean) / transform.std
        reference = baselines.uncorrected(profiles.with_features(X.astype(np.float32), list(model.features)))
    learnt = set((model.train_info.get("input_correction") or {}).get("effects") or [])
    learnt |= {e for e, wells in (model.train_info.get("adversary_by_effect") or {}).items() if wells == "negcon"}
    left_out = [e for e in model.train_info.get("effects_skipped") or {} if e not in learnt]
    return did_it_help(embedding, profiles, uncorrected=reference, seed=model.config.seed, left_out=left_out,
                       learnt_from_controls=sorted(learnt))


def _neighbour_check(value: float | None) -> Check | None:
    if value is None:
        return None
    if value < 0.10:
        status, sentence = "bad", ("Treatment wells lost almost all of their nearest neighbours (near a random "
                                   "embedding): clusters and similarity searches will not match the data.")
    elif value < 0.25:
        status, sentence = "warn", ("Most treatment wells changed their nearest neighbours: check that known "
                                    "similar perturbations still group.")
    else:
        status, sentence = "good", "Treatment wells keep much of their neighbourhood structure."
    return Check("neighbours", "kNN overlap with uncorrected (treatments, k=15)", value, 1.0, status, sentence)


def _collapse_check(corrected: float | None, uncorrected: float | None) -> Check | None:
    if corrected is None or uncorrected is None:
        return None
    ratio = corrected / max(uncorrected, 1e-12)
    if ratio < 0.2:
        status, sentence = "bad", ("Negative controls collapsed onto each other: every treatment now looks "
                                   "'active', so replicate mAP overstates what the correction achieved.")
    elif ratio < 0.5:
        status, sentence = "warn", ("Negative controls are much tighter than before correction (as after "
                                    "sphering): read replicate mAP with care.")
    else:
        status, sentence = "good", "Negative controls keep their natural spread."
    return Check("controls", "control spread / replicate spread", corrected, uncorrected, status, sentence)


def _learnt_from_controls(effect: str, profiles: Profiles) -> str:
    """The caveat of a controls' check whose effect the correction was fitted on: it is in-sample, and
    wells at levels without a control keep the effect."""
    note = f" The correction learnt {effect} from these controls, so this check reads better than it is"
    try:
        labels = np.asarray(profiles.labels(effect)).astype(str)
    except CpDistillerError:
        return note + "."
    uncovered = int((~np.isin(labels, labels[profiles.negative_mask])).sum())
    if not uncovered:
        return note + "."
    return note + (f"; {uncovered:,} of {len(labels):,} wells sit at a {effect} without a negative control and keep "
                   "that part of the effect.")


def _technical_check(effect: str, embedding: Embedding, ref: Embedding, profiles: Profiles,
                     left_out: bool = False, in_sample: bool = False) -> Check | None:
    values = [_try(lambda e=e: metrics.variance_explained_score(e, effect)) for e in (embedding, ref)]
    if None in values:
        return None
    corrected, uncorrected = values
    removed, before = 1.0 - corrected, 1.0 - uncorrected
    if corrected >= uncorrected + TECHNICAL_GAIN or before < TECHNICAL_NEGLIGIBLE:
        status = "good"
        sentence = f"{effect.capitalize()} explains {removed:.0%} of the negative controls' variation " \
                   f"(before: {before:.0%})."
    elif corrected + 1e-3 >= uncorrected:
        status = "warn"
        sentence = f"{effect.capitalize()} still explains {removed:.0%} of the controls' variation (before: " \
                   f"{before:.0%}): the effect was not removed."
    else:
        status = "warn"
        sentence = f"{effect.capitalize()} explains more of the controls' variation than before " \
                   f"({removed:.0%} vs {before:.0%}): the effect was not removed."
    if left_out:
        sentence += (f" The model left {effect} uncorrected on purpose: the layout ties it to the treatments, "
                     "so removing it would remove biology too (tied_effects, docs/model.md).")
    if in_sample:
        sentence += _learnt_from_controls(effect, profiles)
    return Check(effect, f"1 - variance explained by {effect} (controls)", corrected, uncorrected, status,
                 sentence)
