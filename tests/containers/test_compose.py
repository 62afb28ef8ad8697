"""The compose stack for real: compose/docker-compose.yml (cpu profile) from the images
`make images` built, run by podman-compose (or `docker compose` where Docker runs),
driven through the published port and the Docker API.

The order is the module's: requests, then what the containers are, then a killed
backend, a reload and a key rotation (each leaves the stack serving), then `down`.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from testkit import containers
from testkit.clips import make_clip
from testkit.containers import (
    ComposeProject,
    Engine,
    Images,
    admin_call,
    healthcheck_argv,
    service_uid,
)
from testkit.load import HELLO
from testkit.procs import FIXTURES, free_port
from testkit.stack import curl, wait_until

TINY = "openai/whisper-tiny.en"
BASE = "openai/whisper-base"
KEY = "sk-container-tier-0123456789abcdef"
NEW_KEY = "sk-container-tier-rotated-987654321"


def openai_error(answer: tuple[int, str], status: int) -> dict[str, Any]:
    """An (HTTP status, body) answer: `status`, with OpenAI's error shape."""
    code, body = answer
    assert code == status, (code, body[:500])
    error = json.loads(body)["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    return dict(error)


def transcribe(port: int, model: str, key: str = KEY, *extra: str) -> tuple[int, str]:
    return containers.transcribe(port, key, model, *extra)


@pytest.fixture(scope="module")
def project(
    engine: Engine, images: Images, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComposeProject]:
    work = tmp_path_factory.mktemp("compose")
    port = free_port()
    env = {
        **images.compose_env,
        "GATEWAY_API_KEY": KEY,
        "GATEWAY_PUBLISH": f"127.0.0.1:{port}",
    }
    proj = ComposeProject.copy_of_repo(engine, f"wgtest{os.getpid()}", work, env)
    started = time.monotonic()
    try:
        proj.run("up", "-d")

        def serving() -> bool:
            return all(transcribe(port, m)[0] == 200 for m in (TINY, BASE))

        wait_until(serving, 240, "the compose stack never served both models")
        print(f"\ncompose up -> both models served: {time.monotonic() - started:.1f} s")
        yield proj
    finally:
        proj.run("down", "-v", timeout=180, check=False)
        print(f"compose log: {proj.log}")


def test_the_tutorial_requests_through_the_published_port(project: ComposeProject) -> None:
    port = project.listener_port
    base = f"http://127.0.0.1:{port}"
    status, body = transcribe(port, TINY, KEY, "-F", "response_format=json", "-F", "language=en")
    assert status == 200 and "lazy dog" in json.loads(body)["text"].lower(), body
    status, body = transcribe(port, BASE, KEY, "-F", "response_format=srt")
    assert status == 200 and body.startswith("1\n00:00:00,000 --> "), body
    status, body = curl(f"{base}/v1/models", "-H", f"Authorization: Bearer {KEY}")
    assert status == 200 and {TINY, BASE} <= {m["id"] for m in json.loads(body)["data"]}
    assert curl(f"{base}/health")[0] == 200  # no key needed
    openai_error(curl(f"{base}/v1/models"), 401)

    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
    with HELLO.open("rb") as f:
        text = client.audio.transcriptions.create(model=TINY, file=f, response_format="text")
    assert "lazy dog" in str(text).lower()
    with HELLO.open("rb") as f:
        events = list(client.audio.transcriptions.create(model=TINY, file=f, stream=True))
    done = [e for e in events if e.type == "transcript.text.done"]
    deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert len(done) == 1 and deltas.strip() == done[0].text.strip() and "lazy" in deltas.lower()
    with (FIXTURES / "cafe_fr.wav").open("rb") as f:
        english = client.audio.translations.create(model=BASE, file=f)
    assert english.text.strip()


def test_long_audio_is_split_in_envoys_network(project: ComposeProject, tmp_path: Path) -> None:
    """The splitter shares Envoy's network namespace (network_mode: service:envoy)."""
    clip = make_clip(tmp_path / "long.wav", 70.0)
    status, body = curl(
        f"http://127.0.0.1:{project.listener_port}/v1/audio/transcriptions",
        "-H", f"Authorization: Bearer {KEY}", "-H", "x-long-audio: split", "-H", "Expect:",
        "-F", f"file=@{clip}", "-F", f"model={TINY}", "-F", "response_format=verbose_json",
        "-D", "-", timeout=300,
    )  # fmt: skip
    head, _, payload = body.partition("\n\n")  # curl -D -: headers, a blank line, the body
    assert status == 200, body[-1000:]
    pieces = [h for h in head.lower().splitlines() if h.startswith("x-long-audio-pieces:")]
    assert pieces and int(pieces[0].split(":")[1]) >= 3, head
    doc = json.loads(payload)
    assert abs(doc["duration"] - 70.0) < 0.5 and doc["segments"][-1]["end"] > 55, doc["duration"]


def test_containers_run_as_documented(project: ComposeProject) -> None:
    """Users, replicas and every healthcheck's own command, run in its own image (podman
    without systemd runs no healthcheck timer, so the test runs each one)."""
    services = {c.labels["com.docker.compose.service"] for c in project.containers()}
    assert services >= {"envoy-bootstrap", "control-plane", "envoy", "splitter", "whisper-tiny"}
    assert len(project.containers("whisper-tiny")) == 2  # deploy.replicas
    boot = project.container("envoy-bootstrap")
    boot.reload()
    assert boot.attrs["State"]["ExitCode"] == 0 and boot.status == "exited"
    for c in project.containers():
        if c.labels["com.docker.compose.service"] == "envoy-bootstrap":
            continue
        c.reload()
        assert c.status == "running", (c.name, c.status)
        argv = healthcheck_argv(c)
        assert argv, f"{c.name} has no healthcheck"
        rc, out = c.exec_run(list(argv))
        assert rc == 0, f"{c.name}: healthcheck {argv} -> {rc}: {out.decode()[-500:]}"
    for service in ("control-plane", "splitter", "whisper-base"):
        assert service_uid(project.containers(service)[0]) == 10001, service
    assert service_uid(project.container("envoy")) != 0


def _backends(project: ComposeProject) -> list[dict[str, Any]]:
    status, rows = admin_call(project.container("control-plane"), "/backends")
    assert status == 200, rows
    return list(rows)


def test_killed_backend_loses_no_unstarted_request_and_comes_back(
    project: ComposeProject, tmp_path: Path
) -> None:
    """SIGKILL one whisper-tiny replica's server (a crash, not a `stop`) under load."""
    port = project.listener_port
    clip = make_clip(tmp_path / "twelve.wav", 12.0)
    victim = project.containers("whisper-tiny")[0]
    victim.reload()
    restarts = victim.attrs["RestartCount"]

    def one(_: int) -> tuple[int, str]:
        return curl(
            f"http://127.0.0.1:{port}/v1/audio/transcriptions",
            "-H", f"Authorization: Bearer {KEY}",
            "-F", f"file=@{clip}", "-F", f"model={TINY}", timeout=240,
        )  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(12)]
        time.sleep(2.0)  # requests in flight on both replicas, the rest queued in Envoy
        os.kill(victim.attrs["State"]["Pid"], signal.SIGKILL)
        results = [f.result() for f in futures]
    failed = [(s, b) for s, b in results if s != 200]
    # At most what the killed replica had started (its max_concurrency, 2); each such
    # failure is a whole OpenAI error, never a cut transcript.
    assert len(failed) <= 2, failed
    for status, body in failed:
        openai_error((status, body), status)
    assert all("text" in json.loads(b) for s, b in results if s == 200)

    def restarted() -> bool:
        victim.reload()
        return victim.status == "running" and victim.attrs["RestartCount"] > restarts

    wait_until(restarted, 60, "the restart policy did not bring the backend back")

    def readmitted() -> bool:
        rows = [r for r in _backends(project) if TINY in r["models"]]
        return len(rows) == 2 and all(r["health"] == "HEALTHY" for r in rows)

    wait_until(readmitted, 120, "the probes did not readmit the restarted backend")
    print(f"\nkilled replica: {len(failed)} of 12 failed (started), restarted and readmitted")


def test_reload_refuses_a_bad_config_and_applies_a_good_one(project: ComposeProject) -> None:
    port = project.listener_port
    path = project.folder / "gateway.yaml"
    good = path.read_text()
    cp = project.container("control-plane")
    doc = yaml.safe_load(good)
    try:
        # Written in place (same inode): the single-file bind mount sees it.
        first, *rest = doc["backends"]
        bad = dict(doc, backends=[dict(first, max_concurrency=0), *rest])
        path.write_text(yaml.safe_dump(bad))
        project.run("kill", "-s", "HUP", "control-plane")
        wait_until(
            lambda: "reload refused" in cp.logs(tail=50).decode(),
            30,
            "SIGHUP with a bad config logged no refusal",
        )
        status, answer = admin_call(cp, "/config/reload", "POST")
        assert status == 400 and "backends[0].max_concurrency" in json.dumps(answer), answer
        assert transcribe(port, TINY)[0] == 200  # the last good config serves on

        # A good edit: without the vllm-small backend, whisper-small leaves /v1/models.
        smaller = dict(doc, backends=[b for b in doc["backends"] if "vllm" not in b["url"]])
        path.write_text(yaml.safe_dump(smaller))
        status, answer = admin_call(cp, "/config/reload", "POST")
        assert status == 200, answer

        def models() -> set[str]:
            status, body = curl(
                f"http://127.0.0.1:{port}/v1/models", "-H", f"Authorization: Bearer {KEY}"
            )
            return {m["id"] for m in json.loads(body)["data"]} if status == 200 else set()

        wait_until(lambda: "openai/whisper-small" not in models(), 30, "reload not applied")
        assert {TINY, BASE} <= models()
    finally:
        path.write_text(good)
        admin_call(cp, "/config/reload", "POST")


def test_rotating_the_key_recreates_the_control_plane(project: ComposeProject) -> None:
    """docs/deploy/compose.md: the new key in the environment, then `up -d control-plane`."""
    port = project.listener_port
    before = project.container("control-plane").id
    project.env["GATEWAY_API_KEY"] = NEW_KEY
    try:
        project.run("up", "-d", "control-plane")
        assert project.container("control-plane").id != before, "control-plane not recreated"
        wait_until(lambda: transcribe(port, TINY, NEW_KEY)[0] == 200, 120, "new key refused")
        openai_error(transcribe(port, TINY, KEY), 401)
    finally:
        project.env["GATEWAY_API_KEY"] = KEY
        project.run("up", "-d", "control-plane")
        wait_until(lambda: transcribe(port, TINY, KEY)[0] == 200, 120, "old key not restored")


def test_prometheus_scrapes_the_gateway(project: ComposeProject) -> None:
    """The monitoring profile's Prometheus (Debian's, from `make images`, where
    prom/prometheus cannot be pulled) scrapes the control plane's router metrics."""
    port = free_port()
    project.env["PROMETHEUS_PUBLISH"] = f"127.0.0.1:{port}"
    project.env["COMPOSE_PROFILES"] = "cpu,monitoring"  # `down` takes the same profiles
    project.run("up", "-d", "prometheus")
    api = f"http://127.0.0.1:{port}/api/v1/query"

    def series(query: str) -> list[dict[str, Any]]:
        status, body = curl("-G", api, "--data-urlencode", f"query={query}", timeout=10)
        return list(json.loads(body)["data"]["result"]) if status == 200 else []

    wait_until(
        lambda: [s["value"][1] for s in series('up{job="whisper-gateway"}')] == ["1"],
        90,
        "Prometheus never scraped the gateway",
    )
    # One series per backend endpoint: both whisper-tiny replicas and whisper-base.
    running = series("vllm:num_requests_running")
    assert len({s["metric"]["server"] for s in running}) >= 3, running


def test_down_leaves_nothing_behind(project: ComposeProject, engine: Engine) -> None:
    """Last in the module: `down` removes every container, pod and network of it."""
    project.run("down", timeout=180)
    assert project.containers() == []
    label = f"com.docker.compose.project={project.name}"
    assert engine.client.networks.list(filters={"label": label}) == []
    assert not [n for n in engine.client.networks.list() if n.name.startswith(project.name)]
    if engine.kind == "podman":
        pods = subprocess.run(
            ["podman", "pod", "ls", "--format", "{{.Name}}"],
            env={**os.environ, **engine.env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert not [p for p in pods if project.name in p], pods
