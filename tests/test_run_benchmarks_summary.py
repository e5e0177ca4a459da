"""benchmarks/run_benchmarks.py: summary tables put uncorrected first with Δ and cpDistiller seeds as mean ± sd."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from cpdistiller_core.metrics import SCORE_COLUMNS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run_benchmarks.py"


def _module():
    spec = importlib.util.spec_from_file_location("run_benchmarks", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _scores() -> pd.DataFrame:
    rows = []
    for method, overall in (("uncorrected", 0.5), ("harmony", 0.6), ("cpDistiller[defaults_s0]", 0.7),
                            ("cpDistiller[defaults_s1]", 0.8), ("cpDistiller[paper_s0]", 0.4)):
        rows += [(method, "technical", "", "aggregate", overall, 4, ""),
                 (method, "biological", "", "aggregate", overall, 6, ""),
                 (method, "overall", "", "aggregate", overall, 10, ""),
                 (method, "position", "", "aggregate", 0.9, 8, ""),
                 (method, "kbet", "batch", "technical", overall, 3, "")]
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def test_seed_table_and_summary():
    mod = _module()
    scores = _scores()
    seeds = mod.seed_table(scores)
    assert seeds.loc["cpDistiller (defaults)", "seeds"] == 2
    assert seeds.loc["cpDistiller (defaults)", "overall"] == "0.750 ± 0.071"
    assert seeds.loc["cpDistiller (defaults)", "Δoverall"] == "+0.250"
    assert seeds.loc["cpDistiller (paper)", "Δoverall"] == "-0.100"
    table = pd.DataFrame({"status": "ok"}, index=pd.Index(list(dict.fromkeys(scores["method"])), name="method"))
    run = {"name": "demo", "desc": "d", "rc": 0, "wall": 1.0, "table": table, "scores": scores}
    args = argparse.Namespace(methods="all", epochs=None, seeds=[0, 1], null_size=100)
    md = mod.summary_markdown([run], args)
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method |") and rows[1].startswith("| uncorrected | 0.500 |")
    assert "| harmony | 0.600 (+0.100) |" in md
    assert "0.750 ± 0.071" in md


def test_reuse_references_keeps_the_saved_reference_rows_only(tmp_path, monkeypatch):
    import json

    mod = _module()
    monkeypatch.setattr(mod, "RESULTS", tmp_path)
    _scores().to_csv(tmp_path / "demo_scores.csv", index=False)
    pd.DataFrame({"status": ["ok"]}, index=pd.Index(["uncorrected"], name="method")).to_csv(tmp_path / "demo.csv")
    info = {"date": "2026-12-01 17:30 UTC", "commit": "0d956ca", "failed": {"harmony": "failed (exit 1)"},
            "commands": ["cpdistiller benchmark demo --methods uncorrected,harmony --out x",
                         "cpdistiller benchmark demo --methods cpDistiller --out y"]}
    (tmp_path / "demo_run.json").write_text(json.dumps(info))
    saved = mod._saved_references("demo")
    assert set(saved["scores"]["method"]) == {"uncorrected", "harmony"}
    assert saved["status"] == {"uncorrected": "ok", "harmony": "failed (exit 1)"}
    assert saved["commands"] == [info["commands"][0]]
    assert saved["provenance"] == {"date": "2026-12-01 17:30 UTC", "commit": "0d956ca"}
    run = {"name": "demo", "desc": "d", "rc": 0, "wall": 1.0, "scores": _scores(),
           "table": pd.DataFrame({"status": "ok"}, index=pd.Index(["uncorrected"], name="method")),
           "info": {"references_from": saved["provenance"]}}
    md = mod.summary_markdown([run], argparse.Namespace(methods="all", epochs=None, seeds=[0], null_size=100))
    assert "kept from the full run of 2026-12-01 17:30 UTC" in md
    monkeypatch.setattr(mod, "RESULTS", tmp_path / "empty")
    with pytest.raises(SystemExit, match="no saved results for demo"):
        mod._saved_references("demo")
