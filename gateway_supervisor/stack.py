"""`make up` (`python -m gateway_supervisor`): the whole stack on this machine from one config.

Starts a CPU whisper_backend for every backend marked `launch: cpu`, the
control plane, and Envoy with a bootstrap derived from the same config.
Ctrl-C or SIGTERM stops every process it started, by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

import aiohttp

from control_plane.bootstrap import build_bootstrap, envoy_command
from control_plane.config import DEFAULT_CONFIG, ConfigError, GatewayConfig, load_config


async def _spawn(name: str, argv: list[str], log_dir: Path) -> asyncio.subprocess.Process:
    log = (log_dir / f"{name}.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"},
        start_new_session=True,  # Ctrl-C reaches us; we stop children in order
    )
    log.close()
    print(f"  started {name} (pid {proc.pid}), log {log_dir / (name + '.log')}", flush=True)
    return proc


async def _wait_http(url: str, timeout: float, proc: asyncio.subprocess.Process) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            if proc.returncode is not None:
                return False
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return True
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
    return False


async def run(config_path: Path, config: GatewayConfig, log_dir: Path) -> int:
    procs: list[tuple[str, asyncio.subprocess.Process]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        print("whisper-gateway: starting", flush=True)
        for b in config.backends:
            if b.launch != "cpu":
                continue
            name = f"backend-{b.port}"
            procs.append(
                (
                    name,
                    await _spawn(
                        name,
                        [
                            sys.executable,
                            "-m",
                            "whisper_backend",
                            "--model",
                            b.models[0],
                            "--host",
                            b.host,
                            "--port",
                            str(b.port),
                            "--num-workers",
                            str(min(b.max_concurrency, 2)),
                        ],
                        log_dir,
                    ),
                )
            )
        procs.append(
            (
                "control-plane",
                await _spawn(
                    "control-plane",
                    [
                        sys.executable,
                        "-m",
                        "control_plane",
                        "--config",
                        str(config_path),
                    ],
                    log_dir,
                ),
            )
        )
        cp = procs[-1][1]
        if not await _wait_http(
            f"http://{config.admin.address}:{config.admin.port}/healthz", 30, cp
        ):
            print("control plane failed to start; see control-plane.log", file=sys.stderr)
            return 1
        bootstrap = log_dir / "envoy-bootstrap.json"
        bootstrap.write_text(json.dumps(build_bootstrap(config), indent=2))
        procs.append(
            (
                "envoy",
                await _spawn(
                    "envoy",
                    envoy_command(config, bootstrap),
                    log_dir,
                ),
            )
        )
        envoy = procs[-1][1]
        admin = f"http://{config.envoy_admin.address}:{config.envoy_admin.port}"
        if not await _wait_http(f"{admin}/ready", 60, envoy):
            print("Envoy failed to start; see envoy.log", file=sys.stderr)
            return 1
        for name, p in procs:
            if name.startswith("backend-"):
                port = name.split("-")[1]
                if not await _wait_http(f"http://127.0.0.1:{port}/health", 180, p):
                    # Not fatal: the gateway serves the other backends meanwhile.
                    print(f"note: {name} is not ready; see {name}.log", file=sys.stderr)
        lst = config.listener
        print(
            f"""
whisper-gateway is up.
  OpenAI endpoint : http://{lst.address}:{lst.port}/v1   (models: {", ".join(config.models)})
  try             : curl http://{lst.address}:{lst.port}/v1/audio/transcriptions \\
                      -F file=@tests/fixtures/hello.wav -F model={config.models[0]} \\
                      -F response_format=json -F language=en
  control plane   : http://{config.admin.address}:{config.admin.port}/status  /backends  /snapshot
  Envoy admin     : {admin}/clusters
  logs            : {log_dir}
Ctrl-C stops everything.""",
            flush=True,
        )
        waiters = [asyncio.create_task(p.wait()) for _, p in procs]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *waiters], return_when=asyncio.FIRST_COMPLETED)
        if stopper not in done:
            dead = [n for (n, p) in procs if p.returncode is not None]
            print(f"whisper-gateway: {', '.join(dead)} exited; stopping", file=sys.stderr)
            return 1
        return 0
    finally:
        print("whisper-gateway: stopping", flush=True)
        for _name, p in reversed(procs):
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        for _name, p in reversed(procs):
            try:
                await asyncio.wait_for(p.wait(), 15)
            except TimeoutError:
                p.kill()
                await p.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make up", description=__doc__)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--log-dir", default=None)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"whisper-gateway: {e}", file=sys.stderr)
        return 2
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="whisper-gateway-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(run(Path(args.config), config, log_dir))


if __name__ == "__main__":
    sys.exit(main())
