"""The splitter's settings come from the gateway's own config; the long_audio section is
checked like every other section (each error names its field) and dumps back to itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane.config.parse import config_to_dict, dump_config, parse_config
from control_plane.config.schema import ConfigError, GatewayConfig, HostPort, LongAudioConfig
from control_plane.config.sockets import local_url
from long_audio.__main__ import settings_of

MODEL = "openai/whisper-tiny.en"


def doc(**extra: Any) -> dict[str, Any]:
    return {
        "backends": [
            {"url": "http://127.0.0.1:8002", "models": [MODEL]},
            {"url": "http://127.0.0.1:8003", "models": ["openai/whisper-base"]},
        ],
        "long_audio": {"models": [MODEL]},
        **extra,
    }


def refused(d: Any, field: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(d)
    assert info.value.field == field
    assert field in str(info.value), "the message names the field"
    return info.value


# --- settings_of -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "upstream"),
    [
        ("127.0.0.1", "http://127.0.0.1:8000"),
        ("0.0.0.0", "http://127.0.0.1:8000"),  # every interface: loopback is one of them
        ("10.1.2.3", "http://10.1.2.3:8000"),
        ("::1", "http://[::1]:8000"),
        ("::", "http://[::1]:8000"),
        ("fd00::5", "http://[fd00::5]:8000"),
    ],
)
def test_upstream_is_the_listener(address: str, upstream: str) -> None:
    cfg = parse_config(doc(listener={"address": address, "port": 8000}))
    s = settings_of(cfg)
    assert s.upstream == upstream
    assert s.ca_file is None


def test_upstream_port_and_long_audio_values(tmp_path: Path) -> None:
    la = {"models": [MODEL], "piece_s": 12.5, "pieces_per_request": 3, "pieces_in_flight": 9}
    cfg = parse_config(doc(listener={"port": 9443}, long_audio=la))
    s = settings_of(cfg, str(tmp_path))
    assert s.upstream == "http://127.0.0.1:9443"
    assert (s.piece_s, s.pieces_per_request, s.pieces_in_flight) == (12.5, 3, 9)
    assert s.spool_dir == str(tmp_path)


def test_https_when_the_listener_has_tls(tmp_path: Path) -> None:
    """The files need not exist to parse (self_signed makes them later)."""
    tls = {"cert_file": "c.pem", "key_file": "k.pem", "self_signed": True}
    cfg = parse_config(doc(tls=tls), base_dir=tmp_path)
    s = settings_of(cfg)
    assert s.upstream == "https://127.0.0.1:8000"
    assert s.ca_file == str((tmp_path / "c.pem").resolve()), "the listener's own certificate"


@pytest.mark.parametrize(("mb", "expected"), [(None, 25 * 2**20), (100, 100 * 2**20),
                                              (0.5, 2**19)])  # fmt: skip
def test_max_upload_bytes_from_limits(mb: float | None, expected: int) -> None:
    cfg = parse_config(doc(limits={} if mb is None else {"max_upload_mb": mb}))
    assert settings_of(cfg).max_upload_bytes == expected


def test_no_long_audio_section_is_a_config_error() -> None:
    d = doc()
    del d["long_audio"]
    cfg = parse_config(d)
    assert cfg.long_audio is None
    with pytest.raises(ConfigError) as info:
        settings_of(cfg)
    assert info.value.field == "long_audio"


# --- parse_config's long_audio section -------------------------------------------------


def test_defaults() -> None:
    la = parse_config(doc()).long_audio
    assert la == LongAudioConfig(models=(MODEL,))
    assert (la.piece_s, la.splitter.address, la.splitter.port) == (30.0, "127.0.0.1", 18100)


def test_models_listed_twice_are_kept_once_in_order() -> None:
    la = parse_config(doc(long_audio={"models": ["openai/whisper-base", MODEL, MODEL]}))
    assert la.long_audio is not None
    assert la.long_audio.models == ("openai/whisper-base", MODEL)


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"models": ["openai/whisper-large"]}, "long_audio.models[0]"),
        ({"models": [MODEL, "nope"]}, "long_audio.models[1]"),
        ({"models": []}, "long_audio.models"),
        ({}, "long_audio.models"),
        ({"models": MODEL}, "long_audio.models"),  # a string, not a list
        ({"models": [MODEL], "piece_s": 31}, "long_audio.piece_s"),
        ({"models": [MODEL], "piece_s": 30.5}, "long_audio.piece_s"),
        ({"models": [MODEL], "piece_s": 4.9}, "long_audio.piece_s"),
        ({"models": [MODEL], "piece_s": "30"}, "long_audio.piece_s"),
        ({"models": [MODEL], "pieces_per_request": 0}, "long_audio.pieces_per_request"),
        ({"models": [MODEL], "pieces_in_flight": 1.5}, "long_audio.pieces_in_flight"),
        ({"models": [MODEL], "min_upload_mb": -1}, "long_audio.min_upload_mb"),
        ({"models": [MODEL], "piece_seconds": 20}, "long_audio.piece_seconds"),
        ({"models": [MODEL], "splitter": {"port": 0}}, "long_audio.splitter.port"),
        ({"models": [MODEL], "splitter": {"address": "localhost"}}, "long_audio.splitter.address"),
        ({"models": [MODEL], "splitter": {"host": "x"}}, "long_audio.splitter.host"),
        ({"models": [MODEL], "splitter": {"port": 8000}}, "long_audio.splitter.port"),
        ({"models": [MODEL], "splitter": {"port": 19000}}, "long_audio.splitter.port"),
    ],
)
def test_section_errors_name_their_field(section: dict[str, Any], field: str) -> None:
    refused(doc(long_audio=section), field)


def test_section_must_be_a_mapping() -> None:
    refused(doc(long_audio=[MODEL]), "long_audio")


def test_splitter_beside_the_listener_on_another_port_is_fine() -> None:
    cfg = parse_config(doc(long_audio={"models": [MODEL], "splitter": {"port": 8001}}))
    assert cfg.long_audio is not None and cfg.long_audio.splitter.port == 8001


def round_trip(cfg: GatewayConfig) -> GatewayConfig:
    return parse_config(yaml.safe_load(dump_config(cfg)))


def test_dump_round_trips_long_audio() -> None:
    la = {
        "models": ["openai/whisper-base", MODEL],
        "splitter": {"address": "::1", "port": 18101},
        "min_upload_mb": 2.5,
        "piece_s": 20,
        "pieces_per_request": 2,
        "pieces_in_flight": 5,
    }
    cfg = parse_config(doc(long_audio=la))
    assert round_trip(cfg) == cfg
    assert parse_config(config_to_dict(cfg)) == cfg
    assert config_to_dict(cfg)["long_audio"]["models"] == ["openai/whisper-base", MODEL]


def test_dump_round_trips_without_long_audio() -> None:
    d = doc()
    del d["long_audio"]
    cfg = parse_config(d)
    assert "long_audio" not in config_to_dict(cfg)
    assert round_trip(cfg) == cfg


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8000"),
        ("::", "http://[::1]:8000"),
        ("127.0.0.2", "http://127.0.0.2:8000"),
        ("::1", "http://[::1]:8000"),
    ],
)
def test_wildcard_listener_is_reached_on_its_own_familys_loopback(address: str, url: str) -> None:
    """The splitter and the supervisor's banner both use config.sockets.local_url."""
    assert local_url("http", HostPort(address, 8000)) == url
    assert settings_of(parse_config(doc(listener={"address": address}))).upstream == url
