"""Child processes kept alive: a child that exits is restarted, never the stack stopped.

Each child has its own watcher task: on an exit nobody asked for it logs the
exit code and starts the child again after a backoff that doubles from
BACKOFF_START_S up to BACKOFF_MAX_S and resets once the child has stayed up
for STABLE_S. A child that exits CRASH_LOOP_EXITS times within
CRASH_LOOP_WINDOW_S is reported as crash-looping on every further exit (and
in supervisor.json), and still retried. Stopping goes in reverse start order:
SIGTERM, a grace period, then SIGKILL.

Each child leads a process group of its own, and the group is what gets stopped
and reaped: a vLLM server is an API server with an engine core and a worker
under it, and when the API server dies those two live on holding gigabytes, so
a restart without reaping would double the memory. Before a restart, whatever
the dead child left in its group is ended (SIGTERM, then SIGKILL); the group id
is the child's own pid, which the kernel does not reuse while the group has members.

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
# What a dead child left in its group gets this long after SIGTERM (vLLM's engine core
# exits within a second of its parent's death when it notices).
REAP_GRACE_S = 5.0


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    # How long `make up` waits for it to answer before saying it is not ready (it keeps
    # starting meanwhile): a vLLM server loads for about a minute, after a first-use install.
    ready_timeout_s: float = 180.0


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


def signal_group(pgid: int, sig: int) -> bool:
    """Signal every process in the group; False when the group has no member left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed user: it is not ours to end
        return False
    return True


def _collect_zombies(pgid: int) -> None:
    """Where we are PID 1 (a container), the group's orphans are our children: wait for them."""
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


async def reap_group(pgid: int, grace_s: float = REAP_GRACE_S) -> bool:
    """End what is left of a process group: SIGTERM, up to grace_s, then SIGKILL.

    True when something was left (the caller says so in the log)."""
    if not signal_group(pgid, signal.SIGTERM):
        return False
    loop = asyncio.get_running_loop()
    for sig_after, wait_s in ((signal.SIGKILL, grace_s), (None, grace_s)):
        deadline = loop.time() + wait_s
        while loop.time() < deadline:
            _collect_zombies(pgid)
            if not signal_group(pgid, 0):
                return True
            await asyncio.sleep(0.05)
        if sig_after is not None:
            signal_group(pgid, sig_after)
    return True


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
            pgid = child.proc.pid
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
            if await reap_group(pgid):
                say(f"{child.spec.name} left processes in its group {pgid}; ended them", True)
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
        procs = [c.proc for c in reversed(children) if c.proc is not None]
        for p in procs:
            if p.returncode is None:
                signal_group(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), STOP_GRACE_S)
            except TimeoutError:
                signal_group(p.pid, signal.SIGKILL)
                await p.wait()
            await reap_group(p.pid)  # what the leader left behind
        await asyncio.gather(
            *(c.watcher for c in children if c.watcher is not None), return_exceptions=True
        )
