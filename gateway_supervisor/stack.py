"""`whisper-gateway` and `make up`: the whole gateway from one config, supervised.

Starts a CPU whisper_backend for every backend marked `launch: cpu`, real vLLM
(whisper_backend.vllm_serve: its venv and converted model on first use) for every
`launch: vllm`, the control plane, and Envoy with a bootstrap derived from the same config, each
under the Supervisor: a child that dies is restarted while the others serve.
The config comes from `--config FILE` or from the vLLM router's own flags;
in that case it is written to the run folder and the control plane reads it
from there. Ctrl-C or SIGTERM stops every child, in reverse start order.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import tempfile
from pathlib import Path

import aiohttp

from control_plane.admin.exposure import exposure_warnings
from control_plane.cli.options import Options, UsageError, parse
from control_plane.config.advice import backend_warnings
from control_plane.config.parse import dump_config
from control_plane.config.schema import GatewayConfig
from control_plane.config.sockets import local_url
from control_plane.xds.bootstrap import build_bootstrap, envoy_command
from gateway_supervisor.supervisor import ChildSpec, Supervisor, say


async def wait_http(
    url: str, timeout: float, sup: Supervisor, name: str, unix_socket: str | None = None
) -> bool:
    """Until GET url answers 200, or `timeout`; a child that restarts meanwhile is fine.
    With `unix_socket`, the request goes to that socket (the URL gives only the path)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    connector = aiohttp.UnixConnector(path=unix_socket) if unix_socket else None
    async with aiohttp.ClientSession(connector=connector) as session:
        while loop.time() < deadline:
            if sup.children[name].crash_looping:
                return False
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return True
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
    return False


# A first `launch: vllm` installs vLLM (about 2 minutes) and converts the model before
# vLLM loads it (about a minute on 2 cores): docs/vllm.md.
VLLM_READY_TIMEOUT_S = 900.0


def backend_specs(config: GatewayConfig) -> list[ChildSpec]:
    specs = []
    for b in config.backends:
        if b.launch is None:
            continue
        model = b.models[0]  # config refuses a launched backend with several models
        where = ("--host", b.host, "--port", str(b.port))
        if b.launch == "vllm":
            argv: tuple[str, ...] = (
                sys.executable, "-m", "whisper_backend.vllm_serve", "--model", model, *where
            )  # fmt: skip
            specs.append(ChildSpec(f"vllm-{b.port}", argv, ready_timeout_s=VLLM_READY_TIMEOUT_S))
            continue
        workers = ("--num-workers", str(min(b.max_concurrency, 2)))
        argv = (sys.executable, "-m", "whisper_backend", "--model", model, *where, *workers)
        specs.append(ChildSpec(f"backend-{b.port}", argv, {"HF_HUB_OFFLINE": "1"}))
    return specs


async def wait_backend(sup: Supervisor, spec: ChildSpec) -> None:
    """Say when a launched backend is not ready in time; not fatal, the others serve."""
    port = spec.name.rsplit("-", 1)[1]
    if not await wait_http(f"http://127.0.0.1:{port}/health", spec.ready_timeout_s, sup, spec.name):
        say(f"{spec.name} is not ready; see {spec.name}.log", err=True)


def splitter_spec(config_path: Path, run_dir: Path) -> ChildSpec:
    """The long-audio splitter (long_audio: in the config), reading the same file; its
    spool in the run folder, so a restart clears what a killed one left."""
    argv = (sys.executable, "-m", "long_audio", "--config", str(config_path))
    return ChildSpec("splitter", (*argv, "--spool-dir", str(run_dir / "splitter-spool")))


def control_plane_spec(opts: Options, config_path: Path) -> ChildSpec:
    argv = (
        sys.executable,
        "-m",
        "control_plane",
        "--config",
        str(config_path),
        "--log-level",
        opts.log_level,
        "--log-format",
        opts.log_format,
    )
    return ChildSpec("control-plane", argv)


async def run(opts: Options, run_dir: Path) -> int:
    config = opts.config
    if opts.config_path is None:  # router flags: the control plane reads what they became
        config_path = run_dir / "gateway.yaml"
        config_path.write_text(dump_config(config))
    else:
        config_path = opts.config_path
    for note in opts.notes:
        say(note)
    for warning in exposure_warnings(config) + backend_warnings(config):
        say(warning, err=True)
    sup = Supervisor(run_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        say(f"starting; logs in {run_dir}")
        backends = backend_specs(config)
        for spec in backends:
            await sup.start(spec)
        if config.long_audio is not None:
            await sup.start(splitter_spec(config_path, run_dir))
        await sup.start(control_plane_spec(opts, config_path))
        admin = f"http://{config.admin.address}:{config.admin.port}"
        if config.admin.unix_socket:  # the banner shows how to reach it
            admin = f"curl --unix-socket {config.admin.unix_socket} http://localhost"
        healthz = "http://localhost/healthz" if config.admin.unix_socket else f"{admin}/healthz"
        if not await wait_http(healthz, 60, sup, "control-plane", config.admin.unix_socket):
            say("the control plane did not come up; see control-plane.log", err=True)
            return 1
        bootstrap = run_dir / "envoy-bootstrap.json"
        bootstrap.write_text(json.dumps(build_bootstrap(config), indent=2))
        await sup.start(ChildSpec("envoy", tuple(envoy_command(config, bootstrap))))
        envoy_admin = f"http://{config.envoy_admin.address}:{config.envoy_admin.port}"
        if not await wait_http(f"{envoy_admin}/ready", 60, sup, "envoy"):
            say("Envoy did not come up; see envoy.log", err=True)
            return 1
        await asyncio.gather(*(wait_backend(sup, spec) for spec in backends))
        if config.long_audio is not None:
            split = config.long_audio.splitter
            if not await wait_http(
                f"http://{split.address}:{split.port}/health", 30, sup, "splitter"
            ):
                say("the long-audio splitter did not come up; see splitter.log", err=True)
        listener = local_url("https" if config.tls else "http", config.listener)
        curl = f"curl --cacert {config.tls.cert_file}" if config.tls else "curl"
        if config.api_keys is not None:
            curl += ' -H "Authorization: Bearer $KEY"'
        print(
            f"""
whisper-gateway is up.
  OpenAI endpoint : {listener}/v1   (models: {", ".join(config.models)})
  try             : {curl} \\
                      {listener}/v1/audio/transcriptions \\
                      -F file=@tests/fixtures/hello.wav -F model={config.models[0]} \\
                      -F response_format=json -F language=en
  control plane   : {admin}/status  /backends  /snapshot
  Envoy admin     : {envoy_admin}/clusters
  logs            : {run_dir}   (supervisor.json: each child's pid, starts, exits)
A child that exits is restarted; Ctrl-C stops everything.""",
            flush=True,
        )
        await stop.wait()
        return 0
    finally:
        say("stopping")
        await sup.stop()


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse(sys.argv[1:] if argv is None else argv, "whisper-gateway")
    except UsageError as e:
        print(f"whisper-gateway: {e}", file=sys.stderr)
        return 2
    from control_plane.cli.tools import run_tool

    done = run_tool(opts)
    if done is not None:
        return done
    run_dir = opts.run_dir or Path(tempfile.mkdtemp(prefix="whisper-gateway-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(run(opts, run_dir))


if __name__ == "__main__":
    sys.exit(main())
