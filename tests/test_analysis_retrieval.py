"""Retrieval: sister and gene–compound pairs from metadata (pipe-separated targets), scores, query."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cpdistiller_core import CpDistillerError, Embedding, Profiles, Roles
from cpdistiller_core.analysis import retrieval


def screen(seed: int = 0, noise: float = 0.3) -> Profiles:
    """ORFs (2 alleles per gene), compounds with pipe-separated targets, DMSO; 4 replicate wells each.

    Each gene has a signature; its alleles and the compounds that target it share that signature
    (compounds with two targets get the mean of both), so the known pairs are retrievable.
    """
    rng = np.random.default_rng(seed)
    d = 16
    sig = {g: rng.normal(size=d) * 3 for g in ["EGFR", "BRAF", "MTOR", "TP53", "MYC", "KRAS"]}
    perts = []  # (name, gene, target, vector)
    for g in sig:
        for a in ("wt", "mut"):
            perts.append((f"{g}_{a}", g, None, sig[g]))
    perts.append(("erlotinib", None, "EGFR", sig["EGFR"]))
    perts.append(("lapatinib", None, "EGFR|ERBB2", sig["EGFR"]))
    perts.append(("vemurafenib", None, "BRAF", sig["BRAF"]))
    perts.append(("torin", None, "MTOR|PIK3CA", sig["MTOR"]))
    perts.append(("gefitinib", None, "EGFR", sig["EGFR"]))
    perts.append(("dabrafenib", None, "BRAF", sig["BRAF"]))
    perts.append(("rapamycin", None, "MTOR", sig["MTOR"]))
    perts.append(("sotorasib", None, "KRAS", sig["KRAS"]))
    perts.append(("idasanutlin", None, "MDM2|TP53", sig["TP53"]))
    perts.append(("nutlin", None, "MDM2", rng.normal(size=d) * 3))  # target not on the screen
    perts.append(("DMSO", None, None, np.zeros(d)))
    rows, X = [], []
    for name, gene, target, vec in perts:
        reps = 16 if name == "DMSO" else 4
        for _ in range(reps):
            rows.append({"Metadata_pert": name, "Metadata_gene": gene, "Metadata_target": target})
            X.append(vec + noise * rng.normal(size=d))
    meta = pd.DataFrame(rows)
    n = len(meta)
    meta.insert(0, "Metadata_Well", [f"{chr(65 + (i // 24) % 16)}{i % 24 + 1:02d}" for i in range(n)])
    meta.insert(0, "Metadata_Plate", "P1")
    roles = Roles(plate="Metadata_Plate", well="Metadata_Well", perturbation="Metadata_pert",
                  control="Metadata_pert", negative_values=("DMSO",))
    return Profiles(meta, np.array(X), [f"f{j}" for j in range(d)], roles)


def test_symbols_split_pipes_and_ignore_missing():
    assert retrieval.symbols(["EGFR|erbb2 ", None, "", "MTOR"]) == [
        frozenset({"EGFR", "ERBB2"}), frozenset(), frozenset(), frozenset({"MTOR"})]


def test_gene_compound_pairs_from_pipe_separated_targets():
    p = screen()
    pairs = retrieval.gene_compound_pairs(p, "Metadata_gene", "Metadata_target")
    got = set(zip(pairs["a"], pairs["b"], pairs["annotation"]))
    assert ("EGFR_wt", "lapatinib", "EGFR") in got and ("EGFR_mut", "erlotinib", "EGFR") in got
    assert ("MTOR_wt", "torin", "MTOR") in got and ("BRAF_mut", "vemurafenib", "BRAF") in got
    assert ("TP53_wt", "idasanutlin", "TP53") in got
    assert len(got) == 18  # 9 compounds with a screened target x 2 alleles; nutlin (MDM2) pairs with none
    assert not any(b == "nutlin" for _, b, _ in got)
    assert "DMSO" not in set(pairs["a"]) | set(pairs["b"])


def test_sister_pairs():
    p = screen()
    pairs = retrieval.sister_pairs(p, "Metadata_gene")
    assert len(pairs) == 6
    assert set(zip(pairs["a"], pairs["b"])) >= {("EGFR_mut", "EGFR_wt"), ("TP53_mut", "TP53_wt")}
    # compounds sharing a target are sisters on the target column
    cpd = retrieval.sister_pairs(p, "Metadata_target")
    assert set(zip(cpd["a"], cpd["b"], cpd["annotation"])) == {
        ("erlotinib", "lapatinib", "EGFR"), ("erlotinib", "gefitinib", "EGFR"), ("gefitinib", "lapatinib", "EGFR"),
        ("dabrafenib", "vemurafenib", "BRAF"), ("rapamycin", "torin", "MTOR"), ("idasanutlin", "nutlin", "MDM2")}


def test_evaluate_retrieval_scores_signal_above_noise():
    clean = screen()
    rng = np.random.default_rng(1)
    scrambled = clean.replace(X=rng.normal(size=clean.X.shape))  # no biology left
    embs = {"corrected": Embedding.from_profiles(clean, clean.X, "corrected"),
            "uncorrected": Embedding.from_profiles(scrambled, scrambled.X, "uncorrected")}
    out = retrieval.evaluate_retrieval(embs, "Metadata_gene", "Metadata_target", null_size=1000)
    s = out["summary"].set_index(["method", "task", "metric"])["value"]
    assert s[("corrected", "sister", "fraction_retrieved")] == 1.0
    assert s[("corrected", "gene_compound", "fraction_retrieved")] == 1.0
    assert s[("uncorrected", "gene_compound", "fraction_retrieved")] < 0.5
    assert s[("corrected", "replicates", "mAP")] > 0.9 > s[("uncorrected", "replicates", "mAP")]
    assert s[("corrected", "shared_gene", "mAP")] > s[("uncorrected", "shared_gene", "mAP")]
    assert {"corrected", "uncorrected"} == set(out["activity"]["method"])
    wide = retrieval.paired_scores(out["activity"], "perturbation")
    assert list(wide.columns) == ["perturbation", "corrected", "uncorrected"]
    assert (wide["corrected"] > wide["uncorrected"]).mean() > 0.8
    # the found pairs in the table are the 18 gene–compound pairs
    gc = out["pairs"][(out["pairs"]["task"] == "gene_compound") & (out["pairs"]["method"] == "corrected")]
    assert len(gc) == 18 and gc["retrieved"].all()


def test_missing_columns_are_reported_not_faked():
    p = screen()
    emb = Embedding.from_profiles(p, p.X, "x")
    out = retrieval.evaluate_retrieval({"x": emb}, None, "Metadata_target", null_size=500)
    row = out["summary"].set_index(["task", "metric"]).loc[("gene_compound", "fraction_retrieved")]
    assert np.isnan(row["value"]) and "gene column" in row["note"]
    with pytest.raises(CpDistillerError):
        retrieval.sister_pairs(p, "Metadata_nope")


def test_query_by_perturbation_and_by_gene_symbol():
    p = screen()
    q = retrieval.query(p, "erlotinib", "Metadata_gene", "Metadata_target", top=5)
    assert list(q["rank"]) == [1, 2, 3, 4, 5]
    assert set(q["perturbation"][:4]) == {"lapatinib", "gefitinib", "EGFR_wt", "EGFR_mut"}
    assert q["known_pair"][:4].all() and not q["known_pair"][4:].any()
    assert (np.diff(q["cosine_similarity"]) <= 0).all()
    assert "erlotinib" not in set(q["perturbation"]) and "DMSO" not in set(q["perturbation"])
    # a gene symbol (any case): its genetic perturbations are the query, compounds targeting it the hits
    g = retrieval.query(p, "mtor", "Metadata_gene", "Metadata_target", top=3)
    assert set(g["perturbation"][:2]) == {"torin", "rapamycin"} and set(g["shared"][:2]) == {"MTOR"}
    assert not {"MTOR_wt", "MTOR_mut"} & set(g["perturbation"])
    with pytest.raises(CpDistillerError, match="neither"):
        retrieval.query(p, "NOT_THERE", "Metadata_gene", "Metadata_target")


def test_annotation_pairs_and_one_null_for_retrieve_and_evaluate():
    """A compound screen scored through an annotation column; the same pairs give the same fraction
    retrieved in `retrieve` (evaluate_retrieval) and `evaluate` (the scorecard's extra row)."""
    from cpdistiller_core import metrics

    p = screen()
    meta = p.meta.copy()
    meta["Metadata_moa"] = meta["Metadata_target"].str.split("|").str[0]  # e.g. EGFR inhibitor class
    p = p.replace(meta=meta)
    emb = Embedding.from_profiles(p, p.X, "x")
    pairs = retrieval.task_pairs(emb, "annotation", None, None, annotation_col="Metadata_moa")
    assert pairs.attrs["null"] == "union" and len(pairs) == 6
    out = retrieval.evaluate_retrieval({"x": emb}, None, None, null_size=500, annotation_col="Metadata_moa")
    s = out["summary"].set_index(["task", "metric"])["value"]
    frac_retrieve = s[("annotation", "fraction_retrieved")]
    assert not np.isnan(s[("shared_gene", "mAP")])  # annotation mAP without any gene column
    card = metrics.evaluate(emb, pairs={"annotation": pairs}, config=metrics.EvaluationConfig(null_size=500))
    row = card.scores.set_index(["metric", "effect"]).loc[("fraction_retrieved", "annotation")]
    assert row["value"] == pytest.approx(frac_retrieve)
    # sister pairs: one definition (retrieval.sister_pairs is metrics.pairs_from_annotation)
    pd.testing.assert_frame_equal(retrieval.sister_pairs(emb, "Metadata_gene"),
                                  metrics.pairs_from_annotation(emb, "Metadata_gene"))
