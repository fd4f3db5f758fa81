"""The scoring service's request and response shapes, and the limits every request is checked against before
anything is tokenised.

- ``POST /score`` — the project's own contract: ``{"query", "documents": [{"title", "text"}]}`` →
  ``{"scores": [...], "version", "model", "model_version"}``, scores in input order.
- ``POST /v1/rerank`` — the shape vLLM, Text Embeddings Inference, Jina and Cohere rerank clients send:
  ``{"query", "documents": [str | {"text", "title"?}], "top_n"?, "return_documents"?, "model"?}`` (TEI's
  ``texts`` / ``return_text`` accepted too) → ``{"id", "model", "results": [{"index", "relevance_score",
  "document"?}], "usage": {"total_tokens"}}``, results best first. ``relevance_score`` is the ranker's raw score
  (for decoders logit(yes) − logit(no)), the same number ``/score`` returns: order by it, do not read it as a
  probability.

Bodies are parsed as JSON whatever the ``Content-Type`` says (``curl -d`` sends a form type), and refused with a
message that names the limit: size (413), schema, count, length and NUL characters (422).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Doc(BaseModel):
    model_config = ConfigDict(extra="ignore")
    title: StrictStr = ""
    text: StrictStr = ""


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: StrictStr
    documents: list[Doc]


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")       # clients send their own knobs (rank_fields, truncate, …)
    model: StrictStr | None = None
    query: StrictStr
    documents: list[StrictStr | Doc] | None = None
    texts: list[StrictStr] | None = None             # Text Embeddings Inference's name for the documents
    top_n: int | None = Field(None, ge=1)
    return_documents: StrictBool | None = None
    return_text: StrictBool | None = None            # TEI's name for return_documents


DRAIN_LIMIT = 256 << 20     # an oversized body is read and dropped up to this size, so its client sees the 413


async def read_json(receive_body, content_length: str | None, max_bytes: int) -> Any:
    """The body as JSON, refused with 413 past ``max_bytes`` — from the Content-Length header before reading,
    or while streaming a chunked body — and 400 when it is not JSON. An oversized body is not kept: it is read
    and dropped (up to ``DRAIN_LIMIT``) so the client, still sending, gets the 413 instead of a reset connection."""
    declared = (int(content_length) if content_length is not None and content_length.isascii()
                and content_length.isdigit() else None)
    chunks, size = [], 0
    async for chunk in receive_body():
        size += len(chunk)
        if size > max_bytes or (declared is not None and declared > max_bytes):
            if size > DRAIN_LIMIT:
                break
            continue
        chunks.append(chunk)
    if size > max_bytes or (declared is not None and declared > max_bytes):
        raise RequestError(413, f"request body of {max(size, declared or 0)} bytes exceeds the limit of {max_bytes} "
                                "bytes (serving.max_body_bytes): send fewer or shorter documents")
    raw = b"".join(chunks)
    if not raw.strip():
        raise RequestError(400, 'empty body: send JSON such as {"query": "…", "documents": [{"title": "…", '
                                '"text": "…"}]}')
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:      # JSONDecodeError, bad UTF-8, a 5,000-digit number, deep nesting
        raise RequestError(400, f"body is not valid JSON: {str(exc)[:200]}") from None


def parse(model: type[BaseModel], data: Any, max_documents: int | None = None) -> BaseModel:
    """``data`` validated as ``model``; a list of documents over ``max_documents`` is refused before validation
    (validating 100,000 documents would hold the event loop for a good part of a second)."""
    if max_documents is not None and isinstance(data, dict):
        docs = data.get("documents") if data.get("documents") is not None else data.get("texts")
        if isinstance(docs, list) and len(docs) > max_documents:
            raise RequestError(422, f"{len(docs)} documents exceed the limit of {max_documents} per request "
                                    "(serving.max_documents): split the request")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        msgs = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:10]]
        raise RequestError(422, "; ".join(msgs)) from None


def check_limits(query: str, titles: list[str], texts: list[str], settings) -> None:
    """Refuse (422) what the service will not score: an empty query, no documents or more than
    ``max_documents``, a field longer than ``max_field_chars``, NUL characters. Cheap: no tokenisation."""
    if not query.strip():
        raise RequestError(422, "query is empty")
    if not titles:
        raise RequestError(422, "documents is empty: send at least one document")
    if len(titles) > settings.max_documents:
        raise RequestError(422, f"{len(titles)} documents exceed the limit of {settings.max_documents} per request "
                                "(serving.max_documents): split the request")
    limit = settings.max_field_chars
    if len(query) > limit:
        raise RequestError(422, f"query has {len(query)} characters, over the limit of {limit} "
                                "(serving.max_field_chars)")
    for i, (t, x) in enumerate(zip(titles, texts)):
        if len(t) > limit or len(x) > limit:
            field, n = ("title", len(t)) if len(t) > limit else ("text", len(x))
            raise RequestError(422, f"documents[{i}].{field} has {n} characters, over the limit of {limit} "
                                    "(serving.max_field_chars): the ranker reads at most its contract's "
                                    "max_length tokens, so cut the document before sending it")
    if "\x00" in query or any("\x00" in t or "\x00" in x for t, x in zip(titles, texts)):
        raise RequestError(422, "a field contains a NUL character (\\u0000)")
    for name, value in [("query", query)] + [(f"documents[{i}]", t + x) for i, (t, x) in
                                             enumerate(zip(titles, texts))]:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(422, f"{name} contains a lone surrogate (such as \\ud800): not text") from None


def score_inputs(req: ScoreRequest) -> tuple[list[str], list[str]]:
    return [d.title for d in req.documents], [d.text for d in req.documents]


def rerank_inputs(req: RerankRequest) -> tuple[list[str], list[str]]:
    if req.documents is not None and req.texts is not None:
        raise RequestError(422, "send documents or texts, not both")
    docs = req.documents if req.documents is not None else req.texts
    if docs is None:
        raise RequestError(422, "documents: field required (a list of strings or of {text, title} objects)")
    titles = ["" if isinstance(d, str) else d.title for d in docs]
    texts = [d if isinstance(d, str) else d.text for d in docs]
    return titles, texts


def rerank_response(req: RerankRequest, raw_docs: list, scores: list[float], served, tokens: int | None,
                    request_id: str) -> dict:
    """Results best first (ties by index), cut to ``top_n``; the documents echoed when asked, as clients expect:
    a string document as ``{"text": …}``, an object as sent."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: req.top_n or len(scores)]
    echo = bool(req.return_documents or req.return_text)
    results = []
    for i in order:
        r = {"index": i, "relevance_score": scores[i]}
        if echo:
            d = raw_docs[i]
            r["document"] = {"text": d} if isinstance(d, str) else d
        results.append(r)
    return {"id": request_id, "model": f"{served.name}/{served.version}", "results": results,
            "usage": {"total_tokens": tokens, "prompt_tokens": tokens}}
