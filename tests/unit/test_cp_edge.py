"""The edge's pure parts: config sections, secrets loading, their translation, and
redaction of every secret in the admin API's snapshot."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.lua.v3 import lua_pb2

from control_plane.admin.redact import snapshot_json
from control_plane.config.certs import make_self_signed
from control_plane.config.parse import load_config, parse_config
from control_plane.config.schema import ConfigError, TlsConfig
from control_plane.ir.from_config import spec_from_config
from control_plane.ir.model import Client, ListenerTls, Security, build_model
from control_plane.ir.security import load_security
from control_plane.names import READ_UPLOAD_FILTER
from control_plane.xds.translator import load_lua_template, translate
from control_plane.xds.translator.edge import (
    rate_limit_config,
    read_upload_config,
    retry_after_s,
)
from control_plane.xds.translator.routes import RETRY_ON, RETRY_ON_RESET, build_route_config

ROOT = Path(__file__).resolve().parents[2]
TINY = "openai/whisper-tiny.en"
BACKEND = {"url": "http://127.0.0.1:9001", "models": [TINY], "health": {"enabled": False}}


def doc(**extra: Any) -> dict[str, Any]:
    return {"backends": [BACKEND], **extra}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"tls": {"cert_file": "a.pem"}}, "tls.key_file"),
        ({"tls": {"cert_file": "a", "key_file": "b", "self_signed": "yes"}}, "tls.self_signed"),
        ({"api_keys": {}}, "api_keys"),
        ({"api_keys": {"env": {"team": ""}}}, "api_keys.env.team"),
        ({"upstream_tls": {"cert_file": "c.pem"}}, "upstream_tls.key_file"),
        ({"rate_limit": {"requests_per_s": -1}}, "rate_limit.requests_per_s"),
        ({"edge": {"trusted_hops": 11}}, "edge.trusted_hops"),
        ({"edge": {"backend_header": "on"}}, "edge.backend_header"),
        ({"routing": {"retries": 2}}, "routing.retries"),
    ],
)
def test_bad_edge_config_names_the_field(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(doc(**extra))
    assert e.value.field == field


def test_more_retries_need_retry_on_reset_off() -> None:
    cfg = parse_config(doc(routing={"retries": 3, "retry_on_reset": False}))
    assert cfg.routing.retries == 3


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(doc(api_keys={"file": "keys.yaml"})))
    cfg = load_config(tmp_path / "gw.yaml")
    assert cfg.api_keys is not None and cfg.api_keys.file == str(tmp_path / "keys.yaml")


def keys(tmp_path: Path, clients: Any) -> Any:
    (tmp_path / "keys.yaml").write_text(yaml.safe_dump({"clients": clients}))
    return parse_config(doc(api_keys={"file": str(tmp_path / "keys.yaml")}))


@pytest.mark.parametrize(
    ("clients", "where"),
    [
        ([{"name": "a"}], "clients[0]"),
        ([{"name": "a", "key": "short"}], "clients[0].key"),
        ([{"name": "a", "key": "sk-0123456789", "models": ["nope"]}], "clients[0].models"),
        ([{"name": "a", "key": "sk-0123456789", "burst": 0}], "clients[0].burst"),
        ([{"name": "a", "key": "sk-0123456789", "colour": "red"}], "clients[0].colour"),
        ([{"name": "a", "key_env": "WG_TEST_UNSET_KEY"}], "clients[0].key_env"),
        (
            [{"name": "a", "key": "sk-0123456789"}, {"name": "b", "key": "sk-0123456789"}],
            "api_keys",
        ),
    ],
)
def test_bad_key_files_are_refused_without_echoing_the_key(
    tmp_path: Path, clients: Any, where: str
) -> None:
    with pytest.raises(ConfigError) as e:
        load_security(keys(tmp_path, clients))
    assert where in e.value.field
    assert "sk-0123456789" not in str(e.value)


def test_keys_from_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WG_TEST_TEAM_KEY", "sk-from-env-0123")
    cfg = keys(
        tmp_path,
        [
            {"name": "a", "key": "sk-0123456789", "models": [TINY], "requests_per_s": 2},
            {"name": "b", "key_env": "WG_TEST_TEAM_KEY"},
        ],
    )
    (a, b) = load_security(cfg).clients or ()
    assert (a.name, a.key, a.models, a.requests_per_s) == ("a", "sk-0123456789", (TINY,), 2.0)
    assert (b.name, b.key) == ("b", "sk-from-env-0123")
    assert "sk-0123456789" not in repr(a)  # keys never in a repr (logs)


def model_with(security: Security, **extra: Any) -> Any:
    cfg = parse_config(doc(**extra))
    return build_model(
        spec_from_config(cfg), {BACKEND["url"]: ("127.0.0.1",)}, {}, frozenset(), security
    )


def test_rate_limit_buckets() -> None:
    clients = (
        Client("fast", "sk-fast-0123456789"),
        Client("slow", "sk-slow-0123456789", requests_per_s=0.5, burst=2),
    )
    # No bucket anywhere: no limit (a client with no rate of its own and no default).
    assert rate_limit_config(model_with(Security(clients=clients[:1]))) == {}
    m = model_with(
        Security(clients=clients), rate_limit={"per_key_requests_per_s": 10, "per_key_burst": 20}
    )
    from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2

    cfg = local_rate_limit_pb2.LocalRateLimit()
    assert rate_limit_config(m)["envoy.filters.http.local_ratelimit"].Unpack(cfg)
    buckets = {d.entries[0].value: d.token_bucket for d in cfg.descriptors}
    assert buckets["fast"].max_tokens == 20 and buckets["fast"].tokens_per_fill.value == 10
    assert buckets["slow"].max_tokens == 2 and buckets["slow"].fill_interval.seconds == 2
    assert not cfg.always_consume_default_token_bucket.value  # no gateway bucket
    retry = {h.header.key: h.header.value for h in cfg.response_headers_to_add}
    assert retry == {"retry-after": "2"}  # the slowest bucket's token time


def test_uploads_are_read_before_a_refusal_only_where_the_edge_refuses() -> None:
    """Keys or any rate limit enable the first filter on the virtual host; nothing else."""
    keyed = Security(clients=(Client("team", "sk-team-0123456789"),))
    assert read_upload_config(model_with(Security())) == {}
    for m in (model_with(keyed), model_with(Security(), rate_limit={"requests_per_s": 5})):
        wrapper, lua = rc.FilterConfig(), lua_pb2.LuaPerRoute()
        assert read_upload_config(m)[READ_UPLOAD_FILTER].Unpack(wrapper)
        assert not wrapper.disabled and wrapper.config.Unpack(lua)
        assert lua.name == READ_UPLOAD_FILTER  # the source LDS holds under that name


def test_retry_after_rounds_up() -> None:
    assert [retry_after_s(r) for r in (100, 1, 0.5, 0.3, 0.05)] == [1, 1, 2, 4, 20]


def test_retry_on_reset_is_the_default() -> None:
    m = model_with(Security())
    routes = build_route_config(m, load_lua_template()).virtual_hosts[0].routes
    forwarding = [r for r in routes if r.name.startswith("model:")]
    assert {r.route.retry_policy.retry_on for r in forwarding} == {RETRY_ON_RESET}
    assert {r.route.retry_policy.num_retries.value for r in forwarding} == {1}
    off = model_with(Security(), routing={"retries": 2, "retry_on_reset": False})
    routes = build_route_config(off, load_lua_template()).virtual_hosts[0].routes
    assert {r.route.retry_policy.retry_on for r in routes if r.name.startswith("model:")} == {
        RETRY_ON
    }


def test_every_secret_is_redacted_in_the_snapshot(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    make_self_signed(TlsConfig(str(cert), str(key)))
    security = Security(
        listener_tls=dataclasses.replace(
            Security().listener_tls
            or __import__("control_plane.ir.model").ir.model.ListenerTls(b"", b""),
            cert_pem=cert.read_bytes(),
            key_pem=key.read_bytes(),
        ),
        clients=(Client("a", "sk-client-secret-1"),),
        backend_keys=((TINY, "sk-backend-secret-2"),),
    )
    snap = translate(model_with(security), load_lua_template())
    text = json.dumps(snapshot_json(snap))
    body = key.read_text().splitlines()[1]
    for secret in ("sk-client-secret-1", "sk-backend-secret-2", body):
        assert secret not in text
    assert text.count("[redacted]") >= 3
    # The redaction is of the view only: Envoy gets the real values.
    assert b"sk-backend-secret-2" in b"".join(
        r.SerializeToString()
        for r in snap.items("type.googleapis.com/envoy.config.route.v3.RouteConfiguration").values()
    )


def test_examples_secure_yaml_loads(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "examples" / "secure.yaml")
    assert cfg.tls is not None and cfg.tls.self_signed and cfg.api_keys is not None
    assert cfg.listener.port == 8443 and cfg.rate_limit.per_key_requests_per_s > 0
    # The certificate is made at start; here into a scratch folder.
    tls = TlsConfig(str(tmp_path / "g.crt"), str(tmp_path / "g.key"), True)
    assert make_self_signed(tls)
    clients = load_security(dataclasses.replace(cfg, tls=tls)).clients or ()
    assert {c.name for c in clients} == {"demo", "tiny-only"}


def test_check_reads_the_secrets_and_refuses_a_missing_key_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "gw.yaml"
    bad.write_text(yaml.safe_dump(doc(api_keys={"file": "missing-keys.yaml"})))
    for argv in (["check", "--config", str(bad)],):  # the start: tests/e2e/test_cp_refusals.py
        proc = subprocess.run(
            [sys.executable, "-m", "control_plane", *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        assert "config error at api_keys.file: cannot read" in proc.stderr
