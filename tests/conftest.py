"""Session fixtures for the end-to-end tests: a real fleet behind a real gateway.

The backend fixtures (`tiny_url`, `base_url`) come from backend_fixtures and are
shared with the backend tests, so each model loads once per session.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backend_fixtures import backend_logs, base_url, tiny_url

from testkit.containers import Engine, Images, make_images, open_engine
from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.procs import free_port, start_backend, start_fake, stop_all
from testkit.vllm import VllmStack, vllm_stack

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = "openai/whisper-tiny.en"
BASE = "openai/whisper-base"
SMALL = "openai/whisper-small"  # configured, never served: its backend is down
SLOW = "fake/slow"
SLOW_STREAM = "fake/slow-stream"


@pytest.fixture(scope="session", autouse=True)
def _nothing_outlives_the_run() -> Iterator[None]:
    """Every process a test started is stopped by the end of the run, even one whose
    fixture failed half way (testkit.procs.stop_all)."""
    yield
    stop_all()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmStack]:
    """Real vLLM behind the gateway (testkit.vllm), one per run: it holds 4.3 GB."""
    with vllm_stack(tmp_path_factory.mktemp("vllm-stack")) as s:
        yield s


@pytest.fixture(scope="session")
def tiny2_url(backend_logs: Path) -> Iterator[str]:
    proc, port = start_backend(backend_logs, env={"HF_HUB_OFFLINE": "1"})
    yield f"http://127.0.0.1:{port}"
    proc.stop()


@pytest.fixture(scope="session")
def fakes(backend_logs: Path) -> Iterator[dict[str, int]]:
    procs = {
        "slow": start_fake(backend_logs, "slow", "--delay", "17"),
        "slow_stream": start_fake(backend_logs, "slow_stream", "--interval", "1", "--chunks", "18"),
    }
    yield {k: port for k, (_, port) in procs.items()}
    for p, _ in procs.values():
        p.stop()


@pytest.fixture(scope="session")
def fleet(
    tiny_url: str,
    tiny2_url: str,
    base_url: str,
    fakes: dict[str, int],
) -> dict[str, Any]:
    return {
        "tiny": [tiny_url, tiny2_url],
        "base": [base_url],
        "dead": f"http://127.0.0.1:{free_port()}",
        "fakes": fakes,
    }


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, fleet: dict[str, Any]) -> Iterator[Gateway]:
    backends: list[dict[str, Any]] = [
        {"url": u, "models": [TINY], "max_concurrency": 2} for u in fleet["tiny"]
    ]
    backends += [{"url": u, "models": [BASE], "max_concurrency": 2} for u in fleet["base"]]
    backends.append({"url": fleet["dead"], "models": [SMALL]})
    no_probe = {"enabled": False}
    backends.append(
        {"url": f"http://127.0.0.1:{fleet['fakes']['slow']}", "models": [SLOW], "health": no_probe}
    )
    backends.append(
        {
            "url": f"http://127.0.0.1:{fleet['fakes']['slow_stream']}",
            "models": [SLOW_STREAM],
            "health": no_probe,
        }
    )
    # It lives for the rest of the run once a test asks for it, and every probe is a real
    # transcription on the same two cores: every 5 s, not testkit's 1 s (no test here
    # waits for a verdict to change).
    cfg = gateway_config(backends, health={**gateway_config([])["health"], "interval_s": 5.0})
    gw = start_gateway(tmp_path_factory.mktemp("gateway"), cfg)
    healthy = {u.removeprefix("http://") for u in fleet["tiny"] + fleet["base"]}
    gw.wait_backends(healthy)
    yield gw
    gw.stop()


# ------------------------------------------------------------ the container tier
# Here, not in tests/containers/conftest.py: a second conftest module would shadow the
# names the e2e modules import from this one (`from conftest import TINY`).


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A Docker engine if one answers, else podman's Docker API on a socket we own."""
    with open_engine(tmp_path_factory.mktemp("engine")) as found:
        yield found


@pytest.fixture(scope="session")
def images(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Images:
    """`make images` once a run; the engine caches the layers between runs."""
    log = tmp_path_factory.mktemp("images") / "make-images.log"
    built = make_images(engine, log)
    print(f"\nmake images: {built.seconds:.0f} s ({built.python}, {built.envoy})")
    return built
