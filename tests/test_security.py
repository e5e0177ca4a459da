"""Safe to share: no pickle, bind address and authentication, the data root, no echoed cell contents,
per-session workspaces, quotas, job caps, Enrichr library names, the page icon."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core import access, jobs
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.io import write_profiles
from cpdistiller_core.profiles import Embedding, Profiles, Roles
from cpdistiller_core.runs import JOB_INPUT_NAME, Run
from dashboard import state as ds

REPO = Path(__file__).resolve().parents[1]
WELLS = [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)]


class _Exploit:
    """Unpickling this runs a command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _profiles(n_features: int = 4, seed: int = 0) -> Profiles:
    meta = pd.DataFrame({"Metadata_Plate": ["P1"] * 96, "Metadata_Well": WELLS,
                         "Metadata_Symbol": [f"G{i % 12}" for i in range(96)]})
    X = np.random.default_rng(seed).normal(size=(96, n_features))
    return Profiles(meta=meta, X=X, features=[f"Cells_f{i}" for i in range(n_features)],
                    roles=Roles(plate="Metadata_Plate", well="Metadata_Well", perturbation="Metadata_Symbol"),
                    source="screen.csv", full_precision=True)


def _old_layout_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run directory as older versions wrote it, with a planted malicious pickle as its input."""
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "runs" / "run-old"
    (run_dir / jobs.INPUTS_DIR).mkdir(parents=True)
    (run_dir / jobs.INPUTS_DIR / f"{JOB_INPUT_NAME}.pkl").write_bytes(pickle.dumps(_Exploit(marker)))
    (run_dir / jobs.JOB_FILE).write_text(json.dumps({"target": ds.CORRECTION_TARGET, "args": [], "kwargs": {},
                                                     "objects": [JOB_INPUT_NAME], "meta": {}}))
    (run_dir / jobs.STATE_FILE).write_text(json.dumps({"run_dir": str(run_dir), "status": "done"}))
    emb = Embedding(meta=_profiles().meta, X=np.random.default_rng(1).normal(size=(96, 3)),
                    features=["cpd_0", "cpd_1", "cpd_2"], roles=_profiles().roles, method="cpDistiller")
    write_profiles(emb, run_dir / "embedding.parquet")
    (run_dir / "config.json").write_text(json.dumps({"input": {"source": "gone.csv"}}))
    (run_dir / "progress.json").write_text(json.dumps({"status": "finished"}))
    (run_dir / "report.json").write_text(json.dumps({"status": "finished"}))
    return run_dir, marker


# ----- 1. no pickle ---------------------------------------------------------------------------------
def test_no_pickle_in_the_package_or_the_pages():
    sources = [*REPO.joinpath("cpdistiller_core").rglob("*.py"), REPO / "app.py", *REPO.joinpath("pages").glob("*.py"),
               *REPO.joinpath("dashboard").glob("*.py")]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        assert "import pickle" not in text and "pickle.load" not in text and "joblib" not in text, path
        assert "allow_pickle=True" not in text, path
        for call in text.split("torch.load(")[1:]:
            assert "weights_only=True" in call[:300], path


def test_job_inputs_are_parquet_and_read_back_exactly(tmp_path):
    raw = _profiles()
    run_dir = jobs.new_run_dir(tmp_path)
    entry = jobs.save_input(run_dir, JOB_INPUT_NAME, raw)
    (run_dir / jobs.JOB_FILE).write_text(json.dumps({"inputs": {JOB_INPUT_NAME: entry}}))
    path = run_dir / jobs.INPUTS_DIR / f"{JOB_INPUT_NAME}.parquet"
    assert path.read_bytes()[:4] == b"PAR1" and not list(run_dir.rglob("*.pkl"))
    back = jobs.load_input(run_dir, JOB_INPUT_NAME)
    assert back.X.dtype == np.float64 and np.array_equal(back.X, raw.X)  # full precision kept
    assert back.roles == raw.roles and back.source == "screen.csv"
    pd.testing.assert_frame_equal(back.meta, raw.meta)
    with pytest.raises(CpDistillerError, match="cannot be handed to a job"):
        jobs.save_input(run_dir, "thing", {"a": object()})


def test_a_planted_pickle_is_never_loaded_and_the_old_layout_is_named(tmp_path):
    run_dir, marker = _old_layout_run(tmp_path)
    with pytest.raises(CpDistillerError, match="old layout"):
        Run.open(run_dir).input()  # what the Explorer, Plate maps, Gene clusters and Retrieval pages read
    with pytest.raises(CpDistillerError, match="old layout"):
        Run.open(run_dir).spaces()
    # the job runner's child side does not unpickle it either
    done = subprocess.run([sys.executable, "-m", "cpdistiller_core.jobs", str(run_dir)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1 and "old layout" in done.stderr
    # nor `cpdistiller genes RUN_DIR`
    done = subprocess.run([sys.executable, "-m", "cpdistiller_core", "genes", str(run_dir), "--out",
                           str(tmp_path / "genes"), "--no-enrichment", "--permutations", "0"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1 and "old layout" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    time.sleep(0.2)
    assert not marker.exists()


# ----- 2. bind address and authentication -------------------------------------------------------------
def test_the_dashboard_binds_to_localhost_by_default():
    import tomllib

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["server"]["maxUploadSize"] == ds.MAX_UPLOAD_MB
    make = (REPO / "Makefile").read_text()
    demo = make.split("\ndemo:")[1].split("\n\n")[0]
    assert "--server.address 127.0.0.1" in demo
    serve = make.split("\nserve:")[1].split("\n\n")[0]
    assert "cpdistiller_core.access" in serve  # make serve goes through the authentication check


def _serve_check(tmp_path: Path, address: str, secrets: str | None = None, password: str | None = None):
    cwd = tmp_path / "site"
    (cwd / ".streamlit").mkdir(parents=True, exist_ok=True)
    if secrets is not None:
        (cwd / ".streamlit" / "secrets.toml").write_text(secrets)
    env = {k: v for k, v in os.environ.items() if k != access.PASSWORD_ENV}
    env.update(PYTHONPATH=str(REPO), HOME=str(tmp_path / "home"))
    if password is not None:
        env[access.PASSWORD_ENV] = password
    return subprocess.run([sys.executable, "-m", "cpdistiller_core.access", "--address", address, "--check"],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_serving_beyond_localhost_is_refused_without_authentication(tmp_path):
    done = _serve_check(tmp_path, "0.0.0.0")
    assert done.returncode == 1 and "refusing to serve" in done.stderr and "CPDISTILLER_PASSWORD" in done.stderr
    assert _serve_check(tmp_path, "::").returncode == 1
    assert _serve_check(tmp_path, "127.0.0.1").returncode == 0  # this machine only: no login needed
    ok = _serve_check(tmp_path, "0.0.0.0", password="correct horse")
    assert ok.returncode == 0 and "password authentication" in ok.stderr
    ok = _serve_check(tmp_path, "0.0.0.0", secrets='password = "from secrets"\n')
    assert ok.returncode == 0 and "password authentication" in ok.stderr
    oidc = ('[auth]\nredirect_uri = "https://lab.example/oauth2callback"\ncookie_secret = "s"\n'
            'client_id = "c"\nclient_secret = "x"\n'
            'server_metadata_url = "https://id.example/.well-known/openid-configuration"\n')
    ok = _serve_check(tmp_path, "0.0.0.0", secrets=oidc)
    assert ok.returncode == 0 and "oidc authentication" in ok.stderr
    half = '[auth]\nredirect_uri = "https://lab.example/oauth2callback"\n'  # not enough to log anyone in
    assert _serve_check(tmp_path, "0.0.0.0", secrets=half).returncode == 1


def test_password_check_is_constant_time(monkeypatch):
    import hmac

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert access.password_matches("s3cret", "s3cret")
    assert not access.password_matches("s3cre", "s3cret") and not access.password_matches("", "s3cret")
    assert not access.password_matches("x", None)
    # compared through compare_digest on fixed-length digests: the length of the secret does not leak
    assert len(calls) == 2 and all(len(a) == len(b) == 32 for a, b in calls)


def _app_test(monkeypatch, address: str, password: str | None):
    from streamlit import config as st_config
    from streamlit.testing.v1 import AppTest

    if password is None:
        monkeypatch.delenv(access.PASSWORD_ENV, raising=False)
    else:
        monkeypatch.setenv(access.PASSWORD_ENV, password)
    old = st_config.get_option("server.address")
    st_config.set_option("server.address", address)
    monkeypatch.setattr(access, "read_secrets", lambda *a, **k: {})
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    return at, lambda: st_config.set_option("server.address", old)


def test_the_app_stops_on_an_open_address_and_asks_for_the_password(monkeypatch):
    at, restore = _app_test(monkeypatch, "0.0.0.0", None)
    try:
        at.run()
        assert not at.exception
        assert any("refuses to run" in e.value for e in at.error)
        assert not any(b.key == "home_demo" for b in at.button)  # nothing of the app is reachable
        monkeypatch.setenv(access.PASSWORD_ENV, "open sesame")
        at.run()
        assert [t.key for t in at.text_input] == ["auth_password"] and not any(b.key == "home_demo" for b in at.button)
        at.text_input(key="auth_password").input("open sesam")
        at.button(key="FormSubmitter:auth_form-Enter").click().run()
        assert any("Wrong password" in e.value for e in at.error)
        at.text_input(key="auth_password").input("open sesame")
        at.button(key="FormSubmitter:auth_form-Enter").click().run()
        assert not at.exception and any(b.key == "home_demo" for b in at.button)
    finally:
        restore()


@pytest.mark.parametrize("page", sorted(p.name for p in (REPO / "pages").glob("*.py")))
def test_a_page_opened_by_its_address_asks_for_the_password_too(page, monkeypatch):
    """Streamlit runs a pages/ file on its own when its address is opened directly, skipping app.py;
    the page's gate runs the same access check, so nothing of the page is drawn before the password."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(access.PASSWORD_ENV, "open sesame")
    at = AppTest.from_file(str(REPO / "pages" / page), default_timeout=120)
    at.run()
    assert not at.exception
    assert [t.key for t in at.text_input] == ["auth_password"]
    assert [t.value for t in at.title] == ["cpDistiller"]  # the password screen, not the page
    assert not at.selectbox and not at.dataframe and not any(b.key != "FormSubmitter:auth_form-Enter" for b in at.button)


# ----- 3. server paths, echoed cells, workspaces, quotas, job caps ---------------------------------------
def test_server_paths_only_under_the_data_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "screen").mkdir(parents=True)
    inside = root / "screen" / "plate.csv"
    inside.write_text("x")
    outside = tmp_path / "secret.csv"
    outside.write_text("password,hunter2")
    (root / "link.csv").symlink_to(outside)
    (root / "dirlink").symlink_to(tmp_path)
    monkeypatch.delenv(access.DATA_ROOT_ENV, raising=False)
    with pytest.raises(CpDistillerError, match="turned off"):
        ds.server_paths(str(inside))
    monkeypatch.setenv(access.DATA_ROOT_ENV, str(root))
    assert ds.server_paths(f"{inside}\nscreen/plate.csv") == [inside.resolve()] * 2
    for bad in (str(outside), "../secret.csv", "screen/../../secret.csv", "link.csv", "dirlink/secret.csv", "/etc/passwd"):
        with pytest.raises(CpDistillerError, match="outside the data root"):
            ds.server_paths(bad)
    with pytest.raises(CpDistillerError, match="outside the data root"):
        ds.jump_client(str(tmp_path))  # the JUMP metadata folder too
    with pytest.raises(CpDistillerError, match="outside the data root"):
        ds.read_server_file(str(outside), lambda p: p.read_text())  # .gmt / table / scores paths


def test_errors_about_server_files_never_quote_their_cells(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    frame = pd.DataFrame({"Metadata_Plate": ["P1"] * 12, "Metadata_Well": [f"A{c:02d}" for c in range(1, 13)],
                          "Cells_area": np.arange(12.0), "Cells_password": ["hunter2"] + ["1.5"] * 11})
    frame.to_csv(root / "secrets.csv", index=False)
    wells = frame.assign(Metadata_Well=["Z99-topsecret"] + list(frame["Metadata_Well"][1:]), Cells_password=1.0)
    wells.to_csv(root / "wells.csv", index=False)
    monkeypatch.setenv(access.DATA_ROOT_ENV, str(root))
    for name, column in (("secrets.csv", "Cells_password"), ("wells.csv", "Metadata_Well")):
        with pytest.raises(CpDistillerError) as info:
            ds.load_files(ds.server_paths(name), origin="path")
        message = str(info.value)
        assert name in message and column in message and "row 0" in message, message
        assert "hunter2" not in message and "topsecret" not in message, message
    # the user's own upload may be quoted back to them
    with pytest.raises(CpDistillerError, match="hunter2"):
        ds.load_files([root / "secrets.csv"], origin="upload")
    # and through the Load page's Server path tab
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/1_Load_profiles.py").run()
    at.text_area(key="load_paths").input("secrets.csv")
    at.button(key="load_read_paths").click().run()
    shown = [e.value for e in at.error]
    assert shown and "Cells_password" in shown[0] and "hunter2" not in " ".join(shown)


def _fake_run(root: Path, status: str = "done") -> Path:
    run_dir = jobs.new_run_dir(root)
    (run_dir / jobs.JOB_FILE).write_text(json.dumps({"target": ds.CORRECTION_TARGET, "meta": {}}))
    (run_dir / jobs.STATE_FILE).write_text(json.dumps({"run_dir": str(run_dir), "status": status}))
    return run_dir


def test_sessions_see_only_their_own_runs():
    a, b = ds.new_session_id(), ds.new_session_id()
    ra, rb = _fake_run(ds.session_runs_root(a)), _fake_run(ds.session_runs_root(b))
    assert [r["run_dir"] for r in ds.finished_runs(a)] == [str(ra)]
    assert [r["run_dir"] for r in ds.session_runs(b)] == [str(rb)]
    assert ds.valid_session_id(a) and not ds.valid_session_id("../" + a[3:]) and not ds.valid_session_id(None)


def test_upload_quota_size_limit_and_cleanup(monkeypatch):
    sid = ds.new_session_id()
    monkeypatch.setenv("CPDISTILLER_WORKSPACE_MB", "1")
    first = ds.save_uploads([("a.csv", b"x" * 600_000)], sid)
    with pytest.raises(CpDistillerError, match="over its quota of 1 MB"):
        ds.save_uploads([("b.csv", b"x" * 600_000)], sid)
    assert not (ds.session_upload_dir(sid) / "b.csv").exists()
    monkeypatch.setattr(ds, "MAX_UPLOAD_MB", 0.1)
    with pytest.raises(CpDistillerError, match="over the upload limit"):
        ds.save_uploads([("c.csv", b"x" * 200_000)], ds.new_session_id())
    old = time.time() - 3 * 24 * 3600
    os.utime(first[0], (old, old))
    fresh = ds.save_uploads([("d.csv", b"y")], sid)  # saving cleans up uploads older than a day
    assert not first[0].exists() and fresh[0].exists()


def test_concurrent_jobs_are_capped(monkeypatch):
    a, b = ds.new_session_id(), ds.new_session_id()
    monkeypatch.setenv("CPDISTILLER_MAX_JOBS", "1")
    monkeypatch.setenv("CPDISTILLER_MAX_JOBS_PER_SESSION", "1")
    ds.check_job_capacity(a)
    run = jobs.submit(time.sleep, jobs.new_run_dir(ds.session_runs_root(a)), args=[120])
    try:
        with pytest.raises(CpDistillerError, match="this session already runs 1 job"):
            ds.check_job_capacity(a)
        with pytest.raises(CpDistillerError, match="the server already runs 1 job"):
            ds.launch_references(run, ["uncorrected"], session_id=b)
    finally:
        jobs.cancel(run)
    ds.check_job_capacity(b)  # free again once it has ended


# ----- 4. Enrichr library names ------------------------------------------------------------------------
def test_enrichr_library_names_cannot_leave_the_cache(tmp_path, monkeypatch):
    from cpdistiller_core.analysis import enrichment

    (tmp_path / "x.gmt").write_text("TERM\tdesc\tGENE1\tGENE2\n")
    monkeypatch.setenv("CPDISTILLER_CACHE", str(tmp_path / "cache" / "deep"))
    for name in ("../../x", "../x", "/tmp/x", "a/../../x", "..", "x\\..\\y"):
        with pytest.raises(CpDistillerError, match="not an Enrichr library name"):
            enrichment.resolve_gene_sets([name], offline=True)
        with pytest.raises(CpDistillerError, match="not an Enrichr library name"):
            enrichment.download_library(name)
    assert enrichment.check_library_name("GO_Biological_Process_2023") == "GO_Biological_Process_2023"
    assert enrichment.check_library_name("Enrichr_Submissions_TF-Gene_Coocurrence")


# ----- 5. page icon ------------------------------------------------------------------------------------
def test_the_page_icon_is_served_locally():
    from PIL import Image

    text = (REPO / "dashboard" / "gate.py").read_text()  # where app.py and the pages set the page config
    assert 'page_icon=":material' not in text and "PAGE_ICON" in text
    with Image.open(REPO / "assets" / "icon.png") as icon:
        assert icon.size == (64, 64)


def test_login_provider_names_the_configured_section():
    base = {"redirect_uri": "https://x/oauth2callback", "cookie_secret": "s"}
    idp = {"client_id": "c", "client_secret": "x", "server_metadata_url": "https://id/.well-known/openid-configuration"}
    assert access.auth_mode({"auth": {**base, **idp}}) == "oidc" and access.login_provider({"auth": {**base, **idp}}) is None
    named = {"auth": {**base, "microsoft": idp}}
    assert access.auth_mode(named) == "oidc" and access.login_provider(named) == "microsoft"
    assert access.auth_mode({"auth": base}, env={}) is None


def test_a_dashboard_correction_reads_its_parquet_input_back(tmp_path):
    from engine_screens import small_screen

    raw = small_screen(n_plates=2, n_features=12, seed=3)
    sid = ds.new_session_id()
    run_dir = ds.launch_correction(ds.Dataset(name="small", raw=raw, preprocess_enabled=False),
                                   {"epochs": 1, "batch_size": 64, "min_steps": 0, "device": "cpu",
                                    "hidden_dim": 16, "latent_dim": 8}, ["row", "column"], session_id=sid)
    assert run_dir.parent == ds.session_runs_root(sid)
    state = jobs.wait(run_dir, timeout=600)
    assert state.status == jobs.DONE, jobs.read_log(run_dir)
    assert sorted(p.name for p in (run_dir / jobs.INPUTS_DIR).iterdir()) == [f"{JOB_INPUT_NAME}.parquet"]
    spaces = Run.open(run_dir).spaces()
    assert spaces["uncorrected"].n_wells == spaces["cpDistiller"].n_wells == raw.n_wells
    assert [r["run_dir"] for r in ds.finished_runs(sid)] == [str(run_dir)]
