"""great-expectations 1.x suites, one per lake table, run where the table is written.

Each expectation carries ``meta.protects``: what goes wrong downstream if it fails. great-expectations is
imported lazily (about 4 s) and its context is ephemeral: suites live in code, not in a project directory.

Grades have no fixed scale here: the policy defines it. ``judge_labels`` are checked against the grades their
caller passes (``range(policy.max_grade + 1)``); ``golden_labels`` too when the caller knows the scale, and
otherwise only for being non-negative (golden sets are seeded before any policy is read).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from flywheel.data.schemas import PARSE_STATUSES, SCHEMAS


class ContractError(ValueError):
    """A table failed its data contract; the message lists each failed expectation and why it matters."""


@dataclass(frozen=True)
class Rule:
    kind: str          # name of a great_expectations.expectations class
    kwargs: dict
    protects: str


def _not_null(col: str, why: str) -> Rule:
    return Rule("ExpectColumnValuesToNotBeNull", {"column": col}, why)


def _unique(cols: list[str], why: str) -> Rule:
    return Rule("ExpectCompoundColumnsToBeUnique", {"column_list": cols}, why)


RULES: dict[str, list[Rule]] = {
    "queries": [
        _not_null("query_id", "every label and metric joins on query_id"),
        Rule("ExpectColumnValuesToBeUnique", {"column": "query_id"}, "one row per query, or joins multiply rows"),
        Rule("ExpectColumnValueLengthsToBeBetween", {"column": "text", "min_value": 1}, "empty queries cannot be judged"),
        Rule("ExpectColumnValuesToBeInSet", {"column": "split", "value_set": ["calibration", "test"], "mostly": 1.0},
             "test queries must be recognisable so that they never reach training"),
    ],
    "documents": [
        _not_null("doc_id", "every label joins on doc_id"),
        _unique(["doc_id", "content_hash"], "one row per document version"),
        Rule("ExpectColumnValueLengthsToEqual", {"column": "content_hash", "value": 64}, "labels are keyed by sha256 of the content"),
    ],
    "candidates": [
        _unique(["date", "query_id", "doc_id"], "a pair retrieved twice would be labelled and paid for twice"),
        Rule("ExpectColumnValuesToBeInSet", {"column": "retrieved_by", "value_set": ["bm25", "dense", "bm25+dense", "random"]},
             "retrieval provenance drives stratification and audits"),
        _not_null("doc_hash", "deduplication against the label store uses the document's content hash"),
    ],
    "golden_labels": [            # + the grade rules of grade_rules()
        Rule("ExpectColumnValuesToBeInSet", {"column": "split", "value_set": ["calibration", "test"]}, "calibration and held-out test must not mix"),
        _unique(["query_id", "doc_id", "rater_id"], "one judgment per rater and pair"),
    ],
    "judge_labels": [
        Rule("ExpectColumnValuesToBeInSet", {"column": "parse_status", "value_set": list(PARSE_STATUSES)}, "parse failures are their own state, never a negative"),
        _not_null("policy_hash", "every label must say which policy version produced it"),
        _not_null("judge_version", "every label must say which judge produced it"),
        _not_null("run_id", "every label must be traceable to its run"),
        _unique(["query_id", "doc_hash", "judge_version"], "a pair is never labelled (paid for) twice by the same judge"),
    ],
    "engagement_events": [
        Rule("ExpectColumnValuesToBeBetween", {"column": "clicks", "min_value": 0}, "counts are non-negative"),
        Rule("ExpectColumnPairValuesAToBeGreaterThanB", {"column_A": "impressions", "column_B": "clicks", "or_equal": True},
             "a click needs an impression"),
    ],
    "teacher_scores": [
        _not_null("model_version", "teacher outputs are reused only with the model version that made them"),
        Rule("ExpectColumnValuesToNotBeNull", {"column": "score"}, "a missing score would silently drop a training pair"),
        _unique(["query_id", "doc_hash", "teacher", "model_version"], "one score per pair and teacher version"),
    ],
    "eval_results": [
        Rule("ExpectColumnValuesToNotBeNull", {"column": "value"}, "a metric without a value cannot gate promotion"),
        _unique(["run_id", "system", "split", "metric"], "one figure per run, system, split and metric"),
    ],
}


GRADED = ("golden_labels", "judge_labels")     # tables whose grade column is checked against a scale


def grade_rules(table: str, grades: tuple[int, ...] | None) -> list[Rule]:
    """The grade expectations of ``table``: membership of ``grades`` (the policy's scale), or, for golden labels
    when no scale is given, non-negative grades."""
    if table == "judge_labels":
        return [Rule("ExpectColumnValuesToBeInSet", {"column": "grade", "value_set": list(grades)},
                     "a label outside the policy scale would train the ranker on nonsense")]
    if table != "golden_labels":
        return []
    if grades is None:
        return [Rule("ExpectColumnValuesToBeBetween", {"column": "grade", "min_value": 0},
                     "grades are non-negative integers (a policy's scale is 0..max_grade)"),
                Rule("ExpectColumnValuesToBeBetween", {"column": "aggregated_grade", "min_value": 0},
                     "aggregated grade is a mean of non-negative grades")]
    return [Rule("ExpectColumnValuesToBeInSet", {"column": "grade", "value_set": list(grades)},
                 "grades outside the policy scale corrupt agreement statistics"),
            Rule("ExpectColumnValuesToBeBetween", {"column": "aggregated_grade", "min_value": grades[0],
                                                   "max_value": grades[-1]},
                 f"aggregated grade is a mean of grades on the scale {grades[0]}..{grades[-1]}")]


@functools.lru_cache(maxsize=1)
def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    try:
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # older layouts of the config object: bars are cosmetic only
        pass
    return ctx, ctx.data_sources.add_pandas("flywheel")


_definitions: dict = {}
_lock = threading.Lock()


def _definition(table: str, grades: tuple[int, ...] | None):
    """The validation definition of ``table`` on a grade scale (None: no scale), built once per scale."""
    key = (table, grades)
    with _lock:
        if key not in _definitions:
            import great_expectations as gx

            ctx, source = _context()
            name = table if grades is None else f"{table}_grades_{'_'.join(map(str, grades))}"
            asset = source.add_dataframe_asset(name)
            batch = asset.add_batch_definition_whole_dataframe(f"{name}_all")
            suite = ctx.suites.add(gx.ExpectationSuite(name=f"{name}_contract"))
            for rule in grade_rules(table, grades) + RULES[table]:
                cls = getattr(gx.expectations, rule.kind)
                suite.add_expectation(cls(**rule.kwargs, meta={"protects": rule.protects}))
            _definitions[key] = ctx.validation_definitions.add(
                gx.ValidationDefinition(name=f"{name}_validation", data=batch, suite=suite))
        return _definitions[key]


def validate(table: str, df: pd.DataFrame, grades: Iterable[int] | None = None) -> None:
    """Run ``table``'s suite on ``df``; raise :class:`ContractError` naming every failed expectation.

    ``grades``: the policy's scale, ``range(policy.max_grade + 1)``; required for ``judge_labels``, optional for
    ``golden_labels`` (without it, grades need only be non-negative), ignored by tables without grades.
    """
    if table not in RULES:
        raise KeyError(f"no contract for table {table!r}; known: {sorted(SCHEMAS)}")
    scale = None
    if table in GRADED and grades is not None:
        scale = tuple(sorted({int(g) for g in grades}))
        if not scale:
            raise ValueError(f"{table}: grades is empty; pass the policy's scale, range(policy.max_grade + 1)")
    if table == "judge_labels" and scale is None:
        raise ValueError("judge_labels are checked against the policy's grade scale: "
                         "pass grades=range(policy.max_grade + 1)")
    if df.empty:
        return
    result = _definition(table, scale).run(batch_parameters={"dataframe": df})
    if result.success:
        return
    failures = []
    for r in result.results:
        if not r.success:
            cfg = r.expectation_config
            unexpected = (r.result or {}).get("partial_unexpected_list", [])[:3]
            failures.append(f"- {cfg.type} {cfg.kwargs.get('column') or cfg.kwargs.get('column_list') or ''}: "
                            f"{cfg.meta.get('protects')} (e.g. {unexpected})")
    raise ContractError(f"table {table!r} failed its contract ({len(failures)} expectation(s)):\n" + "\n".join(failures))
