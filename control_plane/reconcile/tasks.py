"""Supervised background tasks: nothing dies silently.

Every long-running coroutine of the control plane is started here. One that
raises is logged with its traceback and started again after a backoff that
doubles up to a cap; its state (running, restarts, last error) is what
/status and /metrics show.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("control_plane.tasks")


BACKOFF_START_S = 0.1


BACKOFF_MAX_S = 10.0


@dataclass
class TaskInfo:
    name: str
    state: str = "starting"  # running | backoff | finished | stopped
    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    started_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }


class SupervisedTasks:
    def __init__(
        self, backoff_start_s: float = BACKOFF_START_S, backoff_max_s: float = BACKOFF_MAX_S
    ) -> None:
        self.info: dict[str, TaskInfo] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._backoff = (backoff_start_s, backoff_max_s)

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run `factory()` until it returns; restart it whenever it raises."""
        if name in self._tasks:
            raise ValueError(f"task {name!r} already running")
        info = TaskInfo(name)
        self.info[name] = info
        self._tasks[name] = asyncio.create_task(self._run(info, factory), name=name)

    async def _run(self, info: TaskInfo, factory: Callable[[], Awaitable[None]]) -> None:
        delay, cap = self._backoff
        while True:
            info.state = "running"
            try:
                await factory()
            except asyncio.CancelledError:
                info.state = "stopped"
                raise
            except Exception as e:
                info.restarts += 1
                info.last_error = f"{type(e).__name__}: {e}"
                info.last_error_at = time.time()
                info.state = "backoff"
                log.exception(
                    "task %s failed (restart %d in %.1f s)", info.name, info.restarts, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, cap)
                continue
            info.state = "finished"
            return

    def snapshot(self) -> list[dict[str, Any]]:
        return [i.to_dict() for i in self.info.values()]

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
