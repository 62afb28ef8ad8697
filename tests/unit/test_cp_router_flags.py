"""vLLM Production Stack router flags -> GatewayConfig, and `python -m control_plane check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from control_plane.config.parse import parse_config
from control_plane.config.router_flags import RouterFlagError, config_from_router_flags
from control_plane.config.schema import ConfigError, HostPort

ROOT = Path(__file__).resolve().parents[2]
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
        [*FLAGS, "--static-backend-health-check-interval", "12", "--max-upload-mb", "50",
         "--static-backend-health-check-timeout-seconds", "7",
         "--max-instance-failover-reroute-attempts", "1",
         "--engine-stats-interval", "30", "--log-stats"]
    )  # fmt: skip
    assert cfg.health.interval_s == 12.0
    assert cfg.health.timeout_s == 7.0
    assert cfg.routing.retries == 1
    assert cfg.limits.max_upload_mb == 50.0


def test_router_health_defaults() -> None:
    """The router probes every 60 s with a 10 s timeout unless told otherwise."""
    cfg = config_from_router_flags(FLAGS)
    assert (cfg.health.interval_s, cfg.health.timeout_s) == (60.0, 10.0)
    cfg = config_from_router_flags([*FLAGS, "--backend-health-check-timeout-seconds", "3"])
    assert cfg.health.timeout_s == 3.0


# Every flag of the router's parser (vllm-project/production-stack parser.py, a6c01db).
ROUTER_FLAGS = """
--host --port --root-path --service-discovery --k8s-service-discovery-type --static-backends
--static-models --static-aliases --static-model-types --static-model-labels
--static-backend-health-checks --static-backend-health-check-interval
--static-backend-health-check-timeout-seconds --backend-health-check-timeout-seconds
--k8s-port --k8s-namespace --k8s-label-selector --k8s-watcher-timeout-seconds --routing-logic
--session-key --kv-aware-threshold --prefix-min-match-length --lmcache-controller-port
--lmcache-controller-reply-port --lmcache-controller-heartbeat-port
--lmcache-health-check-interval --lmcache-worker-timeout --prefill-model-labels
--decode-model-labels --max-instance-failover-reroute-attempts --callbacks --request-rewriter
--enable-batch-api --file-storage-class --file-storage-path --batch-processor
--engine-stats-interval --request-stats-window --log-stats --log-stats-interval
--dynamic-config-yaml --dynamic-config-json --version --feature-gates --log-level --log-format
--sentry-dsn --sentry-traces-sample-rate --sentry-profile-session-sample-rate --otel-endpoint
--otel-service-name --otel-secure --external-providers-config
""".split()


def test_every_router_flag_is_mapped_ignored_or_refused() -> None:
    from control_plane.cli.options import _parser
    from control_plane.config.router_flags import IGNORED, IGNORED_SWITCHES, REFUSED
    from control_plane.config.router_flags import _parser as rp

    ours = {a for action in _parser("x")._actions for a in action.option_strings}
    mapped = {a for action in rp()._actions for a in action.option_strings}
    for flag in ROUTER_FLAGS:
        kinds = [
            name
            for name, table in (
                ("process", ours),
                ("mapped", mapped - set(IGNORED) - set(IGNORED_SWITCHES)),
                ("ignored", set(IGNORED) | set(IGNORED_SWITCHES)),
                ("refused", set(REFUSED)),
            )
            if flag in table
        ]
        assert len(kinds) == 1, f"{flag}: {kinds}"


def test_ignored_flags_are_noted() -> None:
    from control_plane.config.router_flags import read_router_flags

    flags = read_router_flags([*FLAGS, "--root-path", "/api"])
    assert any(n.startswith("--root-path ignored:") for n in flags.notes)


def test_stats_flags_map_onto_the_stats_section() -> None:
    from control_plane.config.router_flags import read_router_flags

    stats = read_router_flags(
        [*FLAGS, "--log-stats", "--log-stats-interval", "5", "--request-stats-window", "20",
         "--engine-stats-interval", "7"]
    ).config.stats  # fmt: skip
    assert (stats.log_interval_s, stats.window_s, stats.engine_interval_s) == (5.0, 20.0, 7.0)
    # Without --log-stats the interval is kept for nothing: no log lines.
    assert read_router_flags([*FLAGS, "--log-stats-interval", "5"]).config.stats.log_interval_s == 0
    with pytest.raises(ConfigError, match=r"stats\.window_s"):
        read_router_flags([*FLAGS, "--request-stats-window", "0"])


def test_seed_router_line_parses(tmp_path: Path) -> None:
    """The tutorial's line, verbatim but for the program name: --host first."""
    proc = run_cli(*SEED_LINE("8123", "http://127.0.0.1:8002"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "address: 0.0.0.0\n  port: 8123" in proc.stdout
    assert "openai/whisper-small" in proc.stdout
    assert "policy: round_robin" in proc.stdout
    assert "log_interval_s: 10.0" in proc.stdout  # --log-stats at the router's interval
    assert "window_s: 10.0" in proc.stdout and "engine_interval_s: 10.0" in proc.stdout


def SEED_LINE(port: str, backends: str) -> list[str]:
    return [
        "--host", "0.0.0.0", "--port", port, "--service-discovery", "static",
        "--static-backends", backends, "--static-models", "openai/whisper-small",
        "--static-model-types", "transcription", "--routing-logic", "roundrobin",
        "--log-stats", "--log-level", "debug", "--engine-stats-interval", "10",
        "--request-stats-window", "10", "--static-backend-health-checks",
    ]  # fmt: skip


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
    cfg = parse_config(yaml.safe_load(proc.stdout))
    assert cfg == config_from_router_flags(FLAGS), "check prints the config the flags became"


def test_cli_check_refuses_bad_flags() -> None:
    proc = run_cli("check", "--static-backends", "x")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "control_plane:" in proc.stderr
    assert "--static-models lists 0 models for 1 backends" in proc.stderr


def test_cli_check_refuses_bad_url() -> None:
    proc = run_cli("check", "--static-backends", "x", "--static-models", "m")
    assert proc.returncode == 2
    assert "backends[0].url" in proc.stderr


def test_python_is_the_venv() -> None:
    assert PYTHON.exists(), f"{PYTHON} missing (tests run against {sys.executable})"


def test_zero_values_are_validated_not_dropped() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_router_flags([*FLAGS, "--static-backend-health-check-interval", "0"])
    assert info.value.field == "health.interval_s"
    with pytest.raises(ConfigError) as info:
        config_from_router_flags([*FLAGS, "--max-upload-mb", "0"])
    assert info.value.field == "limits.max_upload_mb"
