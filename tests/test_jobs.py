"""The background job runner: real processes, real core functions, cancel, failures, isolation."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from cpdistiller_core import jobs
from cpdistiller_core.reduce import content_hash, reduce


def test_runs_a_core_function_in_another_process_and_records_its_result(tmp_path):
    X = np.arange(30, dtype=np.float32).reshape(10, 3)
    run_dir = jobs.submit(content_hash, jobs.new_run_dir(tmp_path), objects={"X": X},
                          meta={"dataset": "toy"})
    state = jobs.wait(run_dir, timeout=120)
    assert state.status == jobs.DONE, jobs.read_log(run_dir)
    assert state.extra["result"] == content_hash(X)
    assert state.pid and state.pid != os.getpid()
    assert state.fraction == 1.0
    rows = jobs.list_runs(tmp_path)
    assert [r["run_id"] for r in rows] == [run_dir.name]
    assert rows[0]["meta.dataset"] == "toy" and rows[0]["status"] == jobs.DONE


def test_progress_callback_and_run_dir_are_passed_when_the_target_takes_them(tmp_path):
    X = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    run_dir = jobs.submit(reduce, jobs.new_run_dir(tmp_path), objects={"X": X},
                          kwargs={"cache_root": str(tmp_path / "cache")})
    state = jobs.wait(run_dir, timeout=120)
    assert state.status == jobs.DONE, jobs.read_log(run_dir)
    assert state.message == "done"  # written by the reduce() progress callback then the runner
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


def test_a_user_error_fails_the_job_with_its_message_and_keeps_the_log(tmp_path):
    X = np.ones((10, 3), dtype=np.float32)
    X[2, 1] = np.nan
    run_dir = jobs.submit(reduce, jobs.new_run_dir(tmp_path), objects={"X": X})
    state = jobs.wait(run_dir, timeout=120)
    assert state.status == jobs.FAILED
    assert "NaN" in state.error and "preprocess" in state.error
    assert "error:" in jobs.read_log(run_dir)
    assert (run_dir / jobs.INPUTS_DIR / "X.npy").exists()  # what it had is kept (as .npy, not a pickle)


def test_an_unexpected_exception_keeps_its_traceback(tmp_path):
    run_dir = jobs.submit(json.loads, jobs.new_run_dir(tmp_path), args=["{not json"])
    state = jobs.wait(run_dir, timeout=60)
    assert state.status == jobs.FAILED
    assert state.error.startswith("JSONDecodeError")
    assert "Traceback" in state.traceback


def test_cancel_terminates_the_process_and_marks_the_run_cancelled(tmp_path):
    run_dir = jobs.submit(time.sleep, jobs.new_run_dir(tmp_path), args=[300])
    # wait until the child is really running
    for _ in range(600):
        if jobs.status(run_dir).status == jobs.RUNNING:
            break

        time.sleep(0.05)
    pid = jobs.status(run_dir).pid
    state = jobs.cancel(run_dir)
    assert state.status == jobs.CANCELLED
    assert not jobs._pid_alive(pid)
    saved = json.loads((run_dir / jobs.STATE_FILE).read_text())
    assert saved["status"] == jobs.CANCELLED


def test_a_killed_process_is_reported_interrupted_not_running_forever(tmp_path):
    import signal

    run_dir = jobs.submit(time.sleep, jobs.new_run_dir(tmp_path), args=[300])
    while jobs.status(run_dir).status != jobs.RUNNING:
        time.sleep(0.05)
    os.killpg(jobs.status(run_dir).pid, signal.SIGKILL)
    state = jobs.wait(run_dir, timeout=30)
    assert state.status == jobs.INTERRUPTED and "ended without finishing" in state.error
    assert json.loads((run_dir / jobs.STATE_FILE).read_text())["status"] == jobs.INTERRUPTED  # on disk too


def test_two_sessions_get_separate_run_dirs_and_do_not_clobber(tmp_path):
    a = jobs.submit(content_hash, jobs.new_run_dir(tmp_path),
                    objects={"X": np.zeros((4, 2), np.float32)})
    b = jobs.submit(content_hash, jobs.new_run_dir(tmp_path),
                    objects={"X": np.ones((4, 2), np.float32)})
    assert a != b and a.parent == b.parent
    ra, rb = jobs.wait(a, timeout=120), jobs.wait(b, timeout=120)
    assert ra.extra["result"] == content_hash(np.zeros((4, 2), np.float32))
    assert rb.extra["result"] == content_hash(np.ones((4, 2), np.float32))
    with pytest.raises(jobs.CpDistillerError):
        jobs.submit(time.sleep, a, args=[1])  # a run directory holds one job


def test_bad_targets_fail_in_the_caller(tmp_path):
    """Jobs take the function itself; a string, a lambda or a method cannot be imported by the child."""
    with pytest.raises(jobs.CpDistillerError):
        jobs.submit("json:loads", jobs.new_run_dir(tmp_path))
    with pytest.raises(jobs.CpDistillerError):
        jobs.submit(lambda: 1, jobs.new_run_dir(tmp_path))
    with pytest.raises(jobs.CpDistillerError):
        jobs.submit(jobs.JobState.to_dict, jobs.new_run_dir(tmp_path))
    assert jobs.target_name(json.loads) == "json:loads"
