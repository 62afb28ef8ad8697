"""Real vLLM for the tests, as users run it: `whisper-gateway` with a `launch: vllm`
backend (whisper_backend.vllm_serve: its own venv, the model converted from the
packaged weights) beside a `launch: cpu` whisper_backend, both serving whisper-base.

One such stack per test session (vLLM holds about 4.3 GB and loads for a minute). The
CPU backend starts drained, so every request meets vLLM until a test undrains it.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testkit.gateway import Gateway, gateway_config
from testkit.procs import free_port
from testkit.stack import WHISPER_GATEWAY, Tree

BASE = "openai/whisper-base"  # multilingual: stock vLLM 0.32 answers "" for .en models
# A first run on a machine builds vLLM's venv (about 2 min) before vLLM loads (1 min).
READY_S = 900.0


@dataclass
class VllmStack:
    tree: Tree
    gw: Gateway
    vllm_port: int
    cpu_port: int

    @property
    def vllm(self) -> str:
        """vLLM's endpoint key (host:port); `http://` + it is vLLM itself, no gateway."""
        return f"127.0.0.1:{self.vllm_port}"

    @property
    def cpu(self) -> str:
        return f"127.0.0.1:{self.cpu_port}"

    def vllm_child(self) -> dict[str, Any]:
        """The supervisor's record of vLLM: pid (its group's id), starts, exits."""
        return dict(self.tree.children()[f"vllm-{self.vllm_port}"])

    def health(self, key: str) -> str:
        return str(next(b["health"] for b in self.gw.backends() if b["endpoint"] == key))

    def admin(self, action: str, key: str) -> None:
        """drain or undrain a backend, and wait until Envoy has the change."""
        req = urllib.request.Request(f"{self.gw.admin_url}/backends/{key}/{action}", b"")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        self.gw.wait_synced()


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@contextmanager
def vllm_stack(workdir: Path) -> Iterator[VllmStack]:
    vport, cport = free_port(), free_port()
    backend = {"models": [BASE]}
    cfg = gateway_config(
        [
            {**backend, "url": f"http://127.0.0.1:{vport}", "max_concurrency": 4, "launch": "vllm"},
            {**backend, "url": f"http://127.0.0.1:{cport}", "max_concurrency": 2, "launch": "cpu"},
        ],
        # Probes decode real speech on the same two cores: spaced out, with room to answer
        # (a refused connection still ejects at once, and requests retry elsewhere).
        health={
            "interval_s": 10.0,
            "timeout_s": 30.0,
            "healthy_threshold": 1,
            "unhealthy_threshold": 2,
        },
        # Above vLLM's own 25 MB, so its refusal is what the client meets.
        limits={"max_upload_mb": 30},
        public_router_endpoints=True,
    )
    gw = Gateway(workdir, cfg)
    gw.write_config()
    argv = [WHISPER_GATEWAY, "--config", str(gw.config_path), "--run-dir", str(workdir / "run")]
    tree = Tree(argv, workdir / "out.log")
    s = VllmStack(tree, gw, vport, cport)
    try:
        tree.wait_for("whisper-gateway is up", READY_S)
        gw.wait_backends({s.vllm, s.cpu}, timeout=READY_S)
        s.admin("drain", s.cpu)
        yield s
    finally:
        tree.stop()
