"""Envoy's bootstrap: the overload manager built from `edge`, and the real Envoy
accepting the rendered file (`envoy --mode validate`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from control_plane.config.parse import load_config, parse_config
from control_plane.config.schema import EdgeConfig, GatewayConfig
from control_plane.xds.bootstrap import (
    CONNECTIONS_MONITOR,
    ENVOY,
    HEAP_MONITOR,
    build_bootstrap,
    overload_manager,
)

DEFAULT_YAML = Path(__file__).resolve().parents[2] / "control_plane" / "config" / "default.yaml"
BACKENDS = [{"url": "http://127.0.0.1:9000", "models": ["m"]}]


def _config(**edge: Any) -> GatewayConfig:
    return parse_config({"backends": BACKENDS, "edge": edge})


def _by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in items}


def _threshold(entry: dict[str, Any]) -> float:
    (trigger,) = entry["triggers"]
    assert trigger["name"] == HEAP_MONITOR
    return float(trigger["threshold"]["value"])


def test_monitors_take_the_edge_limits() -> None:
    om = build_bootstrap(_config(max_heap_mb=96, max_connections=50))["overload_manager"]
    monitors = _by_name(om["resource_monitors"])
    assert monitors[HEAP_MONITOR]["typed_config"]["max_heap_size_bytes"] == 96 * 1024 * 1024
    conns = monitors[CONNECTIONS_MONITOR]["typed_config"]
    assert conns["max_active_downstream_connections"] == 50
    assert om["refresh_interval"].endswith("s")


def test_defaults_are_2_gib_and_10000_connections() -> None:
    monitors = _by_name(overload_manager(EdgeConfig())["resource_monitors"])
    assert monitors[HEAP_MONITOR]["typed_config"]["max_heap_size_bytes"] == 2048 * 1024 * 1024
    conns = monitors[CONNECTIONS_MONITOR]["typed_config"]
    assert conns["max_active_downstream_connections"] == 10000


def test_heap_actions_escalate_from_shrink_to_503() -> None:
    actions = _by_name(overload_manager(EdgeConfig())["actions"])
    shrink = _threshold(actions["envoy.overload_actions.shrink_heap"])
    keepalive = _threshold(actions["envoy.overload_actions.disable_http_keepalive"])
    stop = _threshold(actions["envoy.overload_actions.stop_accepting_requests"])
    assert (shrink, stop) == (0.90, 0.95)
    assert shrink < keepalive < stop


def test_reduce_timeouts_shortens_only_idle_keepalive_connections() -> None:
    """A transcription's stream idle timeout must stay whole under pressure."""
    action = _by_name(overload_manager(EdgeConfig())["actions"])[
        "envoy.overload_actions.reduce_timeouts"
    ]
    (trigger,) = action["triggers"]
    scaled = trigger["scaled"]
    assert scaled["scaling_threshold"] < scaled["saturation_threshold"] <= 0.95
    timers = [t["timer"] for t in action["typed_config"]["timer_scale_factors"]]
    assert timers == ["HTTP_DOWNSTREAM_CONNECTION_IDLE"]


def test_load_shed_points_stop_new_requests_then_uploads_in_flight() -> None:
    om = overload_manager(EdgeConfig())
    points = _by_name(om["loadshed_points"])
    stop = _threshold(_by_name(om["actions"])["envoy.overload_actions.stop_accepting_requests"])
    decode = _threshold(points["envoy.load_shed_points.http_connection_manager_decode_headers"])
    abort = _threshold(points["envoy.load_shed_points.http1_server_abort_dispatch"])
    assert decode == stop < abort < 1.0


def test_no_monitor_is_used_as_a_trigger_it_cannot_be() -> None:
    """The connection monitor is proactive: Envoy refuses it as an action trigger."""
    om = overload_manager(EdgeConfig())
    for entry in om["actions"] + om["loadshed_points"]:
        assert {t["name"] for t in entry["triggers"]} == {HEAP_MONITOR}


def test_the_deprecated_runtime_key_is_gone() -> None:
    """`overload.global_downstream_max_connections` (runtime) is replaced by the monitor."""
    boot = build_bootstrap(_config())
    assert "layered_runtime" not in boot
    assert '"overload"' not in json.dumps(boot)


def test_admin_stays_reachable_at_the_connection_limit() -> None:
    assert build_bootstrap(_config())["admin"]["ignore_global_conn_limit"] is True


def _validate(boot: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(boot))
    return subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("edge", [{}, {"max_heap_mb": 64, "max_connections": 1}])
def test_envoy_accepts_the_bootstrap(edge: dict[str, Any], tmp_path: Path) -> None:
    proc = _validate(build_bootstrap(_config(**edge)), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OK" in proc.stdout + proc.stderr


def test_envoy_accepts_the_shipped_default_config(tmp_path: Path) -> None:
    proc = _validate(build_bootstrap(load_config(DEFAULT_YAML)), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_envoy_refuses_a_misspelt_action(tmp_path: Path) -> None:
    """The validation above is real: a wrong action name is an error, not a no-op."""
    boot = build_bootstrap(_config())
    boot["overload_manager"]["actions"][0]["name"] = "envoy.overload_actions.shrink_heaps"
    proc = _validate(boot, tmp_path)
    assert proc.returncode != 0
    assert "shrink_heaps" in proc.stdout + proc.stderr
