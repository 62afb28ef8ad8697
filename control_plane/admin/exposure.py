"""The admin planes: Envoy's admin endpoint, xDS and the control plane's admin API.

Whoever reaches one can reconfigure or stop the gateway (push routes, drain every
backend, quit Envoy), and none of them asks who is calling. So each is on loopback by
default, xDS and the admin API may listen on a Unix socket instead (file permissions
decide who connects), xDS may require mutual TLS, and a plane open anywhere else is
reported loudly at start.
"""

from __future__ import annotations

import ipaddress

from control_plane.config.schema import UNIX_PLANES, GatewayConfig, HostPort
from control_plane.config.sockets import where

#: config field -> (what an operator calls it, what a stranger reaching it can do).
PLANES = {
    "envoy_admin": ("Envoy admin endpoint", "stop Envoy and read its whole config"),
    "xds": (
        "xDS server",
        "pose as an Envoy and be sent everything, the listener's private key and backend "
        "keys included, and feed the control plane false access logs",
    ),
    "admin": ("control-plane admin API", "drain every backend and read the fleet's state"),
}


def is_exposed(hp: HostPort) -> bool:
    """Open to other hosts: a TCP address other than loopback, with no mutual TLS."""
    remote = hp.unix_socket is None and not ipaddress.ip_address(hp.address).is_loopback
    return remote and hp.tls is None


def _remedy(name: str) -> str:
    """What this plane offers instead of an open port."""
    options = [f"bind `{name}.address` to 127.0.0.1"]
    options += [f"set `{name}.unix_socket`"] if name in UNIX_PLANES else []
    options += [f"set `{name}.tls` (mutual TLS)"] if name == "xds" else []
    options += ["let only trusted peers reach it (firewall, network policy)"]
    return ", ".join(options[:-1]) + " or " + options[-1]


def exposure_warnings(config: GatewayConfig) -> list[str]:
    """One loud line per plane open beyond loopback without mutual TLS."""
    return [
        f"SECURITY: the {label} (`{name}`) listens on {where(hp)}, not on loopback, "
        f"without TLS or authentication: anyone who reaches it can {risk}. "
        f"To close it, {_remedy(name)}."
        for name, (label, risk) in PLANES.items()
        if is_exposed(hp := getattr(config, name))
    ]
