"""Pseudo-queries exist for any corpus: titles where documents have them, leading sentences where not."""

import pandas as pd

from flywheel.data.pseudo import leading_sentence, pseudo_queries, shortfall


def test_leading_sentence_of_a_title_less_abstract():
    text = ("experimental investigation of the aerodynamics of a wing in a slipstream . an experimental study "
            "of a wing in a propeller slipstream was made.")
    assert leading_sentence(text) == "experimental investigation of the aerodynamics of a wing in a slipstream"
    assert leading_sentence("What is a boundary layer? It is thin.") == "What is a boundary layer"
    assert leading_sentence(" ".join(f"w{i}" for i in range(30)), max_words=5) == "w0 w1 w2 w3 w4"


def test_title_less_documents_give_pseudo_queries_and_a_shortfall_says_why():
    docs = pd.DataFrame({"doc_id": [f"d{i}" for i in range(6)],
                         "title": ["", "", "Budget 2020", "", "", ""],
                         "text": ["heat transfer in laminar flow. more.", "shock waves at mach three. more.",
                                  "x", "one. two.", "heat transfer in laminar flow. again.",
                                  "buckling of thin cylinders. more."]})
    queries = pd.DataFrame({"text": ["Buckling of thin cylinders"]})      # a golden query: never a pseudo-query
    got = pseudo_queries(docs, queries, 10, seed=0)
    assert set(got.text) == {"heat transfer in laminar flow", "shock waves at mach three", "Budget 2020"}
    assert dict(zip(got.text, got.method))["Budget 2020"] == "title"
    assert (got[got.text != "Budget 2020"].method == "text").all()
    s = shortfall(10, got, docs)
    assert s["made"] == 3 and s["by_method"] == {"text": 2, "title": 1} and "only 3 of 6" in s["why_fewer"]
    assert "why_fewer" not in shortfall(2, pseudo_queries(docs, queries, 2, seed=0), docs)
    assert pseudo_queries(docs, queries, 2, seed=4).equals(pseudo_queries(docs, queries, 2, seed=4))
