"""Probe targets from the fleet's state: one (endpoint, model) each, with the TLS and key
that Envoy uses for the same backend."""

from __future__ import annotations

import functools
import os
import ssl
import tempfile
from pathlib import Path

from control_plane.config.sockets import is_ip
from control_plane.ir.fleet import FleetState, target_key
from control_plane.ir.model import (
    HealthKey,
    UpstreamTls,
    endpoint_key,
)
from health import HealthSettings, ProbeTarget


@functools.lru_cache(maxsize=8)
def probe_ssl(tls: UpstreamTls) -> ssl.SSLContext:
    """The probes trust what Envoy trusts for https backends (one context per value,
    so unchanged targets compare equal)."""
    ctx = ssl.create_default_context(cadata=tls.ca_pem.decode() if tls.ca_pem else None)
    if tls.cert_pem is not None and tls.key_pem is not None:
        # load_cert_chain reads files only: a private temporary copy, removed at once.
        with tempfile.TemporaryDirectory() as d:
            cert, key = Path(d, "cert.pem"), Path(d, "key.pem")
            cert.write_bytes(tls.cert_pem)
            key.write_bytes(tls.key_pem)
            ctx.load_cert_chain(cert, key)
    return ctx


def probe_targets(state: FleetState) -> dict[str, tuple[HealthKey, ProbeTarget]]:
    """Every (endpoint, model) of a probed backend; the first backend naming a pair wins."""
    out: dict[str, tuple[HealthKey, ProbeTarget]] = {}
    for b in state.spec.backends:
        p = b.probe
        if p is None:
            continue
        settings = HealthSettings(
            interval_s=p.interval_s,
            timeout_s=p.timeout_s,
            healthy_threshold=p.healthy_threshold,
            unhealthy_threshold=p.unhealthy_threshold,
            expected_word=p.expected_word,
            language=p.language,
        )
        scheme = "https" if b.tls else "http"
        api_key = _env(b.api_key_env)
        tls = probe_ssl(state.security.upstream_tls) if b.tls else None
        for address in state.resolved.get(b.url, ()):
            ep = endpoint_key(address, b.port)
            host = f"[{address}]" if ":" in address else address
            for m in b.models:
                key = target_key(ep, m)
                if key in out:
                    continue
                target = ProbeTarget(
                    key=key,
                    base_url=f"{scheme}://{host}:{b.port}",
                    models=(m,),
                    api_key=api_key,
                    settings=settings,
                    ssl_context=tls,
                    server_hostname=None if is_ip(b.host) or not b.tls else b.host,
                )
                out[key] = ((ep, m), target)
    return out


def _env(name: str | None) -> str | None:
    return os.environ.get(name) if name else None
