"""The server's Prometheus metrics, in a registry of its own (so two servers in one process never share counters)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# name -> help: the list docs/serve.md and the README show (each counter is exposed with a _total suffix).
METRICS = {
    "bert_onnx_requests_total": "HTTP requests answered, by route and status code",
    "bert_onnx_request_duration_seconds": "time from a request's arrival to its answer, by route (histogram)",
    "bert_onnx_queue_texts": "texts accepted and not yet finished (waiting or running)",
    "bert_onnx_texts_total": "texts run through the model",
    "bert_onnx_tokens_total": "real tokens run through the model ([CLS] and [SEP] included)",
    "bert_onnx_padded_tokens_total": "tokens run including padding (padded / real is the padding overhead)",
    "bert_onnx_batch_size": "texts per batch (histogram)",
    "bert_onnx_batch_duration_seconds": "model time per batch (histogram)",
    "bert_onnx_texts_dropped_total": "texts not run because their client disconnected first",
    "bert_onnx_model_info": "model folder, variant, backend and precision (labels; value 1)",
}


class Metrics:
    """Counters and histograms the server and its batcher update, plus the process's CPU, memory and GC."""

    def __init__(self, queue_texts: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "bert_onnx_requests", METRICS["bert_onnx_requests_total"], ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "bert_onnx_request_duration_seconds",
            METRICS["bert_onnx_request_duration_seconds"],
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        Gauge("bert_onnx_queue_texts", METRICS["bert_onnx_queue_texts"], registry=r).set_function(queue_texts)
        self.texts = Counter("bert_onnx_texts", METRICS["bert_onnx_texts_total"], registry=r)
        self.tokens = Counter("bert_onnx_tokens", METRICS["bert_onnx_tokens_total"], registry=r)
        self.padded_tokens = Counter("bert_onnx_padded_tokens", METRICS["bert_onnx_padded_tokens_total"], registry=r)
        self.batch_size = Histogram(
            "bert_onnx_batch_size", METRICS["bert_onnx_batch_size"], buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "bert_onnx_batch_duration_seconds",
            METRICS["bert_onnx_batch_duration_seconds"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dropped = Counter("bert_onnx_texts_dropped", METRICS["bert_onnx_texts_dropped_total"], registry=r)
        self.model = Info("bert_onnx_model", METRICS["bert_onnx_model_info"], registry=r)

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def batch(self, texts: int, padded: int, real: int, seconds: float) -> None:
        """A batch finished (called on the batcher's worker thread; prometheus_client is thread-safe)."""
        self.texts.inc(texts)
        self.tokens.inc(real)
        self.padded_tokens.inc(padded)
        self.batch_size.observe(texts)
        self.batch_seconds.observe(seconds)

    def drop(self, texts: int) -> None:
        self.dropped.inc(texts)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
