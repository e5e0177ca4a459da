"""Background jobs for the dashboard: run a named core function in a separate process with a run dir.

A job is a directory. ``submit`` writes ``job.json`` (the target ``"module:function"``, its keyword
arguments, and the names of pickled Python objects in ``job_inputs/``), then starts
``python -m cpdistiller_core.jobs RUN_DIR`` in its own process group. The child imports the target,
calls it with ``run_dir=`` and ``progress=`` when the function takes them, and records its state in
``job_state.json`` (status, fraction, message, elapsed, eta, error) with atomic writes. The child's
stdout/stderr go to ``job.log``. ``cancel`` terminates the process group and marks the job cancelled.

Every file a job writes lives in its own run directory, and run ids are unique (timestamp + random),
so two sessions never write the same file. Nothing here knows about Streamlit.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import CpDistillerError
from .paths import app_data_dir, atomic_write_bytes, atomic_write_text

JOB_FILE = "job.json"
STATE_FILE = "job_state.json"
PID_FILE = "job.pid"
LOG_FILE = "job.log"
INPUTS_DIR = "job_inputs"

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
TERMINAL = (DONE, FAILED, CANCELLED)

# Popen handles of children started by this process, so finished ones are reaped (no zombies).
_CHILDREN: dict[str, subprocess.Popen] = {}


@dataclass
class JobState:
    """What a job is doing, read from its run directory."""

    run_dir: str
    status: str = QUEUED
    fraction: float = 0.0
    message: str = ""
    started: float | None = None
    ended: float | None = None
    elapsed: float | None = None
    eta: float | None = None
    error: str | None = None
    traceback: str | None = None
    pid: int | None = None
    target: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def runs_root(root: Path | None = None) -> Path:
    """Where run directories live: ``<app data dir>/runs`` unless given."""
    path = Path(root) if root is not None else app_data_dir() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_run_id(prefix: str = "run") -> str:
    """A unique, sortable run id: ``run-20250101-120000-1a2b3c4d``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{stamp}-{uuid.uuid4().hex[:8]}"


def new_run_dir(root: Path | None = None, prefix: str = "run") -> Path:
    """Create a fresh, empty run directory (never reuses an existing one)."""
    base = runs_root(root)
    while True:
        path = base / new_run_id(prefix)
        try:
            path.mkdir(parents=False, exist_ok=False)
            return path
        except FileExistsError:  # pragma: no cover - astronomically unlikely
            continue


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _resolve(target: str) -> Callable[..., Any]:
    """'package.module:function' -> the function."""
    module_name, _, func_name = target.partition(":")
    if not module_name or not func_name:
        raise CpDistillerError(f"job target {target!r} must look like 'package.module:function'.")
    module = importlib.import_module(module_name)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise CpDistillerError(f"job target {target!r}: {func_name!r} is not a function of {module_name}.")
    return func


def submit(target: str, run_dir: Path | None = None, kwargs: Mapping[str, Any] | None = None,
           args: Sequence[Any] = (), objects: Mapping[str, Any] | None = None,
           meta: Mapping[str, Any] | None = None, python: str | None = None) -> Path:
    """Start ``target`` ('module:function') in a separate process; returns the run directory.

    ``kwargs``/``args`` must be JSON-serialisable; ``objects`` (e.g. a Profiles) are pickled into the
    run directory and passed as keyword arguments. ``meta`` is free-form information kept in
    ``job.json`` for run listings (dataset name, effects...).
    """
    _resolve(target)  # fail early, in the caller, on a wrong target
    run_dir = Path(run_dir) if run_dir is not None else new_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / JOB_FILE).exists():
        raise CpDistillerError(f"{run_dir} already holds a job; use a new run directory.")
    names = []
    for name, obj in (objects or {}).items():
        atomic_write_bytes(run_dir / INPUTS_DIR / f"{name}.pkl", pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        names.append(name)
    spec = {"target": target, "args": list(args), "kwargs": dict(kwargs or {}), "objects": names,
            "meta": dict(meta or {}), "created": time.time(), "run_id": run_dir.name}
    try:
        json.dumps(spec)
    except TypeError as exc:
        raise CpDistillerError(f"job arguments must be JSON-serialisable (use objects= for others): {exc}") from exc
    _write_json(run_dir / JOB_FILE, spec)
    _write_json(run_dir / STATE_FILE, JobState(str(run_dir), QUEUED, message="starting", target=target).to_dict())
    log = open(run_dir / LOG_FILE, "ab")
    try:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        proc = subprocess.Popen(
            [python or sys.executable, "-m", "cpdistiller_core.jobs", str(run_dir)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, cwd=os.getcwd(),
        )
    finally:
        log.close()
    atomic_write_text(run_dir / PID_FILE, str(proc.pid))
    _CHILDREN[str(run_dir.resolve())] = proc
    return run_dir


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        import psutil

        proc = psutil.Process(pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except Exception:  # psutil.NoSuchProcess, AccessDenied...
        return False


def _reap(run_dir: Path) -> None:
    proc = _CHILDREN.get(str(run_dir.resolve()))
    if proc is not None and proc.poll() is not None:
        _CHILDREN.pop(str(run_dir.resolve()), None)


def read_pid(run_dir: Path) -> int | None:
    try:
        return int((Path(run_dir) / PID_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def status(run_dir: Path) -> JobState:
    """The job's state. A job whose process died without saying so is reported as failed."""
    run_dir = Path(run_dir)
    _reap(run_dir)
    data = _read_json(run_dir / STATE_FILE)
    if data is None:
        raise CpDistillerError(f"{run_dir} is not a job directory (no {STATE_FILE}).")
    known = {k: v for k, v in data.items() if k in JobState.__dataclass_fields__}
    state = JobState(**known)
    state.run_dir = str(run_dir)
    if state.pid is None:
        state.pid = read_pid(run_dir)
    if not state.finished:
        if state.started is not None and state.status == RUNNING:
            state.elapsed = time.time() - state.started
        if not _pid_alive(state.pid) and (state.status == RUNNING or read_pid(run_dir) is not None):
            # Give a just-finished child a moment to have written its final state.
            data = _read_json(run_dir / STATE_FILE) or {}
            if data.get("status") in TERMINAL:
                return status(run_dir)
            state.status = FAILED
            state.error = state.error or "the job process exited unexpectedly (killed or out of memory); see the log."
    return state


def cancel(run_dir: Path, timeout: float = 10.0) -> JobState:
    """Terminate the job's process group and mark it cancelled; files it wrote are kept."""
    run_dir = Path(run_dir)
    state = status(run_dir)
    if state.finished:
        return state
    pid = state.pid or read_pid(run_dir)
    if pid:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + timeout
        proc = _CHILDREN.get(str(run_dir.resolve()))
        while _pid_alive(pid) and time.monotonic() < deadline:
            if proc is not None:
                proc.poll()
            time.sleep(0.1)
        if _pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc is not None:
                proc.wait(timeout=timeout)
    _reap(run_dir)
    data = _read_json(run_dir / STATE_FILE) or {}
    if data.get("status") in TERMINAL and data.get("status") != RUNNING:
        return status(run_dir)
    data.update(status=CANCELLED, ended=time.time(), message="cancelled by the user", pid=pid)
    _write_json(run_dir / STATE_FILE, data)
    return status(run_dir)


def wait(run_dir: Path, timeout: float | None = None, poll: float = 0.2) -> JobState:
    """Block until the job finishes (for the CLI and tests); raises TimeoutError after ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        state = status(run_dir)
        if state.finished:
            return state
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {run_dir} still {state.status} after {timeout} s")
        time.sleep(poll)


def read_log(run_dir: Path, tail: int = 20000) -> str:
    """The last ``tail`` characters of the job's combined stdout/stderr."""
    try:
        text = (Path(run_dir) / LOG_FILE).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return text[-tail:]


def job_spec(run_dir: Path) -> dict[str, Any]:
    return _read_json(Path(run_dir) / JOB_FILE) or {}


def load_input(run_dir: Path, name: str) -> Any:
    """Unpickle one of the objects handed to the job (the run's own files only)."""
    path = Path(run_dir) / INPUTS_DIR / f"{name}.pkl"
    if not path.exists():
        raise CpDistillerError(f"{run_dir}: no job input named {name!r}.")
    with open(path, "rb") as fh:
        return pickle.load(fh)


def list_runs(root: Path | None = None) -> list[dict[str, Any]]:
    """One row per job directory under ``root`` (newest first): id, status, target, meta, times."""
    rows = []
    for path in sorted(runs_root(root).iterdir(), reverse=True):
        if not (path / JOB_FILE).exists():
            continue
        spec = job_spec(path)
        try:
            st = status(path)
        except CpDistillerError:
            continue
        rows.append({"run_id": path.name, "run_dir": str(path), "status": st.status, "target": spec.get("target", ""),
                     "created": spec.get("created"), "elapsed": st.elapsed, "error": st.error,
                     **{f"meta.{k}": v for k, v in (spec.get("meta") or {}).items()}})
    return rows


# ----- child side ---------------------------------------------------------------------------------
class _StateWriter:
    """The progress callback handed to the target: writes fraction/message/eta to job_state.json."""

    def __init__(self, run_dir: Path, base: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.state = base
        self._last_write = 0.0

    def write(self, **changes: Any) -> None:
        self.state.update(changes)
        _write_json(self.run_dir / STATE_FILE, self.state)

    def __call__(self, fraction: float, message: str = "", **extra: Any) -> None:
        now = time.time()
        fraction = float(max(0.0, min(1.0, fraction)))
        elapsed = now - self.state["started"]
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        self.state.update(fraction=fraction, message=str(message), elapsed=elapsed, eta=eta)
        if extra:
            self.state.setdefault("extra", {}).update(extra)
        if now - self._last_write >= 0.2 or fraction >= 1.0:  # cheap enough for per-batch callbacks
            self.write()
            self._last_write = now


def run_job(run_dir: Path) -> int:
    """Child entry point: run the job described by ``run_dir/job.json``; returns an exit code."""
    run_dir = Path(run_dir)
    spec = _read_json(run_dir / JOB_FILE)
    if spec is None:
        print(f"error: {run_dir / JOB_FILE} not found", file=sys.stderr)
        return 2
    started = time.time()
    writer = _StateWriter(run_dir, JobState(str(run_dir), RUNNING, message="running", started=started,
                                             pid=os.getpid(), target=spec["target"]).to_dict())
    writer.write()

    def _on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_term)
    try:
        func = _resolve(spec["target"])
        kwargs = dict(spec.get("kwargs") or {})
        for name in spec.get("objects") or []:
            kwargs[name] = load_input(run_dir, name)
        params = _parameters(func)
        if "run_dir" in params:
            kwargs.setdefault("run_dir", run_dir)
        if "progress" in params:
            kwargs.setdefault("progress", writer)
        result = func(*spec.get("args", []), **kwargs)
    except KeyboardInterrupt:
        writer.write(status=CANCELLED, ended=time.time(), message="cancelled by the user",
                     elapsed=time.time() - started)
        print("job cancelled", file=sys.stderr)
        return 130
    except CpDistillerError as exc:
        writer.write(status=FAILED, ended=time.time(), error=str(exc), message="failed",
                     elapsed=time.time() - started)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BaseException as exc:  # record anything, then exit non-zero
        tb = traceback.format_exc()
        writer.write(status=FAILED, ended=time.time(), error=f"{type(exc).__name__}: {exc}",
                     traceback=tb, message="failed", elapsed=time.time() - started)
        print(tb, file=sys.stderr)
        return 1
    if result is not None:
        try:
            json.dumps(result)
            writer.state.setdefault("extra", {})["result"] = result
        except TypeError:
            pass
    writer.write(status=DONE, ended=time.time(), fraction=1.0, message="done", eta=0.0,
                 elapsed=time.time() - started)
    return 0


def _parameters(func: Callable[..., Any]) -> set[str]:
    """Explicitly named keyword parameters of ``func`` (``run_dir``/``progress`` are passed only to those)."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n for n, p in sig.parameters.items() if p.kind in kinds}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m cpdistiller_core.jobs RUN_DIR", file=sys.stderr)
        return 2
    return run_job(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
