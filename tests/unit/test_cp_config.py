"""control_plane.config: the embedded default loads; every bad value names its field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane.config.advice import backend_warnings
from control_plane.config.parse import load_config, parse_config
from control_plane.config.schema import DEFAULT_CONFIG, ConfigError, GatewayConfig, HostPort


def base() -> dict[str, Any]:
    return {
        "backends": [
            {"url": "http://127.0.0.1:8002", "models": ["openai/whisper-tiny.en"]},
            {"url": "http://127.0.0.1:8003", "models": ["openai/whisper-base"]},
        ]
    }


def refused(doc: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    err = info.value
    assert err.field in str(err), "the message names the field"
    return err


def test_embedded_default_loads() -> None:
    cfg = load_config(DEFAULT_CONFIG)
    assert isinstance(cfg, GatewayConfig)
    assert cfg.listener == HostPort("127.0.0.1", 8000)
    assert cfg.xds == HostPort("127.0.0.1", 18000)
    assert cfg.models == ("openai/whisper-tiny.en", "openai/whisper-base")
    assert [b.url for b in cfg.backends] == [
        "http://127.0.0.1:8002",
        "http://127.0.0.1:8003",
        "http://127.0.0.1:8004",
    ]
    assert all(b.launch == "cpu" and b.max_concurrency == 2 for b in cfg.backends)
    assert cfg.routing.policy == "least_request"
    # parse_config of the decoded file is the same pure result.
    assert parse_config(yaml.safe_load(DEFAULT_CONFIG.read_text())) == cfg


def test_minimal_config_gets_defaults() -> None:
    cfg = parse_config(base())
    assert cfg.limits.max_upload_mb == 25.0
    assert cfg.routing.retries == 1
    assert cfg.node_id == "gateway"
    b = cfg.backends[0]
    assert (b.host, b.port, b.tls, b.type) == ("127.0.0.1", 8002, False, "transcription")


def test_backend_health_inherits_top_level_and_overrides() -> None:
    doc = base()
    doc["health"] = {"interval_s": 7, "unhealthy_threshold": 5}
    doc["backends"][1]["health"] = {"enabled": False, "interval_s": 1.5}
    cfg = parse_config(doc)
    assert cfg.backends[0].health.interval_s == 7.0
    assert cfg.backends[0].health.unhealthy_threshold == 5
    assert cfg.backends[1].health.enabled is False
    assert cfg.backends[1].health.interval_s == 1.5
    assert cfg.backends[1].health.unhealthy_threshold == 5


def test_url_trailing_slash_and_https_default_port() -> None:
    doc = base()
    doc["backends"][0]["url"] = "http://127.0.0.1:8002/"
    doc["backends"][1]["url"] = "https://whisper.example"
    cfg = parse_config(doc)
    assert cfg.backends[0].url == "http://127.0.0.1:8002"
    assert (cfg.backends[1].port, cfg.backends[1].tls) == (443, True)


def test_models_as_single_string_accepted() -> None:
    doc = base()
    doc["backends"][0]["models"] = "m1"
    assert parse_config(doc).backends[0].models == ("m1",)


@pytest.mark.parametrize("backends", [None, [], "http://a:1", {}])
def test_backends_missing_or_empty(backends: Any) -> None:
    doc: dict[str, Any] = {} if backends is None else {"backends": backends}
    assert refused(doc).field == "backends"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("127.0.0.1:8002", "scheme"),
        ("ftp://127.0.0.1:8002", "scheme"),
        ("http://", "host"),
        ("http://127.0.0.1:8002/v1", "path"),
        ("http://127.0.0.1:99999", "port"),
        ("http://127.0.0.1:abc", "port"),
        ("http://127.0.0.1:8002?x=1", "query"),
        ("http://user:pw@127.0.0.1:8002", "userinfo"),
        ("", "empty"),
    ],
)
def test_bad_url(url: str, why: str) -> None:
    doc = base()
    doc["backends"][1]["url"] = url
    err = refused(doc)
    assert err.field == "backends[1].url", why
    assert "backends[1].url" in str(err)


def test_missing_url() -> None:
    doc = base()
    del doc["backends"][0]["url"]
    assert refused(doc).field == "backends[0].url"


@pytest.mark.parametrize(
    ("models", "field"),
    [
        ([], "backends[0].models"),
        (None, "backends[0].models"),
        ({"a": 1}, "backends[0].models"),
        (["m", "m"], "backends[0].models"),
        (["ok", ""], "backends[0].models[1]"),
        (["has space"], "backends[0].models[0]"),
        (['quo"te'], "backends[0].models[0]"),
        (["back\\slash"], "backends[0].models[0]"),
        (["ctl\x01char"], "backends[0].models[0]"),
        (["caf\u00e9"], "backends[0].models[0]"),
        ([5], "backends[0].models[0]"),
    ],
)
def test_bad_models(models: Any, field: str) -> None:
    doc = base()
    doc["backends"][0]["models"] = models
    assert refused(doc).field == field


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"lisener": {}}, "lisener"),
        ({"limits": {"max_upload": 1}}, "limits.max_upload"),
        ({"routing": {"polcy": "x"}}, "routing.polcy"),
        ({"outlier": {"consecutive5xx": 1}}, "outlier.consecutive5xx"),
        ({"health": {"interval": 1}}, "health.interval"),
        ({"listener": {"address": "127.0.0.1", "prt": 1}}, "listener.prt"),
    ],
)
def test_unknown_fields(patch: dict[str, Any], field: str) -> None:
    doc = {**base(), **patch}
    err = refused(doc)
    assert err.field == field
    assert "unknown field" in str(err)


def test_unknown_nested_backend_fields() -> None:
    doc = base()
    doc["backends"][0]["helth"] = {"enabled": False}
    assert refused(doc).field == "backends[0].helth"
    doc = base()
    doc["backends"][1]["health"] = {"intervl_s": 2}
    assert refused(doc).field == "backends[1].health.intervl_s"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"limits": {"idle_timeout_s": "900"}}, "limits.idle_timeout_s"),
        ({"limits": {"max_upload_mb": True}}, "limits.max_upload_mb"),
        ({"routing": {"retries": 1.5}}, "routing.retries"),
        ({"routing": {"retries": True}}, "routing.retries"),
        ({"health": {"healthy_threshold": "2"}}, "health.healthy_threshold"),
        ({"health": {"enabled": "yes"}}, "health.enabled"),
        ({"listener": {"port": "8000"}}, "listener.port"),
        ({"listener": {"port": True}}, "listener.port"),
        ({"listener": {"address": "localhost"}}, "listener.address"),
        ({"listener": "127.0.0.1:8000"}, "listener"),
        ({"limits": [1]}, "limits"),
        ({"node_id": 5}, "node_id"),
        ({"node_id": ""}, "node_id"),
    ],
)
def test_wrong_types(patch: dict[str, Any], field: str) -> None:
    assert refused({**base(), **patch}).field == field


def test_backend_wrong_types() -> None:
    doc = base()
    doc["backends"][0]["max_concurrency"] = "4"
    assert refused(doc).field == "backends[0].max_concurrency"
    doc = base()
    doc["backends"][0]["max_concurrency"] = True
    assert refused(doc).field == "backends[0].max_concurrency"
    doc = base()
    doc["backends"][1] = "http://127.0.0.1:8003"
    assert refused(doc).field == "backends[1]"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"listener": {"port": 70000}}, "listener.port"),
        ({"admin": {"port": 0}}, "admin.port"),
        ({"health": {"healthy_threshold": 0}}, "health.healthy_threshold"),
        ({"health": {"unhealthy_threshold": 0}}, "health.unhealthy_threshold"),
        ({"health": {"timeout_s": -1}}, "health.timeout_s"),
        ({"limits": {"idle_timeout_s": -5}}, "limits.idle_timeout_s"),
        ({"limits": {"request_headers_timeout_s": 0}}, "limits.request_headers_timeout_s"),
        ({"limits": {"connect_timeout_s": -0.5}}, "limits.connect_timeout_s"),
        ({"limits": {"drain_time_s": -1}}, "limits.drain_time_s"),
        ({"limits": {"max_upload_mb": 0}}, "limits.max_upload_mb"),
        ({"limits": {"max_upload_mb": 4096}}, "limits.max_upload_mb"),
        ({"routing": {"retries": -1}}, "routing.retries"),
        ({"outlier": {"consecutive_5xx": 0}}, "outlier.consecutive_5xx"),
        ({"outlier": {"base_ejection_time_s": 0}}, "outlier.base_ejection_time_s"),
    ],
)
def test_out_of_range(patch: dict[str, Any], field: str) -> None:
    assert refused({**base(), **patch}).field == field


def test_backend_out_of_range() -> None:
    doc = base()
    doc["backends"][1]["max_concurrency"] = 0
    assert refused(doc).field == "backends[1].max_concurrency"


def test_bad_policy() -> None:
    err = refused({**base(), "routing": {"policy": "random"}})
    assert err.field == "routing.policy"
    assert "least_request" in str(err) and "round_robin" in str(err)


def test_bad_backend_type_and_launch() -> None:
    doc = base()
    doc["backends"][0]["type"] = "chat"
    assert refused(doc).field == "backends[0].type"
    doc = base()
    doc["backends"][1]["launch"] = "gpu"
    err = refused(doc)
    assert err.field == "backends[1].launch"
    assert "cpu" in str(err) and "vllm" in str(err)


def test_launch_vllm_serves_one_model_and_warns_on_english_only() -> None:
    doc = base()
    for b in doc["backends"]:
        b["launch"] = "vllm"
    cfg = parse_config(doc)
    assert [b.launch for b in cfg.backends] == ["vllm", "vllm"]
    warnings = backend_warnings(cfg)
    assert len(warnings) == 1, "only the English-only model is warned about"
    assert warnings[0].startswith("backends[0] (launch: vllm) serves openai/whisper-tiny.en")
    assert backend_warnings(parse_config(base())) == [], "not launched: vLLM or not, unknown"
    doc["backends"][1]["models"].append("openai/whisper-small")
    doc["backends"][1]["max_concurrency"] = 4
    err = refused(doc)
    assert err.field == "backends[1].launch" and "serves one model" in str(err)


def test_duplicate_backend_url() -> None:
    doc = base()
    doc["backends"].append({"url": "http://127.0.0.1:8002/", "models": ["x"]})
    err = refused(doc)
    assert err.field == "backends[2].url"
    assert "backends[0]" in str(err)
    # Same host and port spelled differently is the same backend.
    doc = base()
    doc["backends"][1]["url"] = "http://LOCALHOST:80"
    doc["backends"][0]["url"] = "http://localhost"
    assert refused(doc).field == "backends[1].url"


def test_model_over_http_and_https_refused() -> None:
    doc = base()
    doc["backends"][1] = {"url": "https://127.0.0.1:8443", "models": ["openai/whisper-tiny.en"]}
    err = refused(doc)
    assert err.field == "backends[1].url"
    assert "https" in str(err)


def test_two_listeners_on_one_address() -> None:
    doc = {
        **base(),
        "listener": {"address": "127.0.0.1", "port": 9000},
        "admin": {"address": "127.0.0.1", "port": 9000},
    }
    err = refused(doc)
    assert err.field == "admin.port"
    assert "listener" in str(err)
    # Same port on another address is fine.
    doc["admin"] = {"address": "127.0.0.2", "port": 9000}
    assert parse_config(doc).admin == HostPort("127.0.0.2", 9000)


def test_top_level_not_a_mapping() -> None:
    assert refused([1, 2]).field == "config"
    assert refused("backends").field == "config"


def test_yaml_syntax_error(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("backends:\n  - url: [http://a:1\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.field == "config"
    assert "not valid YAML" in str(info.value)
    assert str(p) in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.field == "config"
    assert "cannot read" in str(info.value)
    with pytest.raises(ConfigError):
        load_config(tmp_path)  # a directory


def test_load_config_reports_nested_field(tmp_path: Path) -> None:
    doc = copy.deepcopy(base())
    doc["backends"][1]["url"] = "http://127.0.0.1:8003/v1/audio"
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.field == "backends[1].url"
    assert str(info.value).startswith("config error at backends[1].url:")


def test_empty_file_means_no_backends(tmp_path: Path) -> None:
    p = tmp_path / "empty.yaml"
    p.write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.field == "backends"
