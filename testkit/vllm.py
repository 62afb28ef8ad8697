"""Real vLLM for the tests, as users run it: `make up CONFIG=examples/vllm-cpu.yaml`, a
`launch: vllm` backend (whisper_backend.vllm_serve: its own venv, the model converted
from the packaged weights) beside `launch: cpu` whisper_backends, one serving the same
whisper-base.

One such stack per test session (vLLM holds about 4.3 GB and loads for a minute). The
CPU backend starts drained, so every request meets vLLM until a test undrains it.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testkit.gateway import Gateway
from testkit.procs import ROOT, free_port
from testkit.stack import Tree

BASE = "openai/whisper-base"  # multilingual: stock vLLM 0.32 answers "" for .en models
EXAMPLE = ROOT / "examples" / "vllm-cpu.yaml"
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


def example_config(workdir: Path) -> tuple[dict[str, Any], int, int]:
    """examples/vllm-cpu.yaml as shipped, on free ports, with what the tests need on top;
    and the ports of its vLLM and of its CPU backend for the same model."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    for plane in ("listener", "envoy_admin", "xds", "admin"):
        doc[plane]["port"] = free_port()
    doc["long_audio"]["splitter"]["port"] = free_port()
    ports = {}
    for b in doc["backends"]:
        b["url"] = f"http://127.0.0.1:{free_port()}"
        ports[(b["launch"], b["models"][0])] = int(b["url"].rsplit(":", 1)[1])
    doc.update(
        # Probes decode real speech on the same two cores: spaced out, with room to answer
        # (a refused connection still ejects at once, and requests retry elsewhere).
        health={
            "interval_s": 10.0,
            "timeout_s": 30.0,
            "healthy_threshold": 1,
            "unhealthy_threshold": 2,
        },
        # Above vLLM's own 25 MB, so its refusal is what the client meets.
        limits={**doc["limits"], "max_upload_mb": 30},
        public_router_endpoints=True,
        # vLLM's running count is read this often (30 s by default): a test that watches
        # it while one clip transcribes (about 8 s) must see a reading taken meanwhile.
        stats={"engine_interval_s": 1.0},
        edge={"backend_header": True},  # the tests see which backend served
        log_format="json",
    )
    return doc, ports[("vllm", BASE)], ports[("cpu", BASE)]


@contextmanager
def vllm_stack(workdir: Path) -> Iterator[VllmStack]:
    """`make up CONFIG=examples/vllm-cpu.yaml` (on free ports), the CPU backend for
    whisper-base drained once every backend is healthy."""
    cfg, vport, cport = example_config(workdir)
    gw = Gateway(workdir, cfg)
    gw.write_config()
    tree = Tree(["make", "-s", "up", f"CONFIG={gw.config_path}"], workdir / "out.log")
    s = VllmStack(tree, gw, vport, cport)
    try:
        tree.wait_for("whisper-gateway is up", READY_S)
        gw.wait_backends(timeout=READY_S)
        s.admin("drain", s.cpu)
        yield s
    finally:
        tree.stop()
