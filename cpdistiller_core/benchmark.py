"""Benchmark: run cpDistiller and the reference methods on the same preprocessed profiles, score them all.

>>> result = run_benchmark(preprocessed, methods="all", epochs=20)
>>> result.table            # method x metric (+ runtime_s, status)
>>> write_benchmark(result, "bench_out/")   # CSV/JSON/Markdown tables + plotly HTML figures

A method that fails (e.g. well-position correction on a single plate, or the engine not installed)
is kept in the table with status "failed: <reason>" and missing scores; nothing is faked.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import baselines
from .errors import CpDistillerError
from .metrics import EvaluationConfig, Scorecard, evaluate
from .paths import atomic_write_text, json_default
from .profiles import Embedding, Profiles
from .progress import ProgressCallback, no_progress

log = logging.getLogger("cpdistiller")

CPDISTILLER = "cpDistiller"
# The ceiling row of a simulated screen: its technical-free truth, preprocessed as the measured profiles
# and reduced as the uncorrected ones (PCA-50): what a correction that removes every technical effect
# and invents nothing would give.
TRUTH = "truth"
ALL_METHODS: tuple[str, ...] = (CPDISTILLER, *baselines.BASELINES)


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    """'all', a comma-separated string or a list → method names (case-insensitive, validated)."""
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    known = {m.lower(): m for m in ALL_METHODS}
    out: list[str] = []
    for m in methods:
        if m.lower() == "all":
            out += [x for x in ALL_METHODS if x not in out]
            continue
        if m.lower() not in known:
            raise CpDistillerError(f"unknown method {m!r}; choose from all, {', '.join(ALL_METHODS)}.")
        if known[m.lower()] not in out:
            out.append(known[m.lower()])
    if not out:
        raise CpDistillerError("no methods selected.")
    return out


def run_cpdistiller(profiles: Profiles, effects: Sequence[str], seed: int = 0, epochs: int | None = None,
                    progress: ProgressCallback = no_progress, **config: Any) -> Embedding:
    """Fit cpDistiller (``cpdistiller_core.api``) on ``profiles`` and return its embedding (timed)."""
    from .api import CpDistiller
    from .config import CpDistillerConfig

    use = [e for e in effects if e in ("batch", "row", "column")]
    use, _ = baselines.resolve_effects(profiles, use)
    if not use:
        raise CpDistillerError("cpDistiller needs at least one of batch, row or column with 2+ levels.")
    overrides = dict(config)
    if epochs is not None:
        overrides["epochs"] = int(epochs)
    cfg = CpDistillerConfig(seed=seed, **overrides)
    t0 = time.perf_counter()
    model = CpDistiller(cfg).fit(profiles, effects=tuple(use), progress=progress)
    emb = model.transform(profiles)
    emb.provenance["runtime_s"] = round(time.perf_counter() - t0, 3)
    emb.provenance["effects_corrected"] = list(use)
    return emb


@dataclass
class BenchmarkResult:
    """Scores of every method; ``table`` is method × metric with runtime_s and status."""

    scorecard: Scorecard
    embeddings: dict[str, Embedding] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """Every method tried, uncorrected first (the reference of every Δ)."""
        names = list(self.status)
        return [m for m in names if m == "uncorrected"] + [m for m in names if m != "uncorrected"]

    @property
    def table(self) -> pd.DataFrame:
        """Every metric (method × metric), uncorrected first, with runtime_s and status."""
        wide = self.scorecard.wide() if len(self.scorecard.scores) else pd.DataFrame()
        wide = wide.reindex(self.methods)
        wide["runtime_s"] = [self.scorecard.runtimes.get(m, np.nan) for m in wide.index]
        wide["status"] = [self.status[m] for m in wide.index]
        wide.index.name = "method"
        return wide

    def comparison(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Headline metrics with a Δ column (value − uncorrected) after each, uncorrected first; failed
        methods keep a row of missing values."""
        if not len(self.scorecard.scores):
            return pd.DataFrame(index=pd.Index(self.methods, name="method"))
        comp = self.scorecard.comparison("uncorrected", columns=columns).reindex(self.methods)
        comp.index.name = "method"
        return comp

    def activity_tables(self) -> dict[str, pd.DataFrame]:
        """Per-perturbation phenotypic-activity tables by method (those that could be computed)."""
        return {m: d["activity"] for m, d in self.scorecard.details.items() if "activity" in d}


def run_benchmark(profiles: Profiles, methods: str | Sequence[str] = "all",
                  effects: Sequence[str] = baselines.DEFAULT_EFFECTS, *, seed: int = 0,
                  epochs: int | None = None, truth: Profiles | None = None,
                  pairs: dict[str, pd.DataFrame] | None = None, eval_config: EvaluationConfig | None = None,
                  cpdistiller_config: dict[str, Any] | None = None,
                  progress: ProgressCallback = no_progress,
                  truth_preprocessed: Profiles | None = None) -> BenchmarkResult:
    """Run each method on the same (already preprocessed) profiles and evaluate it.

    The uncorrected embedding is scored first (the reference of every Δ and of the mAP scatter);
    neighbour preservation compares each embedding with ``profiles`` themselves. A failing method
    gets status "failed: …" and no scores. ``truth_preprocessed`` (a simulator's technical-free truth,
    preprocessed as ``profiles``, same wells) adds the ceiling row ``truth``: its PCA-50, scored alike.
    """
    names = parse_methods(methods)
    names = [m for m in names if m == "uncorrected"] + [m for m in names if m != "uncorrected"]
    if truth_preprocessed is not None:
        names.insert(1 if names[:1] == ["uncorrected"] else 0, TRUTH)
    cfg = eval_config or EvaluationConfig(seed=seed)
    cards: list[Scorecard] = []
    result = BenchmarkResult(scorecard=Scorecard())
    result.info = {"wells": profiles.n_wells, "features": profiles.n_features, "effects": list(effects),
                   "seed": seed, "epochs": epochs, "methods": names, "evaluation": cfg.to_dict()}
    n = len(names)
    for i, name in enumerate(names):
        base = i / n

        def sub(frac: float, msg: str, base: float = base) -> None:
            progress(base + frac / n, msg)

        sub(0.0, f"running {name}")
        try:
            if name == CPDISTILLER:
                settings = dict(cpdistiller_config or {})
                file_epochs = settings.pop("epochs", None)  # the epochs argument wins over the settings
                emb = run_cpdistiller(profiles, effects, seed=seed,
                                      epochs=epochs if epochs is not None else file_epochs,
                                      progress=lambda f, m: sub(0.6 * f, f"{CPDISTILLER}: {m}"), **settings)
            elif name == TRUTH:
                emb = baselines.uncorrected(truth_preprocessed, effects, seed=seed)
            else:
                emb = baselines.run_baseline(name, profiles, effects, seed=seed)
        except (ImportError, NotImplementedError) as exc:
            result.status[name] = f"failed: engine not available ({type(exc).__name__}: {exc})"
            log.warning("%s failed: %s", name, exc)
            continue
        except CpDistillerError as exc:
            result.status[name] = f"failed: {exc}"
            log.warning("%s failed: %s", name, exc)
            continue
        emb = emb.replace(method=name, provenance=emb.provenance)
        result.embeddings[name] = emb
        sub(0.6 if name == CPDISTILLER else 0.3, f"scoring {name}")
        card = evaluate(emb, method=name, truth=truth, pairs=pairs, config=cfg, baseline=profiles)
        card.runtimes[name] = float(emb.provenance.get("runtime_s", np.nan))
        cards.append(card)
        result.status[name] = "ok"
    result.scorecard = Scorecard.concat(cards)
    progress(1.0, "benchmark done")
    return result


def to_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table (no tabulate dependency); missing values shown as '–'."""
    cols = ["method", *table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for idx, row in table.iterrows():
        cells = [str(idx)]
        for v in row:
            if isinstance(v, (float, np.floating)):
                cells.append("–" if np.isnan(v) else f"{v:.{digits}f}")
            else:
                cells.append(str(v).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_markdown(result: BenchmarkResult, digits: int = 3) -> str:
    """The headline table (uncorrected first, each cell 'value (Δ vs uncorrected)') and a status table."""
    from .metrics import format_comparison

    comp = result.comparison()
    head = format_comparison(comp, digits) if len(comp.columns) else "(no method could be scored)"
    status = pd.DataFrame({"status": [result.status[m] for m in result.methods],
                           "runtime_s": [result.scorecard.runtimes.get(m, np.nan) for m in result.methods]},
                          index=pd.Index(result.methods, name="method"))
    truth = (" `truth` is the simulator's technical-free truth preprocessed as the profiles: what removing "
             "every technical effect would score; a method above it on a measure scores more than perfect "
             "correction there." if TRUTH in result.status else "")
    return ("Headline scores (higher is better); in brackets the difference to uncorrected. technical / "
            "biological / overall follow Arevalo et al. 2024 (overall = 0.4·technical + 0.6·biological); "
            "position is the Cell Painting position score. Every metric: comparison.csv; definitions: "
            "docs/metrics.md." + truth + "\n\n" + head + "\n\n" + to_markdown(status, digits))


def write_benchmark(result: BenchmarkResult, out_dir: str | Path, figures: bool = True) -> dict[str, Path]:
    """Write comparison.csv (every metric, uncorrected first, run time, status), headline.csv (headline
    metrics with Δ vs uncorrected), comparison.md (the headline table), scores.csv (tidy), scores.json,
    activity_<method>.csv and figures/*.html (scorecard bars, per-perturbation mAP scatter)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    table = result.table
    paths["comparison_csv"] = out / "comparison.csv"
    atomic_write_text(paths["comparison_csv"], table.to_csv())
    paths["headline_csv"] = out / "headline.csv"
    atomic_write_text(paths["headline_csv"], result.comparison().to_csv())
    paths["comparison_md"] = out / "comparison.md"
    atomic_write_text(paths["comparison_md"], comparison_markdown(result) + "\n")
    paths["scores_csv"] = out / "scores.csv"
    atomic_write_text(paths["scores_csv"], result.scorecard.scores.to_csv(index=False))
    paths["scores_json"] = out / "scores.json"
    payload = {**result.scorecard.to_json_dict(), "status": result.status, "info": result.info}
    atomic_write_text(paths["scores_json"], json.dumps(payload, indent=2, default=json_default))
    for m, tab in result.activity_tables().items():
        p = out / f"activity_{m}.csv"
        atomic_write_text(p, tab.to_csv(index=False))
        paths[f"activity_{m}"] = p
    if figures and len(result.scorecard.scores):
        from .plots.scores import map_scatter, scorecard_bars

        fig_dir = out / "figures"
        fig_dir.mkdir(exist_ok=True)
        paths["fig_scorecard"] = fig_dir / "scorecard.html"
        atomic_write_text(paths["fig_scorecard"], scorecard_bars(result.scorecard).to_html(include_plotlyjs=True))
        acts = result.activity_tables()
        if "uncorrected" in acts and len(acts) > 1:
            paths["fig_map_scatter"] = fig_dir / "map_scatter.html"
            atomic_write_text(paths["fig_map_scatter"],
                              map_scatter(acts, reference="uncorrected").to_html(include_plotlyjs=True))
    return paths

