"""Runs that survive faults: status written by the CLI, killed runs read back as interrupted, the run
lock, --overwrite, unreadable state files, output paths checked before any input is read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_screens import small_screen

from cpdistiller_core import jobs
from cpdistiller_core.cli import main
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.runs import LOCK_FILE, RunLock, load_run, prepare_run_dir
from dashboard import state as ds

REPO = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "2", "--batch-size", "64", "--device", "cpu", "--quiet", "--no-preprocess", "--min-steps", "0"]


@pytest.fixture(scope="module")
def screen_csv(tmp_path_factory):
    p = small_screen(n_plates=3, n_features=24, seed=4)
    path = tmp_path_factory.mktemp("in") / "screen.csv"
    p.to_frame().to_csv(path, index=False)
    return path


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cpdistiller_core", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def _wait_for_training(out: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if json.loads((out / "progress.json").read_text()).get("stage") == "training":
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError("the run never started training")


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]


def test_lock_kill_interrupted_and_overwrite(screen_csv, tmp_path):
    out = tmp_path / "run"
    first = _cli("correct", str(screen_csv), "--out", str(out), "--epochs", "5000", "--batch-size", "64",
                 "--device", "cpu", "--quiet", "--no-preprocess")
    try:
        _wait_for_training(out, first)
        assert load_run(out).status == "running"
        # a second writer into the same --out fails at once, in one line, and touches nothing
        second = _cli("correct", str(screen_csv), "--out", str(out), "--overwrite", *FAST)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 1
        assert _error_lines(err) == [ln for ln in _error_lines(err) if ln.startswith("error:")] and len(_error_lines(err)) == 1
        assert "another cpDistiller process" in err and str(first.pid) in err
        assert first.poll() is None and (out / "progress.json").is_file()
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    run = load_run(out)  # progress.json still says "running": the dead PID makes it interrupted
    assert json.loads((out / "progress.json").read_text())["status"] == "running"
    assert run.status == "interrupted" and "ended without finishing" in run.error
    with pytest.raises(CpDistillerError, match="interrupted"):
        run.embedding()
    # the kill released the lock; a re-run without --overwrite is refused, with it the old files go
    assert main(["correct", str(screen_csv), "--out", str(out), *FAST]) == 1
    (out / "model").mkdir(exist_ok=True)
    (out / "model" / "preprocess.json").write_text("{}")  # stale: this run does not preprocess
    assert main(["correct", str(screen_csv), "--out", str(out), "--overwrite", *FAST]) == 0
    assert not (out / "model" / "preprocess.json").exists()
    assert load_run(out).status == "finished"


def test_sigterm_is_recorded_as_interrupted(screen_csv, tmp_path):
    out = tmp_path / "run"
    proc = _cli("correct", str(screen_csv), "--out", str(out), "--epochs", "5000", "--batch-size", "64",
                "--device", "cpu", "--quiet", "--no-preprocess")
    try:
        _wait_for_training(out, proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert json.loads((out / "progress.json").read_text())["status"] == "interrupted"
    assert json.loads((out / "report.json").read_text())["status"] == "interrupted"
    assert load_run(out).status == "interrupted"


def test_existing_out_needs_overwrite_and_overwrite_only_clears_run_dirs(screen_csv, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    assert main(["correct", str(screen_csv), "--out", str(out), *FAST]) == 1
    assert "already holds files (notes.txt)" in capsys.readouterr().err
    assert main(["correct", str(screen_csv), "--out", str(out), "--overwrite", *FAST]) == 1
    assert "not a cpDistiller run directory" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "precious"


@pytest.mark.parametrize("kind", ["file", "device", "under_a_file", "unwritable"])
def test_bad_output_paths_fail_in_one_line_before_the_input_is_read(kind, tmp_path, capsys):
    target = {"file": tmp_path / "taken.txt", "device": Path("/dev/null"),
              "under_a_file": tmp_path / "taken.txt" / "run", "unwritable": Path("/proc/cpdistiller-run")}[kind]
    (tmp_path / "taken.txt").write_text("x")
    missing_input = tmp_path / "no_such_input.csv"  # never read: the output is checked first
    assert main(["correct", str(missing_input), "--out", str(target), *FAST]) == 1
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and err.startswith("error: ") and str(target) in err, err
    assert "no_such_input" not in err
    out_file = {"file": tmp_path, "device": Path("/dev/null"), "under_a_file": tmp_path / "taken.txt" / "p.parquet",
                "unwritable": Path("/proc/cpdistiller.parquet")}[kind]
    assert main(["preprocess", str(missing_input), str(out_file)]) == 1
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and str(out_file) in err and "no_such_input" not in err, err


def test_preprocess_refuses_an_unknown_output_format_before_reading(tmp_path, capsys):
    assert main(["preprocess", str(tmp_path / "nothing.csv"), str(tmp_path / "out.xlsx")]) == 1
    err = capsys.readouterr().err
    assert "unknown output format '.xlsx'" in err and "nothing.csv" not in err


def test_run_lock_is_exclusive_between_processes_and_reentrant_within_one(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    with RunLock(run_dir), RunLock(run_dir):  # re-entrant here
        code = ("import sys; from cpdistiller_core.runs import RunLock\n"
                f"try:\n    RunLock({str(run_dir)!r}).acquire()\nexcept Exception as e:\n    print(e); sys.exit(3)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 3 and f"PID {os.getpid()}" in done.stdout
    lock = prepare_run_dir(run_dir)  # released: free again (the lock file itself does not count as content)
    lock.release()
    assert (run_dir / LOCK_FILE).exists()


def test_a_running_status_with_a_dead_or_reused_pid_is_interrupted(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    base = {"status": "running", "stage": "training", "host": __import__("socket").gethostname()}
    (run_dir / "progress.json").write_text(json.dumps({**base, "pid": os.getpid(),
                                                       "pid_started": jobs.process_start_time(os.getpid())}))
    assert load_run(run_dir).status == "running"
    (run_dir / "progress.json").write_text(json.dumps({**base, "pid": os.getpid(), "pid_started": 1.0}))
    assert load_run(run_dir).status == "interrupted"  # the PID now belongs to another process
    (run_dir / "progress.json").write_text(json.dumps({**base, "pid": 2**22 + 12345}))
    assert load_run(run_dir).status == "interrupted"
    (run_dir / "progress.json").write_text(json.dumps({**base, "pid": 2**22 + 12345, "host": "elsewhere"}))
    assert load_run(run_dir).status == "running"  # another machine's process: cannot tell


def test_unreadable_state_files_are_listed_not_fatal(tmp_path):
    good = jobs.submit(json.loads, jobs.new_run_dir(tmp_path), args=["1"])
    jobs.wait(good, timeout=120)
    truncated, schemaless, listy, nojob = (jobs.new_run_dir(tmp_path) for _ in range(4))
    for d in (truncated, schemaless, listy):
        (d / jobs.JOB_FILE).write_text(json.dumps({"target": ds.CORRECTION_TARGET, "meta": {}}))
    (truncated / jobs.STATE_FILE).write_text('{"status": "runn')
    (schemaless / jobs.STATE_FILE).write_text(json.dumps({"status": 3, "fraction": "half", "extra": []}))
    (listy / jobs.STATE_FILE).write_text("[1, 2]")
    (nojob / jobs.JOB_FILE).write_text('{"target": "cpdistiller_core.runs:run_corr')
    rows = {r["run_dir"]: r for r in jobs.list_runs(tmp_path)}
    assert rows[str(good)]["status"] == jobs.DONE
    for d in (truncated, schemaless, listy, nojob):
        assert rows[str(d)]["status"] == jobs.UNREADABLE and "unreadable" in rows[str(d)]["error"], d
    with pytest.raises(CpDistillerError, match="unreadable"):
        jobs.status(schemaless)


def test_correct_page_lists_unreadable_and_interrupted_runs_without_crashing():
    from streamlit.testing.v1 import AppTest

    sid = ds.new_session_id()
    root = ds.session_runs_root(sid)
    broken, dead = jobs.new_run_dir(root), jobs.new_run_dir(root)
    for d in (broken, dead):
        (d / jobs.JOB_FILE).write_text(json.dumps({"target": ds.CORRECTION_TARGET, "meta": {"dataset": "x"},
                                                   "created": time.time()}))
    (broken / jobs.STATE_FILE).write_text('{"status": "run')
    (dead / jobs.STATE_FILE).write_text(json.dumps({"run_dir": str(dead), "status": "running", "started": time.time(),
                                                    "pid": 2**22 + 4321}))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.session_state[ds.SESSION_ID_KEY] = sid
    at.session_state[ds.RUN_KEY] = str(broken)
    at.run()
    at.switch_page("pages/2_Correct.py").run()
    assert not at.exception
    table = at.dataframe[-1].value
    assert dict(zip(table["run_id"], table["status"])) == {broken.name: "unreadable", dead.name: "interrupted"}
    assert any("unreadable" in e.value for e in at.error)
    at.session_state[ds.RUN_KEY] = str(dead)
    at.run()
    assert not at.exception and any("interrupted" in w.value for w in at.warning)
    assert json.loads((dead / jobs.STATE_FILE).read_text())["status"] == "interrupted"  # written back
