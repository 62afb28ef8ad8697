"""The process supervisor: a child that exits is restarted, a crash loop is reported,
and stopping ends every child it started. The children are real processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest

from gateway_supervisor.supervisor import CRASH_LOOP_EXITS, ChildSpec, Supervisor

SLEEPER = (sys.executable, "-c", "import time; time.sleep(3600)")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def until(cond: object, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_killed_child_is_restarted_others_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sup = Supervisor(tmp_path, backoff_start_s=0.05)
    a = await sup.start(ChildSpec("a", SLEEPER))
    b = await sup.start(ChildSpec("b", SLEEPER))
    first_a, first_b = a.pid, b.pid
    assert first_a is not None and first_b is not None
    try:
        os.kill(first_a, 9)
        await until(lambda: a.starts == 2)
        assert a.pid != first_a and alive(a.pid)  # type: ignore[arg-type]
        assert b.pid == first_b and alive(first_b), "the other child is left alone"
        assert a.last_exit_code == -9
        status = json.loads((tmp_path / "supervisor.json").read_text())
        assert status["a"]["starts"] == 2 and status["a"]["last_exit_code"] == -9
        out = capsys.readouterr()
        assert "a exited with code -9; restart in 0.05 s" in out.err
        assert f"restarted a (pid {a.pid})" in out.out
    finally:
        await sup.stop()
    assert not alive(a.pid) and not alive(first_b)  # type: ignore[arg-type]


async def test_crash_loop_is_reported_and_still_retried(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sup = Supervisor(tmp_path, backoff_start_s=0.01, backoff_max_s=0.02)
    crasher = await sup.start(ChildSpec("crasher", (sys.executable, "-c", "raise SystemExit(3)")))
    try:
        await until(lambda: crasher.starts > CRASH_LOOP_EXITS + 1)
        assert crasher.crash_looping
        assert crasher.last_exit_code == 3
        err = capsys.readouterr().err
        assert f"crasher keeps crashing ({CRASH_LOOP_EXITS} exits in" in err
        assert json.loads((tmp_path / "supervisor.json").read_text())["crasher"]["crash_looping"]
    finally:
        await sup.stop()


async def test_backoff_doubles_up_to_the_cap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sup = Supervisor(tmp_path, backoff_start_s=0.05, backoff_max_s=0.2)
    c = await sup.start(ChildSpec("c", (sys.executable, "-c", "pass")))
    try:
        await until(lambda: c.starts >= 5)
    finally:
        await sup.stop()
    delays = re.findall(r"restart in ([0-9.]+) s|retrying in ([0-9.]+) s", capsys.readouterr().err)
    chosen = [float(a or b) for a, b in delays][:4]
    assert chosen == [0.05, 0.1, 0.2, 0.2], chosen  # doubling, then capped


async def test_stop_ends_a_child_that_ignores_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway_supervisor.supervisor.STOP_GRACE_S", 0.5)
    stubborn = (
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)",
    )
    sup = Supervisor(tmp_path)
    c = await sup.start(ChildSpec("stubborn", stubborn))
    await asyncio.sleep(0.3)  # let it install its handler
    await sup.stop()
    assert c.pid is not None and not alive(c.pid)
    assert c.starts == 1, "a stopping supervisor does not restart"


# A parent that starts a grandchild in its own process group and prints its pid, as
# vLLM's API server starts its engine core and worker.
FAMILY = (
    sys.executable,
    "-c",
    "import subprocess, sys, time\n"
    "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])\n"
    "print(g.pid, flush=True)\n"
    "time.sleep(3600)\n",
)


def _grandchild(log: Path, nth: int) -> int:
    pids = log.read_text().split() if log.exists() else []
    return int(pids[nth]) if len(pids) > nth else 0


async def test_a_killed_childs_group_is_reaped_before_the_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sup = Supervisor(tmp_path, backoff_start_s=0.05)
    c = await sup.start(ChildSpec("family", FAMILY))
    log = tmp_path / "family.log"
    try:
        await until(lambda: _grandchild(log, 0))
        orphan, leader = _grandchild(log, 0), c.pid
        assert leader is not None and os.getpgid(orphan) == leader
        os.kill(leader, 9)  # the grandchild lives on, as vLLM's engine core does
        await until(lambda: _grandchild(log, 1))
        assert not alive(orphan), "the old group is gone before the new one starts"
        assert alive(_grandchild(log, 1))
        assert f"family left processes in its group {leader}; ended them" in capsys.readouterr().err
    finally:
        await sup.stop()
    assert not alive(_grandchild(log, 1)), "stopping ends the whole group, not only its leader"
