"""The container tier's engine, images and compose projects, driven through the Docker API.

The tests use the `docker` SDK only, so they run unchanged against a real Docker engine
(DOCKER_HOST, or /var/run/docker.sock) and, where there is none, against podman's
Docker-compatible service on a socket this run starts and owns, with the settings of
images/containers.conf (CONTAINERS_CONF), never the host's /etc.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from testkit.load import HELLO
from testkit.procs import ROOT, Proc
from testkit.stack import curl

CONTAINERS_CONF = ROOT / "images" / "containers.conf"
PODMAN_COMPOSE = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "podman-compose"


@dataclass
class Engine:
    """A Docker API and the compose command that goes with it."""

    kind: str  # "docker" or "podman"
    client: docker.DockerClient
    compose: list[str]
    env: dict[str, str]  # for compose and `make images`


def _docker_engine() -> docker.DockerClient | None:
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return None
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException:
        return None
    # podman's own API may answer on docker.sock (podman-docker): that is podman.
    version = client.version()
    if any(c.get("Name", "").lower() == "podman engine" for c in version.get("Components", [])):
        client.close()
        return None
    return client


@contextlib.contextmanager
def open_engine(run_dir: Path) -> Iterator[Engine]:
    """A real Docker engine if one answers; else `podman system service` on our socket."""
    client = _docker_engine()
    if client is not None:
        try:
            yield Engine("docker", client, ["docker", "compose"], {"ENGINE": "docker"})
        finally:
            client.close()
        return
    assert shutil.which("podman"), "no Docker engine, no podman: scripts/system-deps.sh containers"
    run_dir.mkdir(parents=True, exist_ok=True)
    sock = run_dir / "podman.sock"
    env = {"CONTAINERS_CONF": str(CONTAINERS_CONF), "ENGINE": "podman"}
    service = Proc(
        "podman-service",
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        run_dir / "podman-service.log",
        env=env,
    ).start()
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert service.alive(), f"podman system service ended:\n{service.log_tail()}"
            assert time.monotonic() < deadline, "podman system service made no socket in 30 s"
            time.sleep(0.1)
        client = docker.DockerClient(base_url=f"unix://{sock}", timeout=120)
        client.ping()
        try:
            yield Engine("podman", client, [str(PODMAN_COMPOSE)], env)
        finally:
            client.close()
    finally:
        service.stop()


@dataclass(frozen=True)
class Images:
    """The images `make images` chose beside its own (the last line it prints), and the
    environment compose needs to use them."""

    envoy: str
    prometheus: str
    python: str
    seconds: float

    @property
    def compose_env(self) -> dict[str, str]:
        return {
            "ENVOY_IMAGE": self.envoy,
            "PROMETHEUS_IMAGE": self.prometheus,
            "PYTHON_IMAGE": self.python,
        }


def make_images(engine: Engine, log: Path) -> Images:
    """`make images` as a user runs it (cached: unchanged layers are not rebuilt)."""
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            ["make", "-s", "images"],
            cwd=ROOT,
            env={**os.environ, **engine.env},
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
            timeout=1800,
        )
    assert proc.returncode == 0, f"make images failed:\n{log.read_text()[-3000:]}"
    fields = dict(kv.split("=", 1) for kv in proc.stdout.strip().splitlines()[-1].split())
    return Images(
        envoy=fields["ENVOY_IMAGE"],
        prometheus=fields["PROMETHEUS_IMAGE"],
        python=fields["PYTHON_IMAGE"],
        seconds=time.monotonic() - start,
    )


@dataclass
class ComposeProject:
    """One compose project of the repository's compose file, run from a copy of its
    folder (so a test can edit gateway.yaml and .env) under a name of its own."""

    engine: Engine
    name: str
    folder: Path  # the copy of compose/
    env: dict[str, str]
    log: Path

    @classmethod
    def copy_of_repo(
        cls, engine: Engine, name: str, work: Path, env: dict[str, str]
    ) -> ComposeProject:
        folder = work / "compose"
        shutil.copytree(ROOT / "compose", folder)
        # The monitoring profile mounts ../deploy: the same relative place as in the repo.
        (work / "deploy").symlink_to(ROOT / "deploy")
        return cls(engine, name, folder, env, work / "compose.log")

    @property
    def listener_port(self) -> int:
        """The host port Envoy's listener is published on (GATEWAY_PUBLISH=address:port)."""
        return int(self.env["GATEWAY_PUBLISH"].rsplit(":", 1)[1])

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        argv = [*self.engine.compose, "-p", self.name, "-f", "docker-compose.yml", *args]
        proc = subprocess.run(
            argv,
            cwd=self.folder,
            env={**os.environ, **self.engine.env, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        with self.log.open("a") as out:
            out.write(f"$ {shlex.join(argv)}\n{proc.stdout}{proc.stderr}\n")
        if check:
            assert proc.returncode == 0, f"{shlex.join(args)} failed:\n{proc.stderr[-3000:]}"
        return proc.stdout + proc.stderr

    def containers(self, service: str | None = None) -> list[Container]:
        labels = [f"com.docker.compose.project={self.name}"]
        if service:
            labels.append(f"com.docker.compose.service={service}")
        found = self.engine.client.containers.list(all=True, filters={"label": labels})
        return sorted(found, key=lambda c: c.name)

    def container(self, service: str) -> Container:
        (one,) = self.containers(service)
        return one


def transcribe(port: int, key: str, model: str, *extra: str, file: Path = HELLO) -> tuple[int, str]:
    """One transcription with curl through a published listener: (status, body)."""
    return curl(
        f"http://127.0.0.1:{port}/v1/audio/transcriptions",
        "-H", f"Authorization: Bearer {key}",
        "-F", f"file=@{file}", "-F", f"model={model}", *extra,
        timeout=240,
    )  # fmt: skip


def service_uid(container: Container) -> int:
    """The uid the container's own process (pid 1) runs as. Not `exec id -u`: an image
    may start as root and drop to its user (envoyproxy/envoy's entrypoint does)."""
    rc, out = container.exec_run(["cat", "/proc/1/status"])
    assert rc == 0, out
    (line,) = [x for x in out.decode().splitlines() if x.startswith("Uid:")]
    return int(line.split()[1])


def exec_python(container: Container, code: str) -> tuple[int, str]:
    """Run `python -c code` in the container: (exit code, output)."""
    code_, out = container.exec_run(["python", "-c", code])
    return int(code_), out.decode(errors="replace")


def admin_call(container: Container, path: str, method: str = "GET") -> tuple[int, Any]:
    """The control plane's admin API, which compose does not publish, from inside its
    container as docs/deploy/compose.md shows: (status, JSON body or text)."""
    code = f"""
import urllib.error, urllib.request
req = urllib.request.Request("http://127.0.0.1:19000{path}", method={method!r})
try:
    r = urllib.request.urlopen(req, timeout=20); print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
"""
    rc, out = exec_python(container, code)
    assert rc == 0, out
    status, _, body = out.partition("\n")
    try:
        return int(status), json.loads(body)
    except json.JSONDecodeError:
        return int(status), body


def healthcheck_argv(container: Container) -> Sequence[str] | None:
    """The container's healthcheck as an argv (CMD form), or None without one."""
    check = (container.attrs.get("Config") or {}).get("Healthcheck") or {}
    test = check.get("Test") or []
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", test[1]]
    return list(test[1:] if test[0] == "CMD" else test)
