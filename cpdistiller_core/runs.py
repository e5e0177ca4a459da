"""A correction run directory: everything one `cpdistiller correct` writes, and reading it back.

Layout (all files written atomically; a failed run keeps what it wrote and records its error)::

    RUN_DIR/config.json        settings: model config, effects, preprocessing config, input
    RUN_DIR/progress.json      status (running / finished / failed), fraction, stage, epoch, eta, losses
    RUN_DIR/train_log.csv      one row per epoch: loss terms, lambda, temperature, discriminator accuracies
    RUN_DIR/model/             weights.pt + model.json (CpDistiller.save) + preprocess.json
    RUN_DIR/checkpoints/       epoch_NNN/ model directories when config.checkpoint_every > 0
    RUN_DIR/embedding.parquet  every input metadata column + cpd_0 ... cpd_49 (io.write_profiles)
    RUN_DIR/report.json        status, settings, timings, device, package versions, neighbour stats
    RUN_DIR/.lock              held (flock) by the process writing the run: a second writer fails at once

The CLI and the dashboard's job runner both call :func:`run_correction`. progress.json records the
writer's PID: a run whose process is gone while it still says "running" reads back as "interrupted".
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from .api import CpDistiller, package_versions
from .config import CpDistillerConfig, parse_effects
from .errors import CpDistillerError, CpDistillerWarning
from .jobs import pid_alive, process_start_time
from .paths import atomic_write_text, ensure_output_dir
from .profiles import Embedding, Profiles
from .progress import ProgressCallback, no_progress

CONFIG_FILE, PROGRESS_FILE, REPORT_FILE = "config.json", "progress.json", "report.json"
TRAIN_LOG_FILE, EMBEDDING_FILE, MODEL_DIR = "train_log.csv", "embedding.parquet", "model"
PREPROCESS_FILE, LOCK_FILE, VERDICT_FILE = "preprocess.json", ".lock", "verdict.json"
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
            elapsed = time.time() - self.t0
            self.state.update(fraction=round(f, 4), message=message,
                              eta_s=round(elapsed * (1 - f) / f, 1) if f > 0.02 else None)
            self.outer(f, message)
            self.write()
        return cb

    def on_epoch(self, record: dict[str, Any], _ema: Any) -> None:
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


def _read_input(input_profiles: Profiles | str | Path | Sequence[str | Path],
                roles: Mapping[str, Any] | None) -> Profiles:
    if isinstance(input_profiles, Profiles):
        return input_profiles
    from .io import read_profiles

    return read_profiles(input_profiles, roles)


def run_correction(input_profiles: Profiles | str | Path | Sequence[str | Path], run_dir: str | Path,
                   config: CpDistillerConfig | Mapping[str, Any] | str | Path | None = None,
                   effects: str | Sequence[str] = ("row", "column"), progress: ProgressCallback | None = None,
                   preprocess_config: Any = None, *, preprocess: bool = True,
                   roles: Mapping[str, Any] | None = None, extractor: Profiles | None = None,
                   warm_start: str | Path | None = None) -> Path:
    """Read -> preprocess -> fit -> transform, writing the run directory; returns its path.

    ``input_profiles``: Profiles or file path(s) (read with ``io.read_profiles(paths, roles)``).
    ``preprocess=False`` skips preprocessing for already-normalised profiles. Errors are recorded in
    progress.json and report.json (status "failed") and then raised.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        return _run_correction(input_profiles, run_dir, config, effects, progress, preprocess_config,
                               preprocess=preprocess, roles=roles, extractor=extractor, warm_start=warm_start)


def _run_correction(input_profiles: Any, run_dir: Path, config: Any, effects: Any, progress: Any,
                    preprocess_config: Any, *, preprocess: bool, roles: Any, extractor: Any,
                    warm_start: Any) -> Path:
    writer = _RunWriter(run_dir, progress or no_progress)
    report: dict[str, Any] = {"status": RUNNING, "started": _now(), "run_dir": str(run_dir),
                              "versions": package_versions(), "timings": {}, "warnings": []}
    t_all = time.perf_counter()
    caught: list[warnings.WarningMessage] = []
    try:
        cfg = _as_config(config)
        eff = parse_effects(effects)
        writer.state["epochs"] = cfg.epochs
        from .preprocess import PreprocessConfig
        from .preprocess import preprocess as run_preprocess

        pcfg = preprocess_config
        if isinstance(pcfg, Mapping):
            pcfg = PreprocessConfig.from_dict(pcfg)
        elif pcfg is None and preprocess:
            pcfg = PreprocessConfig()
        settings = {"config": cfg.to_dict(), "effects": list(eff), "preprocess": pcfg.to_dict() if preprocess else None,
                    "input": _describe_input(input_profiles), "warm_start": None if warm_start is None else str(warm_start),
                    "extractor": None if extractor is None else extractor.source or "in-memory table"}
        atomic_write_text(run_dir / CONFIG_FILE, _dump(settings))
        report["settings"] = settings
        writer.write(force=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            writer.stage("reading input", 0.0)
            t = time.perf_counter()
            profiles = _read_input(input_profiles, roles)
            report["timings"]["read_s"] = round(time.perf_counter() - t, 3)
            report["input"] = {"wells": profiles.n_wells, "features": profiles.n_features,
                               "plates": int(len(set(profiles.plate))), "source": profiles.source}
            prep_report = None
            if preprocess:
                writer.stage("preprocessing", 0.02)
                t = time.perf_counter()
                profiles, prep_report = run_preprocess(profiles, pcfg, progress=writer.progress(0.02, 0.08))
                report["timings"]["preprocess_s"] = round(time.perf_counter() - t, 3)
                report["preprocess"] = prep_report.summary()
            writer.stage("training", 0.08)
            model = CpDistiller(cfg)
            model.fit(profiles, effects=eff, progress=writer.progress(0.08, 0.95), warm_start=warm_start,
                      extractor=extractor, on_epoch=writer.on_epoch, checkpoint_dir=run_dir / "checkpoints")
            report["timings"].update({k: round(v, 3) for k, v in model.timings.items()})
            writer.stage("saving model", 0.95)
            model.save(run_dir / MODEL_DIR)
            if prep_report is not None:
                prep_report.save(run_dir / MODEL_DIR / PREPROCESS_FILE)
            writer.stage("writing embedding", 0.97)
            t = time.perf_counter()
            emb = model.transform(profiles, extractor=extractor)
            from .io import write_profiles

            write_profiles(emb, run_dir / EMBEDDING_FILE)
            report["timings"]["transform_write_s"] = round(time.perf_counter() - t, 3)
            report["verdict"] = _write_verdict(run_dir, emb, profiles, writer)
        report.update(status=FINISHED, effects=list(model.effects), device=str(model.device),
                      train=model.train_info, neighbors=model.neighbor_stats,
                      final_epoch=model.history[-1] if model.history else None,
                      output={"wells": emb.n_wells, "dimensions": emb.n_features})
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
    return run_dir


def _write_verdict(run_dir: Path, emb: Embedding, profiles: Profiles, writer: _RunWriter) -> dict[str, Any]:
    """Score "did it help?" (``verdict.did_it_help``), save it and warn about every check that is not good."""
    from .verdict import did_it_help

    writer.stage("did it help? comparing with the uncorrected profiles", 0.98)
    verdict = did_it_help(emb, profiles)
    atomic_write_text(run_dir / VERDICT_FILE, verdict.to_json())
    for check in verdict.problems():
        warnings.warn(f"did it help? {check.name}: {check.sentence}", CpDistillerWarning, stacklevel=2)
    return {"status": verdict.status, "problems": [c.name for c in verdict.problems()]}


def _describe_input(x: Any) -> Any:
    if isinstance(x, Profiles):
        return {"source": x.source, "wells": x.n_wells, "features": x.n_features}
    if isinstance(x, (str, Path)):
        return str(x)
    return [str(p) for p in x]


@dataclass
class Run:
    """A run directory read back: settings, report, progress, train log; embedding and model on demand."""

    path: Path
    config: dict[str, Any]
    report: dict[str, Any]
    progress: dict[str, Any]
    train_log: pd.DataFrame | None

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

    def embedding(self) -> Embedding:
        path = self.path / EMBEDDING_FILE
        if not path.is_file():
            raise CpDistillerError(f"{self.path}: no embedding (run status: {self.status}).")
        from .io import read_profiles

        emb = read_profiles(path)
        if not isinstance(emb, Embedding):
            emb = Embedding(meta=emb.meta, X=emb.X, features=emb.features, roles=emb.roles, source=emb.source,
                            method="cpDistiller", provenance={"run_dir": str(self.path)})
        return emb

    def verdict(self) -> Any:
        """The run's "did it help?" verdict (``verdict.Verdict``), or None for runs without one."""
        from .verdict import Verdict

        data = _read_json(self.path / VERDICT_FILE)
        return Verdict.from_dict(data) if data else None

    def model(self, device: str | None = None) -> CpDistiller:
        return CpDistiller.load(self.path / MODEL_DIR, device=device)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CpDistillerError(f"{path}: unreadable ({exc}).") from None


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory (finished, running or failed)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file() and not (run_dir / PROGRESS_FILE).is_file():
        raise CpDistillerError(f"{run_dir}: not a cpDistiller run directory (no {CONFIG_FILE}).")
    log_path = run_dir / TRAIN_LOG_FILE
    log = pd.read_csv(log_path) if log_path.is_file() and log_path.stat().st_size else None
    return Run(run_dir, _read_json(run_dir / CONFIG_FILE), _read_json(run_dir / REPORT_FILE),
               _read_json(run_dir / PROGRESS_FILE), log)


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
