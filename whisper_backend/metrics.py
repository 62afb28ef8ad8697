"""Prometheus metrics in a private registry per app, with vLLM's names where meaning matches."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        self.model = model
        labels = ["model_name"]
        self.running = Gauge(
            "vllm:num_requests_running",
            "Requests being decoded now.",
            labels,
            registry=self.registry,
        ).labels(model)
        self.waiting = Gauge(
            "vllm:num_requests_waiting",
            "Requests admitted and waiting for a decode worker.",
            labels,
            registry=self.registry,
        ).labels(model)
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
        self.success = Counter(
            "vllm:request_success",
            "Requests answered in full (200).",
            [*labels, "finished_reason"],
            registry=self.registry,
        ).labels(model, "stop")
        self.latency = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Time from request start to last byte of a successful response.",
            labels,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640),
            registry=self.registry,
        ).labels(model)
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

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        """Count every request by status; like vLLM, latency and success only for served ones."""
        self.requests.labels(self.model, endpoint, str(status)).inc()
        if status == 200:
            self.success.inc()
            self.latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
