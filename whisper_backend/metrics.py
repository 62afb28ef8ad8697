"""Prometheus metrics in a private registry per app, with vLLM's names where meaning matches.

The `vllm:*` series carry vLLM 0.32's labels (`engine="0"`, `model_name`, in its order), so
a dashboard or autoscaler rule written for vLLM reads this backend unchanged
(tests/e2e/test_vllm_stand_in.py compares them with a running vLLM).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

ENGINE = "0"  # vLLM numbers its engine cores; a single engine is "0"
# vLLM creates every finished_reason at startup; ours only ever finish with "stop".
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")
CONTENT_TYPE = CONTENT_TYPE_LATEST  # what vLLM's /metrics sends (prometheus_client's)


class Metrics:
    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        self.model = model
        labels = ["model_name"]
        vllm = ["engine", "model_name"]
        self.running = Gauge(
            "vllm:num_requests_running",
            "Requests being decoded now.",
            vllm,
            registry=self.registry,
        ).labels(ENGINE, model)
        self.waiting = Gauge(
            "vllm:num_requests_waiting",
            "Requests admitted and waiting for a decode worker.",
            vllm,
            registry=self.registry,
        ).labels(ENGINE, model)
        by_reason = Gauge(
            "vllm:num_requests_waiting_by_reason",
            "Waiting requests by reason: 'capacity' = waiting for a decode worker; "
            "'deferred' is always 0 here. Sum of all reasons equals vllm:num_requests_waiting.",
            [*vllm, "reason"],
            registry=self.registry,
        )
        self.waiting_capacity = by_reason.labels(ENGINE, model, "capacity")
        by_reason.labels(ENGINE, model, "deferred").set(0)
        self.requests = Counter(
            "whisper_backend_requests",
            "Transcription/translation requests by endpoint and HTTP status.",
            [*labels, "endpoint", "status"],
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "whisper_backend_audio_seconds",
            "Seconds of audio decoded.",
            labels,
            registry=self.registry,
        ).labels(model)
        success = Counter(
            "vllm:request_success",
            "Requests answered in full (200).",
            ["engine", "finished_reason", "model_name"],
            registry=self.registry,
        )
        for reason in FINISHED_REASONS:
            success.labels(ENGINE, reason, model)
        self.success = success.labels(ENGINE, "stop", model)
        self.latency = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Time from request start to last byte of a successful response.",
            vllm,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640),
            registry=self.registry,
        ).labels(ENGINE, model)
        self.cancelled = Counter(
            "whisper_backend_decodes_cancelled",
            "Decodes stopped early because the client went away.",
            labels,
            registry=self.registry,
        ).labels(model)
        self.model_loaded = Gauge(
            "whisper_backend_model_loaded",
            "1 once the model is loaded and serving.",
            labels,
            registry=self.registry,
        ).labels(model)

    def queue(self, running: int, waiting: int) -> None:
        """The engine's counts; every waiting request waits for capacity (a decode worker)."""
        self.running.set(running)
        self.waiting.set(waiting)
        self.waiting_capacity.set(waiting)

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        """Count every request by status; like vLLM, latency and success only for served ones."""
        self.requests.labels(self.model, endpoint, str(status)).inc()
        if status == 200:
            self.success.inc()
            self.latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
