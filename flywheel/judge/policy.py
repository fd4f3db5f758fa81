"""Grading policies as product managers write them: Markdown with a YAML header.

The header holds what the judge needs as data (grade scale, dimensions, which document fields matter, worked
examples); the Markdown body is the guidance given to the judge verbatim. ``load_policy`` turns a file into a
typed :class:`Policy` or raises :class:`PolicyError` listing every mistake with its line and how to fix it.
The policy's version is the sha256 of its normalised content.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flywheel.data.lake import sha256_text
from flywheel.settings import Paths


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml: a policy with thousands of examples parses fast


class PolicyError(ValueError):
    def __init__(self, path: str, problems: list[tuple[int, str]]):
        self.path, self.problems = path, problems
        super().__init__("\n".join(f"{path}:{line}: {msg}" for line, msg in problems))


class Grade(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grade: int = Field(ge=0, le=9)
    label: str = Field(min_length=1)
    definition: str = Field(min_length=10)


class Dimension(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = Field(min_length=10)
    weight: float = Field(gt=0, default=1.0)


class Example(BaseModel):
    """A worked example: a query, a document given by exactly the policy's ``document_fields``, its grade, why."""
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1)
    title: str = ""
    text: str = ""
    grade: int
    why: str = Field(min_length=5)

    def fields(self) -> list[str]:
        return [f for f in DOCUMENT_FIELDS if getattr(self, f).strip()]


DOCUMENT_FIELDS = ("title", "text")


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    domain: str
    owner: str
    task: str = Field(min_length=10)
    scale: list[Grade] = Field(min_length=2)
    dimensions: list[Dimension] = Field(min_length=1)
    document_fields: list[Literal["title", "text"]] = Field(min_length=1)
    examples: list[Example] = Field(default_factory=list)
    guidance: str = ""   # the Markdown body

    @field_validator("scale")
    @classmethod
    def _contiguous(cls, v: list[Grade]) -> list[Grade]:
        grades = [g.grade for g in v]
        if grades != list(range(len(v))):
            raise ValueError(f"grades must be 0,1,2,... in order without gaps; got {grades}")
        return v

    @model_validator(mode="after")
    def _consistent(self, info) -> "Policy":
        if not (info.context or {}).get("defer_consistency"):
            problems = consistency_problems(self)
            if problems:
                raise ValueError("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems))
        return self

    @property
    def max_grade(self) -> int:
        return len(self.scale) - 1

    @property
    def version(self) -> str:
        """Content hash: any change to the scale, dimensions, examples or guidance is a new version."""
        return sha256_text(json.dumps(self.model_dump(), sort_keys=True, ensure_ascii=False))[:16]


def consistency_problems(policy: Policy) -> list[tuple[tuple, str]]:
    """What the fields are each valid but do not agree on: an example's grade off the scale, an example that does
    not show the judge exactly the document fields the policy names. (YAML path, message with the fix.)"""
    top, want = len(policy.scale) - 1, [f for f in DOCUMENT_FIELDS if f in policy.document_fields]
    out = []
    for i, ex in enumerate(policy.examples):
        if not 0 <= ex.grade <= top:
            out.append((("examples", i, "grade"), f"examples.{i}.grade: {ex.grade} is not on the scale 0..{top}"
                                                  f" — fix: use a grade between 0 and {top}"))
        have = ex.fields()
        if have != want:
            missing, extra = [f for f in want if f not in have], [f for f in have if f not in want]
            fix = "; ".join(([f"add a non-empty {', '.join(missing)}"] if missing else [])
                            + ([f"remove {', '.join(extra)} (the judge never sees it)"] if extra else []))
            out.append((("examples", i), f"examples.{i}: shows the document as {have or 'nothing'}, but "
                                         f"document_fields is {want} — fix: {fix}"))
    return out


def _line_index(node, prefix=()) -> dict[tuple, int]:
    """Map each YAML path (keys and list indices) to its 1-based line in the header."""
    out = {prefix: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            out[prefix + (k.value,)] = k.start_mark.line + 1
            out.update(_line_index(v, prefix + (k.value,)))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.update(_line_index(v, prefix + (i,)))
    return out


_FIX = {
    "missing": "add this field",
    "extra_forbidden": "remove it, or check its spelling against the template in policies/README.md",
    "string_too_short": "write a fuller text",
    "string_pattern_mismatch": "use lower-case letters, digits, '_' or '-'",
    "literal_error": "use one of the allowed values",
    "too_short": "add more entries",
    "string_type": "write it as text in quotes, e.g. 'No' (unquoted, YAML reads yes/no/on/off as true/false "
                   "and bare numbers as numbers)",
}


def parse_policy(text: str, path: str = "<policy>") -> Policy:
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise PolicyError(path, [(1, "a policy starts with a YAML header between two '---' lines")])
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise PolicyError(path, [(1, "the YAML header is not closed: add a line '---' after it")]) from None
    header = "\n".join(lines[1:end])
    try:
        for event in yaml.parse(header, Loader=_Loader):
            if isinstance(event, yaml.AliasEvent):   # a few nested aliases expand to gigabytes: never worth it
                raise PolicyError(path, [(event.start_mark.line + 2, "YAML aliases (*name) are not allowed in a "
                                                                    "policy — fix: write the value out in full")])
        node = yaml.compose(header, Loader=_Loader)
        data = _Loader("").construct_document(node) if node is not None else None   # one parse, not two
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = (mark.line + 2) if mark else 2
        raise PolicyError(path, [(line, f"invalid YAML: {getattr(exc, 'problem', exc)}; check indentation and quoting")]) from None
    if not isinstance(data, dict):
        raise PolicyError(path, [(2, "the header must be a mapping of fields (name:, scale:, ...)")])
    index = _line_index(node) if node is not None else {}

    def line_of(loc: tuple) -> int:
        return next((index[loc[:k]] for k in range(len(loc), 0, -1) if loc[:k] in index), 1) + 1

    data["guidance"] = "\n".join(lines[end + 1:]).strip()
    try:
        policy = Policy.model_validate(data, context={"defer_consistency": True})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            where = ".".join(str(p) for p in loc) or "header"
            fix = _FIX.get(err["type"], "")
            problems.append((line_of(loc), f"{where}: {err['msg']}" + (f" — fix: {fix}" if fix else "")))
        raise PolicyError(path, sorted(problems)) from None
    if problems := consistency_problems(policy):
        raise PolicyError(path, sorted((line_of(loc), msg) for loc, msg in problems))
    return policy


def load_policy(path: str | Path) -> Policy:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no policy file at {p}; policies live in policies/*.md")
    return parse_policy(p.read_text(encoding="utf-8"), str(p))


def stored_policy(version: str, paths: Paths) -> Policy:
    """The policy of ``version`` from the copies ``ingest_policy`` keeps under the flywheel home."""
    found = sorted((paths.home / "policies").glob(f"*-{version}.md"))
    if not found:
        raise FileNotFoundError(f"policy version {version} is not in {paths.home / 'policies'}: "
                                f"ingest the policy (the flow's first stage) before checking its labels")
    return load_policy(found[0])


def ingest_policy(policy_path: str | Path, paths: Paths) -> dict:
    """Validate the policy, store a copy under its version, and append it to the version log."""
    policy = load_policy(policy_path)
    store = paths.home / "policies"
    store.mkdir(parents=True, exist_ok=True)
    copy = store / f"{policy.name}-{policy.version}.md"
    if not copy.exists():
        tmp = store / f".tmp-{policy.version}"
        shutil.copyfile(policy_path, tmp)
        os.replace(tmp, copy)
        with open(store / "versions.jsonl", "a") as log:
            log.write(json.dumps({"name": policy.name, "version": policy.version, "source": str(policy_path),
                                  "ingested_at": datetime.now(timezone.utc).isoformat()}) + "\n")
    return {"name": policy.name, "version": policy.version, "path": str(copy),
            "grades": len(policy.scale), "dimensions": [d.name for d in policy.dimensions]}
