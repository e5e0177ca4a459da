"""A correction run directory, owned end to end by :class:`Run`: nobody else knows its file names.

Layout (all files written atomically; a failed run keeps what it wrote and records its error)::

    RUN_DIR/config.json        settings: model config, effects, preprocessing config, input
    RUN_DIR/progress.json      status (running / finished / failed), fraction, stage, epoch, eta, losses
    RUN_DIR/train_log.csv      one row per epoch: loss terms, lambda, temperature, discriminator accuracies
    RUN_DIR/input.parquet      the profiles the model was trained on (after the run's preprocessing)
    RUN_DIR/model/             weights.pt + model.json (CpDistiller.save) + preprocess.json
    RUN_DIR/checkpoints/       epoch_NNN/ model directories when config.checkpoint_every > 0
    RUN_DIR/embedding.parquet  every input metadata column + cpd_0 ... cpd_49 (io.write_profiles)
    RUN_DIR/corrected_profiles.parquet
                               every input metadata column + the model's features minus each well's
                               technical shift, in the input's units (models whose embedding is the
                               corrected input; CpDistiller.corrected_features)
    RUN_DIR/verdict.json       "did it help?": the embedding against the uncorrected input
    RUN_DIR/references/        <method>.parquet: reference methods on the same input (Run.add_reference)
    RUN_DIR/scores.csv         the field-standard scorecard of every embedding, when computed (dashboard)
    RUN_DIR/report.json        status, settings, timings, device, package versions, neighbour stats
    RUN_DIR/.lock              held (flock) by the process writing the run: a second writer fails at once

The CLI (``Run.create(...).correct(...)``) and the dashboard's job runner (:func:`run_correction` in a
child process, given a :class:`RunSpec`) write runs the same way. progress.json records the writer's
PID: a run whose process is gone while it still says "running" reads back as "interrupted".
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import shutil
import socket
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .api import CpDistiller, package_versions
from .config import CpDistillerConfig, parse_effects
from .errors import CpDistillerError, CpDistillerWarning, example_values, where
from .jobs import pid_alive, process_start_time
from .paths import atomic_write_text, ensure_output_dir, zip_directory
from .preprocess import MODEL_PREPROCESS_FILE, PreprocessConfig
from .profiles import Embedding, Profiles
from .progress import ProgressCallback, no_progress

CONFIG_FILE, PROGRESS_FILE, REPORT_FILE = "config.json", "progress.json", "report.json"
TRAIN_LOG_FILE, EMBEDDING_FILE, MODEL_DIR = "train_log.csv", "embedding.parquet", "model"
LOCK_FILE, VERDICT_FILE = ".lock", "verdict.json"
PREPROCESS_FILE = MODEL_PREPROCESS_FILE
INPUT_FILE, REFERENCES_DIR, CHECKPOINTS_DIR = "input.parquet", "references", "checkpoints"
CORRECTED_FILE = "corrected_profiles.parquet"
CORRECTED_LAYER = "cpdistiller_corrected"  # embedding.h5ad's .layers key for the corrected profiles
SCORES_FILE = "scores.csv"
JOB_INPUT_NAME = "input_profiles"           # the dashboard job's copy of the raw profiles (jobs.save_input)
UNCORRECTED_PCA = "uncorrected (PCA-50)"    # the name Run.spaces gives the 'uncorrected' reference
RUNNING, FINISHED, FAILED, INTERRUPTED = "running", "finished", "failed", "interrupted"
_RUN_MARKERS = (CONFIG_FILE, PROGRESS_FILE, REPORT_FILE, "job.json")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))


class _RunWriter:
    """Keeps progress.json current; throttled so a fast loop does not spend its time writing JSON."""

    def __init__(self, run_dir: Path, outer: ProgressCallback) -> None:
        self.run_dir, self.outer = run_dir, outer
        self.t0 = time.time()
        self.state: dict[str, Any] = {"status": RUNNING, "fraction": 0.0, "stage": "starting", "message": "",
                                      "epoch": 0, "epochs": None, "elapsed_s": 0.0, "eta_s": None,
                                      "losses": {}, "started": _now(), "updated": _now(), "error": None,
                                      "pid": os.getpid(), "pid_started": process_start_time(os.getpid()),
                                      "host": socket.gethostname()}
        self._last_write = 0.0
        self.history: list[dict[str, Any]] = []
        self.epoch_seconds: list[float] = []
        self.last_epoch_end = self.t0

    def write(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_write < 0.5:
            return
        self._last_write = now
        self.state["elapsed_s"] = round(now - self.t0, 2)
        self.state["updated"] = _now()
        atomic_write_text(self.run_dir / PROGRESS_FILE, _dump(self.state))

    def stage(self, stage: str, fraction: float) -> None:
        self.state.update(stage=stage, fraction=fraction, message=stage)
        self.outer(fraction, stage)
        self.write(force=True)

    def progress(self, lo: float, hi: float) -> ProgressCallback:
        """A callback mapping a step's [0, 1] onto [lo, hi] of the whole run."""
        def cb(fraction: float, message: str) -> None:
            f = lo + (hi - lo) * max(0.0, min(1.0, fraction))
            self.state.update(fraction=round(f, 4), message=message, eta_s=self.eta())
            self.outer(f, message)
            self.write()
        return cb

    def eta(self) -> float | None:
        """Seconds left: the median of the last epochs' measured times (the first epoch, which also
        mines neighbours and warms up, left out once there are others) times the epochs to go, counted
        from the end of the last epoch. None until an epoch has finished: no guess from the fraction."""
        if not self.epoch_seconds or not self.state.get("epochs"):
            return None
        recent = self.epoch_seconds[1:][-5:] or self.epoch_seconds
        left = (self.state["epochs"] - len(self.epoch_seconds)) * float(np.median(recent))
        return round(max(0.0, left - (time.time() - self.last_epoch_end)), 1)

    def on_epoch(self, record: dict[str, Any], _ema: Any) -> None:
        # the fit may train fewer epochs than asked (tied_layout_epochs); the record says how many
        self.state["epochs"] = record.get("epochs", self.state.get("epochs"))
        now = time.time()
        self.epoch_seconds.append(now - self.last_epoch_end)
        self.last_epoch_end = now
        self.history.append(dict(record))
        self.state.update(epoch=record["epoch"], losses={k: v for k, v in record.items() if k != "epoch"})
        buf = io.StringIO()
        keys = list(dict.fromkeys(k for r in self.history for k in r))
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.history)
        atomic_write_text(self.run_dir / TRAIN_LOG_FILE, buf.getvalue())
        self.write(force=True)


def _as_config(config: CpDistillerConfig | Mapping[str, Any] | str | Path | None) -> CpDistillerConfig:
    if config is None:
        return CpDistillerConfig()
    if isinstance(config, CpDistillerConfig):
        return config
    if isinstance(config, (str, Path)):
        return CpDistillerConfig.from_file(config)
    return CpDistillerConfig.from_dict(config)


@dataclass(frozen=True)
class RunSpec:
    """What one correction does: model settings, effects, preprocessing, role overrides, warm start.

    ``preprocess=None`` means the input is already normalised and feature-selected. ``to_dict`` /
    ``from_dict`` round-trip through JSON (the dashboard's job hands a spec to its child process).

    Examples
    --------
    >>> from cpdistiller_core.runs import RunSpec
    >>> spec = RunSpec.build({"epochs": 20}, effects="batch,row,column")
    >>> spec.effects, spec.config.epochs, spec.preprocess is not None
    (('batch', 'row', 'column'), 20, True)
    >>> RunSpec.from_dict(spec.to_dict()) == spec
    True
    """

    config: CpDistillerConfig = field(default_factory=CpDistillerConfig)
    effects: tuple[str, ...] = ("row", "column")
    preprocess: PreprocessConfig | None = field(default_factory=PreprocessConfig)
    roles: Mapping[str, Any] | None = None
    warm_start: str | None = None

    @classmethod
    def build(cls, config: CpDistillerConfig | Mapping[str, Any] | str | Path | None = None,
              effects: str | Sequence[str] = ("row", "column"),
              preprocess: bool | PreprocessConfig | Mapping[str, Any] = True, *,
              roles: Mapping[str, Any] | None = None, warm_start: str | Path | None = None) -> RunSpec:
        """A spec from loose values: a config object, dict or file; effects as text or a list;
        ``preprocess`` True (defaults), False (none), a PreprocessConfig or its dict."""
        if preprocess is True:
            pcfg: PreprocessConfig | None = PreprocessConfig()
        elif preprocess is False or preprocess is None:
            pcfg = None
        else:
            pcfg = preprocess if isinstance(preprocess, PreprocessConfig) else PreprocessConfig.from_dict(preprocess)
        return cls(_as_config(config), parse_effects(effects), pcfg, dict(roles) if roles else None,
                   None if warm_start is None else str(warm_start))

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "effects": list(self.effects),
                "preprocess": None if self.preprocess is None else self.preprocess.to_dict(),
                "roles": None if self.roles is None else dict(self.roles), "warm_start": self.warm_start}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunSpec:
        pre = d.get("preprocess")
        return cls.build(d.get("config"), d.get("effects") or ("row", "column"),
                         False if pre is None else pre, roles=d.get("roles"), warm_start=d.get("warm_start"))


def _read_input(input_profiles: Profiles | str | Path | Sequence[str | Path],
                roles: Mapping[str, Any] | None) -> Profiles:
    if isinstance(input_profiles, Profiles):
        return input_profiles
    from .io import read_profiles

    return read_profiles(input_profiles, roles)


def run_correction(input_profiles: Profiles | str | Path | Sequence[str | Path], run_dir: str | Path,
                   spec: RunSpec | Mapping[str, Any] | None = None, progress: ProgressCallback | None = None,
                   *, extractor: Profiles | None = None) -> Path:
    """Read -> preprocess -> fit -> transform, writing the run directory; returns its path.

    ``input_profiles``: Profiles or file path(s) (read with ``io.read_profiles(paths, spec.roles)``).
    ``spec``: a :class:`RunSpec` (or its dict); None = the defaults. Errors are recorded in
    progress.json and report.json (status "failed") and then raised. The dashboard's job runner calls
    this function in a child process; the CLI calls it through :meth:`Run.correct`.
    """
    spec = spec if isinstance(spec, RunSpec) else RunSpec() if spec is None else RunSpec.from_dict(spec)
    run = Run(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    with RunLock(run.path):
        _run_correction(input_profiles, run.path, spec, progress, extractor)
    return run.path


def _run_correction(input_profiles: Any, run_dir: Path, spec: RunSpec, progress: ProgressCallback | None,
                    extractor: Profiles | None) -> None:
    settings = {"config": spec.config.to_dict(), "effects": list(spec.effects),
                "preprocess": None if spec.preprocess is None else spec.preprocess.to_dict(),
                "input": _describe_input(input_profiles), "warm_start": spec.warm_start,
                "extractor": _describe_extractor(extractor)}

    def stages(writer: _RunWriter, report: dict[str, Any]) -> None:
        _correct_stages(input_profiles, run_dir, spec, extractor, writer, report)
    _record_run(run_dir, settings, stages, progress, epochs=spec.config.epochs)


def _describe_extractor(extractor: Profiles | None) -> str | None:
    """What config.json records about the image features: their source (file or folder)."""
    return None if extractor is None else extractor.source or "in-memory table"


def _record_run(run_dir: Path, settings: dict[str, Any], stages: Any, progress: ProgressCallback | None,
                epochs: int | None = None) -> None:
    """Write config.json, run ``stages(writer, report)`` and record how it ended (progress.json,
    report.json: finished / failed / interrupted, timings, warnings); errors are re-raised."""
    writer = _RunWriter(run_dir, progress or no_progress)
    report: dict[str, Any] = {"status": RUNNING, "started": _now(), "run_dir": str(run_dir),
                              "versions": package_versions(), "timings": {}, "warnings": []}
    t_all = time.perf_counter()
    caught: list[warnings.WarningMessage] = []
    try:
        writer.state["epochs"] = epochs
        atomic_write_text(run_dir / CONFIG_FILE, _dump(settings))
        report["settings"] = settings
        writer.write(force=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stages(writer, report)
    except BaseException as exc:
        ended = INTERRUPTED if isinstance(exc, (KeyboardInterrupt, SystemExit)) else FAILED
        report.update(status=ended, error=f"{type(exc).__name__}: {exc}" if not isinstance(exc, CpDistillerError)
                      else str(exc), traceback=traceback.format_exc())
        if ended == INTERRUPTED:
            report["error"] = "interrupted (cancelled, or the process was asked to stop)"
        writer.state.update(status=ended, error=report["error"], message=ended)
        raise
    else:
        writer.state.update(status=FINISHED, fraction=1.0, stage="finished", message="finished", eta_s=0.0)
        writer.outer(1.0, "finished")
    finally:
        report["warnings"] = [str(w.message) for w in caught]
        for w in caught:  # re-emit so the caller (CLI) still shows them
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        report["ended"] = _now()
        report["timings"]["total_s"] = round(time.perf_counter() - t_all, 3)
        atomic_write_text(run_dir / REPORT_FILE, _dump(report))
        writer.write(force=True)


def _correct_stages(input_profiles: Any, run_dir: Path, spec: RunSpec, extractor: Profiles | None,
                    writer: _RunWriter, report: dict[str, Any]) -> None:
    """The stages of one correction, each recorded in ``report``: read, preprocess, fit, save, transform."""
    from .io import write_profiles
    from .preprocess import preprocess as run_preprocess

    timings = report["timings"]
    writer.stage("reading input", 0.0)
    t = time.perf_counter()
    profiles = _read_input(input_profiles, spec.roles)
    timings["read_s"] = round(time.perf_counter() - t, 3)
    report["input"] = {"wells": profiles.n_wells, "features": profiles.n_features,
                       "plates": int(len(set(profiles.plate))), "source": profiles.source}
    if extractor is not None:  # unmatched wells are named before any preprocessing or training
        from .training_data import align_extractor

        align_extractor(profiles, extractor)
        report["extractor"] = {"wells": extractor.n_wells, "features": extractor.n_features,
                               "source": extractor.source}
    prep_report = None
    if spec.preprocess is not None:
        writer.stage("preprocessing", 0.02)
        t = time.perf_counter()
        # profiles read here are this function's own: preprocess may overwrite them (one copy fewer at the peak)
        profiles, prep_report = run_preprocess(profiles, spec.preprocess, progress=writer.progress(0.02, 0.08),
                                               overwrite_input=not isinstance(input_profiles, Profiles))
        timings["preprocess_s"] = round(time.perf_counter() - t, 3)
        report["preprocess"] = prep_report.summary()
    write_profiles(profiles, run_dir / INPUT_FILE)
    writer.state["levels"] = report["levels"] = _levels(profiles, spec.effects)
    # Profiles this run read itself become the model input in place (one matrix copy fewer while
    # training); transform and the verdict then read the saved input back.
    own = not isinstance(input_profiles, Profiles)
    model = _fit(profiles, run_dir, spec, extractor, writer, overwrite_input=own)
    if own:
        del profiles
        profiles = Run(run_dir).input()
    timings.update({k: round(v, 3) for k, v in model.timings.items()})
    writer.stage("saving model", 0.95)
    model.save(run_dir / MODEL_DIR)
    if prep_report is not None:
        prep_report.save(run_dir / MODEL_DIR / PREPROCESS_FILE)
    writer.stage("writing embedding", 0.97)
    t = time.perf_counter()
    emb = _embed_and_write_corrected(model, profiles, extractor, run_dir)
    write_profiles(emb, run_dir / EMBEDDING_FILE)
    timings["transform_write_s"] = round(time.perf_counter() - t, 3)
    report["verdict"] = _write_verdict(run_dir, emb, profiles, writer, model)
    report.update(status=FINISHED, effects=list(model.effects), device=str(model.device),
                  train=model.train_info, neighbors=model.neighbor_stats,
                  final_epoch=model.history[-1] if model.history else None,
                  output={"wells": emb.n_wells, "dimensions": emb.n_features})


def _fit(profiles: Profiles, run_dir: Path, spec: RunSpec, extractor: Profiles | None, writer: _RunWriter,
         overwrite_input: bool) -> CpDistiller:
    """The training stage: a new model fitted as ``spec`` says, epochs reported through ``writer``."""
    writer.stage("training", 0.08)
    writer.last_epoch_end = time.time()  # epoch times are measured from here
    model = CpDistiller(spec.config)
    model.fit(profiles, effects=spec.effects, progress=writer.progress(0.08, 0.95), warm_start=spec.warm_start,
              extractor=extractor, on_epoch=writer.on_epoch, checkpoint_dir=run_dir / CHECKPOINTS_DIR,
              overwrite_input=overwrite_input)
    return model


def _embed_and_write_corrected(model: CpDistiller, profiles: Profiles, extractor: Profiles | None,
                               run_dir: Path) -> Embedding:
    """The embedding; for a model whose embedding is the corrected input, corrected_profiles.parquet too
    (one decoder pass for both)."""
    from .io import write_profiles

    if model.projection is None:
        return model.transform(profiles, extractor=extractor)
    emb, corrected = model.transform_with_corrected_features(profiles, extractor=extractor)
    write_profiles(corrected, run_dir / CORRECTED_FILE)
    return emb


def _write_verdict(run_dir: Path, emb: Embedding, profiles: Profiles, writer: _RunWriter,
                   model: CpDistiller) -> dict[str, Any]:
    """Score "did it help?" (``verdict.did_it_help``), save it and warn about every check that is not good."""
    from .verdict import model_verdict

    writer.stage("did it help? comparing with the uncorrected profiles", 0.98)
    verdict = model_verdict(model, emb, profiles)
    atomic_write_text(run_dir / VERDICT_FILE, verdict.to_json())
    verdict.warn(stacklevel=2)
    return {"status": verdict.status, "problems": [c.name for c in verdict.problems()]}


# ----- incremental correction: a fitted model applied to new plates --------------------------------
def model_directory(path: str | Path) -> Path:
    """The saved-model folder of a run directory (RUN_DIR/model), or ``path`` itself when it is one."""
    path = Path(path)
    return path / MODEL_DIR if (path / MODEL_DIR).is_dir() else path


IMAGE_FEATURE_REGEX = "^mesmer_"  # the extractor's per-well feature columns (cpdistiller extract)
IMAGE_FEATURE_ROLES = {"plate": "Metadata_Plate", "well": "Metadata_Well"}


def read_image_features(path: str | Path, feature_regex: str = IMAGE_FEATURE_REGEX) -> Profiles:
    """Per-well image features written by ``cpdistiller extract``: one Parquet file, or a folder of them
    (one per plate), with Metadata_Plate, Metadata_Well and ``mesmer_*`` columns.

    Read with ``io.read_profiles`` so well names are normalised as the profiles' are (A1 = A01); the
    join to the profiles on plate + well is ``training_data.align_extractor``."""
    from .io import read_profiles_with_report

    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise CpDistillerError(f"{path}: no image-feature files (*.parquet) in this folder; "
                               "write them with `cpdistiller extract`.")
    if not all(f.is_file() for f in files):
        raise CpDistillerError(f"{path}: image-feature file not found.")
    features, _ = read_profiles_with_report([str(f) for f in files], dict(IMAGE_FEATURE_ROLES),
                                            feature_regex=feature_regex, emit_warnings=False)
    _warn_if_untrained(features, path)
    return features.replace(source=str(path))


def _warn_if_untrained(features: Profiles, path: Path) -> None:
    """Features from `extract --random-weights` (stamped per row) train and run, but are no model's output."""
    from .extractor.run import RANDOM_STAMP, WEIGHTS_COLUMN

    if WEIGHTS_COLUMN not in features.meta.columns:
        return
    untrained = features.meta[WEIGHTS_COLUMN].astype("string").str.startswith(RANDOM_STAMP.split("(")[0])
    if untrained.any():
        warnings.warn(f"{path}: {int(untrained.sum())} of {features.n_wells} wells' image features come from "
                      "untrained random weights (`extract --random-weights`, for tests): an embedding trained on "
                      "them is not a cpDistiller result. Extract with converted Mesmer weights (docs/extractor.md).",
                      CpDistillerWarning, stacklevel=3)


def load_fitted(path: str | Path, device: str | None = None) -> CpDistiller:
    """A saved model (a run directory or its model/ folder) with its stored preprocessing attached as
    ``model.preprocess_report`` (``preprocess.PreprocessReport``; None when the run had none)."""
    from .preprocess import PreprocessReport

    directory = model_directory(path)
    model = CpDistiller.load(directory, device=device)
    prep = directory / PREPROCESS_FILE
    model.preprocess_report = PreprocessReport.load(prep) if prep.is_file() else None
    return model


def apply_model(model: CpDistiller, profiles: Profiles, *, extractor: Profiles | None = None,
                preprocess: bool = True) -> tuple[Profiles, Embedding]:
    """New plates through a fitted model: its stored preprocessing (``model.preprocess_report``, see
    :func:`load_fitted`), then ``transform``. Returns (the preprocessed profiles, the embedding).

    Features the preprocessing or the model needs and ``profiles`` lack are refused by name; a model
    trained with image features needs ``extractor`` (the same extractor's columns, joined on plate + well).
    """
    pp = _prepare_new_plates(model, profiles, preprocess)
    return pp, model.transform(pp, extractor=_model_image_features(model, extractor))


def _prepare_new_plates(model: CpDistiller, profiles: Profiles, preprocess: bool = True) -> Profiles:
    """New plates through the model's stored preprocessing, with a warning about unseen batches."""
    prep = getattr(model, "preprocess_report", None) if preprocess else None
    pp = prep.apply(profiles) if prep is not None else profiles
    _warn_unseen_batches(model, pp)
    return pp


def _warn_unseen_batches(model: CpDistiller, profiles: Profiles) -> None:
    """Warn when new plates bring batches the model never saw: it maps them with what it learnt on the
    others, and a refit that includes them removes more of their technical variation."""
    if "batch" not in model.levels:
        return
    try:
        batches = {str(b) for b in profiles.labels("batch")}
    except CpDistillerError:
        return
    unseen = sorted(batches - {str(b) for b in model.levels["batch"]})
    if unseen:
        warnings.warn(
            f"{where(profiles.source or None)}{len(unseen)} batch(es) the model never saw "
            f"({example_values(unseen)}): they are corrected with what it learnt on the others. On the "
            "demo, a refit that included the new batch removed clearly more row/column variance "
            "(docs/model.md, 'Incremental correction'); refit, or fine-tune with --warm-start, for the "
            "full correction.", CpDistillerWarning, stacklevel=3)


def _model_image_features(model: CpDistiller, extractor: Profiles | None) -> Profiles | None:
    """``extractor`` restricted to the image features the model was trained on, in its order."""
    names = model.extractor_features
    if names is None:
        if extractor is not None:
            raise CpDistillerError("this model was trained without image features: leave out the image "
                                   "features (--image-features) or retrain with them.")
        return None
    if extractor is None:
        raise CpDistillerError(
            f"this model was trained with {len(names)} image features ({example_values(names)}): give the "
            "same extractor's features for these plates (--image-features FILE|DIR; `cpdistiller extract`).")
    have = set(extractor.features)
    missing = [f for f in names if f not in have]
    if missing:
        raise CpDistillerError(f"{where(extractor.source or None)}{len(missing)} of the {len(names)} image features "
                               f"the model was trained on are missing ({example_values(missing)}).")
    return extractor if list(extractor.features) == list(names) else extractor.subset(features=names)


def run_apply(source: str | Path, input_profiles: Profiles | str | Path | Sequence[str | Path],
              run_dir: str | Path, progress: ProgressCallback | None = None, *,
              extractor: Profiles | None = None, roles: Mapping[str, Any] | None = None) -> Path:
    """Apply the model of run ``source`` (with its stored preprocessing) to new plates, writing a run
    directory like :func:`run_correction`'s: input.parquet (the new plates after the stored
    preprocessing), embedding.parquet, verdict.json, a copy of model/, and ``applied_from`` in
    config.json. :meth:`Run.spaces` and every page read it as any run. Returns its path."""
    src = Run.open(source)
    run = Run(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    settings = {**{k: src.config.get(k) for k in ("config", "effects", "preprocess")},
                "applied_from": str(src.path.resolve()), "input": _describe_input(input_profiles),
                "extractor": _describe_extractor(extractor)}

    def stages(writer: _RunWriter, report: dict[str, Any]) -> None:
        _apply_stages(src, input_profiles, run.path, extractor, roles, writer, report)
    with RunLock(run.path):
        _record_run(run.path, settings, stages, progress)
    return run.path


def _apply_stages(src: Run, input_profiles: Any, run_dir: Path, extractor: Profiles | None,
                  roles: Mapping[str, Any] | None, writer: _RunWriter, report: dict[str, Any]) -> None:
    from .io import write_profiles

    timings = report["timings"]
    writer.stage("reading input", 0.0)
    profiles = _read_input(input_profiles, roles)
    report["input"] = {"wells": profiles.n_wells, "features": profiles.n_features,
                       "plates": int(len(set(profiles.plate))), "source": profiles.source}
    writer.stage("applying the saved model", 0.1)
    t = time.perf_counter()
    model = load_fitted(src.path)
    pp = _prepare_new_plates(model, profiles)
    emb = _embed_and_write_corrected(model, pp, _model_image_features(model, extractor), run_dir)
    timings["apply_s"] = round(time.perf_counter() - t, 3)
    write_profiles(pp, run_dir / INPUT_FILE)
    write_profiles(emb, run_dir / EMBEDDING_FILE)
    shutil.copytree(model_directory(src.path), run_dir / MODEL_DIR, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(LOCK_FILE))
    report["verdict"] = _write_verdict(run_dir, emb, pp, writer, model)
    report.update(status=FINISHED, applied_from=str(src.path.resolve()), effects=list(model.effects),
                  device=str(model.device), dropped_wells=profiles.n_wells - pp.n_wells,
                  output={"wells": emb.n_wells, "dimensions": emb.n_features})


def _levels(profiles: Profiles, effects: Sequence[str]) -> dict[str, int]:
    """Number of levels of each effect (a discriminator's chance accuracy is 1 / levels)."""
    out = {}
    for e in effects:
        try:
            out[e] = int(len(pd.unique(profiles.labels(e).astype(str))))
        except CpDistillerError:  # no batch column: fit() says so
            continue
    return out


def _describe_input(x: Any) -> Any:
    if isinstance(x, Profiles):
        return {"source": x.source, "wells": x.n_wells, "features": x.n_features}
    if isinstance(x, (str, Path)):
        return str(x)
    return [str(p) for p in x]


class Run:
    """One run directory, end to end: created here, written by :meth:`correct`, read back by everyone.

    Nobody outside this module knows a run's file names: the CLI, the dashboard's jobs and pages go
    through these methods. Settings, report, progress and the training log are read once, when first
    asked for (:meth:`open` gives a fresh snapshot).

    Examples
    --------
    >>> from cpdistiller_core.runs import Run, RunSpec
    >>> with Run.create("runs/demo") as run:                          # doctest: +SKIP
    ...     run.correct(profiles, RunSpec.build(effects="batch,row,column"))
    >>> run = Run.open("runs/demo")                                    # doctest: +SKIP
    >>> run.status, run.verdict().status                               # doctest: +SKIP
    ('finished', 'good')
    >>> spaces = run.spaces()        # {'uncorrected': input, 'cpDistiller': embedding, references…}  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: RunLock | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # ----- creating and writing ------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path | None = None, *, root: Path | None = None, overwrite: bool = False) -> Run:
        """A new run directory, locked by this process until :meth:`close` (or the ``with`` block ends).

        ``path=None``: a fresh, uniquely named directory under ``root`` (the app's runs folder by
        default). A given path must be new or empty unless ``overwrite`` (see :func:`prepare_run_dir`)."""
        if path is None:
            from .jobs import new_run_dir

            path = new_run_dir(root)
        run = cls(path)
        run._lock = prepare_run_dir(path, overwrite=overwrite)
        return run

    def close(self) -> None:
        """Release the lock taken by :meth:`create`."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def correct(self, profiles: Profiles | str | Path | Sequence[str | Path], spec: RunSpec | None = None,
                progress: ProgressCallback | None = None, *, extractor: Profiles | None = None) -> Run:
        """Run a correction into this directory (:func:`run_correction`); returns a fresh read of it."""
        run_correction(profiles, self.path, spec, progress, extractor=extractor)
        return Run.open(self.path)

    def apply(self, profiles: Profiles, *, extractor: Profiles | None = None) -> Embedding:
        """The embedding of new plates by this run's model, after this run's stored preprocessing
        (:func:`apply_model`); every metadata column of ``profiles`` is kept."""
        return apply_model(load_fitted(self.path), profiles, extractor=extractor)[1]

    # ----- reading ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> Run:
        """A run directory (finished, running or failed); an error when ``path`` is not one."""
        run = cls(path)
        if not (run.path / CONFIG_FILE).is_file() and not (run.path / PROGRESS_FILE).is_file():
            raise CpDistillerError(f"{run.path}: not a cpDistiller run directory (no {CONFIG_FILE}).")
        return run

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """The settings the run was started with (model config, effects, preprocessing, input)."""
        return _read_json(self.path / CONFIG_FILE)

    @functools.cached_property
    def report(self) -> dict[str, Any]:
        """Status, timings, device, versions, neighbour statistics (written when the run ends)."""
        return _read_json(self.path / REPORT_FILE)

    @functools.cached_property
    def progress(self) -> dict[str, Any]:
        """The writer's latest progress record (status, stage, epoch, elapsed, eta, losses)."""
        return _read_json(self.path / PROGRESS_FILE)

    @functools.cached_property
    def train_log(self) -> pd.DataFrame | None:
        """One row per epoch (losses, lambda, temperature, discriminator accuracies), or None."""
        path = self.path / TRAIN_LOG_FILE
        return pd.read_csv(path) if path.is_file() and path.stat().st_size else None

    @property
    def applied_from(self) -> str | None:
        """The run whose model made this run's embedding (``cpdistiller apply``), None for a trained run."""
        return self.config.get("applied_from")

    @property
    def effects(self) -> list[str]:
        return list(self.config.get("effects") or self.report.get("effects") or [])

    @property
    def levels(self) -> dict[str, int]:
        """Levels of each corrected effect (e.g. {"batch": 3, "row": 16}), known once training started."""
        return dict(self.report.get("levels") or self.progress.get("levels") or {})

    @property
    def status(self) -> str:
        """finished / failed / interrupted / running; "running" only while the writing process lives."""
        status = self.report.get("status") or self.progress.get("status") or "unknown"
        if status == RUNNING and not writer_alive(self.progress):
            return INTERRUPTED
        return status

    @property
    def error(self) -> str | None:
        if self.status == INTERRUPTED and not (self.report.get("error") or self.progress.get("error")):
            return "the run's process ended without finishing (killed, out of memory or the machine restarted)."
        return self.report.get("error") or self.progress.get("error")

    @property
    def model_dir(self) -> Path:
        """The saved model (weights, settings and the preprocessing to apply to new plates)."""
        return self.path / MODEL_DIR

    def model(self, device: str | None = None) -> CpDistiller:
        return CpDistiller.load(self.model_dir, device=device)

    def preprocessing(self) -> Any:
        """The run's fitted preprocessing (``preprocess.PreprocessReport``), or None when it had none."""
        from .preprocess import PreprocessReport

        path = self.model_dir / PREPROCESS_FILE
        return PreprocessReport.load(path) if path.is_file() else None

    def embedding(self) -> Embedding:
        """The corrected embedding: every input metadata column + cpd_0 … cpd_{latent-1}."""
        return _read_embedding(self.path / EMBEDDING_FILE, "cpDistiller", self)

    @property
    def has_corrected_profiles(self) -> bool:
        return (self.path / CORRECTED_FILE).is_file()

    def corrected_profiles(self) -> Profiles | None:
        """The input minus each well's technical shift, in the input's features and units.

        Written for models whose embedding is the corrected input (``output`` "auto" or
        "corrected_input"); None for a latent-space model or a run that did not finish."""
        path = self.path / CORRECTED_FILE
        if not path.is_file():
            return None
        from .io import read_profiles

        return read_profiles(path)

    def input(self) -> Profiles:
        """The profiles the model was trained on (after the run's preprocessing), as saved by the run.

        Runs written before the input was saved are rebuilt: the dashboard job's copy of the raw
        profiles, with the run's preprocessing applied again."""
        path = self.path / INPUT_FILE
        if path.is_file():
            from .io import read_profiles

            return read_profiles(path)
        from .jobs import load_input

        raw = load_input(self.path, JOB_INPUT_NAME)
        prep = self.preprocessing()
        return prep.apply(raw) if prep is not None else raw

    @property
    def notes(self) -> list[str]:
        """What the run warned about besides its verdict (effects left out, a covariate a row or column
        sets, too few controls, ...), in the order raised, without repeats."""
        from .verdict import WARNING_PREFIX

        said = [w for w in self.report.get("warnings") or [] if not w.startswith(WARNING_PREFIX)]
        return list(dict.fromkeys(said))

    def verdict(self) -> Any:
        """The run's "did it help?" verdict (``verdict.Verdict``), or None for runs without one."""
        from .verdict import Verdict

        data = _read_json(self.path / VERDICT_FILE)
        return Verdict.from_dict(data) if data else None

    # ----- reference methods and the one rule for "what to compare" --------------------------------
    def reference_names(self) -> list[str]:
        """The reference methods computed for this run (without reading them)."""
        return [p.stem for p in self._reference_files()]

    def references(self) -> dict[str, Embedding]:
        """Reference embeddings computed for this run (:meth:`add_reference`), by method name."""
        return {p.stem: _read_embedding(p, p.stem, self) for p in self._reference_files()}

    def add_reference(self, method: str, effects: Sequence[str] | None = None, seed: int = 0) -> Path:
        """Run a reference method (``baselines.BASELINES``) on the run's input and save it with the run."""
        from .baselines import BASELINES, run_baseline
        from .io import write_profiles

        if method not in BASELINES:
            raise CpDistillerError(f"unknown reference method {method!r}; choose from {', '.join(BASELINES)}.")
        profiles = self.input()
        wanted = effects or self.effects or ("batch", "row", "column")
        usable = [e for e in wanted if not (e == "batch" and profiles.batch is None)]
        emb = run_baseline(method, profiles, usable or ("row", "column"), seed=seed)
        return write_profiles(emb, self.path / REFERENCES_DIR / f"{method}.parquet")

    def spaces(self, references: bool = True) -> dict[str, Profiles]:
        """What to compare, aligned on the same wells in the same order.

        ``uncorrected`` (the model's input profiles), ``cpDistiller`` (the embedding) and, with
        ``references``, every reference method by name; the ``uncorrected`` reference (PCA-50 of the
        input) is listed as ``uncorrected (PCA-50)``. Every page and command that compares uses this."""
        from .platemap import align

        before, after = align(self.input(), self.embedding())
        out: dict[str, Profiles] = {"uncorrected": before, "cpDistiller": after}
        if references:
            for method, emb in self.references().items():
                out[UNCORRECTED_PCA if method == "uncorrected" else method] = align(before, emb)[1]
        return out

    def stamp(self) -> tuple:
        """Names and modification times of the run's embeddings: changes when one is added or rewritten."""
        files = [self.path / EMBEDDING_FILE, self.path / INPUT_FILE, *self._reference_files()]
        return tuple((f.name, f.stat().st_mtime) for f in files if f.exists())

    def _reference_files(self) -> list[Path]:
        return sorted((self.path / REFERENCES_DIR).glob("*.parquet"))

    def write_h5ad(self, path: Path | None = None) -> Path:
        """The run as one AnnData file (default RUN_DIR/embedding.h5ad): metadata in .obs, the model's input
        features in X, the embedding in .obsm['X_cpdistiller'] and, when the run has them, the corrected
        profiles (the input minus each well's technical shift, the same features) in
        .layers['cpdistiller_corrected']."""
        from .io import write_profiles
        from .platemap import align

        before, after = align(self.input(), self.embedding())
        corrected = self.corrected_profiles()
        layers = {CORRECTED_LAYER: align(before, corrected)[1]} if corrected is not None else None
        return write_profiles(after, path or self.path / "embedding.h5ad", input_profiles=before, layers=layers)

    def scores(self) -> Any:
        """The scorecard saved with the run (``metrics.Scorecard``), or None."""
        from .metrics import Scorecard

        path = self.path / SCORES_FILE
        if not path.is_file():
            return None
        return Scorecard(pd.read_csv(path, keep_default_na=False, na_values=[""]))

    def save_scores(self, card: Any) -> Path:
        """Keep a scorecard (``metrics.Scorecard``) with the run, replacing the previous one."""
        atomic_write_text(self.path / SCORES_FILE, card.scores.to_csv(index=False))
        return self.path / SCORES_FILE

    def model_archive(self) -> bytes:
        """The saved model directory as a zip archive (to download and ``apply`` elsewhere)."""
        if not self.model_dir.is_dir():
            raise CpDistillerError(f"{self.path}: the run saved no model (status: {self.status}).")
        return zip_directory(self.model_dir)

    def files(self) -> list[str]:
        """Every file the run wrote, relative to its directory (for listings after a failure)."""
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file())


def _read_embedding(path: Path, method: str, run: Run) -> Embedding:
    if not path.is_file():
        raise CpDistillerError(f"{run.path}: no {path.name} (run status: {run.status}).")
    from .io import read_profiles

    emb = read_profiles(path)
    if not isinstance(emb, Embedding):
        emb = Embedding(meta=emb.meta, X=emb.X, features=emb.features, roles=emb.roles, source=emb.source,
                        method=method, provenance={"run_dir": str(run.path)})
    return emb


def add_references(run: str | Path, methods: Sequence[str], seed: int = 0,
                   progress: ProgressCallback = no_progress) -> list[str]:
    """Compute several reference methods for a run (the dashboard runs this as a background job).

    Every method is tried; those that fail are named together in one error after the others are saved."""
    target = Run.open(run)
    written, failed = [], []
    for i, method in enumerate(methods):
        progress(i / max(1, len(methods)), f"{method}…")
        try:
            target.add_reference(method, seed=seed)
            written.append(method)
        except CpDistillerError as exc:
            failed.append(f"{method}: {exc}")
    progress(1.0, "done")
    if failed:
        raise CpDistillerError("; ".join(failed) + (f" (computed: {', '.join(written)})" if written else ""))
    return written


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CpDistillerError(f"{path}: unreadable ({exc}).") from None


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory (finished, running or failed): ``Run.open``."""
    return Run.open(run_dir)


# ----- status, lock and output directory --------------------------------------------------------------
def writer_alive(progress: Mapping[str, Any]) -> bool:
    """Whether the process that wrote ``progress`` (progress.json) still runs. Runs written on another
    host, or by a version that recorded no PID, are given the benefit of the doubt."""
    pid, host = progress.get("pid"), progress.get("host")
    if not isinstance(pid, int) or (host and host != socket.gethostname()):
        return True
    started = progress.get("pid_started")
    return pid_alive(pid, started if isinstance(started, (int, float)) else None)


_HELD: dict[str, list[Any]] = {}  # resolved run dir -> [open lock file, re-entry count] (this process)


class RunLock:
    """An exclusive lock on a run directory (``RUN_DIR/.lock``), re-entrant within one process.

    Uses ``flock``, so the operating system releases it when the holder exits, however it exits:
    a killed run never leaves a stale lock. A second process fails at once with a one-line error.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.key = str(self.run_dir.resolve())

    def acquire(self) -> RunLock:
        held = _HELD.get(self.key)
        if held is not None:
            held[1] += 1
            return self
        path = self.run_dir / LOCK_FILE
        fh = open(path, "a+", encoding="utf-8")
        try:
            _lock_file(fh)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise CpDistillerError(f"{self.run_dir}: another cpDistiller process (PID {holder}) is writing this "
                                   "run directory; wait for it to finish or choose another --out.") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        _HELD[self.key] = [fh, 1]
        return self

    def release(self) -> None:
        held = _HELD.get(self.key)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            _HELD.pop(self.key, None)
            _unlock_file(held[0])
            held[0].close()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _lock_file(fh: Any) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: msvcrt locks a byte range, also released when the process exits
        import msvcrt

        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock_file(fh: Any) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt

        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def prepare_run_dir(run_dir: str | Path, overwrite: bool = False) -> RunLock:
    """Check and lock an output run directory before anything is read; returns the held lock.

    The directory is created if missing. An existing directory with files in it is refused unless
    ``overwrite``, which empties it first (only when it looks like a cpDistiller run directory, so a
    mistyped ``--out ~`` never deletes a home folder). Unwritable, file and special paths are refused.
    """
    path = ensure_output_dir(run_dir)
    lock = RunLock(path).acquire()
    try:
        entries = sorted(p for p in path.iterdir() if p.name != LOCK_FILE)
        if entries and not overwrite:
            names = ", ".join(p.name for p in entries[:4]) + (" …" if len(entries) > 4 else "")
            raise CpDistillerError(f"{path}: already holds files ({names}); pass --overwrite to replace "
                                   "them or choose another --out.")
        if entries:
            if not any((path / m).exists() for m in _RUN_MARKERS):
                raise CpDistillerError(f"{path}: not a cpDistiller run directory (no {CONFIG_FILE}); "
                                       "--overwrite only clears run directories. Choose another --out.")
            for p in entries:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
    except BaseException:
        lock.release()
        raise
    return lock
