"""The scoring service's Prometheus metrics (``GET /metrics``), through ``prometheus-client``.

One registry per app (tests build several apps in one process). When several worker processes share one port
(``flywheel serve --devices …``), the launcher sets ``PROMETHEUS_MULTIPROC_DIR`` and every process writes its
values there, so whichever process answers ``/metrics`` reports the sum over all of them — the way
prometheus-client's multiprocess mode works under gunicorn.

Labels never carry request content or credentials: endpoint is the route template, code the HTTP status.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        reg = None if self.multiprocess else CollectorRegistry()   # multiprocess values live in files
        self.registry = reg
        self.latency = Histogram("flywheel_request_seconds", "Request latency in the service, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=reg)
        self.requests = Counter("flywheel_requests", "Requests answered, by endpoint and HTTP status",
                                ["endpoint", "code"], registry=reg)
        self.errors = Counter("flywheel_errors", "Requests answered with an error status, by status", ["code"],
                              registry=reg)
        self.batch_items = Histogram("flywheel_batch_items", "Pairs scored per batch (across requests)",
                                     buckets=BATCH_BUCKETS, registry=reg)
        self.batch_seconds = Histogram("flywheel_batch_seconds", "Model time per batch", buckets=LATENCY_BUCKETS,
                                       registry=reg)
        self.queue_items = Gauge("flywheel_queue_items", "Pairs waiting to be scored", registry=reg,
                                 multiprocess_mode="livesum")
        self.items = Counter("flywheel_items_scored", "Query-document pairs scored", registry=reg)
        self.model_info = Gauge("flywheel_model_info", "The model being served (value 1)",
                                ["model", "version", "model_version", "device", "dtype"], registry=reg,
                                multiprocess_mode="liveall")
        self.reloads = Counter("flywheel_model_loads", "Model loads by outcome (loaded, unchanged, failed)",
                               ["outcome"], registry=reg)
        self.ready = Gauge("flywheel_ready", "1 when a model is loaded and warmed up", registry=reg,
                           multiprocess_mode="livemin")

    def set_model(self, info: dict) -> None:
        labels = (info["model"], info["version"], info.get("model_version") or "", info["device"], info["dtype"])
        old = getattr(self, "_model_labels", None)
        if old and old != labels:       # in multiprocess mode a series cannot be removed from the files: zero it
            self.model_info.labels(*old).set(0)
            if not self.multiprocess:
                self.model_info.remove(*old)
        self.model_info.labels(*labels).set(1)
        self._model_labels = labels

    def render(self) -> bytes:
        if self.multiprocess:
            from prometheus_client import multiprocess

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            return generate_latest(reg)
        return generate_latest(self.registry)
