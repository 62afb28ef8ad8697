"""Real vLLM for the tests: its own venv (whisper_backend.vllm_env), a converted model
(whisper_backend.hf_export), one server in a process group of its own."""

from __future__ import annotations

from pathlib import Path

from testkit.procs import Proc, free_port, wait_http
from whisper_backend import vllm_env
from whisper_backend.hf_export import export_model

BASE = "openai/whisper-base"  # multilingual: stock vLLM 0.32 answers "" for .en models
READY_TIMEOUT_S = 300.0  # about a minute on an idle 2-core machine (docs/vllm.md)


def start_vllm(log_dir: Path, model: str = BASE) -> tuple[Proc, int]:
    env = vllm_env.ensure()
    port = free_port()
    proc = Proc(
        f"vllm-{port}",
        vllm_env.serve_command(env, export_model(model), model, port),
        log_dir / f"vllm-{port}.log",
        env=dict(vllm_env.SERVE_ENV),
        group=True,
    ).start()
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=READY_TIMEOUT_S, proc=proc)
    except BaseException:
        proc.stop()
        raise
    return proc, port
