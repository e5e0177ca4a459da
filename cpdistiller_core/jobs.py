"""Background jobs for the dashboard: run a core function in a separate process with a run dir.

A job is a directory. ``submit`` takes the function itself and writes ``job.json`` (the function's
importable name ``"module:function"``, its keyword
arguments, and the data objects it hands over, stored in ``job_inputs/`` as Parquet (profiles, tables)
or ``.npy`` without pickle (arrays): nothing in a run directory is ever unpickled), then starts
``python -m cpdistiller_core.jobs RUN_DIR`` in its own process group. The child imports the target,
calls it with ``run_dir=`` and ``progress=`` when the function takes them, and records its state in
``job_state.json`` (status, fraction, message, elapsed, eta, error) with atomic writes. The child's
stdout/stderr go to ``job.log``. ``cancel`` terminates the process group and marks the job cancelled.
A job whose process is gone without having said so (killed, out of memory, machine rebooted) is
marked ``interrupted`` the first time anyone looks at it; a state file that cannot be read is listed
as ``unreadable`` rather than hidden or crashing the listing.

Every file a job writes lives in its own run directory, and run ids are unique (timestamp + random),
so two sessions never write the same file. Nothing here knows about Streamlit.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
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
INTERRUPTED, UNREADABLE = "interrupted", "unreadable"
TERMINAL = (DONE, FAILED, CANCELLED, INTERRUPTED)
INTERRUPTED_MESSAGE = ("the job process ended without finishing (killed, out of memory or the machine "
                       "restarted); see the log.")

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
    pid_started: float | None = None       # the process's start time: a reused PID is not mistaken for it
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
    """A JSON object from ``path``; None when the file is missing, truncated or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


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


def target_name(func: Callable[..., Any]) -> str:
    """The importable name ``'module:function'`` of a module-level function, as job.json records it."""
    name = f"{getattr(func, '__module__', '')}:{getattr(func, '__qualname__', '')}"
    if not callable(func) or "<" in name or "." in name.partition(":")[2]:
        raise CpDistillerError(f"a job runs a module-level function, not {func!r}.")
    if _resolve(name) is not func:
        raise CpDistillerError(f"job target {name} does not import back to the function given.")
    return name


def submit(target: Callable[..., Any], run_dir: Path | None = None, kwargs: Mapping[str, Any] | None = None,
           args: Sequence[Any] = (), objects: Mapping[str, Any] | None = None,
           meta: Mapping[str, Any] | None = None, python: str | None = None) -> Path:
    """Start the function ``target`` in a separate process; returns the run directory.

    ``kwargs``/``args`` must be JSON-serialisable; ``objects`` (Profiles, DataFrames or numeric
    arrays) are written into the run directory as Parquet / ``.npy`` (never pickled) and passed as
    keyword arguments. ``meta`` is free-form information kept in ``job.json`` for run listings
    (dataset name, effects...).
    """
    target = target_name(target)  # fail early, in the caller, on a function the child cannot import
    run_dir = Path(run_dir) if run_dir is not None else new_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / JOB_FILE).exists():
        raise CpDistillerError(f"{run_dir} already holds a job; use a new run directory.")
    inputs = {name: save_input(run_dir, name, obj) for name, obj in (objects or {}).items()}
    spec = {"target": target, "args": list(args), "kwargs": dict(kwargs or {}), "inputs": inputs,
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


# ----- job inputs: Parquet / .npy, never pickle ------------------------------------------------------
def save_input(run_dir: Path, name: str, obj: Any) -> dict[str, Any]:
    """Write one object handed to a job into ``run_dir/job_inputs/``; returns its job.json entry.

    Profiles (and Embeddings) and DataFrames go to Parquet through ``io.write_profiles`` /
    pyarrow, numeric arrays to ``.npy`` with ``allow_pickle=False``; anything else is refused.
    """
    import numpy as np
    import pandas as pd

    from .profiles import Profiles

    if not name.isidentifier():
        raise CpDistillerError(f"job input name {name!r} must be a Python identifier.")
    folder = Path(run_dir) / INPUTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, Profiles):
        from .io import write_profiles

        write_profiles(obj, folder / f"{name}.parquet")
        return {"kind": "profiles", "file": f"{name}.parquet", "source": obj.source,
                "float64": bool(obj.X.dtype == np.float64)}
    if isinstance(obj, pd.DataFrame):
        import io as _io

        buf = _io.BytesIO()
        obj.to_parquet(buf, index=False)
        atomic_write_bytes(folder / f"{name}.parquet", buf.getvalue())
        return {"kind": "table", "file": f"{name}.parquet"}
    arr = np.asarray(obj) if isinstance(obj, (np.ndarray, list, tuple)) else None
    if arr is not None and arr.dtype.kind in "biuf":
        import io as _io

        buf = _io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        atomic_write_bytes(folder / f"{name}.npy", buf.getvalue())
        return {"kind": "array", "file": f"{name}.npy"}
    raise CpDistillerError(f"job input {name!r}: a {type(obj).__name__} cannot be handed to a job; "
                           "pass Profiles, a DataFrame or a numeric array.")


def load_input(run_dir: Path, name: str) -> Any:
    """Read back one of the objects handed to the job (Parquet / .npy; a pickle is never loaded).

    A run directory written by an older version (``job_inputs/<name>.pkl``) is refused with a
    message saying so: unpickling a file from a directory anyone could have written runs code.
    """
    run_dir = Path(run_dir)
    entry = (job_spec(run_dir).get("inputs") or {}).get(name)
    if not isinstance(entry, Mapping) or not isinstance(entry.get("file"), str):
        if (run_dir / INPUTS_DIR / f"{name}.pkl").exists():
            raise CpDistillerError(
                f"{run_dir}: this run has an old layout (its input is a pickle file, which cpDistiller no "
                "longer loads because a pickle can run code); re-run the correction with this version.")
        raise CpDistillerError(f"{run_dir}: no job input named {name!r}.")
    path = run_dir / INPUTS_DIR / Path(entry["file"]).name  # a name only: never outside job_inputs/
    if not path.is_file():
        raise CpDistillerError(f"{path}: job input file missing.")
    kind = entry.get("kind")
    if kind == "profiles":
        import numpy as np

        from .io import read_profiles_with_report

        prof, _ = read_profiles_with_report(str(path), emit_warnings=False,
                                            dtype=np.float64 if entry.get("float64") else np.float32)
        return prof.replace(source=str(entry.get("source") or prof.source))
    if kind == "table":
        import pandas as pd

        return pd.read_parquet(path)
    if kind == "array":
        import numpy as np

        return np.load(path, allow_pickle=False)
    raise CpDistillerError(f"{run_dir}: job input {name!r} has an unknown kind {kind!r}.")


def process_start_time(pid: int | None) -> float | None:
    """When process ``pid`` started (seconds since the epoch), None when there is no such process."""
    if not pid:
        return None
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # psutil.NoSuchProcess, AccessDenied...
        return None


def pid_alive(pid: int | None, started: float | None = None) -> bool:
    """Whether process ``pid`` runs (not a zombie) and, when ``started`` is known, is that same process
    (a PID reused by a later process does not count)."""
    if not pid:
        return False
    try:
        import psutil

        proc = psutil.Process(pid)
        if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - float(started)) < 1.0
    except Exception:  # psutil.NoSuchProcess, AccessDenied...
        return False


_pid_alive = pid_alive  # the name older callers use


def _reap(run_dir: Path) -> None:
    proc = _CHILDREN.get(str(run_dir.resolve()))
    if proc is not None and proc.poll() is not None:
        _CHILDREN.pop(str(run_dir.resolve()), None)


def read_pid(run_dir: Path) -> int | None:
    try:
        return int((Path(run_dir) / PID_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _state_from(data: Mapping[str, Any], run_dir: Path) -> JobState:
    """A JobState from a state file's dict; raises CpDistillerError when its fields have wrong types."""
    known = {k: v for k, v in data.items() if k in JobState.__dataclass_fields__}
    try:
        state = JobState(**known)
        state.fraction = float(state.fraction or 0.0)
        for name in ("started", "ended", "elapsed", "eta", "pid_started"):
            value = getattr(state, name)
            setattr(state, name, None if value is None else float(value))
        state.pid = None if state.pid is None else int(state.pid)
        if not isinstance(state.status, str) or not isinstance(state.extra, dict):
            raise TypeError("status must be text and extra an object")
    except (TypeError, ValueError) as exc:
        raise CpDistillerError(f"{run_dir / STATE_FILE}: unreadable job state ({exc}).") from None
    state.run_dir = str(run_dir)
    return state


def status(run_dir: Path) -> JobState:
    """The job's state. A job whose process died without saying so is marked interrupted (on disk too)."""
    run_dir = Path(run_dir)
    _reap(run_dir)
    data = _read_json(run_dir / STATE_FILE)
    if data is None:
        if (run_dir / STATE_FILE).exists():
            raise CpDistillerError(f"{run_dir / STATE_FILE}: unreadable job state (truncated or not JSON).")
        raise CpDistillerError(f"{run_dir} is not a job directory (no {STATE_FILE}).")
    state = _state_from(data, run_dir)
    if state.pid is None:
        state.pid = read_pid(run_dir)
    if not state.finished:
        if state.started is not None and state.status == RUNNING:
            state.elapsed = time.time() - state.started
        if not pid_alive(state.pid, state.pid_started) and (state.status == RUNNING or read_pid(run_dir) is not None):
            # Give a just-finished child a moment to have written its final state.
            data = _read_json(run_dir / STATE_FILE) or {}
            if data.get("status") in TERMINAL:
                return status(run_dir)
            return _mark_interrupted(run_dir, data, state)
    return state


def _mark_interrupted(run_dir: Path, data: dict[str, Any], state: JobState) -> JobState:
    """Record in job_state.json that the job's process is gone, so every reader agrees."""
    state.status, state.error = INTERRUPTED, state.error or INTERRUPTED_MESSAGE
    state.message = "interrupted"
    if state.ended is None:
        state.ended = time.time()
    data.update(status=state.status, error=state.error, message=state.message, ended=state.ended)
    try:
        _write_json(run_dir / STATE_FILE, data)
    except OSError:  # a read-only run directory is still reported correctly
        pass
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


def list_runs(root: Path | None = None) -> list[dict[str, Any]]:
    """One row per job directory under ``root`` (newest first): id, status, target, meta, times.

    A directory whose job.json or state file cannot be read is listed with status ``unreadable`` and
    the reason as its error, instead of disappearing or breaking the listing."""
    rows = []
    for path in sorted(runs_root(root).iterdir(), reverse=True):
        if not path.is_dir() or not (path / JOB_FILE).exists():
            continue
        spec = job_spec(path)
        meta = spec.get("meta") if isinstance(spec.get("meta"), dict) else {}
        row = {"run_id": path.name, "run_dir": str(path), "status": UNREADABLE,
               "target": spec.get("target", "") if isinstance(spec.get("target"), str) else "",
               "created": spec.get("created"), "elapsed": None, "error": None,
               **{f"meta.{k}": v for k, v in meta.items()}}
        if not spec:
            row["error"] = f"{path / JOB_FILE}: unreadable (truncated or not JSON)."
        else:
            try:
                st = status(path)
                row.update(status=st.status, elapsed=st.elapsed, error=st.error)
            except CpDistillerError as exc:
                row["error"] = str(exc)
        rows.append(row)
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
                                             pid=os.getpid(), pid_started=process_start_time(os.getpid()),
                                             target=spec["target"]).to_dict())
    writer.write()

    def _on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_term)
    try:
        func = _resolve(spec["target"])
        kwargs = dict(spec.get("kwargs") or {})
        for name in list(spec.get("inputs") or {}) + list(spec.get("objects") or []):
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
