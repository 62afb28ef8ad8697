"""The whole gateway as users start it (`make up`, `whisper-gateway`), read line by line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testkit.procs import ROOT

WHISPER_GATEWAY = str(ROOT / ".venv" / "bin" / "whisper-gateway")


class Tree:
    """A command started in its own process group, read line by line."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        self.out = log.open("wb")
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} not seen:\n{self.text()[-3000:]}")

    def run_dir(self) -> Path:
        m = re.search(r"starting; logs in (\S+)", self.text())
        assert m, self.text()
        return Path(m.group(1))

    def children(self) -> dict[str, Any]:
        return dict(json.loads((self.run_dir() / "supervisor.json").read_text()))

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM, as Ctrl-C. Only a supervisor that did not stop in time is killed,
        with its children's groups (each child leads its own), so a test still sees
        whether the supervisor itself stopped them."""
        try:
            groups = [c["pid"] for c in self.children().values() if c.get("pid")]
        except (AssertionError, OSError, ValueError):
            groups = []
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pgid in (self.proc.pid, *groups):
                    try:
                        os.killpg(pgid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                self.proc.wait()
        self.out.close()


def curl(*args: str, timeout: float = 60) -> tuple[int, str]:
    """(status, body) of one curl run; status 0 when curl got no answer."""
    proc = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `cond` until true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
