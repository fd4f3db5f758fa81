"""Flow stage 10: the scoring service. A FastAPI app that serves ``models:/<name>@<alias>`` on the configured device
and dtype: requests are batched across clients (flywheel.serving.batcher), limited (flywheel.serving.api),
measured (``/metrics``), and the model follows its registry alias without downtime.

Endpoints: ``POST /score`` and ``POST /v1/rerank`` (= ``/v2/rerank``, Cohere's newer path) (scoring; bearer token when ``FLYWHEEL_SCORER_TOKEN`` is
set), ``POST /reload`` (check the alias now), ``GET /health`` (liveness), ``GET /ready`` (a model is loaded and
warmed up, and the service is not draining), ``GET /metrics`` (Prometheus).

Model updates: a poller (every ``serving.poll_s``) and ``/reload`` read the alias; a new version is loaded and
warmed up beside the old one, then swapped in one assignment — batches in flight finish on the old model, the
next batch uses the new one, no request waits or fails for it. ``flywheel rollback`` moves the alias and so
reaches every service the same way.

Run it: ``flywheel serve`` (see ``--help``; several GPUs: ``--devices cuda:0,cuda:1``, flywheel.serving.launch).
"""

import asyncio
import hmac
import logging
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from flywheel.serving import api
from flywheel.serving.batcher import Batcher, Draining, Job, NoModel, QueueFull
from flywheel.serving.metrics import ServiceMetrics
from flywheel.serving.scorer import alias_target, load_served

log = logging.getLogger("flywheel.serving")
TOKEN_ENV = "FLYWHEEL_SCORER_TOKEN"
ROUTES = ("/score", "/v1/rerank", "/v2/rerank", "/reload", "/health", "/ready", "/metrics")


class ModelHolder:
    """The served model and how it follows the alias. ``current`` is replaced, never mutated."""

    def __init__(self, name: str, alias: str, settings, metrics: ServiceMetrics):
        self.name, self.alias, self.settings, self.metrics = name, alias, settings, metrics
        self.current = None
        self.error = None
        self._lock = threading.Lock()          # one load at a time (poller and /reload)
        self._stop = threading.Event()

    def refresh(self) -> dict:
        """Load the alias's version if it is not the one served; returns what is served and whether it changed."""
        with self._lock:
            try:
                version, model_version = alias_target(self.name, self.alias)
                if self.current is not None and self.current.version == version:
                    self.metrics.reloads.labels("unchanged").inc()
                    return {"version": version, "changed": False}
                served = load_served(self.name, version, self.settings, model_version)
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                self.metrics.reloads.labels("failed").inc()
                log.error("loading %s@%s failed (still serving %s): %s", self.name, self.alias,
                          self.current.version if self.current else "nothing", self.error)
                raise
            self.current, self.error = served, None          # the swap: one reference assignment
            self.metrics.set_model(served.describe())
            self.metrics.reloads.labels("loaded").inc()
            self.metrics.ready.set(1)
            log.info("now serving %s v%s", self.name, version)
            return {"version": version, "changed": True}

    def poll_forever(self) -> None:
        """Load at start (retrying every few seconds until it works), then follow the alias every ``poll_s``."""
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:
                pass                               # logged in refresh; the old model keeps serving
            wait = self.settings.poll_s if self.current is not None else min(5.0, self.settings.poll_s or 5.0)
            if self.current is not None and self.settings.poll_s == 0:
                return
            self._stop.wait(wait)

    def stop(self) -> None:
        self._stop.set()


class Observe:
    """ASGI middleware: latency by endpoint, answers by endpoint and status, errors by status. The route
    template is the label (unknown paths are ``other``), so metrics never carry request content."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ROUTES else "other"
        status = {"code": 500}

        async def _send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, _send)
        finally:
            code = str(status["code"])
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
            self.metrics.requests.labels(endpoint, code).inc()
            if status["code"] >= 400:
                self.metrics.errors.labels(code).inc()


def create_app(model_name: str, alias: str = "champion", settings=None, token: str | None = None,
               load_first: bool = False):
    """The app; ``settings`` is a :class:`flywheel.config.ServingConfig` (defaults when None); ``token`` the bearer
    token clients must send (default: ``$FLYWHEEL_SCORER_TOKEN``; none means no authentication). By default the
    model loads in the background while ``/health`` already answers; with ``load_first`` startup waits for it, so
    the process accepts no connection before it can score (a worker sharing a port with others: flywheel.serving.
    launch), and the connections go to the workers that can."""
    from flywheel.config import ServingConfig

    settings = settings or ServingConfig()
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    metrics = ServiceMetrics()
    holder = ModelHolder(model_name, alias, settings, metrics)
    batcher = Batcher(lambda: holder.current, settings.max_batch_items, settings.max_wait_ms,
                      settings.max_queue_items, metrics)
    state = {"draining": False}

    @asynccontextmanager
    async def lifespan(_app):
        metrics.ready.set(0)
        batcher.start()
        while load_first and holder.current is None and not state["draining"]:   # SIGTERM while loading: stop
            try:
                await asyncio.to_thread(holder.refresh)
            except Exception:
                await asyncio.sleep(5)                 # logged in refresh; try again
        if not state["draining"]:               # no new loads once SIGTERM has come
            poller = threading.Thread(target=holder.poll_forever, name="flywheel-model-poller", daemon=True)
            poller.start()
        yield
        state["draining"] = True                 # uvicorn has stopped accepting and let in-flight requests finish
        metrics.ready.set(0)
        holder.stop()
        await asyncio.to_thread(batcher.stop, settings.drain_s)

    app = FastAPI(title="flywheel scoring service", lifespan=lifespan,
                  description="Scores (query, documents) with the flywheel's registered ranker. See README, "
                              "'Serving in production'.")
    app.add_middleware(Observe, metrics=metrics)
    app.state.holder, app.state.batcher, app.state.metrics = holder, batcher, metrics

    def begin_drain():
        """What the SIGTERM handler does: set a flag (``/ready`` answers 503 from now on) and leave the gauge to
        the event loop. A signal handler must take no lock: with several workers (``PROMETHEUS_MULTIPROC_DIR``)
        every metric shares one non-reentrant lock, which the main thread holds while it counts a response it
        has just sent (``Observe``); a handler setting the gauge at that bytecode waits on its own thread forever,
        and the worker hangs until the launcher kills it."""
        state["draining"] = True
        try:
            asyncio.get_running_loop().call_soon_threadsafe(metrics.ready.set, 0)
        except RuntimeError:            # no loop running yet: the lifespan sets the gauge when it starts
            pass

    app.state.begin_drain = begin_drain

    def error(status: int, message: str, headers: dict | None = None):
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    def unauthorised(request: Request):
        if token is None:
            return None
        sent = request.headers.get("authorization", "")
        scheme, _, value = sent.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            return error(401, "missing or wrong bearer token (Authorization: Bearer …)",
                         {"WWW-Authenticate": "Bearer"})
        return None

    async def run_job(queries, titles, texts, count_tokens=False):
        loop = asyncio.get_running_loop()
        job = Job(queries, titles, texts, time.monotonic() + settings.timeout_s, loop.create_future(), loop,
                  count_tokens)
        batcher.submit(job)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), settings.timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            job.cancelled = True
            raise TimeoutError(f"not scored within the service's deadline of {settings.timeout_s}s "
                               "(serving.timeout_s)") from None
        except asyncio.CancelledError:        # the client went away or shutdown gave up: do not score it
            job.cancelled = True
            raise

    async def scored(request: Request, kind: str):
        if (denied := unauthorised(request)) is not None:
            return denied
        if state["draining"]:
            return error(503, "the service is shutting down", {"Retry-After": "1"})
        if (full := batcher.overloaded(settings.timeout_s)) is not None:
            return error(503, str(full), {"Retry-After": str(full.retry_after_s)})
        try:
            data = await api.read_json(request.stream, request.headers.get("content-length"),
                                       settings.max_body_bytes)
            if kind == "score":
                req = api.parse(api.ScoreRequest, data, settings.max_documents)
                titles, texts = api.score_inputs(req)
            else:
                req = api.parse(api.RerankRequest, data, settings.max_documents)
                titles, texts = api.rerank_inputs(req)
            api.check_limits(req.query, titles, texts, settings)
            scores, served, tokens = await run_job([req.query] * len(titles), titles, texts, kind == "rerank")
        except api.RequestError as exc:
            return error(exc.status, exc.message)
        except QueueFull as exc:
            return error(503, str(exc), {"Retry-After": str(exc.retry_after_s)})
        except (Draining, NoModel) as exc:
            return error(503, str(exc), {"Retry-After": "5"})
        except TimeoutError as exc:
            return error(504, str(exc))
        except Exception as exc:
            log.exception("scoring failed")
            return error(500, f"scoring failed: {type(exc).__name__}")
        if kind == "score":
            return {"scores": scores, "version": served.version, "model": served.name,
                    "model_version": served.model_version}
        raw = data.get("documents") if data.get("documents") is not None else data.get("texts")
        return api.rerank_response(req, raw, scores, served, tokens, f"rerank-{uuid.uuid4().hex}")

    body_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}}

    @app.post("/score", openapi_extra=body_doc | {"summary": "Score documents for a query (scores in input order)"})
    async def score(request: Request):
        return await scored(request, "score")

    @app.post("/v1/rerank", openapi_extra=body_doc | {"summary": "Rerank documents (vLLM / TEI / Cohere shape)"})
    @app.post("/v2/rerank", openapi_extra=body_doc | {"summary": "The same, at Cohere's v2 path"})
    async def rerank(request: Request):
        return await scored(request, "rerank")

    @app.post("/reload")
    async def reload(request: Request):
        if (denied := unauthorised(request)) is not None:
            return denied
        try:
            out = await asyncio.to_thread(holder.refresh)
        except Exception as exc:
            return error(502, f"could not load {model_name}@{alias} (still serving "
                              f"{holder.current.version if holder.current else 'nothing'}): {exc}")
        return out

    @app.get("/health")
    async def health():
        if not batcher.alive() and not state["draining"]:
            return error(500, "the batching thread has stopped")
        return {"status": "ok", "pid": os.getpid(), "model": model_name, "alias": alias,
                "version": holder.current.version if holder.current else None,
                "model_version": holder.current.model_version if holder.current else None}

    @app.get("/ready")
    async def ready():
        if state["draining"]:
            return error(503, "draining")
        if holder.current is None:
            return error(503, f"loading {model_name}@{alias}" + (f"; last error: {holder.error}" if holder.error
                                                                 else ""))
        return {"ready": True, **holder.current.describe(), "alias": alias}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    return app
