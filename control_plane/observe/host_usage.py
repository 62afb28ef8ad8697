"""The router's /metrics, in its names, from Envoy's stats, the access log and the probes.

What a router user's dashboard and autoscaler read (`vllm:*` with `server` the
backend URL), computed here:

- `vllm:healthy_pods_total{server}`: 1 when the probes find the endpoint healthy;
- `vllm:current_qps`, `vllm:avg_latency{server}`: the access log over the window;
- `vllm:num_requests_running{server}`: Envoy's requests active on that host;
- `vllm:num_requests_waiting{server}`: the backend's own waiting count (when it
  exports one) plus the requests Envoy holds for its model, shared evenly
  between that model's healthy endpoints (so a sum over servers is the total);
- `vllm:num_incoming_requests_total{model}`, `vllm:request_errors_total`,
  `vllm:request_latency_seconds`: the access log;
- `router_{cpu,memory,disk}_usage_percent`: this host.

LLM-only series (token counts, prefix cache, ITL) are left out. Live values are
read from the local Envoy's admin and each backend's /metrics at scrape time,
with a short timeout each: a scrape never waits on a hung backend for long.
"""

from __future__ import annotations

import os
from pathlib import Path


class HostUsage:
    """CPU, memory and disk use of this host, in percent (CPU between two readings)."""

    def __init__(self, root: str = "/") -> None:
        self.root = root
        self._last: tuple[int, int] | None = None

    def cpu(self) -> float:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle, total = fields[3] + fields[4], sum(fields)
        last, self._last = self._last, (idle, total)
        if last is None or total == last[1]:
            return 100.0 * (1 - idle / total) if total else 0.0
        return 100.0 * (1 - (idle - last[0]) / (total - last[1]))

    def memory(self) -> float:
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            k, _, v = line.partition(":")
            info[k] = int(v.split()[0])
        return 100.0 * (1 - info["MemAvailable"] / info["MemTotal"])

    def disk(self) -> float:
        st = os.statvfs(self.root)
        return 100.0 * (1 - st.f_bavail / st.f_blocks) if st.f_blocks else 0.0
