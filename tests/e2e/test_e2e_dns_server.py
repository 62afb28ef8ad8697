"""DNS discovery against a real DNS server whose records change during the test.

Everything runs inside a network namespace this test creates: a DNS server
(testkit/dns_server.py, dnslib, UDP on 127.0.0.1:53) that the
namespace's resolv.conf names, FAKE slow backends on 127.0.0.2-4 (one port),
the control plane (the system resolver, getaddrinfo, as in production) and
the real Envoy; the client is curl in the same namespace. The backend is
`http://fleet.test:PORT`: every address the name has is an endpoint.

Checked: an added address gets traffic only after its first good probe; a
removed one leaves EDS while requests already on it finish (200).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane.config.parse import parse_config
from control_plane.xds.bootstrap import build_bootstrap, envoy_command
from testkit import netns
from testkit.procs import PYTHON, ROOT, Proc, free_port

pytestmark = pytest.mark.skipif(not netns.available(), reason="needs root and iproute2")

MODEL = "fake/slow"
DELAY_S = 4.0
PORT = 9100


def run(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"wgdns{os.getpid() % 100000}"
    etc = Path("/etc/netns") / name
    run("ip", "netns", "add", name).check_returncode()
    try:
        run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up").check_returncode()
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:2\n")
        yield name
    finally:
        (etc / "resolv.conf").unlink(missing_ok=True)
        if etc.exists():
            etc.rmdir()
        run("ip", "netns", "del", name)


def in_ns(ns: str, name: str, argv: list[str], log_dir: Path) -> Proc:
    return Proc(name, ["ip", "netns", "exec", ns, *argv], log_dir / f"{name}.log").start()


def curl_json(ns: str, url: str) -> Any:
    proc = run("ip", "netns", "exec", ns, "curl", "-sS", "--max-time", "5", url)
    proc.check_returncode()
    return json.loads(proc.stdout)


def wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = cond()
            if last:
                return last
        except (subprocess.CalledProcessError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {last}")


def start_requests(ns: str, url: str, n: int, out: Path) -> subprocess.Popen[bytes]:
    """n concurrent requests by curl in the namespace; per line: status, backend."""
    script = (
        f"for i in $(seq {n}); do curl -s -o /dev/null -D - --max-time 30 "
        f"-F file=@{ROOT}/tests/fixtures/hello.wav -F model={MODEL} "
        f"{url}/v1/audio/transcriptions | awk '/^HTTP/{{s=$2}} "
        'tolower($1)=="x-gateway-backend:"{b=$2} END{print s, b}\' & done; wait'
    )
    return subprocess.Popen(["ip", "netns", "exec", ns, "sh", "-c", script], stdout=out.open("wb"))


def results(path: Path) -> list[tuple[str, str]]:
    return [
        (line.split()[0], line.split()[1].strip() if len(line.split()) > 1 else "")
        for line in path.read_text().splitlines()
        if line.strip()
    ]


def test_records_change_added_get_traffic_removed_drain(ns: str, tmp_path: Path) -> None:
    records = tmp_path / "records.json"

    def set_records(*addrs: str) -> None:
        tmp = records.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fleet.test": list(addrs)}))
        tmp.replace(records)

    set_records("127.0.0.2", "127.0.0.3")
    doc = {
        "listener": {"address": "127.0.0.1", "port": 8000},
        "health": {"interval_s": 1.0, "timeout_s": 10.0, "healthy_threshold": 1},
        "dns_refresh_s": 1.0,
        "backends": [{"url": f"http://fleet.test:{PORT}", "models": [MODEL]}],
        "edge": {"backend_header": True},  # which address served each request
    }
    cfg = parse_config(doc)
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(doc))
    bootstrap = tmp_path / "bootstrap.json"
    bootstrap.write_text(json.dumps(build_bootstrap(cfg)))
    procs: list[Proc] = []
    try:
        procs.append(
            in_ns(ns, "dns", [PYTHON, f"{ROOT}/testkit/dns_server.py", "--records",
                              str(records)], tmp_path)
        )  # fmt: skip
        for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            argv = [PYTHON, f"{ROOT}/testkit/fake_backend.py", "--mode", "slow",
                    "--delay", str(DELAY_S), "--host", host, "--port", str(PORT)]  # fmt: skip
            procs.append(in_ns(ns, f"fake-{host}", argv, tmp_path))
        procs.append(
            in_ns(ns, "control-plane", [PYTHON, "-m", "control_plane", "--config",
                                        str(tmp_path / "gateway.yaml")], tmp_path)
        )  # fmt: skip
        envoy = envoy_command(cfg, bootstrap, drain_time_s=1)
        procs.append(in_ns(ns, "envoy", envoy, tmp_path))
        admin, url = "http://127.0.0.1:19000", "http://127.0.0.1:8000"

        def health() -> dict[str, str]:
            return {b["endpoint"]: b["health"] for b in curl_json(ns, f"{admin}/backends")}

        two, three, four = (f"127.0.0.{i}:{PORT}" for i in (2, 3, 4))
        wait(lambda: health() == {two: "HEALTHY", three: "HEALTHY"}, 40, "both named addresses")
        ready = ["ip", "netns", "exec", ns, "curl", "-s", "http://127.0.0.1:9901/ready"]
        wait(lambda: run(*ready).stdout.strip() == "LIVE", 30, "Envoy LIVE")
        first = tmp_path / "first.txt"
        start_requests(ns, url, 6, first).wait(60)
        assert {s for s, _ in results(first)} == {"200"}, results(first)
        assert {b for _, b in results(first)} == {two, three}

        # In flight on both, the name now answers .3 and .4: .2 leaves, .4 joins.
        during = tmp_path / "during.txt"
        inflight = start_requests(ns, url, 6, during)
        time.sleep(1.0)
        set_records("127.0.0.3", "127.0.0.4")
        wait(lambda: two not in health(), 10, ".2 removed from the endpoints")
        removed_at = time.monotonic()
        inflight.wait(60)
        finished_at = time.monotonic()
        got = results(during)
        assert [s for s, _ in got] == ["200"] * 6, got
        assert any(b == two for _, b in got), f"a request was on .2 when it left: {got}"
        assert all(b != four for _, b in got), "no traffic to .4 before it existed and passed"
        assert finished_at > removed_at, "those requests finished after .2 left EDS"

        wait(lambda: health() == {three: "HEALTHY", four: "HEALTHY"}, 30, ".4 probed in")
        probes = {b["endpoint"]: b["probe"] for b in curl_json(ns, f"{admin}/backends")}
        assert probes[four]["probes_total"] >= 1 and probes[four]["last_error"] is None
        after = tmp_path / "after.txt"
        start_requests(ns, url, 6, after).wait(60)
        assert {s for s, _ in results(after)} == {"200"}
        assert {b for _, b in results(after)} == {three, four}, results(after)
    finally:
        for p in reversed(procs):
            p.stop()
