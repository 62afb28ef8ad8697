"""Child processes kept alive: a child that exits is restarted, never the stack stopped.

Each child has its own watcher task: on an exit nobody asked for it logs the
exit code and starts the child again after a backoff that doubles from
BACKOFF_START_S up to BACKOFF_MAX_S and resets once the child has stayed up
for STABLE_S. A child that exits CRASH_LOOP_EXITS times within
CRASH_LOOP_WINDOW_S is reported as crash-looping on every further exit (and
in supervisor.json), and still retried. Stopping goes in reverse start order:
SIGTERM, a grace period, then SIGKILL, each child by its own pid.

Hand-written rather than supervisord or circus: the loop is ~100 lines of
asyncio, needs no config language or daemon, and lives in the same event
loop as the readiness checks that order the start.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_S = 30.0
CRASH_LOOP_EXITS = 5
CRASH_LOOP_WINDOW_S = 60.0
STOP_GRACE_S = 15.0


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Child:
    spec: ChildSpec
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    exits: deque[float] = field(default_factory=lambda: deque(maxlen=CRASH_LOOP_EXITS))
    last_exit_code: int | None = None
    crash_looping: bool = False
    watcher: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


def say(message: str, err: bool = False) -> None:
    print(f"whisper-gateway: {message}", file=sys.stderr if err else sys.stdout, flush=True)


class Supervisor:
    def __init__(
        self,
        log_dir: Path,
        *,
        backoff_start_s: float = BACKOFF_START_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        stable_s: float = STABLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log_dir = log_dir
        self.children: dict[str, Child] = {}
        self._backoff = (backoff_start_s, backoff_max_s)
        self._stable_s = stable_s
        self._clock = clock
        self._stopping = False

    async def start(self, spec: ChildSpec) -> Child:
        child = Child(spec)
        self.children[spec.name] = child
        await self._spawn(child)
        child.watcher = asyncio.create_task(self._watch(child), name=f"watch-{spec.name}")
        return child

    async def _spawn(self, child: Child) -> None:
        log_path = self.log_dir / f"{child.spec.name}.log"
        with log_path.open("ab") as log:
            child.proc = await asyncio.create_subprocess_exec(
                *child.spec.argv,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **child.spec.env},
                start_new_session=True,  # Ctrl-C reaches us; we stop children in order
            )
        child.starts += 1
        verb = "started" if child.starts == 1 else "restarted"
        say(f"{verb} {child.spec.name} (pid {child.proc.pid}), log {log_path}")
        self._write_status()

    async def _watch(self, child: Child) -> None:
        delay = self._backoff[0]
        while True:
            assert child.proc is not None
            started = self._clock()
            code = await child.proc.wait()
            if self._stopping:
                return
            now = self._clock()
            if now - started >= self._stable_s:
                delay = self._backoff[0]
            child.last_exit_code = code
            child.exits.append(now)
            child.crash_looping = (
                len(child.exits) == CRASH_LOOP_EXITS and now - child.exits[0] <= CRASH_LOOP_WINDOW_S
            )
            if child.crash_looping:
                say(
                    f"{child.spec.name} keeps crashing ({CRASH_LOOP_EXITS} exits in "
                    f"{now - child.exits[0]:.0f} s, last code {code}); see "
                    f"{self.log_dir / (child.spec.name + '.log')}; retrying in {delay:g} s",
                    err=True,
                )
            else:
                say(f"{child.spec.name} exited with code {code}; restart in {delay:g} s", True)
            self._write_status()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])
            if self._stopping:
                return
            await self._spawn(child)

    def _write_status(self) -> None:
        status = {
            name: {
                "pid": c.pid,
                "starts": c.starts,
                "last_exit_code": c.last_exit_code,
                "crash_looping": c.crash_looping,
            }
            for name, c in self.children.items()
        }
        path = self.log_dir / "supervisor.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=2))
        tmp.replace(path)

    async def stop(self) -> None:
        """SIGTERM in reverse start order, up to STOP_GRACE_S each, then SIGKILL."""
        self._stopping = True
        children = list(self.children.values())
        for c in children:
            if c.watcher is not None:
                c.watcher.cancel()
        running = [c.proc for c in reversed(children) if c.proc and c.proc.returncode is None]
        for p in running:
            p.send_signal(signal.SIGTERM)
        for p in running:
            try:
                await asyncio.wait_for(p.wait(), STOP_GRACE_S)
            except TimeoutError:
                p.kill()
                await p.wait()
        await asyncio.gather(
            *(c.watcher for c in children if c.watcher is not None), return_exceptions=True
        )
