"""A small PromQL evaluator for the queries router users run against /metrics.

Covers exactly what the router's Grafana dashboard and prometheus-adapter rules
use: an instant selector `name`, `sum(expr)`, and `sum|max by (labels) (expr)`.
Scraping adds the target labels (`namespace`, `job`) as Prometheus does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

Series = dict[tuple[tuple[str, str], ...], float]

_AGG = re.compile(r"^(sum|max)\s*(?:by\s*\(([^)]*)\))?\s*\((.*)\)$", re.S)


def scrape(text: str, target: Mapping[str, str]) -> dict[str, Series]:
    out: dict[str, Series] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = {**s.labels, **target}
            out.setdefault(s.name, {})[tuple(sorted(labels.items()))] = s.value
    return out


def evaluate(query: str, data: dict[str, Series]) -> Series:
    q = query.strip()
    m = _AGG.match(q)
    if m is None:
        if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", q):
            raise ValueError(f"unsupported query: {q}")
        return dict(data.get(q, {}))
    op, by, inner = m.group(1), m.group(2), m.group(3)
    keep = [b.strip() for b in by.split(",")] if by else []
    groups: dict[tuple[tuple[str, str], ...], list[float]] = {}
    for labels, value in evaluate(inner, data).items():
        key = tuple((k, v) for k, v in labels if k in keep)
        groups.setdefault(key, []).append(value)
    fold = sum if op == "sum" else max
    return {k: float(fold(v)) for k, v in groups.items()}


# The router's dashboard panels and adapter rules (production-stack a6c01db).
DASHBOARD = [
    "sum(max by (server) (vllm:healthy_pods_total))",
    "vllm:current_qps",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "router_cpu_usage_percent",
    "router_memory_usage_percent",
    "router_disk_usage_percent",
]
ADAPTER_FILE = (
    Path(__file__).resolve().parents[1] / "k8s" / "monitoring" / "prometheus-adapter.yaml"
)


def adapter_rules() -> list[dict[str, Any]]:
    """The rules the Kubernetes example installs in prometheus-adapter."""
    doc = yaml.safe_load(ADAPTER_FILE.read_text())
    return list(yaml.safe_load(doc["data"]["config.yaml"])["externalRules"])


ADAPTER = [r["metricsQuery"] for r in adapter_rules()]
