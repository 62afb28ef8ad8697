"""The unit tier: no server and no network, so the whole tier runs in seconds.

Enforced, not just hoped for: a unit test that binds or connects a socket, or starts
a program other than the short-lived tools below, fails and says so (such a test
belongs in tests/e2e/). The tools: the Lua interpreter and compiler (the filters'
source), `envoy --mode validate` (Envoy checks a config and exits), `python -c`, and
`python -m control_plane check|bootstrap|--dry-run` (they read a config, print, exit).
"""

from __future__ import annotations

import os
import socket
import subprocess
from typing import Any

import pytest

LUA_TOOLS = frozenset({"lua5.1", "luajit", "lua", "luac5.1", "luac"})


def _allowed(argv: list[str]) -> bool:
    prog = os.path.basename(argv[0])
    if prog in LUA_TOOLS:
        return True
    if prog == "envoy":
        return "--mode" in argv and "validate" in argv
    if not prog.startswith("python"):
        return False
    if argv[1:2] == ["-c"]:
        return True
    # The control plane's own tools: they read a config, print and exit.
    tool = argv[3:4] in (["check"], ["bootstrap"]) or "--dry-run" in argv
    return argv[1:3] == ["-m", "control_plane"] and tool


@pytest.fixture(autouse=True)
def _no_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: socket.socket, address: Any, *args: Any) -> Any:
        raise AssertionError(f"a unit test opened a socket ({address!r}): move it to tests/e2e/")

    for name in ("bind", "connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    real_init = subprocess.Popen.__init__

    def popen(self: subprocess.Popen[Any], args: Any, *rest: Any, **kw: Any) -> None:
        given = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
        argv = [os.fsdecode(a) for a in given]
        if not _allowed(argv):
            raise AssertionError(f"a unit test started {argv[:3]}: move it to tests/e2e/")
        real_init(self, args, *rest, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", popen)
