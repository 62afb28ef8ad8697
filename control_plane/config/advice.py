"""Warnings about a valid config that will not do what its author expects.

Not errors: the config is well formed and may be right for a backend we cannot see
(a patched vLLM), so `check`, the control plane and `make up` print them and go on.
"""

from __future__ import annotations

from .schema import GatewayConfig


def backend_warnings(config: GatewayConfig) -> list[str]:
    """One line per English-only model given to a vLLM server (docs/vllm.md)."""
    return [
        f"backends[{i}] (launch: vllm) serves {model}: stock vLLM 0.32 answers English-only "
        "Whisper models with empty text, and the health probes will mark it unhealthy; "
        "serve a multilingual model (openai/whisper-base) on vLLM, or this one with "
        "launch: cpu"
        for i, b in enumerate(config.backends)
        if b.launch == "vllm"
        for model in b.models
        if model.endswith(".en")
    ]
