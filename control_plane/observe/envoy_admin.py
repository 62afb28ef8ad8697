"""A client of the local Envoy's admin endpoint: what Envoy holds per host and cluster now.

Read at the time of asking, with a short timeout: a scrape or a `/backends` call
never waits long on an Envoy that is away.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

TIMEOUT_S = 1.0


async def get_text(
    session: aiohttp.ClientSession, url: str, timeout_s: float = TIMEOUT_S
) -> str | None:
    """The body of a 200 answer; None for anything else (an error, a timeout, no answer)."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            return await r.text() if r.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
        return None


def parse_envoy_clusters(data: Any) -> dict[str, float]:
    """`/clusters?format=json` -> endpoint key -> rq_active, summed over clusters."""
    running: dict[str, float] = {}
    for c in data.get("cluster_statuses", []):
        for h in c.get("host_statuses", []):
            sa = h.get("address", {}).get("socket_address", {})
            if "address" not in sa:
                continue
            addr = sa["address"]
            key = f"[{addr}]:{sa['port_value']}" if ":" in addr else f"{addr}:{sa['port_value']}"
            for st in h.get("stats", []):
                if st.get("name") == "rq_active":
                    running[key] = running.get(key, 0.0) + float(st.get("value", 0))
    return running


def parse_envoy_pending(data: Any) -> dict[str, float]:
    """`/stats?format=json` -> cluster -> upstream_rq_pending_active."""
    out = {}
    for st in data.get("stats", []):
        name = str(st.get("name", ""))
        if name.startswith("cluster.") and name.endswith(".upstream_rq_pending_active"):
            out[name[len("cluster.") : -len(".upstream_rq_pending_active")]] = float(st["value"])
    return out


async def read_running(session: aiohttp.ClientSession, envoy_admin: str) -> dict[str, float]:
    """Requests Envoy has active on each endpoint now ({} when its admin is away)."""
    clusters = await get_text(session, f"{envoy_admin}/clusters?format=json")
    return parse_envoy_clusters(json.loads(clusters)) if clusters else {}


async def read_pending(session: aiohttp.ClientSession, envoy_admin: str) -> dict[str, float]:
    """Requests Envoy holds per cluster, waiting for a connection ({} when away)."""
    stats = await get_text(
        session, f"{envoy_admin}/stats?format=json&filter=upstream_rq_pending_active"
    )
    return parse_envoy_pending(json.loads(stats)) if stats else {}


async def read_envoy_running(envoy_admin: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as s:
        return await read_running(s, envoy_admin)
