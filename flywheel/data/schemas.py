"""Arrow schemas of the lake's tables: the data contracts every writer and reader agrees on.

Each table also has a great-expectations suite (``flywheel.data.contracts``) run at the boundary where it is written.
``DAILY`` tables are partitioned by ``date=YYYY-MM-DD``.
"""

from __future__ import annotations

import pyarrow as pa

PARSE_STATUSES = ("ok", "unparsed", "refused", "truncated", "error")

QUERIES = pa.schema([
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("domain", pa.string()),          # site/vertical the query was typed on, if known
    pa.field("source", pa.string(), nullable=False),  # dataset it came from (golden:socrata, beir:<name>, ...)
    pa.field("split", pa.string()),           # calibration | test | null (not in the golden set)
])

DOCUMENTS = pa.schema([
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("title", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("domain", pa.string()),
    pa.field("source", pa.string(), nullable=False),
    pa.field("content_hash", pa.string(), nullable=False),  # sha256 of title+text: the document's version
])

CANDIDATES = pa.schema([
    pa.field("date", pa.string(), nullable=False),
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("doc_hash", pa.string(), nullable=False),
    pa.field("retrieved_by", pa.string(), nullable=False),  # "bm25", "dense", "bm25+dense", "random"
    pa.field("bm25_rank", pa.int32()),
    pa.field("dense_rank", pa.int32()),
    pa.field("bm25_score", pa.float32()),
    pa.field("dense_score", pa.float32()),
    pa.field("predicted_grade", pa.int8()),                # cheap pre-judge grade used for stratification
])

GOLDEN_LABELS = pa.schema([
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("rater_id", pa.string(), nullable=False),
    pa.field("grade", pa.int8(), nullable=False),           # this rater's judgment, 0..the policy's max grade
    pa.field("rater_trust", pa.float32()),
    pa.field("aggregated_grade", pa.float32(), nullable=False),  # mean of the pair's raters
    pa.field("n_raters", pa.int16(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
])

JUDGE_LABELS = pa.schema([
    pa.field("date", pa.string(), nullable=False),
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("doc_hash", pa.string(), nullable=False),
    pa.field("grade", pa.int8()),                 # null unless parse_status == "ok"
    pa.field("score", pa.float32()),              # continuous expected grade, when the backend has one
    pa.field("dimension_scores", pa.string()),    # JSON object: dimension -> score
    pa.field("rationale", pa.string()),
    pa.field("parse_status", pa.string(), nullable=False),
    pa.field("raw_response", pa.string()),
    pa.field("policy_hash", pa.string(), nullable=False),
    pa.field("judge_backend", pa.string(), nullable=False),
    pa.field("judge_model", pa.string(), nullable=False),
    pa.field("prompt_hash", pa.string(), nullable=False),
    pa.field("judge_version", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
])

ENGAGEMENT_EVENTS = pa.schema([
    pa.field("date", pa.string(), nullable=False),
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("position", pa.int16(), nullable=False),
    pa.field("impressions", pa.int32(), nullable=False),
    pa.field("clicks", pa.int32(), nullable=False),
    pa.field("applies", pa.int32(), nullable=False),
    pa.field("simulated", pa.bool_(), nullable=False),
])

TEACHER_SCORES = pa.schema([
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("doc_hash", pa.string(), nullable=False),
    pa.field("teacher", pa.string(), nullable=False),        # rung name, e.g. "teacher", "mid"
    pa.field("model_version", pa.string(), nullable=False),  # content hash of the checkpoint
    pa.field("score", pa.float32(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
])

EVAL_RESULTS = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("system", pa.string(), nullable=False),   # bm25, judge, teacher, mid, student, student_pruned, ...
    pa.field("split", pa.string(), nullable=False),
    pa.field("metric", pa.string(), nullable=False),
    pa.field("value", pa.float64(), nullable=False),
    pa.field("n_params", pa.int64()),
    pa.field("items_per_s", pa.float64()),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
])

SCHEMAS: dict[str, pa.Schema] = {
    "queries": QUERIES,
    "documents": DOCUMENTS,
    "candidates": CANDIDATES,
    "golden_labels": GOLDEN_LABELS,
    "judge_labels": JUDGE_LABELS,
    "engagement_events": ENGAGEMENT_EVENTS,
    "teacher_scores": TEACHER_SCORES,
    "eval_results": EVAL_RESULTS,
}
DAILY = {"candidates", "judge_labels", "engagement_events"}
