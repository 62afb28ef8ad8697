"""Test hosts in network namespaces, joined to this host by a veth pair.

Addresses stay in the loopback range (127.0.N.1 here, 127.0.N.2 there), which
the kernel routes over a veth only with route_localnet; the root namespace's
setting is restored when the host is torn down.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=10)


def available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


@dataclass(frozen=True)
class NetnsHost:
    name: str
    host_if: str
    ns_if: str
    address: str  # the namespace's address, reachable from here

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def link_down(self) -> None:
        """The cable is pulled on our side: sends fail at once."""
        _run("ip", "link", "set", self.host_if, "down")

    def link_up(self) -> None:
        _run("ip", "link", "set", self.host_if, "up")

    def drop_packets(self) -> None:
        """The far side goes silent: packets leave and nothing comes back."""
        _run("ip", "netns", "exec", self.name, "ip", "link", "set", self.ns_if, "down")

    def restore_packets(self) -> None:
        _run("ip", "netns", "exec", self.name, "ip", "link", "set", self.ns_if, "up")


_SYSCTL = Path("/proc/sys/net/ipv4/conf")


@contextmanager
def netns_host(index: int) -> Iterator[NetnsHost]:
    """A namespace `wg<pid>n<index>` at 127.0.<10+index>.2."""
    tag = f"wg{os.getpid() % 100000}n{index}"
    net = f"127.0.{10 + index}"
    host = NetnsHost(tag, f"{tag}h", f"{tag}n", f"{net}.2")
    saved_all = (_SYSCTL / "all/route_localnet").read_text().strip()
    _run("ip", "netns", "add", tag)
    try:
        _run("ip", "link", "add", host.host_if, "type", "veth", "peer", "name", host.ns_if)
        _run("ip", "link", "set", host.ns_if, "netns", tag)
        _run("ip", "addr", "add", f"{net}.1/30", "dev", host.host_if)
        _run("ip", "link", "set", host.host_if, "up")
        (_SYSCTL / "all/route_localnet").write_text("1")
        (_SYSCTL / host.host_if / "route_localnet").write_text("1")
        ns = ["ip", "netns", "exec", tag]
        _run(*ns, "ip", "addr", "add", f"{net}.2/30", "dev", host.ns_if)
        _run(*ns, "ip", "link", "set", host.ns_if, "up")
        _run(*ns, "ip", "link", "set", "lo", "up")
        _run(
            *ns,
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.route_localnet=1",
            f"net.ipv4.conf.{host.ns_if}.route_localnet=1",
        )
        yield host
    finally:
        subprocess.run(["ip", "link", "del", host.host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", tag], capture_output=True, timeout=10)
        (_SYSCTL / "all/route_localnet").write_text(saved_all)
