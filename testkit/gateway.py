"""Run the real gateway for a test: control plane + Envoy, on free loopback ports."""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from control_plane.config.parse import parse_config
from control_plane.xds.bootstrap import build_bootstrap, envoy_command
from testkit.procs import PYTHON, ROOT, Proc, free_port, wait_http


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@dataclass
class Gateway:
    workdir: Path
    config: dict[str, Any]
    control_plane: Proc | None = None
    envoy: Proc | None = None

    @property
    def url(self) -> str:
        lst = self.config["listener"]
        return f"http://{lst['address']}:{lst['port']}"

    @property
    def admin_url(self) -> str:
        a = self.config["admin"]
        return f"http://{a['address']}:{a['port']}"

    @property
    def envoy_admin_url(self) -> str:
        a = self.config["envoy_admin"]
        return f"http://{a['address']}:{a['port']}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "gateway.yaml"

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def start_control_plane(self) -> None:
        self.write_config()
        self.control_plane = Proc(
            "control-plane",
            [PYTHON, "-m", "control_plane", "--config", str(self.config_path)],
            self.workdir / "control-plane.log",
        ).start()
        wait_http(f"{self.admin_url}/healthz", timeout=30, proc=self.control_plane)

    def start_envoy(self, wait: bool = True, extra: tuple[str, ...] = ()) -> None:
        self.write_config()
        self.start_envoy_with(write_bootstrap(self), wait=wait, extra=extra)

    def start_envoy_with(
        self, bootstrap: Path, wait: bool = True, extra: tuple[str, ...] = ()
    ) -> None:
        self.envoy = Proc(
            "envoy",
            [
                *envoy_command(parse_config(self.config), bootstrap, drain_time_s=2),
                *extra,
            ],
            self.workdir / "envoy.log",
        ).start()
        if wait:
            self.wait_envoy_live()

    def wait_envoy_live(self, timeout: float = 60) -> None:
        wait_http(f"{self.envoy_admin_url}/ready", timeout=timeout, proc=self.envoy)

    def status(self) -> Any:
        return _get_json(f"{self.admin_url}/status")

    def backends(self) -> Any:
        return _get_json(f"{self.admin_url}/backends")

    def wait_backends(
        self, keys: set[str] | None = None, health: str = "HEALTHY", timeout: float = 90
    ) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = self.backends()
            want = [b for b in last if keys is None or b["endpoint"] in keys]
            if want and all(b["health"] == health for b in want):
                self.wait_synced()
                return
            time.sleep(0.1)
        raise TimeoutError(f"backends not {health}: {last}")

    def wait_synced(self, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = self.status()
            proxies = last["proxies"]
            if proxies and all(
                t["state"] == "SYNCED" for p in proxies for t in p["types"].values()
            ):
                return last
            time.sleep(0.05)
        raise TimeoutError(f"Envoy not SYNCED: {json.dumps(last)[:3000]}")

    def envoy_stat(self, name: str) -> int | None:
        with urllib.request.urlopen(
            f"{self.envoy_admin_url}/stats?filter=^{name}$", timeout=5
        ) as r:
            for line in r.read().decode().splitlines():
                key, _, value = line.partition(": ")
                if key == name:
                    try:
                        return int(value)
                    except ValueError:
                        return None
        return None

    def stop(self) -> None:
        for p in (self.envoy, self.control_plane):
            if p is not None:
                p.stop()


def gateway_config(backends: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "listener": {"address": "127.0.0.1", "port": free_port()},
        "envoy_admin": {"address": "127.0.0.1", "port": free_port()},
        "xds": {"address": "127.0.0.1", "port": free_port()},
        "admin": {"address": "127.0.0.1", "port": free_port()},
        "health": {
            "interval_s": 1.0,
            "timeout_s": 10.0,
            "healthy_threshold": 1,
            "unhealthy_threshold": 2,
        },
        "backends": backends,
        # The tests see which backend served a request (off by default: it tells
        # clients internal addresses).
        "edge": {"backend_header": True},
        # The tests read Envoy's access log line by line as JSON.
        "log_format": "json",
    }
    cfg.update(overrides)
    return cfg


def start_gateway(workdir: Path, config: dict[str, Any]) -> Gateway:
    workdir.mkdir(parents=True, exist_ok=True)
    gw = Gateway(workdir, config)
    try:
        gw.start_control_plane()
        gw.start_envoy()
    except BaseException:
        gw.stop()  # a half-started gateway is not left running
        raise
    return gw


__all__ = ["ROOT", "Gateway", "gateway_config", "start_gateway"]


def write_bootstrap(gw: Gateway) -> Path:
    """Envoy's bootstrap from the gateway's config, without a running control plane."""
    path = gw.workdir / "envoy-bootstrap.json"
    path.write_text(json.dumps(build_bootstrap(parse_config(gw.config))))
    return path
