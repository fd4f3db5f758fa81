"""Dynamic batching for the scoring service: concurrent requests wait in one bounded queue and are scored
together — up to ``max_batch_items`` pairs, or whatever has arrived ``max_wait_ms`` after the first of them —
by one thread that owns the model.

Why one thread: the model is the bottleneck and torch already uses every core (or the GPU) for one forward
pass; two passes at once only contend. The HTTP side (an asyncio event loop) never scores; it enqueues a
:class:`Job` and awaits its future. A request is never split across batches, so its scores come from one model
version and one pass of the scorer; a request bigger than ``max_batch_items`` is scored alone.

Backpressure: the queue holds at most ``max_queue_items`` pairs, and admits a request only if the work queued
ahead of it (at the recent scoring rate) fits its deadline; otherwise :meth:`Batcher.submit` raises
:class:`QueueFull` (the service answers 503 with ``Retry-After``) rather than letting latency grow without bound
or scoring work whose client has given up. A job whose deadline passed while it waited is dropped unscored.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("flywheel.serving")


# Admission and batch size against the deadline: a request is admitted if the work queued ahead of it takes at
# most ADMIT_SHARE of its deadline at the recent rate, and a batch holds at most BATCH_SHARE of a deadline's work,
# so an admitted request finishes in time even behind the batch already running and inside a full one of its own.
ADMIT_SHARE, BATCH_SHARE = 0.5, 0.125


class QueueFull(Exception):
    def __init__(self, retry_after_s: int, reason: str):
        super().__init__(f"{reason}: retry after {retry_after_s}s")
        self.retry_after_s = retry_after_s


class Draining(Exception):
    """The service is shutting down and takes no new work."""


class NoModel(Exception):
    """No model is loaded yet (or the last load failed)."""


@dataclass
class Job:
    queries: list[str]
    titles: list[str]
    texts: list[str]
    deadline: float                                  # time.monotonic() after which nobody waits for the result
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    count_tokens: bool = False                       # /v1/rerank reports usage.total_tokens
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False

    @property
    def n(self) -> int:
        return len(self.queries)

    def resolve(self, value=None, error: BaseException | None = None) -> None:
        def _set():
            if not self.future.done():
                self.future.set_exception(error) if error is not None else self.future.set_result(value)
        try:
            self.loop.call_soon_threadsafe(_set)
        except RuntimeError:               # the event loop has closed: nobody is waiting any more
            pass


class Batcher:
    """``get_model()`` returns the model to score the next batch with (read once per batch: a swap between
    batches is atomic for every request). ``metrics`` is a :class:`flywheel.serving.metrics.ServiceMetrics`."""

    def __init__(self, get_model: Callable, max_batch_items: int, max_wait_ms: float, max_queue_items: int,
                 metrics):
        self.get_model, self.metrics = get_model, metrics
        self.max_batch_items, self.max_wait = max_batch_items, max_wait_ms / 1000
        self.max_queue_items = max_queue_items
        self._queue: collections.deque[Job] = collections.deque()
        self._queued_items = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._rate = 0.0                             # items/s of recent batches, for Retry-After
        self._last_model = None
        self._thread = threading.Thread(target=self._run, name="flywheel-batcher", daemon=True)

    def start(self) -> "Batcher":
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread.is_alive()

    def rate(self) -> float:
        """Pairs/s of recent batches; before any, the served model's warm-up figure (0: unknown)."""
        return self._rate or getattr(self.get_model(), "warm_rate", 0.0) or 0.0

    def overloaded(self, timeout_s: float) -> QueueFull | None:
        """The refusal a request would get before its body is even read: the work already queued outlasts a
        whole deadline (rejecting then costs no parsing, which an overloaded service cannot spare)."""
        rate = self.rate()
        wait = self._queued_items / rate if rate > 0 else 0.0
        if wait > ADMIT_SHARE * timeout_s:
            return QueueFull(max(1, int(wait + 0.999)), f"the service is at capacity: {self._queued_items} pairs "
                                                        f"waiting, about {wait:.1f}s of scoring")
        return None

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping or (self._thread.ident is not None and not self._thread.is_alive()):
                raise Draining("the service is shutting down")
            rate = self.rate()
            wait = (self._queued_items + job.n) / rate if rate > 0 else 0.0
            retry = max(1, int(wait + 0.999))
            if self._queue and self._queued_items + job.n > self.max_queue_items:
                raise QueueFull(retry, f"the scoring queue is full ({self._queued_items} pairs waiting)")
            if self._queue and wait > ADMIT_SHARE * (job.deadline - time.monotonic()):
                # shed load now rather than score work whose client will have given up (a 504 that cost a batch)
                raise QueueFull(retry, f"the service is at capacity: {self._queued_items} pairs waiting, about "
                                       f"{wait:.1f}s of scoring, longer than the request's deadline")
            self._queue.append(job)
            self._queued_items += job.n
            self.metrics.queue_items.set(self._queued_items)
            self._cond.notify()

    def stop(self, timeout: float = 30.0) -> None:
        """Take no new jobs, score the ones queued (up to ``timeout``), then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            if self.max_batch_items > 0:                 # wait for company, counted from the first job's arrival
                until = self._queue[0].enqueued + self.max_wait
                while self._queued_items < self.max_batch_items and not self._stopping:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            jobs = [self._queue.popleft()]
            total = jobs[0].n
            cap = self.max_batch_items
            if (rate := self.rate()) > 0:     # a batch everyone in it waits for must fit well within a deadline
                cap = min(cap, max(1, int(rate * (jobs[0].deadline - jobs[0].enqueued) * BATCH_SHARE)))
            while self._queue and total + self._queue[0].n <= cap:
                jobs.append(self._queue.popleft())
                total += jobs[-1].n
            self._queued_items -= total
            self.metrics.queue_items.set(self._queued_items)
            return jobs

    def _run(self) -> None:
        try:
            while (jobs := self._take()) is not None:
                now = time.monotonic()
                live = []
                for j in jobs:
                    if j.cancelled or now > j.deadline:
                        j.resolve(error=TimeoutError("the request's deadline passed while it waited in the queue"))
                    else:
                        live.append(j)
                if live:
                    self._score(live)
        except BaseException:              # never silently: fail what waits, and say so on /health
            log.exception("the batching thread stopped")
            with self._cond:
                self._stopping = True
                waiting, self._queued_items = list(self._queue), 0
                self._queue.clear()
            for j in waiting:
                j.resolve(error=Draining("the batching thread stopped"))
            raise

    def _score(self, jobs: list[Job]) -> None:
        served = self.get_model()
        if served is None:
            for j in jobs:
                j.resolve(error=NoModel("no model is loaded"))
            return
        if served is not self._last_model:   # another model (a swap): its speed is measured afresh
            self._rate, self._last_model = 0.0, served
        queries = [q for j in jobs for q in j.queries]
        titles = [t for j in jobs for t in j.titles]
        texts = [x for j in jobs for x in j.texts]
        t0 = time.perf_counter()
        try:
            scores = served.score(queries, titles, texts)
        except Exception as exc:
            if len(jobs) > 1:                # one bad request (or an out-of-memory batch) must not fail the others
                log.warning("a batch of %d requests failed (%s): scoring them one by one", len(jobs), exc)
                for j in jobs:
                    self._score([j])
                return
            log.exception("scoring a request of %d pairs failed", len(queries))
            jobs[0].resolve(error=exc)
            return
        dt = time.perf_counter() - t0
        self._rate = len(queries) / dt if self._rate == 0 else 0.8 * self._rate + 0.2 * len(queries) / dt
        self.metrics.batch_items.observe(len(queries))
        self.metrics.batch_seconds.observe(dt)
        self.metrics.items.inc(len(queries))
        s = 0
        for j in jobs:
            try:
                tokens = None
                if j.count_tokens:
                    from models.ranker import input_lengths

                    tokens = int(sum(input_lengths(served.tokenizer, served.contract, j.queries, j.titles,
                                                   j.texts)[1]))
                j.resolve((scores[s:s + j.n], served, tokens))
            except Exception as exc:
                j.resolve(error=exc)
            s += j.n
