"""The commands users run, run as users run them: the vLLM router's own line with our
program name, and `make up` losing a backend to SIGKILL.

Both start the whole process tree (supervisor, control plane, Envoy, real
whisper_backend processes) and talk to it with curl and aiohttp through the
listener. The router line uses the router's fixed default ports for the admin
planes (9901, 18000, 19000), as its users would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane.config.schema import DEFAULT_CONFIG
from testkit.procs import ROOT, free_port, start_backend
from testkit.stack import WHISPER_GATEWAY, Tree, curl, wait_until

HELLO = ROOT / "tests" / "fixtures" / "hello.wav"


def transcribe(url: str, model: str, *extra: str) -> tuple[int, str]:
    return curl(
        f"{url}/v1/audio/transcriptions",
        "-F",
        f"file=@{HELLO}",
        "-F",
        f"model={model}",
        "-F",
        "response_format=json",
        "-F",
        "language=en",
        *extra,
    )


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_router_line_serves_the_seed_requests(tmp_path: Path) -> None:
    """run-router.sh's line, verbatim but for the program name (--host first)."""
    backend, bport = start_backend(
        tmp_path, extra=("--served-model-name", "openai/whisper-small"), env={"HF_HUB_OFFLINE": "1"}
    )
    port = str(free_port())
    line = [
        WHISPER_GATEWAY,
        "--host", "0.0.0.0", "--port", port, "--service-discovery", "static",
        "--static-backends", f"http://127.0.0.1:{bport}", "--static-models", "openai/whisper-small",
        "--static-model-types", "transcription", "--routing-logic", "roundrobin",
        "--log-stats", "--log-level", "debug", "--engine-stats-interval", "10",
        "--request-stats-window", "10", "--static-backend-health-checks",
    ]  # fmt: skip
    tree = Tree(line, tmp_path / "gateway.out")
    try:
        tree.wait_for("whisper-gateway is up", 90)
        url = f"http://127.0.0.1:{port}"
        # The router's users wait for its /health (their readiness probe): 200 once the
        # first probe passed, which a loaded machine may take a few seconds to see.
        wait_until(lambda: curl(f"{url}/health")[0] == 200, 60, "the router line's /health")
        status, body = transcribe(url, "openai/whisper-small")
        assert status == 200, body
        assert "world" in json.loads(body)["text"].lower()
        status, body = transcribe(url, "openai/whisper-small", "-F", "stream=true", "-N")
        assert status == 200 and body.rstrip().endswith("data: [DONE]"), body
        status, body = curl(f"{url}/v1/models")
        assert status == 200 and "openai/whisper-small" in body
        # The router's own endpoints answer on its port, as its users' probes expect.
        assert curl(f"{url}/health") == (200, '{"status": "healthy"}')
        status, body = curl(f"{url}/engines")
        assert status == 200 and json.loads(body)[0]["serving_models"] == ["openai/whisper-small"]
        status, body = curl(f"{url}/metrics")
        assert status == 200
        assert f'vllm:healthy_pods_total{{server="http://127.0.0.1:{bport}"}} 1.0' in body
        # What the flags became is what runs.
        written = yaml.safe_load((tree.run_dir() / "gateway.yaml").read_text())
        assert written["health"]["interval_s"] == 60.0  # the router's default
        assert written["routing"]["policy"] == "round_robin"
        # --log-level debug reached the control plane.
        assert " DEBUG " in (tree.run_dir() / "control-plane.log").read_text()
        # --log-stats with the router's 10 s interval and --request-stats-window 10: a
        # line for the backend that served the requests above.
        assert written["stats"] == {
            "window_s": 10.0,
            "log_interval_s": 10.0,
            "engine_interval_s": 10.0,
        }
        cp_log = tree.run_dir() / "control-plane.log"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "req/s over 10s" not in cp_log.read_text():
            time.sleep(0.5)
        assert f"backend http://127.0.0.1:{bport}" in cp_log.read_text()
        pids = [c["pid"] for c in tree.children().values()]
    finally:
        tree.stop()
        backend.stop()
    assert tree.proc.returncode == 0
    assert not any(alive(p) for p in pids), "every child stopped with the supervisor"


def make_up_config(tmp_path: Path) -> Path:
    """The embedded default, on free ports (the only change)."""
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    for name in ("listener", "envoy_admin", "xds", "admin"):
        doc[name]["port"] = free_port()
    for b in doc["backends"]:
        b["url"] = f"http://127.0.0.1:{free_port()}"
    doc["health"].update(interval_s=1.0, timeout_s=10.0)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.slow
def test_make_up_survives_a_backend_sigkill(tmp_path: Path) -> None:
    config_path = make_up_config(tmp_path)
    cfg = yaml.safe_load(config_path.read_text())
    url = f"http://127.0.0.1:{cfg['listener']['port']}"
    admin = f"http://127.0.0.1:{cfg['admin']['port']}"
    tiny = "openai/whisper-tiny.en"
    tree = Tree(["make", "-s", "up", f"CONFIG={config_path}"], tmp_path / "make-up.out")
    try:
        tree.wait_for("whisper-gateway is up", 180)
        victim_port = cfg["backends"][0]["url"].rsplit(":", 1)[1]
        victim = f"backend-{victim_port}"
        deadline = time.monotonic() + 60
        while not all(b["health"] == "HEALTHY" for b in get_json(f"{admin}/backends")):
            assert time.monotonic() < deadline, get_json(f"{admin}/backends")
            time.sleep(0.2)
        first_pid = tree.children()[victim]["pid"]
        os.kill(first_pid, signal.SIGKILL)
        # No wait for the probes: a request racing the kill is resent to the other
        # backend (retry on connect failure and on reset). The supervisor may bring the
        # victim back before a probe ever sees it down, so its health is not awaited.
        # Every request for tiny.en is served meanwhile.
        served = []
        for _ in range(12):
            status, body = transcribe(url, tiny)
            assert status == 200, body
            served.append(json.loads(body)["text"])
        base_status, _ = transcribe(url, "openai/whisper-base")
        assert base_status == 200, "the other model is untouched"
        # The supervisor brought the killed backend back; the probes readmit it.
        deadline = time.monotonic() + 120
        while True:
            child = tree.children()[victim]
            views = {b["endpoint"]: b for b in get_json(f"{admin}/backends")}
            if child["starts"] == 2 and views[f"127.0.0.1:{victim_port}"]["health"] == "HEALTHY":
                break
            assert time.monotonic() < deadline, (child, views)
            time.sleep(0.5)
        assert child["pid"] != first_pid and child["last_exit_code"] == -9
        assert f"{victim} exited with code -9" in tree.text()
        pids = [c["pid"] for c in tree.children().values()]
    finally:
        tree.stop()  # Ctrl-C's SIGTERM twin, to make and the supervisor alike
    assert "whisper-gateway: stopping" in tree.text()
    assert not any(alive(p) for p in pids), "every child stopped with the supervisor"
