"""Addresses as the config gives them: an IP literal or a host name, a gRPC target
(`host:port` or `unix:/path`), and the permissions of a plane's Unix socket."""

from __future__ import annotations

import ipaddress
import os

from control_plane.config.schema import HostPort


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


#: Owner and group may connect (Envoy in a container sharing the group); others not.
SOCKET_MODE = 0o660


def where(hp: HostPort) -> str:
    """A plane's address as a gRPC target reads it: `unix:/path` or `host:port`."""
    if hp.unix_socket is not None:
        return f"unix:{hp.unix_socket}"
    host = f"[{hp.address}]" if ":" in hp.address else hp.address
    return f"{host}:{hp.port}"


def local_url(scheme: str, hp: HostPort) -> str:
    """Where a process on this host reaches a listener bound at `hp`: a wildcard address
    on its own family's loopback (0.0.0.0 on 127.0.0.1, :: on ::1), IPv6 in brackets."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(hp.address, hp.address)
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{hp.port}"


def restrict_socket(path: str) -> None:
    """Give a freshly bound Unix socket SOCKET_MODE, whatever the umask was."""
    os.chmod(path, SOCKET_MODE)
