"""The scoring service under traffic, in-process (FastAPI's TestClient, the real app and batching thread):
batching never changes a request's scores, bad input gets its 4xx before any scoring, a full queue and a passed
deadline answer 503/504 without taking the service down, the rerank shape works with Cohere's own client, the
bearer token is enforced and never exposed, /metrics counts what happened, and the model follows its alias
under load without a failed or mixed request. The real-process behaviour (SIGTERM drains, workers sharing a
port, the README's curl line) is in tests/flow/test_serving_processes.py."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flywheel.config import ServingConfig
from flywheel.serving.registry import log_ranker, set_alias
from flywheel.settings import get_paths
from models.ranker import load_ranker, score_pairs
from tests.helpers import wait_ready


def _save_decoder(golden, path, seed: int):
    from models.decoder import DecoderRanker, build_tiny_qwen3, decoder_contract, train_bpe_tokenizer
    from models.ranker import save_ranker

    docs = golden.documents
    tok = train_bpe_tokenizer((docs.title + ". " + docs.text).tolist()[:400] + golden.queries.text.tolist(), 1024)
    c = decoder_contract(tok, max_length=96)
    lm = build_tiny_qwen3(tok, "qwen3-tiny", seed=seed)
    return save_ranker(DecoderRanker(lm, c.yes_token_id, c.no_token_id), tok, c, path)


def _save_encoder(path):
    from models.cross_encoder import build_cross_encoder
    from models.ranker import ScoringContract, save_ranker

    model, tok = build_cross_encoder([0, 1])
    return save_ranker(model, tok, ScoringContract(max_length=96), path)


def _register(name: str, path, model_version: str) -> str:
    paths = get_paths()
    v = log_ranker({"rung": "student", "path": str(path), "model_version": model_version, "layers": 2,
                    "params_non_embedding": 1}, {"ndcg@10": 0.9}, {}, paths, name)["version"]
    set_alias(name, "champion", v, paths)
    return v


@pytest.fixture(scope="module")
def models(tmp_path_factory, golden):
    root = tmp_path_factory.mktemp("served")
    dec = _save_decoder(golden, root / "dec1", seed=0)
    enc = _save_encoder(root / "enc")
    out = {"decoder": ("svc-decoder", dec), "encoder": ("svc-encoder", enc)}
    for name, path in out.values():
        _register(name, path, path.name)
    out["decoder_v2"] = _save_decoder(golden, root / "dec2", seed=1)
    return out


@pytest.fixture(scope="module")
def bodies(golden):
    """One request per golden test query (5–30 documents of varied length), and one repeated."""
    pairs = golden.pairs("test")
    out = [{"query": g["query"].iloc[0], "documents": g[["title", "text"]].to_dict("records")}
           for _, g in pairs.groupby("query_id")][:14]
    return out + [out[0]]


@contextmanager
def serving(name, token=None, **settings):
    from fastapi.testclient import TestClient

    from flywheel.serving.service import create_app

    app = create_app(name, settings=ServingConfig(**({"poll_s": 0} | settings)), token=token)
    with TestClient(app) as client:
        wait_ready(client)
        yield client, app


def metric(client, name: str, **labels) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for fam in text_string_to_metric_families(client.get("/metrics").text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def offline(path, body):
    model, tok, c = load_ranker(path)
    d = body["documents"]
    return score_pairs(model, tok, c, [body["query"]] * len(d), [x["title"] for x in d], [x["text"] for x in d])


@pytest.mark.parametrize("family", ["decoder", "encoder"])
def test_a_request_scores_the_same_alone_as_offline_and_inside_a_busy_batch(models, bodies, family):
    name, path = models[family]
    with serving(name, max_batch_items=1024, max_wait_ms=300) as (client, _app):
        alone = [client.post("/score", json=b).json()["scores"] for b in bodies]
        for b, s in zip(bodies[:4], alone):
            assert s == pytest.approx(offline(path, b), abs=1e-4)
        batches_before = metric(client, "flywheel_batch_items_count")
        with ThreadPoolExecutor(len(bodies)) as ex:
            together = list(ex.map(lambda b: client.post("/score", json=b).json()["scores"], bodies))
        batches = metric(client, "flywheel_batch_items_count") - batches_before
    assert batches < len(bodies) / 2, f"{len(bodies)} concurrent requests were scored in {batches} batches"
    diff = max(abs(a - b) for s, t in zip(alone, together) for a, b in zip(s, t))
    assert diff <= 1e-4                                  # models.contract.SCORE_TOLERANCE["float32"]


def test_bad_input_gets_its_4xx_before_any_scoring_and_the_service_stays_ready(models):
    name, _ = models["encoder"]
    doc = {"title": "Crime incidents", "text": "by area"}
    cases = [
        (b'{"query": "crime", "documents": [', 400, "not valid JSON"),
        (b"", 400, "empty body"),
        ({"query": 5, "documents": [doc]}, 422, "query"),
        ({"query": "crime", "documents": [{"title": ["x"]}]}, 422, "documents.0.title"),
        ({"query": "   ", "documents": [doc]}, 422, "query is empty"),
        ({"query": "crime", "documents": []}, 422, "at least one document"),
        ({"query": "crime", "documents": [doc] * 101}, 422, "limit of 100 per request"),
        ({"query": "crime", "documents": [doc] * 100_000}, 413, "max_body_bytes"),
        ({"query": "crime", "documents": [{"title": "x", "text": "a" * 20_000_000}]}, 413, "max_body_bytes"),
        ({"query": "crime", "documents": [{"title": "x", "text": "a" * 5000}]}, 422, "max_field_chars"),
        ({"query": "crime", "documents": [{"title": "x\x00y"}]}, 422, "NUL"),
        (b'{"query": "crime", "documents": [{"title": "a\\ud800b"}]}', 422, "lone surrogate"),
        (b'{"query": "crime", "documents": [{"title": "x"}], "n": ' + b"9" * 5000 + b"}", 400, "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
    ]
    import json

    with serving(name, max_documents=100, max_field_chars=4000, max_body_bytes=1 << 20) as (client, _app):
        for body, code, says in cases:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = client.post("/score", content=raw)
            assert (r.status_code, says in r.json()["detail"]) == (code, True), (body if len(raw) < 200 else says,
                                                                                r.text[:300])
        assert metric(client, "flywheel_items_scored_total") == 0        # refused before any tokenisation
        assert client.get("/ready").status_code == 200
        # curl -d sends application/x-www-form-urlencoded: the body is still read as JSON
        r = client.post("/score", content=json.dumps({"query": "crime", "documents": [doc]}),
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 200 and len(r.json()["scores"]) == 1
        assert metric(client, "flywheel_errors_total", code="422") == 8
        assert metric(client, "flywheel_errors_total", code="413") == 2


def test_rerank_speaks_the_cohere_vllm_tei_shape_and_cohere_s_own_client_works_unchanged(models, bodies):
    import cohere

    from models.ranker import input_lengths

    name, path = models["decoder"]
    b = bodies[1]
    texts = [d["text"] for d in b["documents"]]
    with serving(name, token="rerank-token") as (client, _app):
        auth = {"Authorization": "Bearer rerank-token"}
        plain = client.post("/score", json={"query": b["query"], "documents": [{"text": t} for t in texts]},
                            headers=auth).json()["scores"]
        r = client.post("/v1/rerank", json={"model": "anything", "query": b["query"], "documents": texts,
                                            "top_n": 3, "return_documents": True}, headers=auth).json()
        best = sorted(range(len(texts)), key=lambda i: -plain[i])[:3]
        assert [x["index"] for x in r["results"]] == best
        assert [x["relevance_score"] for x in r["results"]] == pytest.approx([plain[i] for i in best], abs=1e-5)
        assert [x["document"] for x in r["results"]] == [{"text": texts[i]} for i in best]
        m, tok, c = load_ranker(path)
        assert r["usage"]["total_tokens"] == sum(input_lengths(tok, c, [b["query"]] * len(texts),
                                                               [""] * len(texts), texts)[1])
        objs = client.post("/v1/rerank", json={"query": b["query"], "documents": b["documents"]}, headers=auth).json()
        want = offline(path, b)
        assert {x["index"]: x["relevance_score"] for x in objs["results"]} == pytest.approx(dict(enumerate(want)),
                                                                                        abs=1e-4)
        assert "document" not in objs["results"][0]
        tei = client.post("/v1/rerank", json={"query": b["query"], "texts": texts, "return_text": True},
                          headers=auth).json()
        assert tei["results"][0]["document"] == {"text": texts[best[0]]}

        # Cohere's client, pointed at the service, its api_key being the bearer token (it sends it so)
        co = cohere.Client(api_key="rerank-token", base_url=str(client.base_url), httpx_client=client)
        got = co.rerank(model="flywheel", query=b["query"], documents=texts, top_n=3, return_documents=True)
        assert [x.index for x in got.results] == best and got.results[0].document.text == texts[best[0]]
        v2 = cohere.ClientV2(api_key="rerank-token", base_url=str(client.base_url), httpx_client=client)
        assert [x.index for x in v2.rerank(model="flywheel", query=b["query"], documents=texts).results][:3] == best
        with pytest.raises(cohere.core.api_error.ApiError) as denied:
            cohere.Client(api_key="wrong", base_url=str(client.base_url), httpx_client=client).rerank(
                model="flywheel", query=b["query"], documents=texts)
        assert denied.value.status_code == 401


class Slow:
    """The served model, made slow: every batch takes ``seconds`` longer."""

    def __init__(self, served, seconds: float):
        self.served, self.seconds = served, seconds

    def score(self, *a):
        time.sleep(self.seconds)
        return self.served.score(*a)

    def __getattr__(self, name):
        return getattr(self.served, name)


def test_a_full_queue_answers_503_with_retry_after_and_a_passed_deadline_504_never_taking_it_down(models):
    name, _ = models["encoder"]
    body = {"query": "crime", "documents": [{"title": "Crime incidents", "text": "by area"}] * 3}
    with serving(name, max_batch_items=0, max_queue_items=6, timeout_s=0.8) as (client, app):
        holder = app.state.holder
        fast = holder.current
        holder.current = Slow(fast, 1.0)                  # one batch outlasts the deadline: a lone request → 504
        late = client.post("/score", json=body)
        assert late.status_code == 504 and "serving.timeout_s" in late.json()["detail"]
        holder.current = Slow(fast, 0.3)
        with ThreadPoolExecutor(12) as ex:
            answers = list(ex.map(lambda _: client.post("/score", json=body), range(12)))
        codes = sorted(r.status_code for r in answers)
        assert set(codes) <= {200, 503, 504} and 200 in codes and 503 in codes, codes
        full = [r for r in answers if r.status_code == 503]
        assert all(int(r.headers["Retry-After"]) >= 1 and ("queue is full" in r.json()["detail"] or "at capacity"
                                                           in r.json()["detail"]) for r in full)
        holder.current = fast
        assert client.post("/score", json=body).status_code == 200
        assert client.get("/ready").status_code == 200 and client.get("/health").status_code == 200
        assert metric(client, "flywheel_requests_total", endpoint="/score", code="503") == codes.count(503)
        assert metric(client, "flywheel_errors_total", code="504") == codes.count(504) + 1
        assert metric(client, "flywheel_queue_items") == 0


class Boom(Slow):
    """The served model, failing any batch that holds the query 'boom'."""

    def score(self, q, t, x):
        if "boom" in q:
            raise RuntimeError("this input breaks the model")
        return super().score(q, t, x)


def test_a_request_that_breaks_the_model_fails_alone_not_the_requests_batched_with_it(models, bodies):
    name, _ = models["encoder"]
    with serving(name, max_wait_ms=300) as (client, app):
        app.state.holder.current = Boom(app.state.holder.current, 0.0)
        bad = {"query": "boom", "documents": [{"title": "x"}]}
        with ThreadPoolExecutor(6) as ex:
            answers = list(ex.map(lambda b: client.post("/score", json=b), bodies[:5] + [bad]))
        assert [r.status_code for r in answers] == [200] * 5 + [500]
        assert metric(client, "flywheel_batch_items_count") >= 1 and client.get("/health").status_code == 200


def test_bearer_token_is_required_and_never_appears_in_metrics_or_logs(models, caplog):
    name, _ = models["encoder"]
    secret = "tok-9f3a7c1e55"
    body = {"query": "crime", "documents": [{"title": "Crime", "text": "by area"}]}
    with caplog.at_level("DEBUG"), serving(name, token=secret) as (client, _app):
        assert client.post("/score", json=body).status_code == 401
        wrong = client.post("/score", json=body, headers={"Authorization": f"Bearer {secret}x"})
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
        assert client.post("/reload", headers={"Authorization": "Basic " + secret}).status_code == 401
        assert client.post("/score", json=body, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
        text = client.get("/metrics").text
        assert metric(client, "flywheel_errors_total", code="401") == 3
    assert secret not in text and secret not in caplog.text


def test_metrics_report_latency_batches_items_and_the_model(models, bodies):
    name, _ = models["decoder"]
    with serving(name) as (client, _app):
        for b in bodies[:5]:
            assert client.post("/score", json=b).status_code == 200
        n = sum(len(b["documents"]) for b in bodies[:5])
        assert metric(client, "flywheel_items_scored_total") == n
        assert metric(client, "flywheel_batch_items_sum") == n
        assert metric(client, "flywheel_request_seconds_count", endpoint="/score") == 5
        assert metric(client, "flywheel_requests_total", endpoint="/score", code="200") == 5
        assert metric(client, "flywheel_model_info", model=name, version="1", device="cpu", dtype="float32") == 1
        assert metric(client, "flywheel_ready") == 1
        client.get("/no-such-page")
        assert metric(client, "flywheel_requests_total", endpoint="other", code="404") == 1


def test_the_alias_moves_under_load_without_a_failed_or_mixed_request(models, bodies):
    """Four clients keep sending while the alias moves to v2 (the poller finds it) and back (``flywheel
    rollback`` + /reload): every answer is 200 and equals, score for score, what its reported version gives alone."""
    from typer.testing import CliRunner

    from flywheel.cli import app as cli

    name, path = models["decoder"]
    v1 = "1"
    body = bodies[2]
    expect = {v1: offline(path, body)}
    answers, stop = [], threading.Event()
    with serving(name, poll_s=0.2, max_wait_ms=2) as (client, _app):
        def hammer():
            while not stop.is_set():
                r = client.post("/score", json=body)
                answers.append((r.status_code, r.json()))

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        v2 = _register(name, models["decoder_v2"], "dec2")        # the poller loads and warms it beside v1
        expect[v2] = offline(models["decoder_v2"], body)
        deadline = time.time() + 60
        while client.get("/ready").json()["version"] != v2:
            assert time.time() < deadline, "the poller never swapped in v2"
            time.sleep(0.1)
        time.sleep(0.5)
        from mlflow import MlflowClient

        MlflowClient().set_model_version_tag(name, v2, "previous_champion", v1)
        assert CliRunner().invoke(cli, ["rollback", "--model", name]).exit_code == 0
        assert client.post("/reload").json()["version"] == v1      # (the poller may have found it first)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
    assert answers and all(code == 200 for code, _ in answers)
    seen = [a["version"] for _, a in answers]
    assert v2 in seen and seen[-1] == v1 and seen.index(v2) > 0
    for _, a in answers:
        assert a["scores"] == pytest.approx(expect[a["version"]], abs=1e-4)


def test_admission_and_batch_size_follow_the_deadline_at_the_measured_rate():
    """Without HTTP: a model scoring 100 pairs/s, requests of 10 pairs with a 2.1 s deadline. A request is admitted
    while the work queued ahead, itself included, takes at most half its deadline (100 pairs), refused after with
    Retry-After from the queued seconds; a batch holds at most an eighth of a deadline's work (26 pairs: two
    requests); every admitted request is answered in time."""
    import asyncio

    from flywheel.serving.batcher import Batcher, Job, QueueFull
    from flywheel.serving.metrics import ServiceMetrics

    class Model:
        warm_rate = 100.0

        def score(self, q, t, x):
            time.sleep(len(q) / 100)
            return [0.0] * len(q)

    async def run():
        loop = asyncio.get_running_loop()
        b = Batcher(lambda: Model(), max_batch_items=1000, max_wait_ms=50, max_queue_items=10_000,
                    metrics=ServiceMetrics())
        jobs, refused = [], []
        for _ in range(14):
            job = Job(["q"] * 10, ["t"] * 10, ["x"] * 10, time.monotonic() + 2.1, loop.create_future(), loop)
            try:
                b.submit(job)
                jobs.append(job)
            except QueueFull as exc:
                refused.append(exc)
        b.start()
        done = await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs)), 5)
        b.stop()
        return jobs, refused, done, b

    jobs, refused, done, b = asyncio.run(run())
    assert len(jobs) == 10 and len(refused) == 4                       # 100 pairs queued = 1 s ≤ half of 2.1 s
    assert all(e.retry_after_s == 2 and "at capacity" in str(e) for e in refused)   # 110 pairs at 100/s → 2 s
    assert all(len(scores) == 10 for scores, _, _ in done)
    hist = {s.name: s.value for s in b.metrics.batch_items.collect()[0].samples if "bucket" not in s.name}
    assert hist["flywheel_batch_items_sum"] == 100                     # every admitted pair, scored once
    assert hist["flywheel_batch_items_count"] == 5                     # in 5 batches of 2 requests (20 ≤ 26 pairs)
