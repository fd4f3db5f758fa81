"""The decoder family through the same ladder, evaluation and registry code as the encoder family: a Qwen3 teacher
built from its config, mid and student derived from the rung above by depth (Minitron-style) and distilled on
stored teacher scores, the student pruned by block influence; the registered model, loaded by alias, scores like
the checkpoint whatever the batch composition."""

import numpy as np
import pandas as pd
import pytest

from flywheel.data.lake import Lake
from flywheel.data.lake import open_lake as lake
from flywheel.training import ladder
from tests.helpers import labelled_day

DATE = "2026-05-01"


@pytest.mark.slow
def test_decoder_ladder_distils_prunes_registers_and_scores_consistently(monkeypatch):
    import mlflow.pyfunc

    from flywheel.evaluation.evaluate import evaluate_all
    from flywheel.serving.registry import log_ranker, set_alias
    from models.ranker import load_contract, load_ranker, score_pairs

    paths, cfg, cal = labelled_day("configs/decoder.yaml", DATE)
    jv = cal["judge_version"]

    teacher = ladder.train_teacher(jv, "fp", cfg, paths)
    mid = ladder.distil("mid", teacher, jv, cfg, paths)
    student = ladder.distil("student", mid, jv, cfg, paths)
    pruned = ladder.prune_student(student, jv, cfg, paths)
    assert [r["layers"] for r in (teacher, mid, student, pruned)] == [6, 5, 4, 3]
    assert teacher["params_non_embedding"] > mid["params_non_embedding"] > student["params_non_embedding"] \
        > pruned["params_non_embedding"]
    for r in (teacher, mid, student, pruned):
        c = load_contract(r["path"])
        assert c.family == "decoder" and c.score == "logit_yes_minus_no"
    assert teacher["loss_last"] < teacher["loss_first"]
    # score-level distillation: each rung ranks the training pairs like the rung above it
    from scipy.stats import spearmanr

    for child, parent in ((mid, teacher), (student, mid), (pruned, student)):
        a = ladder.teacher_scores(parent, jv, paths)
        m, t, c = load_ranker(child["path"])
        s = score_pairs(m, t, c, a["query"].tolist(), a.title.tolist(), a.text.tolist())
        rho = spearmanr(s, a.teacher_score).statistic
        assert rho > 0.7, (child["rung"], parent["rung"], rho)
    # teacher outputs are stored with their model version and read back, never recomputed: the scorer is not
    # called again (the lake ignores rewrites of existing keys, so counting rows could not tell)
    import models.ranker

    stored = lake(paths).read("teacher_scores")
    stored = stored[stored.model_version == teacher["model_version"]]
    assert len(stored) == teacher["pairs"]
    scored = []
    real = models.ranker.score_pairs
    monkeypatch.setattr(models.ranker, "score_pairs", lambda *a, **k: scored.append(len(a[3])) or real(*a, **k))
    again = ladder.teacher_scores(teacher, jv, paths)
    assert scored == [] and again.teacher_score.notna().all()
    got = again.set_index(["query_id", "doc_hash"]).teacher_score
    want = stored.set_index(["query_id", "doc_hash"]).score
    np.testing.assert_allclose(got.loc[want.index].to_numpy(dtype=float), want.to_numpy(dtype=float))
    # a pair the table lacks is scored, and only that one
    hidden = (stored.query_id.iloc[0], stored.doc_hash.iloc[0])
    real_read = Lake.read

    def read_without_one(self, table, *a, **k):
        df = real_read(self, table, *a, **k)
        return df[~((df.query_id == hidden[0]) & (df.doc_hash == hidden[1]))] if table == "teacher_scores" else df

    parts = set((paths.lake / "teacher_scores").rglob("part-*.parquet"))
    monkeypatch.setattr(Lake, "read", read_without_one)
    ladder.teacher_scores(teacher, jv, paths)
    monkeypatch.undo()
    for new in set((paths.lake / "teacher_scores").rglob("part-*.parquet")) - parts:
        new.unlink()                                  # the rescored pair is a duplicate row: keep the lake clean
    assert scored == [1]

    ev = evaluate_all({"teacher": teacher, "student_pruned": pruned}, jv, "decoder-test", cfg, paths)
    for name in ("teacher", "student_pruned"):
        assert 0.0 < ev["systems"][name]["ndcg@10"] <= 1.0 and ev["systems"][name]["items_per_s"] > 0

    info = log_ranker(pruned, {"ndcg@10": ev["systems"]["student_pruned"]["ndcg@10"]}, {"judge_version": jv},
                      paths, "test-decoder-ranker")
    set_alias("test-decoder-ranker", "champion", info["version"], paths)
    served = mlflow.pyfunc.load_model("models:/test-decoder-ranker@champion")
    df = pd.DataFrame({"query": ["crime", "budget", "crime", "school test scores", "crime"],
                       "title": ["Crime incidents", "City budget", "Parks", "School results", "Police stations"],
                       "text": ["by area and month", "spending by department " * 8, "park list", "by school", ""]})
    m, t, c = load_ranker(pruned["path"])
    alone = [score_pairs(m, t, c, [q], [a], [b])[0] for q, a, b in zip(df["query"], df.title, df.text)]
    np.testing.assert_allclose(list(served.predict(df)), alone, atol=1e-4)
    np.testing.assert_allclose(list(served.predict(df.iloc[::-1]))[::-1], alone, atol=1e-4)
