"""Online labelling through an OpenAI-compatible endpoint: many requests in flight, politely.

- at most ``max_in_flight`` requests at once (asyncio semaphore), request- and token-per-minute limits
  (token buckets);
- transient failures (429, 5xx, timeouts, connection errors) are retried with exponential backoff and full
  jitter, honouring ``retry-after``; other errors fail the pair at once;
- a reply that does not parse is re-asked with a repair message at most ``max_repairs`` times, then kept as
  ``unparsed``; refusals and truncated replies keep their own statuses;
- every finished pair goes to ``commit`` in small batches (the caller writes them atomically), so a process
  killed at any moment loses only what was in flight;
- token usage and cost are counted; once ``budget_usd`` is spent no new request starts, and the run stops
  cleanly — the next run continues with what is still pending.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import pandas as pd

from flywheel.judge.policy import Policy
from flywheel.judge.prompt import judgment_row, output_schema, parse_reply, system_prompt, user_prompt

TRANSIENT = ("RateLimitError", "InternalServerError", "APITimeoutError", "APIConnectionError")


@dataclass
class OnlineSettings:
    max_in_flight: int = 16
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    timeout_s: float = 30.0
    max_retries: int = 6
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    max_repairs: int = 1
    max_tokens: int = 300
    commit_every: int = 32
    budget_usd: float | None = None
    price_in_per_mtok: float = 0.15     # USD per million prompt tokens
    price_out_per_mtok: float = 0.60    # USD per million completion tokens
    # "json_schema" (OpenAI structured outputs), "json_object" (plain JSON mode), or "json_object_schema"
    # (JSON mode carrying the schema: llama.cpp's server extension, which rejects "json_schema")
    response_format: str = "json_schema"
    logprobs: bool = False              # ask for top log-probabilities to record the grade distribution

    @classmethod
    def from_config(cls, judge, commit_every: int = 32) -> "OnlineSettings":
        """The engine settings a :class:`flywheel.config.JudgeConfig` asks for."""
        return cls(max_in_flight=judge.max_in_flight, requests_per_minute=judge.requests_per_minute,
                   tokens_per_minute=judge.tokens_per_minute, timeout_s=judge.timeout_s,
                   max_retries=judge.max_retries, budget_usd=judge.daily_budget_usd,
                   price_in_per_mtok=judge.price_in_per_mtok, price_out_per_mtok=judge.price_out_per_mtok,
                   commit_every=commit_every, response_format=judge.response_format, logprobs=judge.logprobs)


@dataclass
class Usage:
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    failures: dict = field(default_factory=dict)   # (query_id, doc_hash) -> reason, for pairs not labelled

    def add(self, usage, s: OnlineSettings) -> None:
        if usage is None:
            return
        self.prompt_tokens += usage.prompt_tokens or 0
        self.completion_tokens += usage.completion_tokens or 0
        self.cost_usd = (self.prompt_tokens * s.price_in_per_mtok + self.completion_tokens * s.price_out_per_mtok) / 1e6


class TokenBucket:
    """``rate`` units per minute, bursting to one minute's worth."""

    def __init__(self, per_minute: float | None):
        self.rate = per_minute / 60.0 if per_minute else None
        self.capacity = per_minute or 0.0
        self.level, self.t = self.capacity, time.monotonic()

    async def take(self, amount: float = 1.0) -> None:
        if self.rate is None:
            return
        amount = min(amount, self.capacity)
        while True:
            now = time.monotonic()
            self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
            self.t = now
            if self.level >= amount - 1e-9 * self.capacity:   # a rounding error short is not a reason to wait
                self.level = max(0.0, self.level - amount)
                return
            await asyncio.sleep((amount - self.level) / self.rate)


def grade_distribution(choice, max_grade: int) -> dict[int, float] | None:
    """P(grade) from the top log-probabilities at the token that carries the grade digit.

    Finds the first content token after the text '"grade"' that is a digit on the scale, renormalises the
    probabilities of the scale's digits among that position's alternatives. None when the endpoint returned
    no log-probabilities or the digit is not found.
    """
    import math

    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    text = ""
    for tok in content:
        if '"grade"' in text and tok.token.strip().isdigit():
            probs = {}
            for alt in (tok.top_logprobs or []) + [tok]:
                t = alt.token.strip()
                if t.isdigit() and 0 <= int(t) <= max_grade:
                    probs[int(t)] = max(probs.get(int(t), 0.0), math.exp(alt.logprob))
            total = sum(probs.values())
            return {g: p / total for g, p in sorted(probs.items())} if total else None
        text += tok.token
    return None


def _retry_after(exc) -> float | None:
    resp = getattr(exc, "response", None)
    if resp is None:
        return None
    raw = resp.headers.get("retry-after")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


class OnlineLabeller:
    def __init__(self, policy: Policy, model: str, base_url: str | None, api_key: str,
                 settings: OnlineSettings = OnlineSettings(), temperature: float = 0.0):
        self.policy, self.model, self.base_url, self.api_key = policy, model, base_url, api_key
        self.s, self.temperature = settings, temperature
        self.system = {"role": "system", "content": system_prompt(policy)}
        schema = output_schema(policy)
        formats = {"json_schema": {"type": "json_schema", "json_schema": {"name": "judgment", "schema": schema}},
                   "json_object": {"type": "json_object"},
                   "json_object_schema": {"type": "json_object", "schema": schema}}
        if settings.response_format not in formats:
            raise ValueError(f"response_format must be one of {sorted(formats)}, not {settings.response_format!r}")
        self.response_format = formats[settings.response_format]

    def messages(self, row) -> list[dict]:
        """Static system message first, the pair last (with only the fields the policy names)."""
        return [self.system, {"role": "user", "content": user_prompt(row["query"], row["title"], row["text"],
                                                                     self.policy.document_fields)}]

    def request_body(self, messages: list[dict]) -> dict:
        body = {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": self.s.max_tokens, "response_format": self.response_format}
        if self.s.logprobs:
            body.update(logprobs=True, top_logprobs=5)
        return body

    async def _request(self, client, messages, usage: Usage, rpm: TokenBucket, tpm: TokenBucket):
        import openai
        from openai.types.chat import ChatCompletion

        est_tokens = sum(len(m["content"] or "") for m in messages) / 4 + self.s.max_tokens
        for attempt in range(self.s.max_retries + 1):
            await rpm.take(1)
            await tpm.take(est_tokens)
            usage.requests += 1
            try:
                # The body is already plain JSON: posting it through the client's low-level ``post`` (same auth,
                # errors and response model) skips ``chat.completions.create``'s per-call parameter transform,
                # which was 60% of the client's CPU per request (bench/labeling.py, cProfile).
                resp = await client.post("/chat/completions", cast_to=ChatCompletion, body=self.request_body(messages))
                usage.add(resp.usage, self.s)
                return resp
            except openai.APIError as exc:
                if type(exc).__name__ not in TRANSIENT or attempt == self.s.max_retries:
                    raise
                usage.retries += 1
                wait = _retry_after(exc)
                if wait is None:   # full jitter (AWS architecture blog): uniform(0, min(cap, base·2^attempt))
                    wait = random.uniform(0, min(self.s.backoff_cap_s, self.s.backoff_base_s * 2 ** attempt))
                await asyncio.sleep(wait)

    async def _judge_pair(self, client, row, usage, rpm, tpm) -> dict:
        messages = self.messages(row)
        status, obj, raw = "unparsed", None, None
        for _ in range(self.s.max_repairs + 1):
            resp = await self._request(client, messages, usage, rpm, tpm)
            choice = resp.choices[0]
            raw = choice.message.content
            if getattr(choice.message, "refusal", None):
                status, raw = "refused", choice.message.refusal
                break
            if choice.finish_reason == "length":
                status = "truncated"
                break
            status, obj = parse_reply(raw, self.policy)
            if status == "ok":
                break
            messages = messages + [{"role": "assistant", "content": raw or ""},
                                   {"role": "user", "content": "That was not valid JSON matching the schema. "
                                                               "Reply with the JSON object only."}]
        dist = grade_distribution(choice, self.policy.max_grade) if status == "ok" and self.s.logprobs else None
        if not dist:
            return judgment_row(status, obj, raw)
        return judgment_row(status, obj, raw, score=sum(g * p for g, p in dist.items()),
                            extra_dims={"_grade_distribution": {str(g): round(p, 4) for g, p in dist.items()}})

    async def run(self, pairs: pd.DataFrame, commit, progress=None) -> dict:
        """Judge ``pairs``; ``commit(list_of_(row_index, judgment))`` receives finished pairs in batches."""
        from openai import AsyncOpenAI

        usage = Usage()
        rpm, tpm = TokenBucket(self.s.requests_per_minute), TokenBucket(self.s.tokens_per_minute)
        sem = asyncio.Semaphore(self.s.max_in_flight)
        buffer: list = []
        stopped = None
        t0 = time.perf_counter()

        def flush():
            if buffer:
                commit(list(buffer))
                buffer.clear()

        async with AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.s.timeout_s,
                               max_retries=0) as client:
            async def one(idx, row):
                nonlocal stopped
                async with sem:
                    if self.s.budget_usd is not None and usage.cost_usd >= self.s.budget_usd:
                        stopped = f"daily budget of ${self.s.budget_usd:.2f} reached"
                        return
                    try:
                        judgment = await self._judge_pair(client, row, usage, rpm, tpm)
                    except Exception as exc:   # permanent: not labelled, left pending, reason recorded
                        usage.failures[(row["query_id"], row["doc_hash"])] = f"{type(exc).__name__}: {exc}"[:300]
                        return
                buffer.append((idx, judgment))
                if progress:
                    progress(1)
                if len(buffer) >= self.s.commit_every:
                    flush()

            await asyncio.gather(*(one(i, r) for i, r in pairs.iterrows()))
            flush()
        wall = time.perf_counter() - t0
        return {"pairs": int(len(pairs)), "requests": usage.requests, "retries": usage.retries,
                "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                "cost_usd": round(usage.cost_usd, 6), "failed": len(usage.failures),
                "failures": {f"{q}/{h[:12]}": r for (q, h), r in list(usage.failures.items())[:50]},
                "stopped": stopped, "wall_s": round(wall, 3)}
