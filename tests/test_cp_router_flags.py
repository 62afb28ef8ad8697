"""vLLM Production Stack router flags -> GatewayConfig, and `python -m control_plane check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from control_plane.config import ConfigError, HostPort
from control_plane.router_flags import RouterFlagError, config_from_router_flags

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"

FLAGS = [
    "--service-discovery", "static",
    "--static-backends", "http://a:1,http://b:2",
    "--static-models", "m1,m2",
    "--static-model-types", "transcription,transcription",
    "--routing-logic", "roundrobin",
    "--host", "127.0.0.1",
    "--port", "8001",
    "--static-backend-health-checks",
]  # fmt: skip


def refused(argv: list[str]) -> str:
    with pytest.raises(RouterFlagError) as info:
        config_from_router_flags(argv)
    return str(info.value)


def test_reference_flags_map_to_config() -> None:
    cfg = config_from_router_flags(FLAGS)
    assert cfg.listener == HostPort("127.0.0.1", 8001)
    assert cfg.routing.policy == "round_robin"
    assert [(b.url, b.models, b.type) for b in cfg.backends] == [
        ("http://a:1", ("m1",), "transcription"),
        ("http://b:2", ("m2",), "transcription"),
    ]
    assert cfg.models == ("m1", "m2")
    assert cfg.health.enabled is True
    assert all(b.health.enabled for b in cfg.backends)
    # Everything else keeps the YAML defaults.
    assert cfg.xds == HostPort("127.0.0.1", 18000)
    assert cfg.limits.max_upload_mb == 25.0


def test_equals_form_and_defaults() -> None:
    cfg = config_from_router_flags(
        ["--static-backends=http://a:1", "--static-models=m", "--routing-logic=least_request"]
    )
    assert cfg.routing.policy == "least_request"
    assert cfg.health.enabled is False  # no --static-backend-health-checks
    assert cfg.backends[0].health.enabled is False
    assert cfg.listener == HostPort("127.0.0.1", 8001)


def test_same_model_on_two_backends() -> None:
    cfg = config_from_router_flags(
        ["--static-backends", "http://a:1, http://b:2", "--static-models", "m,m"]
    )
    assert cfg.models == ("m",)
    assert len(cfg.backends) == 2


def test_optional_mapped_and_ignored_flags() -> None:
    cfg = config_from_router_flags(
        [*FLAGS, "--health-check-interval", "12", "--max-upload-mb", "50",
         "--engine-stats-interval", "30", "--log-stats"]
    )  # fmt: skip
    assert cfg.health.interval_s == 12.0
    assert cfg.limits.max_upload_mb == 50.0


def test_k8s_discovery_refused() -> None:
    msg = refused([*FLAGS, "--service-discovery", "k8s"])
    assert "--service-discovery k8s is refused" in msg
    assert "DNS" in msg


@pytest.mark.parametrize(
    "flag",
    ["--k8s-namespace", "--k8s-port", "--k8s-label-selector", "--static-aliases", "--callbacks"],
)
def test_refused_flags(flag: str) -> None:
    msg = refused([*FLAGS, flag, "x"])
    assert msg.startswith(f"{flag} is refused: ")
    assert len(msg) > len(flag) + 20  # carries the reason
    assert refused([*FLAGS, f"{flag}=x"]).startswith(f"{flag} is refused")


def test_session_routing_refused() -> None:
    assert "session" in refused([*FLAGS, "--session-key", "x-user"])
    msg = refused([*FLAGS, "--routing-logic", "session"])
    assert "--routing-logic session is refused" in msg


def test_non_transcription_type_refused() -> None:
    msg = refused(
        ["--static-backends", "http://a:1,http://b:2", "--static-models", "m1,m2",
         "--static-model-types", "transcription,chat"]
    )  # fmt: skip
    assert "--static-model-types chat is refused" in msg


def test_mismatched_counts() -> None:
    msg = refused(["--static-backends", "http://a:1,http://b:2", "--static-models", "m1"])
    assert "1 models for 2 backends" in msg
    msg = refused(
        ["--static-backends", "http://a:1,http://b:2", "--static-models", "m1,m2",
         "--static-model-types", "transcription"]
    )  # fmt: skip
    assert "one type per backend" in msg


def test_backends_required() -> None:
    assert "--static-backends is required" in refused(["--static-models", "m"])


def test_unknown_flag() -> None:
    msg = refused([*FLAGS, "--frobnicate", "1"])
    assert "unknown flag(s): --frobnicate" in msg


def test_bad_port_value() -> None:
    msg = refused([*FLAGS, "--port", "eighty"])
    assert "--port" in msg


def test_bad_backend_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_router_flags(["--static-backends", "http://a:1/v1", "--static-models", "m"])
    assert info.value.field == "backends[0].url"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PYTHON), "-m", "control_plane", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_check_accepts_router_flags() -> None:
    proc = run_cli("check", *FLAGS)
    assert proc.returncode == 0, proc.stderr
    assert "2 backends" in proc.stdout
    assert "m1, m2" in proc.stdout


def test_cli_check_refuses_bad_flags() -> None:
    proc = run_cli("check", "--static-backends", "x")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "whisper-gateway:" in proc.stderr
    assert "--static-models lists 0 models for 1 backends" in proc.stderr


def test_cli_check_refuses_bad_url() -> None:
    proc = run_cli("check", "--static-backends", "x", "--static-models", "m")
    assert proc.returncode == 2
    assert "backends[0].url" in proc.stderr


def test_python_is_the_venv() -> None:
    assert PYTHON.exists(), f"{PYTHON} missing (tests run against {sys.executable})"


def test_zero_values_are_validated_not_dropped() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_router_flags([*FLAGS, "--health-check-interval", "0"])
    assert info.value.field == "health.interval_s"
    with pytest.raises(ConfigError) as info:
        config_from_router_flags([*FLAGS, "--max-upload-mb", "0"])
    assert info.value.field == "limits.max_upload_mb"
