"""This host's CPU, memory and disk use: the router's `router_*_usage_percent`."""

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
