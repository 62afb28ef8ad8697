"""The monitoring wired into compose (profile monitoring): Prometheus scrapes what the
control plane serves, and every Grafana panel queries series it exports.

No Docker engine here: the files are checked against each other and against a real
control plane's /router/metrics (the session's `gateway`, after real traffic).
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from conftest import TINY
from test_deploy_compose import compose, mounts
from test_e2e_metering import transcribe

from control_plane.config.parse import load_config
from testkit.gateway import ROOT, Gateway

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "whisper-gateway.json"
#: PromQL words that are not metric names.
_WORDS = {"sum", "by", "rate", "increase", "max", "min", "avg", "without", "on"}


def mounted(svc: dict[str, Any], target: str) -> Path:
    (source,) = [s for s, t in mounts(svc) if t == target]
    return (ROOT / "compose" / source).resolve()


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside {...}, [...] and by (...)."""
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|by \([^)]*\)", "", expr)
    return {w for w in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare) if w not in _WORDS}


def test_prometheus_scrapes_the_control_planes_admin_api() -> None:
    services = compose()["services"]
    prom, cp = services["prometheus"], services["control-plane"]
    assert prom["profiles"] == ["monitoring"] and services["grafana"]["profiles"] == ["monitoring"]
    conf = yaml.safe_load(mounted(prom, "/etc/prometheus/prometheus.yml").read_text())
    (job,) = conf["scrape_configs"]
    gateway_yaml = load_config(ROOT / "compose" / "gateway.yaml")
    (target,) = job["static_configs"][0]["targets"]
    assert target == f"control-plane:{gateway_yaml.admin.port}"
    assert str(gateway_yaml.admin.port) in [str(p) for p in cp["expose"]]
    assert job["metrics_path"] == "/router/metrics"
    # Published on loopback only.
    for name in ("prometheus", "grafana"):
        assert all(str(p).startswith("127.0.0.1:") for p in services[name]["ports"])


def test_grafana_provisions_the_dashboard_on_the_prometheus_source() -> None:
    grafana = compose()["services"]["grafana"]
    prov = mounted(grafana, "/etc/grafana/provisioning")
    (source,) = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((prov / "dashboards" / "whisper-gateway.yaml").read_text())[
        "providers"
    ]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert mounted(grafana, "/var/lib/grafana/dashboards") == DASHBOARD.parent
    dash = json.loads(DASHBOARD.read_text())
    assert dash["panels"] and all(
        t["datasource"]["uid"] == source["uid"] for p in dash["panels"] for t in p["targets"]
    )


def test_every_panel_queries_a_series_the_gateway_exports(gateway: Gateway) -> None:
    status, _ = asyncio.run(transcribe(gateway.url, TINY))
    assert status == 200
    with urllib.request.urlopen(f"{gateway.admin_url}/router/metrics", timeout=10) as r:
        text = r.read().decode()
    exported = set(re.findall(r"^# TYPE (\S+) (\w+)", text, re.M))
    names = {n for n, _ in exported} | {f"{n}_total" for n, kind in exported if kind == "counter"}
    wanted = {
        name
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for t in panel["targets"]
        for name in metric_names(t["expr"])
    }
    assert wanted and wanted <= names, sorted(wanted - names)
