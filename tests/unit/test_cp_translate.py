"""Pure translators: model -> Envoy protos, checked against expected output."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json
import os
import re
import subprocess
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.config.core.v3.config_source_pb2 import ApiVersion
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from google.protobuf import message

from control_plane.config.parse import parse_config
from control_plane.config.schema import GatewayConfig
from control_plane.ir.model import EndpointHealth, GatewayModel, endpoint_key
from control_plane.names import (
    ADMIN_CLUSTER,
    LISTENER_NAME,
    ROUTE_CONFIG_NAME,
    UNROUTED_CLUSTER,
    cluster_name,
)
from control_plane.xds.translator import load_lua_template, translate
from control_plane.xds.translator.clusters import build_clusters
from control_plane.xds.translator.endpoints import build_load_assignments
from control_plane.xds.translator.listener import build_listener
from control_plane.xds.translator.lua import library_source, multipart_source, render_lua
from control_plane.xds.translator.routes import AUDIO_PATH_RE, RETRY_ON, build_route_config
from testkit import lua
from testkit.lua import LUA, LUAC
from testkit.snapshots import model_from

ROOT = Path(__file__).resolve().parents[2]
TINY = "openai/whisper-tiny.en"
BASE = "openai/whisper-base"
ODD = "acme/whisper_v3.1-turbo:int8'x%"  # dots, slashes, dashes, a quote Lua must escape
HS = health_check_pb2.HealthStatus

CONFIG: dict[str, Any] = {
    "limits": {"max_upload_mb": 10, "idle_timeout_s": 321, "request_headers_timeout_s": 7},
    "routing": {"policy": "round_robin", "retries": 3, "retry_on_reset": False},
    "outlier": {
        "consecutive_5xx": 4,
        "consecutive_gateway_failure": 5,
        "interval_s": 1.5,
        "base_ejection_time_s": 20,
    },
    "backends": [
        {"url": "http://127.0.0.1:8002", "models": [TINY], "max_concurrency": 4},
        {"url": "http://127.0.0.1:8003", "models": [TINY, BASE], "max_concurrency": 2},
        {"url": "http://whisper-base.svc:8004", "models": [BASE], "max_concurrency": 1},
        {"url": "http://127.0.0.1:8005", "models": [ODD], "health": {"enabled": False}},
    ],
}
RESOLVED = {
    "http://127.0.0.1:8002": ("127.0.0.1",),
    "http://127.0.0.1:8003": ("127.0.0.1",),
    "http://whisper-base.svc:8004": ("127.0.1.3", "127.0.1.1", "127.0.1.2"),
    "http://127.0.0.1:8005": ("127.0.0.1",),
}
HEALTH = {
    "127.0.0.1:8002": EndpointHealth.HEALTHY,
    # 127.0.0.1:8003 has no record yet: UNKNOWN
    "127.0.1.1:8004": EndpointHealth.HEALTHY,
    "127.0.1.2:8004": EndpointHealth.UNHEALTHY,
    "127.0.1.3:8004": EndpointHealth.DRAINING,
    "127.0.0.1:8005": EndpointHealth.UNHEALTHY,  # probes off: ignored
}


def config(**overrides: Any) -> GatewayConfig:
    return parse_config({**CONFIG, **overrides})


def gateway_model(
    cfg: GatewayConfig | None = None, health: dict[str, EndpointHealth] | None = None
) -> GatewayModel:
    return model_from(cfg or config(), RESOLVED, {**HEALTH, **(health or {})})


def clusters_by_name() -> dict[str, cluster_pb2.Cluster]:
    return {c.name: c for c in build_clusters(gateway_model())}


def route_config() -> route_pb2.RouteConfiguration:
    return build_route_config(gateway_model(), load_lua_template())


def manager() -> hcm.HttpConnectionManager:
    lst = build_listener(gateway_model())
    (chain,) = lst.filter_chains
    (f,) = chain.filters
    m = hcm.HttpConnectionManager()
    assert f.typed_config.Unpack(m)
    return m


def rendered_lua() -> str:
    """The request-side Lua: it runs on the audio route only, disabled elsewhere."""
    vh = route_config().virtual_hosts[0]
    sources = {}
    for r in vh.routes:
        per = lua_pb2.LuaPerRoute()
        if "envoy.filters.http.lua" in r.typed_per_filter_config:
            assert r.typed_per_filter_config["envoy.filters.http.lua"].Unpack(per)
            if not per.disabled:
                sources[r.name] = per.source_code.inline_string
    assert list(sources) == ["audio:before-lua"]
    per = lua_pb2.LuaPerRoute()
    assert vh.typed_per_filter_config["envoy.filters.http.lua"].Unpack(per) and per.disabled
    return sources["audio:before-lua"]


# ------------------------------------------------------------------ model


def test_model_one_cluster_per_model_in_config_order() -> None:
    m = gateway_model()
    assert m.models == (TINY, BASE, ODD)
    assert [c.cluster_name for c in m.clusters] == [cluster_name(x) for x in m.models]
    assert len({c.cluster_name for c in m.clusters}) == 3


def test_cluster_name_is_stat_safe_and_collision_free() -> None:
    a, b = cluster_name("a/b"), cluster_name("a.b")
    assert a != b
    assert re.fullmatch(r"model_[A-Za-z0-9_-]+_[0-9a-f]{8}", a)
    assert endpoint_key("::1", 80) == "[::1]:80"


def test_unresolved_backend_has_no_endpoints() -> None:
    m = model_from(config(), {}, {})
    assert all(c.endpoints == () for c in m.clusters)


# ------------------------------------------------------------------ CDS


def test_clusters_one_eds_cluster_per_model_plus_unrouted() -> None:
    cs = build_clusters(gateway_model())
    assert [c.name for c in cs] == [UNROUTED_CLUSTER] + [cluster_name(x) for x in (TINY, BASE, ODD)]
    unrouted = cs[0]
    assert unrouted.type == cluster_pb2.Cluster.DiscoveryType.STATIC
    assert len(unrouted.load_assignment.endpoints) == 0
    for c in cs[1:]:
        assert c.type == cluster_pb2.Cluster.DiscoveryType.EDS
        assert c.eds_cluster_config.eds_config.HasField("ads")
        assert c.eds_cluster_config.eds_config.resource_api_version == ApiVersion.V3
        assert c.lb_policy == cluster_pb2.Cluster.LbPolicy.ROUND_ROBIN
        assert c.common_lb_config.HasField("healthy_panic_threshold")
        assert c.common_lb_config.healthy_panic_threshold.value == 0.0
        assert len(c.health_checks) == 0  # our probes only
        od = c.outlier_detection
        assert od.consecutive_5xx.value == 4
        assert od.consecutive_gateway_failure.value == 5
        assert od.interval.ToMilliseconds() == 1500
        assert od.base_ejection_time.ToSeconds() == 20
        assert not c.HasField("transport_socket")


def test_cluster_lb_policy_least_request() -> None:
    cfg = config(routing={"policy": "least_request"})
    for c in build_clusters(gateway_model(cfg))[1:]:
        assert c.lb_policy == cluster_pb2.Cluster.LbPolicy.LEAST_REQUEST


def test_per_host_max_connections_splits_shared_backends() -> None:
    """8003 serves TINY and BASE with max_concurrency 2: one slot in each cluster, so
    its two clusters together never exceed 2; the tightest backend sets a cluster's limit."""
    cs = clusters_by_name()
    per_host = {
        n: c.circuit_breakers.per_host_thresholds[0].max_connections.value
        for n, c in cs.items()
        if n != UNROUTED_CLUSTER
    }
    assert per_host == {cluster_name(TINY): 1, cluster_name(BASE): 1, cluster_name(ODD): 4}


def test_https_backend_gets_tls_socket() -> None:
    cfg = parse_config({"backends": [{"url": "https://127.0.0.1:8443", "models": ["m"]}]})
    m = model_from(cfg, {"https://127.0.0.1:8443": ("127.0.0.1",)}, {})
    (c,) = build_clusters(m)[1:]
    assert c.transport_socket.name == "envoy.transport_sockets.tls"
    assert m.clusters[0].endpoints[0].port == 8443


# ------------------------------------------------------------------ EDS


def endpoints() -> dict[str, list[tuple[str, int, int]]]:
    out = {}
    for cla in build_load_assignments(gateway_model()):
        (loc,) = cla.endpoints
        out[cla.cluster_name] = [
            (
                e.endpoint.address.socket_address.address,
                e.endpoint.address.socket_address.port_value,
                e.health_status,
            )
            for e in loc.lb_endpoints
        ]
    return out


def test_endpoints_and_health_mapping() -> None:
    assert endpoints() == {
        cluster_name(TINY): [
            ("127.0.0.1", 8002, HS.HEALTHY),
            ("127.0.0.1", 8003, HS.UNHEALTHY),  # UNKNOWN: no traffic before a probe
        ],
        cluster_name(BASE): [
            ("127.0.0.1", 8003, HS.UNHEALTHY),  # one backend, two models: in both
            ("127.0.1.1", 8004, HS.HEALTHY),  # one host, three addresses
            ("127.0.1.2", 8004, HS.UNHEALTHY),
            ("127.0.1.3", 8004, HS.DRAINING),
        ],
        cluster_name(ODD): [("127.0.0.1", 8005, HS.HEALTHY)],  # probes off
    }


def test_health_disabled_backend_without_record_is_healthy_and_can_drain() -> None:
    m = model_from(config(), RESOLVED, {})
    odd = next(c for c in m.clusters if c.model == ODD)
    assert [e.health for e in odd.endpoints] == [EndpointHealth.HEALTHY]
    m = gateway_model(health={"127.0.0.1:8005": EndpointHealth.DRAINING})
    odd = next(c for c in m.clusters if c.model == ODD)
    assert [e.health for e in odd.endpoints] == [EndpointHealth.DRAINING]


def test_endpoint_hostname_is_key() -> None:
    cla = build_load_assignments(gateway_model())[1]
    assert [e.endpoint.hostname for e in cla.endpoints[0].lb_endpoints] == [
        "127.0.0.1:8003",
        "127.0.1.1:8004",
        "127.0.1.2:8004",
        "127.0.1.3:8004",
    ]


# ------------------------------------------------------------------ RDS


def test_route_order_and_matches() -> None:
    rcfg = route_config()
    assert rcfg.name == ROUTE_CONFIG_NAME
    (vh,) = rcfg.virtual_hosts
    assert list(vh.domains) == ["*"]
    names = [r.name for r in vh.routes]
    assert names == [
        f"model:{TINY}:convert",
        f"model:{TINY}",
        f"model:{BASE}:convert",
        f"model:{BASE}",
        f"model:{ODD}:convert",
        f"model:{ODD}",
        "audio:before-lua",
        "audio:wrong-method",
        "models:list",
        "models:wrong-method",
        "router:health",
        "router:version",
        "not-found",
    ]
    for i, model in enumerate((TINY, BASE, ODD)):
        convert, plain = vh.routes[2 * i], vh.routes[2 * i + 1]
        for r in (convert, plain):
            assert r.match.safe_regex.regex == AUDIO_PATH_RE
            assert r.route.cluster == cluster_name(model)
            # The client's key never reaches a backend (unless configured).
            assert list(r.request_headers_to_remove) == ["authorization", "x-api-key"]
            # Routed by dynamic metadata only Lua writes: no header chooses a cluster.
            assert {(h.name, h.string_match.exact) for h in r.match.headers} == {
                (":method", "POST")
            }

        def meta(r: rc.Route) -> set[tuple[str, str, str]]:
            return {
                (m.filter, m.path[0].key, m.value.string_match.exact)
                for m in r.match.dynamic_metadata
            }

        assert meta(plain) == {("whisper_gateway", "model", model)}
        assert meta(convert) == meta(plain) | {("whisper_gateway", "convert", "1")}
        # The response filter runs on the convert route only.
        on, off = lua_pb2.LuaPerRoute(), lua_pb2.LuaPerRoute()
        assert convert.typed_per_filter_config["whisper.filters.format"].Unpack(on)
        assert plain.typed_per_filter_config["whisper.filters.format"].Unpack(off)
        assert "envoy_on_response" in on.source_code.inline_string and off.disabled
    vh_off = lua_pb2.LuaPerRoute()
    assert vh.typed_per_filter_config["whisper.filters.format"].Unpack(vh_off) and vh_off.disabled
    vh.routes.pop(0)
    vh.routes.pop(1)
    vh.routes.pop(2)
    before = vh.routes[3]
    assert before.match.safe_regex.regex == AUDIO_PATH_RE
    assert [(h.name, h.string_match.exact) for h in before.match.headers] == [(":method", "POST")]
    assert before.HasField("route") and before.route.cluster == UNROUTED_CLUSTER
    assert vh.routes[4].direct_response.status == 405
    assert vh.routes[4].match.safe_regex.regex == AUDIO_PATH_RE
    assert vh.routes[5].match.path == "/v1/models"
    assert vh.routes[5].direct_response.status == 200
    assert vh.routes[6].match.path == "/v1/models"
    assert vh.routes[6].direct_response.status == 405
    assert vh.routes[-1].match.prefix == "/"
    assert vh.routes[-1].direct_response.status == 404


def test_audio_path_regex() -> None:
    rx = re.compile(AUDIO_PATH_RE)
    assert rx.match("/v1/audio/transcriptions") and rx.match("/v1/audio/translations")
    assert not rx.match("/v1/audio/transcriptions/x")
    assert not rx.match("/v1/audio/speech")


def test_forwarding_routes_have_no_total_timeout_and_safe_retries() -> None:
    forwarding = [r for r in route_config().virtual_hosts[0].routes if r.HasField("route")]
    assert len(forwarding) == 7  # two per model and the route matched before Lua
    for r in forwarding:
        a = r.route
        assert a.HasField("timeout") and a.timeout.ToNanoseconds() == 0
        assert a.idle_timeout.ToSeconds() == 321
        assert a.retry_policy.retry_on == RETRY_ON
        assert RETRY_ON == "connect-failure,refused-stream,reset-before-request"
        assert a.retry_policy.num_retries.value == 3
        preds = [p.name for p in a.retry_policy.retry_host_predicate]
        assert preds == ["envoy.retry_host_predicates.previous_hosts"]


def test_buffer_limit_and_direct_body_size() -> None:
    rcfg = route_config()
    assert rcfg.virtual_hosts[0].request_body_buffer_limit.value == 10 * 1024 * 1024 + 64 * 1024
    assert rcfg.max_direct_response_body_size_bytes.value >= 4096


def test_direct_responses_are_openai_json() -> None:
    vh = route_config().virtual_hosts[0]
    directs = [
        r for r in vh.routes if r.HasField("direct_response") and not r.name.startswith("router:")
    ]
    assert len(directs) == 4
    for r in directs:
        status = r.direct_response.status
        body = json.loads(r.direct_response.body.inline_string)
        ctype = {h.header.key: h.header.value for h in r.response_headers_to_add}
        assert ctype["content-type"] == "application/json"
        if status == 200:
            assert body["object"] == "list"
            assert [d["id"] for d in body["data"]] == [TINY, BASE, ODD]
            continue
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["code"] == status
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def test_router_endpoints_answered_by_envoy_without_lua() -> None:
    vh = route_config().virtual_hosts[0]
    routes = {r.name: r for r in vh.routes}
    health = routes["router:health"]
    assert health.match.path == "/health"
    # The model has healthy endpoints (HEALTH): 200 in the router's shape.
    assert health.direct_response.status == 200
    assert json.loads(health.direct_response.body.inline_string) == {"status": "healthy"}
    version = json.loads(routes["router:version"].direct_response.body.inline_string)
    assert set(version) == {"version"}
    for r in (health, routes["router:version"]):
        per = lua_pb2.LuaPerRoute()
        assert r.typed_per_filter_config["envoy.filters.http.lua"].Unpack(per) and per.disabled
    # Not public by default: /metrics and /engines fall to the 404.
    assert "router:metrics" not in routes and "router:engines" not in routes


def test_health_is_503_when_no_model_has_a_healthy_backend() -> None:
    down = {k: EndpointHealth.UNHEALTHY for k in HEALTH}
    m = model_from(config(), RESOLVED, {**down, "127.0.0.1:8003": EndpointHealth.UNHEALTHY})
    odd_off = replace(m, clusters=tuple(c for c in m.clusters if c.model != ODD))
    vh = build_route_config(odd_off, load_lua_template()).virtual_hosts[0]
    health = next(r for r in vh.routes if r.name == "router:health")
    assert health.direct_response.status == 503
    assert "no model has a healthy backend" in health.direct_response.body.inline_string


def test_public_router_endpoints_go_to_the_admin_cluster() -> None:
    m = gateway_model(config(public_router_endpoints=True))
    vh = build_route_config(m, load_lua_template()).virtual_hosts[0]
    routes = {r.name: r for r in vh.routes}
    for path in ("/metrics", "/engines"):
        r = routes[f"router:{path[1:]}"]
        assert r.route.cluster == ADMIN_CLUSTER and r.route.prefix_rewrite == f"/router{path}"
    admin = next(c for c in build_clusters(m) if c.name == ADMIN_CLUSTER)
    sa = admin.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (sa.address, sa.port_value) == ("127.0.0.1", 19000)


def test_lua_per_route_carries_every_model_and_no_placeholder() -> None:
    lua = rendered_lua()
    for m in (TINY, BASE, ODD):
        assert f'["{m}"] = "openai"' in lua  # the stream format, openai by default
    assert "--MODELS--" not in lua
    assert "--MODEL_LIST--" not in lua
    assert "envoy_on_request" in lua


def test_render_lua_is_one_pass() -> None:
    tmpl = 'local M = {\n--MODELS--\n}\nlocal L = "--MODEL_LIST--"\n'
    out = render_lua(tmpl, ("--MODEL_LIST--", "--MODELS--"), {"--MODELS--": "text"})
    reader = library_source() + "\n" + multipart_source() + "\n"
    assert out.startswith(reader)
    assert out[len(reader) :] == (
        'local M = {\n  ["--MODEL_LIST--"] = "openai",\n  ["--MODELS--"] = "text",\n}\n'
        'local L = "--MODEL_LIST--, --MODELS--"\n'
    )


# ------------------------------------------------------------------ LDS


def test_listener() -> None:
    lst = build_listener(gateway_model())
    assert lst.name == LISTENER_NAME
    sa = lst.address.socket_address
    assert (sa.address, sa.port_value) == ("127.0.0.1", 8000)
    m = manager()
    assert m.rds.route_config_name == ROUTE_CONFIG_NAME
    assert m.rds.config_source.HasField("ads")
    assert [f.name for f in m.http_filters] == [
        "whisper.filters.read_upload",
        "envoy.filters.http.api_key_auth",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.lua",
        "whisper.filters.format",
        "envoy.filters.http.json_to_metadata",
        "envoy.filters.http.router",
    ]
    assert m.stream_idle_timeout.ToSeconds() == 321
    assert m.request_headers_timeout.ToSeconds() == 7
    assert m.HasField("request_timeout") and m.request_timeout.ToNanoseconds() == 0
    assert m.always_set_request_id_in_response


def test_local_reply_mappers() -> None:
    mappers = list(manager().local_reply_config.mappers)
    flags = [set(x.filter.response_flag_filter.flags) for x in mappers]
    statuses = [
        x.filter.status_code_filter.comparison.value.default_value
        for x in mappers
        if x.filter.HasField("status_code_filter")
    ]
    assert any("UH" in f for f in flags)
    assert 413 in statuses
    for x in mappers:
        fmt = x.body_format_override.json_format
        err = fmt.fields["error"].struct_value
        assert set(err.fields) == {"message", "type", "param", "code"}
        assert err.fields["code"].string_value == "%RESPONSE_CODE%"
    m413 = next(x for x in mappers if x.filter.HasField("status_code_filter"))
    assert (
        "10 MB"
        in m413.body_format_override.json_format.fields["error"]
        .struct_value.fields["message"]
        .string_value
    )


# ------------------------------------------------------------------ snapshot versions


def snapshot_versions(cfg: GatewayConfig, health: dict[str, EndpointHealth]) -> dict[str, str]:
    return translate(model_from(cfg, RESOLVED, health), load_lua_template()).versions()


def test_versions_deterministic_across_processes() -> None:
    code = textwrap.dedent(
        """
        import json
        from tests.unit.test_cp_translate import HEALTH, config, snapshot_versions
        print(json.dumps(snapshot_versions(config(), HEALTH)))
        """
    )
    outs = []
    for seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "python"), "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        outs.append(json.loads(proc.stdout))
    assert outs[0] == outs[1]
    assert outs[0] == snapshot_versions(config(), HEALTH)
    assert set(outs[0]) == {"CDS", "EDS", "SDS", "LDS", "RDS"}
    assert all(outs[0].values())


def test_health_flip_changes_only_eds() -> None:
    before = snapshot_versions(config(), HEALTH)
    after = snapshot_versions(config(), {**HEALTH, "127.0.0.1:8002": EndpointHealth.UNHEALTHY})
    assert after["EDS"] != before["EDS"]
    assert {k: after[k] for k in ("CDS", "LDS", "RDS")} == {
        k: before[k] for k in ("CDS", "LDS", "RDS")
    }


def test_model_added_changes_cds_eds_rds_not_lds() -> None:
    before = snapshot_versions(config(), HEALTH)
    backends = [*CONFIG["backends"], {"url": "http://127.0.0.1:8006", "models": ["new/model"]}]
    after = snapshot_versions(config(backends=backends), HEALTH)
    for t in ("CDS", "EDS", "RDS"):
        assert after[t] != before[t], t
    assert after["LDS"] == before["LDS"]


def test_unchanged_input_same_versions() -> None:
    assert snapshot_versions(config(), HEALTH) == snapshot_versions(config(), dict(HEALTH))


def test_snapshot_is_consistent() -> None:
    from control_plane.xds.cache.consistency import consistency_errors

    snap = translate(gateway_model(), load_lua_template())
    assert consistency_errors(snap) == []


def test_listener_port_change_changes_only_lds() -> None:
    cfg = config()
    moved = replace(cfg, listener=replace(cfg.listener, port=8100))
    a, b = snapshot_versions(cfg, HEALTH), snapshot_versions(moved, HEALTH)
    assert a["LDS"] != b["LDS"]
    assert (a["CDS"], a["EDS"], a["RDS"]) == (b["CDS"], b["EDS"], b["RDS"])


# ------------------------------------------------------------------ the Lua, run

needs_lua = pytest.mark.skipif(
    LUA is None, reason="no Lua interpreter (apt-get install -y lua5.1) to run the filter source"
)


def run_lua(
    tmp_path: Path,
    body: bytes,
    ctype: str,
    method: str = "POST",
    path: str = "/v1/audio/transcriptions",
    client_model: str = "",
) -> str:
    data = tmp_path / "body.bin"
    data.write_bytes(body)
    out, _ = lua.run("request", rendered_lua(), data, ctype, method, path, client_model)
    return out


def reply(out: str) -> tuple[int, dict[str, Any]]:
    head, _, body = out.partition("\n")
    word, status, ctype = head.split(" ")
    assert word == "REPLY" and ctype == "application/json"
    parsed = json.loads(body)
    assert set(parsed["error"]) == {"message", "type", "param", "code"}
    assert parsed["error"]["code"] == int(status)
    return int(status), parsed


def aiohttp_form(fields_first: bool, model: str, file_bytes: bytes) -> tuple[bytes, str]:
    form = aiohttp.FormData()
    if fields_first:
        form.add_field("model", model)
    form.add_field("file", file_bytes, filename="a.wav", content_type="audio/wav")
    form.add_field("response_format", "json")
    if not fields_first:
        form.add_field("model", model)
    writer = form()
    body = asyncio.run(writer.as_bytes())
    return body, writer.content_type


def curl_form(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, value in parts:
        disp = f'Content-Disposition: form-data; name="{name}"'
        if filename:
            disp += f'; filename="{filename}"\r\nContent-Type: application/octet-stream'
        out += f"--{boundary}\r\n{disp}\r\n\r\n".encode() + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


WAV = b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00" + bytes(range(256))
EVIL = b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + BASE.encode() + b"\r\n"


@pytest.mark.skipif(LUAC is None, reason="no luac to check the rendered Lua's syntax")
def test_rendered_lua_compiles(tmp_path: Path) -> None:
    assert LUAC is not None
    src = tmp_path / "filter.lua"
    src.write_text(rendered_lua())
    proc = subprocess.run([LUAC, "-p", str(src)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@needs_lua
@pytest.mark.parametrize("fields_first", [True, False])
@pytest.mark.parametrize("model", [TINY, ODD])
def test_lua_routes_aiohttp_form(tmp_path: Path, fields_first: bool, model: str) -> None:
    body, ctype = aiohttp_form(fields_first, model, WAV + EVIL)
    assert run_lua(tmp_path, body, ctype) == f"PASS {model} true"


def form_fields(body: bytes, boundary: str) -> dict[str, bytes]:
    """Every part's name and value, read by the standard library's MIME parser."""
    head = f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    out: dict[str, bytes] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        assert isinstance(name, str)
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        out[name] = payload
    return out


@needs_lua
@pytest.mark.parametrize(
    "extra,asked",
    [
        ([("stream", None, b"true")], True),  # openai events: usage asked for
        ([("stream", None, b"true"), ("stream_include_usage", None, b"false")], False),
        ([("stream", None, b"false")], False),
        ([], False),
    ],
)
def test_lua_asks_the_backend_for_usage_on_openai_streams(
    tmp_path: Path, extra: list[tuple[str, str | None, bytes]], asked: bool
) -> None:
    boundary = "b0undary"
    parts = [("model", None, TINY.encode()), *extra, ("file", "a.wav", WAV + EVIL)]
    body = curl_form(boundary, parts)
    assert run_lua(tmp_path, body, f"multipart/form-data; boundary={boundary}").startswith("PASS")
    sent = (tmp_path / "body.bin.out").read_bytes()
    fields = form_fields(sent, boundary)
    want = {name: value for name, _, value in parts}
    if asked:
        want["stream_include_usage"] = b"true"
    assert fields == want
    assert (sent == body) == (not asked), "the body is untouched unless usage is asked for"


@needs_lua
def test_lua_curl_style_file_first_with_decoy_inside(tmp_path: Path) -> None:
    boundary = "------------------------d74496d66958873e"
    body = curl_form(
        boundary,
        [
            ("file", "a.wav", WAV + b'\r\nname="model"\r\n\r\n' + EVIL),
            ("model", None, TINY.encode()),
        ],
    )
    ctype = f"multipart/form-data; boundary={boundary}"
    assert run_lua(tmp_path, body, ctype) == f"PASS {TINY} true"


@needs_lua
def test_lua_quoted_boundary_with_pattern_chars(tmp_path: Path) -> None:
    boundary = "----=_Part_0.1%x-(a)+[b]"
    body = curl_form(boundary, [("model", None, BASE.encode()), ("file", "a.wav", WAV)])
    ctype = f'multipart/form-data; charset=utf-8; boundary="{boundary}"'
    assert run_lua(tmp_path, body, ctype) == f"PASS {BASE} true"
    # Never trimmed: the backend would not trim it either, so it is another model.
    padded = curl_form(boundary, [("model", None, f" {BASE}".encode()), ("file", "a.wav", WAV)])
    status, _ = reply(run_lua(tmp_path, padded, ctype))
    assert status == 404


@needs_lua
def test_lua_client_header_is_never_trusted(tmp_path: Path) -> None:
    """Routing reads the metadata Lua wrote from the body, never the client's header."""
    body, ctype = aiohttp_form(True, TINY, WAV)
    assert run_lua(tmp_path, body, ctype, client_model=BASE) == f"PASS {TINY} true"


@needs_lua
def test_lua_missing_model(tmp_path: Path) -> None:
    boundary = "b0undary"
    body = curl_form(boundary, [("file", "a.wav", EVIL)])
    status, err = reply(run_lua(tmp_path, body, f"multipart/form-data; boundary={boundary}"))
    assert status == 400
    assert err["error"]["param"] == "model"
    assert TINY in err["error"]["message"] and ODD in err["error"]["message"]


@needs_lua
def test_lua_unknown_model(tmp_path: Path) -> None:
    body, ctype = aiohttp_form(False, "whisper-1", WAV)
    status, err = reply(run_lua(tmp_path, body, ctype))
    assert status == 404
    assert err["error"]["param"] == "model"
    assert "'whisper-1' does not exist" in err["error"]["message"]


@needs_lua
def test_lua_not_multipart_and_empty_body(tmp_path: Path) -> None:
    status, err = reply(run_lua(tmp_path, b'{"model": "x"}', "application/json"))
    assert status == 400
    status, err = reply(run_lua(tmp_path, b"", "multipart/form-data; boundary=abc"))
    assert (status, err["error"]["param"]) == (400, "file")


@needs_lua
def test_lua_truncated_body(tmp_path: Path) -> None:
    body, ctype = aiohttp_form(False, TINY, WAV)
    cut = body[: body.index(b'name="model"')]
    status, _ = reply(run_lua(tmp_path, cut, ctype))
    assert status == 400


def test_protos_are_messages() -> None:
    rcfg = route_config()
    assert isinstance(rcfg, message.Message)
    assert all(isinstance(r, rc.Route) for r in rcfg.virtual_hosts[0].routes)


def test_two_names_resolving_to_one_address_make_one_endpoint() -> None:
    cfg = parse_config(
        {
            "backends": [
                {"url": "http://a.test:9000", "models": ["m"], "health": {"enabled": False}},
                {"url": "http://b.test:9000", "models": ["m"], "health": {"enabled": False}},
            ]
        }
    )
    resolved = {"http://a.test:9000": ("127.0.0.5",), "http://b.test:9000": ("127.0.0.5",)}
    (cluster,) = model_from(cfg, resolved, {}).clusters
    assert [e.key for e in cluster.endpoints] == ["127.0.0.5:9000"]


@needs_lua
@pytest.mark.parametrize("fields_first", [True, False])
def test_lua_large_upload_is_scanned_in_windows(tmp_path: Path, fields_first: bool) -> None:
    """Past 1 MiB the body is read in windows; a boundary may straddle two of them."""
    boundary = "b0undary"
    filler = (WAV + EVIL) * (3 * 1024 * 1024 // len(WAV + EVIL))
    # Put the closing delimiter of the file part across the first window's edge.
    cut = 1024 * 1024 - len(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        'filename="a.wav"\r\nContent-Type: application/octet-stream\r\n\r\n'
    )
    file_bytes = filler[: cut - 3] if not fields_first else filler
    parts: list[tuple[str, str | None, bytes]] = [("file", "a.wav", file_bytes)]
    if fields_first:
        parts.insert(0, ("model", None, TINY.encode()))
    else:
        parts.append(("model", None, TINY.encode()))
        parts.append(("big", None, filler))
    body = curl_form(boundary, parts)
    assert len(body) > 1024 * 1024
    ctype = f"multipart/form-data; boundary={boundary}"
    assert run_lua(tmp_path, body, ctype) == f"PASS {TINY} true"
