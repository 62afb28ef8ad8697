"""The admin planes (Envoy admin, xDS, the control plane's admin API): loopback by
default, xDS and the admin API optionally on Unix sockets, xDS optionally over mutual
TLS, and a loud warning at start for a plane open beyond loopback.

The end-to-end cases run the control plane and the real Envoy with both planes on Unix
sockets (xDS dialed as a pipe), then with xDS over mutual TLS; a FAKE backend answers
the request each serves.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from control_plane.admin.exposure import exposure_warnings
from control_plane.config.parse import dump_config, parse_config
from control_plane.config.schema import UNIX_PATH_MAX, ConfigError, GatewayConfig
from control_plane.config.sockets import SOCKET_MODE, where
from control_plane.names import ADMIN_CLUSTER
from control_plane.xds.bootstrap import ENVOY, build_bootstrap
from control_plane.xds.translator.clusters import build_clusters
from testkit.certs import Ca, Issued
from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.procs import PYTHON, ROOT, Proc, free_port, start_fake
from testkit.snapshots import model_from

BACKENDS = [{"url": "http://127.0.0.1:9000", "models": ["m"]}]
MODEL = "fake/fast"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
TLS_FIELDS = ("cert_file", "key_file", "ca_file", "client_cert_file", "client_key_file")


def _config(**overrides: Any) -> GatewayConfig:
    return parse_config({"backends": BACKENDS, **overrides}, base_dir="/srv/gw")


# ---------------------------------------------------------------- config


def test_every_plane_is_on_loopback_by_default() -> None:
    cfg = _config()
    for name in ("envoy_admin", "xds", "admin"):
        hp = getattr(cfg, name)
        assert hp.address == "127.0.0.1" and hp.unix_socket is None
    assert exposure_warnings(cfg) == []


def test_xds_and_admin_take_a_unix_socket_relative_to_the_config() -> None:
    cfg = _config(xds={"unix_socket": "run/xds.sock"}, admin={"unix_socket": "/run/a.sock"})
    assert cfg.xds.unix_socket == "/srv/gw/run/xds.sock"
    assert cfg.admin.unix_socket == "/run/a.sock"
    assert where(cfg.xds) == "unix:/srv/gw/run/xds.sock"
    assert parse_config(yaml.safe_load(dump_config(cfg))) == cfg  # --dry-run round trip


@pytest.mark.parametrize("plane", ["listener", "envoy_admin"])
def test_only_xds_and_admin_take_a_unix_socket(plane: str) -> None:
    with pytest.raises(ConfigError) as e:
        _config(**{plane: {"unix_socket": "/run/x.sock"}})
    assert e.value.field == f"{plane}.unix_socket"


def test_a_socket_path_too_long_for_the_kernel_is_refused() -> None:
    with pytest.raises(ConfigError) as e:
        _config(xds={"unix_socket": "/" + "x" * UNIX_PATH_MAX})
    assert e.value.field == "xds.unix_socket" and "at most" in e.value.reason


def test_two_planes_on_one_socket_are_refused() -> None:
    with pytest.raises(ConfigError) as e:
        _config(xds={"unix_socket": "/run/gw.sock"}, admin={"unix_socket": "/run/gw.sock"})
    assert e.value.field == "admin.unix_socket" and "xds" in e.value.reason


def test_a_plane_on_a_socket_leaves_its_port_free() -> None:
    cfg = _config(xds={"unix_socket": "/run/xds.sock"}, admin={"port": 18000})
    assert cfg.admin.port == cfg.xds.port == 18000


# ---------------------------------------------------------------- Envoy's side


def test_the_bootstrap_dials_xds_as_a_pipe(tmp_path: Path) -> None:
    boot = build_bootstrap(_config(xds={"unix_socket": "/run/gw/xds.sock"}), xds_host="cp")
    (cluster,) = boot["static_resources"]["clusters"]
    (endpoints,) = cluster["load_assignment"]["endpoints"]
    (lb,) = endpoints["lb_endpoints"]
    assert lb["endpoint"]["address"] == {"pipe": {"path": "/run/gw/xds.sock"}}
    assert cluster["type"] == "STATIC"  # a path is not resolved, whatever xds_host says
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(boot))
    proc = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_the_router_endpoints_reach_an_admin_api_on_a_socket() -> None:
    cfg = _config(admin={"unix_socket": "/run/gw/admin.sock"}, public_router_endpoints=True)
    clusters = {c.name: c for c in build_clusters(model_from(cfg, {}, {}))}
    (locality,) = clusters[ADMIN_CLUSTER].load_assignment.endpoints
    (lb,) = locality.lb_endpoints
    assert lb.endpoint.address.pipe.path == "/run/gw/admin.sock"


def _pki(folder: Path) -> dict[str, str]:
    """xds.tls for a fresh CA: the control plane's and Envoy's certificates."""
    ca = Ca(folder)
    server, client = ca.issue("control-plane"), ca.issue("envoy")
    return {
        "cert_file": str(server.cert),
        "key_file": str(server.key),
        "ca_file": str(ca.path),
        "client_cert_file": str(client.cert),
        "client_key_file": str(client.key),
    }


def test_xds_tls_needs_every_file() -> None:
    tls = {name: f"pki/{name}.pem" for name in TLS_FIELDS}
    cfg = _config(xds={"tls": tls})
    assert cfg.xds.tls is not None and cfg.xds.tls.ca_file == "/srv/gw/pki/ca_file.pem"
    assert parse_config(yaml.safe_load(dump_config(cfg))) == cfg
    del tls["client_key_file"]
    with pytest.raises(ConfigError) as e:
        _config(xds={"tls": tls})
    assert e.value.field == "xds.tls.client_key_file"


def test_only_xds_takes_tls() -> None:
    with pytest.raises(ConfigError) as e:
        _config(admin={"tls": {name: "/x.pem" for name in TLS_FIELDS}})
    assert e.value.field == "admin.tls"


def test_the_bootstrap_presents_envoys_certificate(tmp_path: Path) -> None:
    tls = _pki(tmp_path)
    boot = build_bootstrap(_config(xds={"tls": tls}))
    (cluster,) = boot["static_resources"]["clusters"]
    common = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    (cert,) = common["tls_certificates"]
    assert cert["certificate_chain"]["filename"] == tls["client_cert_file"]
    assert cert["private_key"]["filename"] == tls["client_key_file"]
    assert common["validation_context"]["trusted_ca"]["filename"] == tls["ca_file"]
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(boot))
    proc = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


# ---------------------------------------------------------------- warnings


def test_a_plane_beyond_loopback_is_named_with_its_address() -> None:
    cfg = _config(
        xds={"address": "0.0.0.0", "port": 18001},
        envoy_admin={"address": "::", "port": 9902},
        admin={"address": "::1"},  # loopback: no warning
    )
    warnings = exposure_warnings(cfg)
    assert len(warnings) == 2
    envoy_admin, xds = sorted(warnings, key=lambda w: "`xds`" in w)
    assert "Envoy admin" in envoy_admin and "[::]:9902" in envoy_admin
    assert "unix_socket" not in envoy_admin  # Envoy's admin has no such option here
    assert "`xds`" in xds and "0.0.0.0:18001" in xds and "xds.unix_socket" in xds
    assert all(w.startswith("SECURITY:") and "without TLS" in w for w in warnings)


def test_a_plane_on_a_unix_socket_or_mutual_tls_is_not_exposed() -> None:
    tls = {name: f"/pki/{name}.pem" for name in TLS_FIELDS}
    cfg = _config(
        admin={"address": "0.0.0.0", "unix_socket": "/run/a.sock"},
        xds={"address": "0.0.0.0", "tls": tls},
    )
    assert exposure_warnings(cfg) == []


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_check_prints_the_warning_on_stderr(tmp_path: Path) -> None:
    doc = {"backends": BACKENDS, "xds": {"address": "0.0.0.0"}}
    proc = subprocess.run(
        [PYTHON, "-m", "control_plane", "check", "--config", str(_write(tmp_path, doc))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if "SECURITY" in ln]
    assert line.startswith("# WARNING") and "0.0.0.0:18000" in line


def test_the_control_plane_warns_at_start(tmp_path: Path) -> None:
    """Started for real (binding loopback only); Envoy's admin, which Envoy binds, is
    configured beyond loopback, so the control plane must say so in its log."""
    admin = free_port()
    doc = {
        "backends": [{"url": "http://127.0.0.1:9", "models": ["m"], "health": {"enabled": False}}],
        "xds": {"address": "127.0.0.1", "port": free_port()},
        "admin": {"address": "127.0.0.1", "port": admin},
        "envoy_admin": {"address": "0.0.0.0", "port": free_port()},
    }
    cp = Proc(
        "control-plane",
        [PYTHON, "-m", "control_plane", "--config", str(_write(tmp_path, doc))],
        tmp_path / "control-plane.log",
    ).start()
    try:
        asyncio.run(_wait_healthz(f"http://127.0.0.1:{admin}/healthz", None, cp))
    finally:
        cp.stop()
    (line,) = [ln for ln in cp.log_tail(200).splitlines() if "SECURITY" in ln]
    assert "WARNING" in line and "Envoy admin" in line and "0.0.0.0:" in line


# ---------------------------------------------------------------- end to end


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """Short: a socket path must fit in 107 bytes, pytest's tmp_path may not."""
    path = Path(tempfile.mkdtemp(prefix="gw-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _wait_healthz(url: str, unix_socket: str | None, proc: Proc) -> None:
    connector = aiohttp.UnixConnector(path=unix_socket) if unix_socket else None
    async with asyncio.timeout(30), aiohttp.ClientSession(connector=connector) as s:
        while True:
            assert proc.alive(), proc.log_tail()
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def _admin_get(unix_socket: str, path: str) -> Any:
    connector = aiohttp.UnixConnector(path=unix_socket)
    async with aiohttp.ClientSession(connector=connector) as s, s.get(f"http://cp{path}") as r:
        assert r.status == 200
        return await r.json()


async def _wait_synced(unix_socket: str) -> None:
    async with asyncio.timeout(30):
        while True:
            proxies = (await _admin_get(unix_socket, "/status"))["proxies"]
            states = {t["state"] for p in proxies for t in p["types"].values()}
            if proxies and states == {"SYNCED"}:
                return
            await asyncio.sleep(0.05)


async def _transcribe(url: str) -> None:
    """One request through Envoy to the fake backend, answered."""
    form = aiohttp.FormData()
    form.add_field("model", MODEL)
    form.add_field("file", b"RIFF0000WAVE", filename="a.wav")
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{url}/v1/audio/transcriptions", data=form) as r,
    ):
        assert r.status == 200, await r.text()
        assert (await r.json())["text"] == " fake"


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_unix_sockets_end_to_end(tmp_path: Path, socket_dir: Path) -> None:
    fake, port = start_fake(tmp_path, "fast")
    xds, admin = str(socket_dir / "xds.sock"), str(socket_dir / "admin.sock")
    backend = {"url": f"http://127.0.0.1:{port}", "models": [MODEL], "health": {"enabled": False}}
    cfg = gateway_config([backend], public_router_endpoints=True)
    cfg["xds"]["unix_socket"] = xds
    cfg["admin"]["unix_socket"] = admin
    gw = Gateway(tmp_path, cfg)
    gw.write_config()
    gw.control_plane = Proc(
        "control-plane",
        [PYTHON, "-m", "control_plane", "--config", str(gw.config_path)],
        tmp_path / "control-plane.log",
    ).start()
    try:
        await _wait_healthz("http://cp/healthz", admin, gw.control_plane)
        for path in (xds, admin):
            assert stat.S_IMODE(os.stat(path).st_mode) == SOCKET_MODE
        # Neither plane opened its TCP port.
        assert _refused(cfg["xds"]["port"]) and _refused(cfg["admin"]["port"])
        await asyncio.to_thread(gw.start_envoy)
        await _wait_synced(admin)
        await _transcribe(gw.url)
        async with aiohttp.ClientSession() as s:
            # Envoy -> the admin API over its socket (gateway_admin cluster, a pipe).
            async with s.get(f"{gw.url}/engines") as r:
                assert r.status == 200, await r.text()
                assert [e["serving_models"] for e in await r.json()] == [[MODEL]]
    finally:
        gw.stop()
        fake.stop()
    assert _gone(xds, admin)  # removed at stop


def _gone(*paths: str) -> bool:
    return not any(os.path.exists(p) for p in paths)


async def _ads_answers(target: str, creds: grpc.ChannelCredentials | None) -> bool:
    """Does the xDS server answer a CDS request from this client? False when the
    connection or the handshake is refused."""
    channel = grpc.aio.secure_channel(target, creds) if creds else grpc.aio.insecure_channel(target)
    request = discovery_pb2.DiscoveryRequest(type_url=CDS, node=base_pb2.Node(id="probe"))
    async with channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            iter([request])
        )
        try:
            async with asyncio.timeout(10):
                async for response in call:
                    return bool(response.resources)
        except grpc.aio.AioRpcError:
            return False
    return False


def _credentials(ca: Path, client: Issued | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client.key.read_bytes(),
        certificate_chain=client.cert.read_bytes(),
    )


async def test_mutual_tls_on_xds_end_to_end(tmp_path: Path) -> None:
    """Envoy with its client certificate gets SYNCED and serves; a client without
    one, or with one from another CA, or in plain text, is refused."""
    fake, port = start_fake(tmp_path, "fast")
    tls = _pki(tmp_path / "pki")
    backend = {"url": f"http://127.0.0.1:{port}", "models": [MODEL], "health": {"enabled": False}}
    cfg = gateway_config([backend])
    cfg["xds"]["tls"] = tls
    gw: Gateway | None = None
    try:
        gw = await asyncio.to_thread(start_gateway, tmp_path / "gw", cfg)
        await asyncio.to_thread(gw.wait_synced)
        await _transcribe(gw.url)
        target = f"127.0.0.1:{cfg['xds']['port']}"
        ca = Path(tls["ca_file"])
        stranger = Ca(tmp_path / "other", "other-ca").issue("stranger")
        envoy = Issued(Path(tls["client_cert_file"]), Path(tls["client_key_file"]))
        assert await _ads_answers(target, _credentials(ca, envoy))  # the check is not "no"
        assert not await _ads_answers(target, None)  # plain text
        assert not await _ads_answers(target, _credentials(ca))  # no client certificate
        assert not await _ads_answers(target, _credentials(ca, stranger))  # another CA
    finally:
        if gw is not None:
            gw.stop()
        fake.stop()
