"""The bench's peer, measured in the same run: a real LiteLLM proxy on loopback.

LiteLLM (`litellm[proxy]`) routes `/v1/audio/transcriptions` to OpenAI-compatible
backends with load balancing (simple-shuffle by default) and retries. It lives in
its own venv (`.venv-litellm`, pinned, created here on first use) because its
dependencies would move ours. It is kept off the internet: the model cost map is
the bundled one, no .env is read, no database, no hub.

What it does to a transcription upload (read in litellm/proxy/proxy_server.py,
`audio_transcriptions`): Starlette parses the form and spools the file to a
temporary file past 1 MB, then LiteLLM reads the whole file into memory
(`await file.read()` into a BytesIO) and the OpenAI SDK rebuilds a new multipart
body for the upstream request (httpx). So each upload is held in RAM whole, at
least once, for its whole life: a figure scenario 2 measures. The other form
fields are passed on as OpenAI parameters (unknown ones dropped with
`drop_params`); the upstream `model` is the deployment's model after its
`openai/` prefix, which here is the same name the client sent (checked against
echo_form: "fake/fast" arrives as "fake/fast"). When the client sends no
`response_format`, LiteLLM asks the backend for `verbose_json` (it wants
`duration` for its cost map) and answers with that, plus null fields
(`usage`, `language`, `words`, ...) the backend did not send. Headers upstream are
the OpenAI SDK's (`Authorization: Bearer none`, x-stainless-*). It starts in
about 8 s and idles near 330 MB RSS.

    .venv/bin/python -m bench.litellm_peer --install   # create the venv, say how long
    .venv/bin/python -m bench.litellm_peer --check URL MODEL  # one transcription through it
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench._harness import ROOT, rss_kb

# 1.109.1 is the newest on PyPI, but it (and every release down to 1.106.3) needs
# certifi>=2026.10.19, which this machine's registry does not have; 1.106.2 is the
# newest whose dependencies resolve here.
LITELLM_VERSION = "1.106.2"
VENV = ROOT / ".venv-litellm"
STAMP = VENV / f".installed-{LITELLM_VERSION}"

# Offline and quiet: no cost-map fetch, no .env from the working directory, no hub.
PEER_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_MODE": "PRODUCTION",
    "LITELLM_LOG": "ERROR",
    "LITELLM_TELEMETRY": "False",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
    # The gateway runs without client keys in the bench: so does the peer, on loopback.
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
}


def ensure_installed(quiet: bool = True) -> Path:
    """The pinned LiteLLM venv, created once; concurrent callers wait on one lock."""
    VENV.mkdir(exist_ok=True)
    # The venv is never part of the tree: git (and so ruff) skip it.
    (VENV / ".gitignore").write_text("*\n")
    with (VENV / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not STAMP.exists():
            base = getattr(sys, "_base_executable", sys.executable)
            subprocess.run([base, "-m", "venv", str(VENV)], check=True)
            subprocess.run(
                [
                    str(VENV / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    *(["-q"] if quiet else []),
                    f"litellm[proxy]=={LITELLM_VERSION}",
                ],
                check=True,
            )
            STAMP.write_text(LITELLM_VERSION + "\n")
    return VENV / "bin" / "litellm"


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peer_config(
    backends: list[str],
    models: list[str],
    num_retries: int,
    timeout_s: float,
    pairs: list[tuple[str, str]] | None = None,
) -> dict[str, object]:
    """One deployment per (model, backend): LiteLLM balances a model's group across them.

    `pairs` ((model, backend URL), ...) replaces the full product when backends
    serve different models.
    """
    deployments = [
        {
            "model_name": model,
            "litellm_params": {
                # openai/ picks the OpenAI-compatible client; the rest is the upstream name.
                "model": f"openai/{model}",
                "api_base": url.rstrip("/") + "/v1",
                "api_key": "none",
                "timeout": timeout_s,
            },
        }
        for model, url in (pairs or [(m, u) for m in models for u in backends])
    ]
    return {
        "model_list": deployments,
        "router_settings": {"routing_strategy": "simple-shuffle", "num_retries": num_retries},
        "litellm_settings": {
            "num_retries": num_retries,
            "request_timeout": timeout_s,
            "drop_params": True,
            "telemetry": False,
        },
        "general_settings": {},
    }


@dataclass
class LiteLLMPeer:
    """A running LiteLLM proxy; ended by its own pid."""

    url: str
    workdir: Path
    popen: subprocess.Popen[bytes]
    log_path: Path
    version: str = LITELLM_VERSION
    config: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss_kb(self) -> int:
        """Resident memory of the proxy (one uvicorn worker: this very process)."""
        return rss_kb(self.pid)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(5)


class PeerLeftOut(RuntimeError):
    """BENCH_PEER=0: the scenarios say the peer was not run, and run the rest."""


def peer_enabled() -> bool:
    """CI's smoke run sets BENCH_PEER=0: LiteLLM's install alone takes ~1-2 min of
    the suite's budget; `make bench` always runs it."""
    return os.environ.get("BENCH_PEER", "1") != "0"


def start_litellm(
    workdir: Path,
    backends: list[str],
    models: list[str],
    num_retries: int = 0,
    timeout_s: float = 600.0,
    port: int | None = None,
    ready_timeout_s: float = 120.0,
    deployments: list[tuple[str, str]] | None = None,
) -> LiteLLMPeer:
    """A LiteLLM proxy on 127.0.0.1 in front of `backends` (base URLs), serving `models`.

    Every backend serves every model, unless `deployments` lists (model, URL) pairs.
    """
    if not peer_enabled():
        raise PeerLeftOut("LiteLLM left out of this run (BENCH_PEER=0)")
    exe = ensure_installed()
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    cfg = peer_config(backends, models, num_retries, timeout_s, deployments)
    cfg_path = workdir / "litellm.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log_path = workdir / f"litellm-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LITELLM_"))}
    env.update(PEER_ENV)
    env.pop("DATABASE_URL", None)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            [
                str(exe),
                "--config",
                str(cfg_path),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--num_workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,  # no .env from the project root
        )
    peer = LiteLLMPeer(f"http://127.0.0.1:{port}", workdir, popen, log_path, config=cfg)
    deadline = time.monotonic() + ready_timeout_s
    while True:
        if not peer.alive():
            raise RuntimeError(f"LiteLLM exited early:\n{peer.log_tail()}")
        try:
            with urllib.request.urlopen(f"{peer.url}/health/liveliness", timeout=2) as r:
                if r.status == 200:
                    return peer
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            peer.stop()
            raise TimeoutError(f"LiteLLM not ready after {ready_timeout_s}s:\n{peer.log_tail()}")
        time.sleep(0.2)


def _check(url: str, model: str) -> None:
    """One real transcription through a peer in front of `url` (manual verification)."""
    import tempfile

    from testkit.load import HELLO

    peer = start_litellm(Path(tempfile.mkdtemp(prefix="litellm-check-")), [url], [model])
    try:
        boundary = "checkboundary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="hello.wav"'
                "\r\nContent-Type: audio/wav\r\n\r\n"
            ).encode()
            + HELLO.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        req = urllib.request.Request(
            f"{peer.url}/v1/audio/transcriptions",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        t0 = time.monotonic()
        with urllib.request.urlopen(req, timeout=120) as r:
            print(r.status, r.read().decode()[:400], f"{time.monotonic() - t0:.2f} s")
        print(f"LiteLLM RSS {peer.rss_kb() / 1024:.0f} MB")
    finally:
        peer.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--install", action="store_true", help="create the venv and time it")
    p.add_argument("--check", nargs=2, metavar=("BACKEND_URL", "MODEL"))
    a = p.parse_args(argv)
    if a.install:
        t0 = time.monotonic()
        ensure_installed(quiet=False)
        print(f"LiteLLM {LITELLM_VERSION} ready in {VENV} ({time.monotonic() - t0:.1f} s)")
    if a.check:
        _check(*a.check)


if __name__ == "__main__":
    main()
