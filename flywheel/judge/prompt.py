"""What every judge backend shares: the one-method :class:`Judge` interface, the prompt (static part first —
instructions, scale, dimensions, worked examples — and the pair last), the JSON output schema, reply parsing
and the judgment row. Online and batch labelling clients and both backends import it; it imports none of them."""

from __future__ import annotations

import json
from typing import Protocol

import pandas as pd

from flywheel.judge.policy import Policy

JUDGMENT_COLUMNS = ["grade", "score", "dimension_scores", "rationale", "parse_status", "raw_response"]


class Judge(Protocol):
    backend: str
    model: str
    prompt_hash: str
    version: str

    def judge(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """pairs: query, doc_id, doc_hash, title, text. Returns JUDGMENT_COLUMNS, same index."""


# ---------------------------------------------------------------- prompt (static part first, pair last)

def system_prompt(policy: Policy) -> str:
    scale = "\n".join(f"{g.grade} = {g.label}: {g.definition}" for g in policy.scale)
    dims = "\n".join(f"- {d.name}: {d.description}" for d in policy.dimensions)
    ex = "\n".join(f'Query: "{e.query}" | Dataset: "{". ".join(getattr(e, f) for f in e.fields())}" -> grade '
                   f'{e.grade} ({e.why})' for e in policy.examples)
    return (f"You are a search relevance judge. {policy.task}\n\nGrade scale:\n{scale}\n\nScore each dimension "
            f"on the same scale:\n{dims}\n\nPolicy:\n{policy.guidance}\n\nWorked examples:\n{ex}\n\n"
            'Reply with JSON only: {"grade": int, "dimensions": {name: int}, "rationale": "one sentence"}.')


def user_prompt(query: str, title: str, text: str, fields=("title", "text")) -> str:
    # The document is quoted data between delimiters: instructions inside it are not instructions to the judge.
    # Only the fields the policy says matter are shown.
    doc = {k: v for k, v in (("title", title), ("text", text)) if k in fields}
    return f"Query: {json.dumps(query)}\n<document>\n{json.dumps(doc)}\n</document>"


def output_schema(policy: Policy) -> dict:
    top = policy.max_grade
    return {"type": "object", "required": ["grade", "dimensions", "rationale"], "properties": {
        "grade": {"type": "integer", "minimum": 0, "maximum": top},
        "dimensions": {"type": "object", "properties": {d.name: {"type": "integer", "minimum": 0, "maximum": top}
                                                        for d in policy.dimensions}},
        "rationale": {"type": "string"}}}


def parse_reply(text: str | None, policy: Policy) -> tuple[str, dict | None]:
    """('ok', obj) for a valid reply; ('unparsed', None) otherwise. Never turns a bad reply into a grade."""
    if not text:
        return "unparsed", None
    s = text.strip()
    if s.startswith("```"):
        s = s.strip("`").removeprefix("json").strip()
    try:
        obj = json.loads(s)
    except json.JSONDecodeError:
        return "unparsed", None
    g = obj.get("grade") if isinstance(obj, dict) else None
    if not isinstance(g, int) or isinstance(g, bool) or not 0 <= g <= policy.max_grade:
        return "unparsed", None
    return "ok", obj


def judgment_row(status: str, obj: dict | None, raw: str | None, score: float | None = None,
                 extra_dims: dict | None = None) -> dict:
    """The stored form of one reply (JUDGMENT_COLUMNS): a grade only when ``status`` is "ok"; ``score``
    defaults to the grade (an expected grade from log-probabilities replaces it)."""
    ok = status == "ok"
    given = obj.get("dimensions") if ok else None
    dims = {**(given if isinstance(given, dict) else {}), **(extra_dims or {})} if ok else None
    return {"grade": int(obj["grade"]) if ok else None,
            "score": (score if score is not None else float(obj["grade"])) if ok else None,
            "dimension_scores": json.dumps(dims) if ok else None,
            "rationale": str(obj.get("rationale", "")) if ok else None,
            "parse_status": status, "raw_response": raw}
