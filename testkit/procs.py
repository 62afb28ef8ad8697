"""Start and stop the real processes the tests drive (backends, control plane, Envoy).

Every process is started here and ended by its own pid, never by name.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
PYTHON = sys.executable


#: Ports already handed out in this run: the kernel may offer a just-closed port again, and
#: two of one config's ports alike make the control plane refuse it (seen in CI).
_ISSUED: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _ISSUED:
            _ISSUED.add(port)
            return port


#: Every process started here, so none outlives the run that started it (stop_all).
_STARTED: list[Proc] = []


@dataclass(eq=False)  # identity: two runs of one command are two processes
class Proc:
    """A child process with its log file, stopped by pid."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    #: A server of several processes (vLLM: API server, engine core, worker): started in
    #: a process group of its own, and stopped as a group, so no child lives on.
    group: bool = False

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.popen = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=self.group,
        )
        log.close()
        _STARTED.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def _kill(self, sig: int) -> None:
        if self.group:
            os.killpg(self.pid, sig)  # the group's id is the leader's pid
        else:
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None:
            return
        if self in _STARTED:
            _STARTED.remove(self)
        if self.popen.poll() is None or self.group:
            # A stopped (SIGSTOP) process must be continued to see SIGTERM.
            for sig in (signal.SIGCONT, signal.SIGTERM):
                try:
                    self._kill(sig)
                except ProcessLookupError:
                    break
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill(signal.SIGKILL)
                self.popen.wait(5)
            if self.group:  # children that outlived their leader
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


def stop_all() -> None:
    """Stop every process this run started that still runs: a fixture that failed half
    way, or a test cut short, leaves nothing behind (tests/conftest.py, atexit)."""
    while _STARTED:
        _STARTED.pop().stop()


atexit.register(stop_all)


def wait_http(url: str, timeout: float = 60.0, proc: Proc | None = None, status: int = 200) -> None:
    """Wait until GET url answers `status`; fail early if proc died."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == status:
                    return
                last = f"status {r.status}"
        except urllib.error.HTTPError as e:
            if e.code == status:
                return
            last = f"status {e.code}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.1)
    tail = proc.log_tail() if proc else ""
    raise TimeoutError(f"{url} not ready after {timeout}s ({last})\n{tail}")


def start_backend(
    log_dir: Path,
    port: int | None = None,
    model: str = "openai/whisper-tiny.en",
    host: str = "127.0.0.1",
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> tuple[Proc, int]:
    """A real whisper_backend process serving `model`; waits for /health 200."""
    port = port or free_port(host)
    proc = Proc(
        name=f"backend-{port}",
        argv=[
            PYTHON,
            "-m",
            "whisper_backend",
            "--model",
            model,
            "--host",
            host,
            "--port",
            str(port),
            *extra,
        ],
        log_path=log_dir / f"backend-{port}.log",
        env=env or {},
    ).start()
    if wait:
        wait_http(f"http://{host}:{port}/health", timeout=120, proc=proc)
    return proc, port


def start_fake(
    log_dir: Path, mode: str, *args: str, host: str = "127.0.0.1", port: int | None = None
) -> tuple[Proc, int]:
    """A FAKE backend producing a fault on demand (testkit/fake_backend.py)."""
    port = port or free_port(host)
    proc = Proc(
        f"fake-{mode}-{port}",
        [
            PYTHON,
            str(ROOT / "testkit/fake_backend.py"),
            "--mode",
            mode,
            "--host",
            host,
            "--port",
            str(port),
            *args,
        ],
        log_dir / f"fake-{mode}-{host}-{port}.log",
    ).start()
    wait_http(f"http://{host}:{port}/health", timeout=20, proc=proc)
    return proc, port
