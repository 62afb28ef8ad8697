"""The Kubernetes pods for real: the cpu overlay's gateway pod (bootstrap init container,
control plane and splitter sidecars, Envoy) and a whisper-tiny pod, from the images
`make images` built, run by `podman kube play` with the rewrites of testkit.kube_play,
driven through Envoy's published port and the Docker API.

kube play is podman's: on a Docker engine this module is skipped.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import yaml
from docker.models.containers import Container

from testkit import kustomize
from testkit.clips import make_clip
from testkit.containers import Engine, Images, service_uid, transcribe
from testkit.kube_play import Play, for_kube_play, pod_name
from testkit.load import HELLO
from testkit.procs import ROOT, free_port
from testkit.stack import curl, wait_until

TINY = "openai/whisper-tiny.en"


@dataclass
class Pods:
    """What kube play was given, where Envoy is published, and the podman CLI for the
    verbs the Docker API has not (kube play/down, pods, networks, volumes)."""

    engine: Engine
    play: Play
    path: Path  # the YAML played
    network: str
    port: int

    @property
    def key(self) -> str:
        """The first client's key, from the Secret the pod mounts."""
        secret = next(iter(self.play.secret_files.values()))
        return str(yaml.safe_load(secret["keys.yaml"])["clients"][0]["key"])

    def podman(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            ["podman", *args],
            env={**os.environ, **self.engine.env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0 or not check, f"podman {' '.join(args)}: {proc.stderr[-2000:]}"
        return proc.stdout

    def container(self, deployment: str, name: str) -> Container:
        return self.engine.client.containers.get(f"{pod_name(deployment)}-{name}")

    def transcribe(self, *extra: str, key: str | None = None) -> tuple[int, str]:
        return transcribe(self.port, key or self.key, TINY, *extra)

    def config_volumes(self) -> list[str]:
        names = [o["metadata"]["name"] for o in self.play.manifests if o["kind"] == "ConfigMap"]
        have = set(self.podman("volume", "ls", "--format", "{{.Name}}").split())
        return [n for n in names if n in have]


@pytest.fixture(scope="module")
def pods(
    engine: Engine, images: Images, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pods]:
    if engine.kind != "podman":
        pytest.skip("podman kube play is podman's; this engine is Docker")
    work = tmp_path_factory.mktemp("kube")
    port = free_port()
    swap = {} if images.envoy.startswith("envoyproxy/") else {"envoyproxy/envoy": images.envoy}
    play = for_kube_play(
        kustomize.build(ROOT / "k8s" / "overlays" / "cpu"),
        ["whisper-gateway", "whisper-tiny"],
        listener=("127.0.0.1", port),
        secrets_dir=work / "secrets",
        images=swap,
    )
    for secret, files in play.secret_files.items():
        folder = work / "secrets" / secret
        folder.mkdir(parents=True)
        folder.chmod(0o755)
        for name, text in files.items():
            (folder / name).write_text(text)
            (folder / name).chmod(0o644)
    path = work / "play.yaml"
    path.write_text(yaml.safe_dump_all(play.manifests))
    network = f"wgkube{os.getpid()}"
    p = Pods(engine, play, path, network, port)
    for volume in p.config_volumes():  # a ConfigMap volume left by an earlier run is stale
        p.podman("volume", "rm", "-f", volume)
    p.podman("network", "create", network)
    started = time.monotonic()
    try:
        p.podman("kube", "play", "--network", network, str(path))
        wait_until(lambda: p.transcribe()[0] == 200, 240, "the gateway pod never served tiny.en")
        print(f"\nkube play -> served: {time.monotonic() - started:.1f} s")
        yield p
    finally:
        p.podman("kube", "down", str(path), check=False)
        for volume in p.config_volumes():
            p.podman("volume", "rm", "-f", volume, check=False)
        p.podman("network", "rm", "-f", network, check=False)


def test_the_tutorial_requests_through_the_pod(pods: Pods) -> None:
    status, body = pods.transcribe("-F", "response_format=json", "-F", "language=en")
    assert status == 200 and "lazy dog" in json.loads(body)["text"].lower(), body
    status, body = pods.transcribe("-F", "response_format=vtt")
    assert status == 200 and body.startswith("WEBVTT"), body
    base = f"http://127.0.0.1:{pods.port}"
    assert curl(f"{base}/health")[0] == 200
    status, body = pods.transcribe(key="sk-not-a-key-of-this-gateway")
    assert status == 401 and json.loads(body)["error"]["type"], body
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=pods.key, max_retries=0)
    with HELLO.open("rb") as f:
        events = list(client.audio.transcriptions.create(model=TINY, file=f, stream=True))
    (done,) = [e for e in events if e.type == "transcript.text.done"]
    assert "lazy" in done.text.lower()


def test_the_pod_runs_as_its_manifest_says(pods: Pods) -> None:
    """Users, read-only roots, the bootstrap the init container wrote, and every probe's
    own command (kube play runs no exec probe itself here), run where the kubelet would."""
    spec = next(o for o in pods.play.manifests if o["metadata"]["name"] == "whisper-gateway")[
        "spec"
    ]["template"]["spec"]
    for c in spec["containers"]:
        box = pods.container("whisper-gateway", c["name"])
        box.reload()
        assert box.status == "running", (c["name"], box.status)
        assert service_uid(box) == 10001, c["name"]
        rc, _ = box.exec_run(["touch", "/probe-of-a-read-only-root"])
        assert rc != 0, f"{c['name']}: the root file system is writable"
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if kind in c:
                argv = c[kind]["exec"]["command"]
                rc, out = box.exec_run(argv)
                assert rc == 0, f"{c['name']} {kind} {argv}: {rc} {out.decode()[-300:]}"
    envoy = pods.container("whisper-gateway", "envoy")
    rc, out = envoy.exec_run(["bash", "-c", "test -s /etc/envoy/bootstrap.json && echo ok"])
    assert rc == 0 and out.decode().strip() == "ok"
    assert service_uid(pods.container("whisper-tiny", "whisper-backend")) == 10001


def test_prestop_drain_lets_the_request_in_flight_finish(pods: Pods, tmp_path: Path) -> None:
    """The preStop hook as the kubelet runs it (kube play runs none): readiness fails at
    once, the hook returns only when nothing is in flight, and that request ends whole."""
    clip = make_clip(tmp_path / "twenty.wav", 20.0)
    envoy = pods.container("whisper-gateway", "envoy")
    spec = next(o for o in pods.play.manifests if o["metadata"]["name"] == "whisper-gateway")[
        "spec"
    ]["template"]["spec"]
    (manifest,) = [c for c in spec["containers"] if c["name"] == "envoy"]
    pre_stop = manifest["lifecycle"]["preStop"]["exec"]["command"]
    ready = manifest["readinessProbe"]["exec"]["command"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        request = pool.submit(
            curl,
            f"http://127.0.0.1:{pods.port}/v1/audio/transcriptions",
            "-H", f"Authorization: Bearer {pods.key}",
            "-F", f"file=@{clip}", "-F", f"model={TINY}", "-F", "response_format=verbose_json",
            timeout=240,
        )  # fmt: skip
        active = ["bash", ready[1], "active"]  # envoy-admin.sh: requests in flight
        wait_until(
            lambda: envoy.exec_run(active).output.decode().strip() not in ("", "0"),
            30,
            "the request never reached Envoy",
        )
        rc, out = envoy.exec_run(pre_stop, environment={"DRAIN_MIN_S": "1"})
        assert rc == 0, out.decode()
        assert request.done(), "preStop returned with the request still in flight"
        status, body = request.result()
    assert status == 200, body[-500:]
    assert abs(json.loads(body)["duration"] - 20.0) < 0.5
    rc, _ = envoy.exec_run(ready)
    assert rc != 0, "still ready after the drain"


def test_kube_down_leaves_no_pod_or_container(pods: Pods) -> None:
    pods.podman("kube", "down", str(pods.path))
    left = pods.podman("ps", "-a", "--format", "{{.Names}}").split()
    assert not [n for n in left if n.startswith(("whisper-gateway-pod-0", "whisper-tiny-pod-0"))]
    pods_left = pods.podman("pod", "ls", "--format", "{{.Name}}").split()
    assert not [p for p in pods_left if p.endswith("-pod-0")]
