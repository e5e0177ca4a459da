"""JUMP gallery client against a local HTTP server with the gallery's layout (no internet).

The server answers like S3: HEAD gives Content-Length and an MD5 ETag, GET honours Range. Faults are
injected at the HTTP boundary: a connection cut mid-file, a corrupt body, a plate that is not there.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import socket
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.jump import PROFILE_KEY, JumpClient
from cpdistiller_core.net import OfflineError
from dashboard import state as ds

SOURCE, BATCH = "source_4", "2021_04_26_Batch1"
PLATES = ["BR00117035", "BR00117036"]
MISSING_PLATE = "BR00117099"  # in the plate table, not in the bucket
N_FILLER = 800


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _lookup(self) -> bytes | None:
        return self.server.files.get(self.path.split("?")[0].lstrip("/"))

    def do_HEAD(self) -> None:
        self.server.requests[("HEAD", self.path)] += 1
        body = self._lookup()
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{hashlib.md5(body).hexdigest()}"')
        self.end_headers()

    def do_GET(self) -> None:
        key = self.path.split("?")[0].lstrip("/")
        self.server.requests[("GET", self.path)] += 1
        self.server.ranges.append((key, self.headers.get("Range")))
        body = self._lookup()
        if body is None:
            self.send_error(404)
            return
        body = self.server.corrupt.get(key, body)
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
        part = body[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(part)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        if key in self.server.truncate_once:
            self.server.truncate_once.discard(key)
            self.wfile.write(part[: len(part) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(part)


def _plate_parquet(plate: str, wells: list[str], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"Metadata_Source": SOURCE, "Metadata_Plate": plate, "Metadata_Well": wells})
    for name in ("Cells_AreaShape_Area", "Nuclei_Intensity_MeanIntensity_DNA", "Cytoplasm_Texture_Contrast_Mito"):
        df[name] = rng.normal(size=len(wells))
    # ~150 KB per plate, so an interrupted transfer has written whole chunks before the cut
    filler = pd.DataFrame(rng.normal(size=(len(wells), N_FILLER)),
                          columns=[f"Cells_Texture_Feature_{i}" for i in range(N_FILLER)])
    df = pd.concat([df, filler], axis=1)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _gz_csv(df: pd.DataFrame) -> bytes:
    return gzip.compress(df.to_csv(index=False).encode())


@pytest.fixture
def gallery(local_http_server):
    """A local server holding 2 plates, JUMP-style metadata tables, and a plate table naming a 3rd plate."""
    wells = [f"{r}{c:02d}" for r in "ABCD" for c in range(1, 7)]  # 24 wells per plate
    orf = pd.DataFrame({"Metadata_JCP2022": [f"JCP2022_90{i:04d}" for i in range(20)],
                        "Metadata_Symbol": [f"GENE{i}" for i in range(20)],
                        "Metadata_NCBI_Gene_ID": [str(1000 + i) for i in range(20)]})
    controls = pd.DataFrame({"Metadata_JCP2022": ["JCP2022_915128", "JCP2022_915132"],
                             "Metadata_pert_type": ["negcon", "poscon"], "Metadata_Name": ["BFP", "eGFP"],
                             "Metadata_modality": ["orf", "orf"]})
    well_rows = []
    for plate in PLATES + [MISSING_PLATE]:
        for i, w in enumerate(wells):
            jcp = ("JCP2022_915128" if i % 6 == 0 else "JCP2022_915132" if i == 5
                   else orf["Metadata_JCP2022"][i % 20])
            well_rows.append((SOURCE, plate, w, jcp))
    well = pd.DataFrame(well_rows, columns=["Metadata_Source", "Metadata_Plate", "Metadata_Well", "Metadata_JCP2022"])
    plate_table = pd.DataFrame({"Metadata_Source": SOURCE, "Metadata_Batch": BATCH,
                                "Metadata_Plate": PLATES + [MISSING_PLATE], "Metadata_PlateType": "ORF"})
    files = {
        "metadata/plate.csv.gz": _gz_csv(plate_table),
        "metadata/well.csv.gz": _gz_csv(well),
        "metadata/orf.csv.gz": _gz_csv(orf),
        "metadata/perturbation_control.csv": controls.to_csv(index=False).encode(),
    }
    for k, plate in enumerate(PLATES):
        files[PROFILE_KEY.format(source=SOURCE, batch=BATCH, plate=plate)] = _plate_parquet(plate, wells, k)
    server, base = local_http_server(_Handler)
    server.files, server.corrupt, server.truncate_once = files, {}, set()
    server.requests, server.ranges = Counter(), []
    return server, base


def _client(base: str, tmp_path, **kw) -> JumpClient:
    return JumpClient(gallery_url=base, metadata_url=f"{base}/metadata", cache=tmp_path / "jump", **kw)


def _gets(server) -> int:
    return sum(n for (method, _), n in server.requests.items() if method == "GET")


def test_fetch_joins_metadata(gallery, tmp_path):
    server, base = gallery
    profiles = _client(base, tmp_path).fetch(source=SOURCE, plates=PLATES)
    meta = profiles.meta
    assert profiles.n_wells == 48 and profiles.n_features == 3 + N_FILLER
    assert set(meta["Metadata_Plate"]) == set(PLATES)
    assert (meta["Metadata_Batch"] == BATCH).all()
    assert (meta["Metadata_PlateType"] == "ORF").all()
    # gene symbols come from the ORF table through the well table
    row = meta[(meta["Metadata_Plate"] == PLATES[0]) & (meta["Metadata_Well"] == "A02")].iloc[0]
    assert row["Metadata_JCP2022"] == "JCP2022_900001" and row["Metadata_Symbol"] == "GENE1"
    assert profiles.negative_mask.sum() == 2 * 4  # wells 0, 6, 12, 18 per plate are BFP
    assert (profiles.control == "positive").sum() == 2
    assert meta.loc[profiles.negative_mask, "Metadata_Symbol"].eq("BFP").all()
    assert profiles.roles.batch == "Metadata_Batch"


def test_second_fetch_uses_cache_and_works_offline(gallery, tmp_path):
    server, base = gallery
    first = _client(base, tmp_path).fetch(source=SOURCE, plates=PLATES)
    gets = _gets(server)
    second = _client(base, tmp_path).fetch(source=SOURCE, plates=PLATES)
    assert _gets(server) == gets  # no new downloads
    np.testing.assert_array_equal(first.X, second.X)
    server.shutdown()
    server.server_close()
    third = _client(base, tmp_path).fetch(source=SOURCE, plates=PLATES)  # server gone: cache only
    np.testing.assert_array_equal(first.X, third.X)


def test_interrupted_download_resumes_with_range(gallery, tmp_path):
    server, base = gallery
    key = PROFILE_KEY.format(source=SOURCE, batch=BATCH, plate=PLATES[0])
    server.truncate_once.add(key)
    profiles = _client(base, tmp_path).fetch(source=SOURCE, plates=PLATES[:1])
    ranges = [r for k, r in server.ranges if k == key]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    cached = (tmp_path / "jump" / key).read_bytes()
    assert cached == server.files[key]
    assert profiles.n_wells == 24


def test_corrupt_file_is_rejected_and_not_cached(gallery, tmp_path):
    server, base = gallery
    key = PROFILE_KEY.format(source=SOURCE, batch=BATCH, plate=PLATES[1])
    good = server.files[key]
    server.corrupt[key] = bytes(b ^ 0xFF for b in good[:64]) + good[64:]
    with pytest.raises(CpDistillerError, match="checksum mismatch"):
        _client(base, tmp_path).fetch(source=SOURCE, plates=PLATES)
    assert not (tmp_path / "jump" / key).exists()
    assert not list((tmp_path / "jump").rglob("*.part"))


def test_missing_plate_named_and_skippable(gallery, tmp_path):
    _, base = gallery
    with pytest.raises(CpDistillerError, match=MISSING_PLATE):
        _client(base, tmp_path).fetch(source=SOURCE, plates=PLATES + [MISSING_PLATE])
    with pytest.warns(UserWarning, match=MISSING_PLATE):
        profiles = _client(base, tmp_path).fetch(source=SOURCE, plates=PLATES + [MISSING_PLATE],
                                                 skip_missing=True)
    assert set(profiles.plate) == set(PLATES)


def test_unknown_plate_is_a_clear_error(gallery, tmp_path):
    _, base = gallery
    with pytest.raises(CpDistillerError, match="NOPE123.*not in JUMP's plate table"):
        _client(base, tmp_path).fetch(source=SOURCE, plates=["NOPE123"])


def test_size_estimate_before_download(gallery, tmp_path):
    server, base = gallery
    client = _client(base, tmp_path)
    plan = client.plan(client.select(source=SOURCE, plates=PLATES))
    expected = sum(len(server.files[PROFILE_KEY.format(source=SOURCE, batch=BATCH, plate=p)]) for p in PLATES)
    assert plan.bytes_to_download == expected
    assert _gets(server) == 1  # only the plate table so far; plate files were HEADed, not fetched
    assert "2 plate(s), 0 already cached" in plan.describe()


def test_offline_fails_fast_with_hint(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    base = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    with pytest.raises(OfflineError, match="are you offline.*CPDISTILLER_CACHE"):
        _client(base, tmp_path).list_plates()
    assert time.perf_counter() - start < 2.0


def test_real_metadata_tables_join(gallery, tmp_path, shared_data):
    """With JUMP's real plate/ORF/control tables (../shared/data) and a served well table."""
    server, base = gallery
    meta_dir = shared_data / "jump_metadata"
    plates = pd.read_csv(meta_dir / "plate.csv.gz")
    orf_plates = plates[(plates["Metadata_Source"] == "source_4") & (plates["Metadata_PlateType"] == "ORF")].head(2)
    orf = pd.read_csv(meta_dir / "orf.csv.gz", usecols=["Metadata_JCP2022", "Metadata_Symbol"])
    wells = [f"{r}{c:02d}" for r in "AB" for c in range(1, 13)]
    rows = []
    for p, b in zip(orf_plates["Metadata_Plate"], orf_plates["Metadata_Batch"]):
        server.files[PROFILE_KEY.format(source="source_4", batch=b, plate=p)] = _plate_parquet(p, wells, 7)
        for i, w in enumerate(wells):
            rows.append(("source_4", p, w, "JCP2022_915131" if i == 0 else orf["Metadata_JCP2022"].iloc[i]))
    server.files["metadata/well.csv.gz"] = _gz_csv(
        pd.DataFrame(rows, columns=["Metadata_Source", "Metadata_Plate", "Metadata_Well", "Metadata_JCP2022"]))
    client = _client(base, tmp_path, metadata_dir=meta_dir)
    profiles = client.fetch(source="source_4", plates=list(orf_plates["Metadata_Plate"]))
    expected = dict(zip(orf["Metadata_JCP2022"], orf["Metadata_Symbol"]))
    trt = profiles.meta[profiles.meta["Metadata_pert_type"] == "trt"]
    assert len(trt) == 2 * 23
    assert (trt["Metadata_Symbol"] == trt["Metadata_JCP2022"].map(expected)).all()
    assert profiles.negative_mask.sum() == 2  # LacZ is an ORF negative control in perturbation_control.csv
    assert set(profiles.batch) == set(orf_plates["Metadata_Batch"])


# ----- the "From JUMP" tab of the Load page ---------------------------------------------------------
APP = str(Path(__file__).resolve().parents[1] / "app.py")


def _load_page(monkeypatch, base: str) -> AppTest:
    monkeypatch.setenv("CPDISTILLER_GALLERY_URL", base)
    monkeypatch.setenv("CPDISTILLER_JUMP_METADATA_URL", f"{base}/metadata")
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/1_Load_profiles.py").run()
    assert not at.exception
    return at


def test_load_page_fetches_jump_plates(gallery, monkeypatch):
    _, base = gallery
    at = _load_page(monkeypatch, base)
    at.button(key="jump_list").click().run()
    assert at.selectbox(key="jump_source").value == SOURCE
    assert at.selectbox(key="jump_type").value == "ORF"
    at.multiselect(key="jump_plates").set_value(PLATES).run()
    at.button(key="jump_fetch").click().run()
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    dataset = at.session_state[ds.DATASET_KEY]
    assert dataset.origin == "jump" and dataset.raw.n_wells == 48
    assert set(dataset.raw.plate) == set(PLATES) and dataset.raw.roles.annotation == "Metadata_Symbol"


def test_load_page_jump_offline_is_a_message(monkeypatch, tmp_path):
    monkeypatch.setenv("CPDISTILLER_CACHE", str(tmp_path))  # nothing cached from other tests
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    at = _load_page(monkeypatch, f"http://127.0.0.1:{port}")
    at.button(key="jump_list").click().run()
    assert not at.exception
    assert any("are you offline" in e.value for e in at.error), [e.value for e in at.error]
