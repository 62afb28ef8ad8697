"""What the admin API and the golden files show of a snapshot: every type as JSON, with
private keys, client API keys and injected Authorization headers masked."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from control_plane.xds.cache.snapshot import Snapshot
from control_plane.xds.resource import PUSH_ORDER, SHORT_NAMES

REDACTED = "[redacted]"


def redact(value: Any) -> Any:
    """Private keys, client API keys and injected Authorization headers masked: the
    admin API and files show what Envoy holds, never a secret."""
    if isinstance(value, list):
        return [redact(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for k, v in value.items():
        if k == "private_key":
            out[k] = REDACTED
        elif k == "credentials" and isinstance(v, list):
            out[k] = [{**c, "key": REDACTED} if isinstance(c, dict) else c for c in v]
        else:
            out[k] = redact(v)
    if str(out.get("key", "")).lower() in ("authorization", "x-api-key") and "value" in out:
        out["value"] = REDACTED
    return out


def snapshot_json(snap: Snapshot) -> dict[str, dict[str, object]]:
    """Every type's version and resources as JSON, secrets redacted (the admin API's
    /snapshot, golden files)."""
    return {
        SHORT_NAMES[t]: {
            "version": snap.version(t),
            "resources": [
                redact(json_format.MessageToDict(m, preserving_proto_field_name=True))
                for m in snap.select(t, [])
            ],
        }
        for t in PUSH_ORDER
    }
