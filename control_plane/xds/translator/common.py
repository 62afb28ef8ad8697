"""Small proto builders shared by the translators."""

from __future__ import annotations

from urllib.parse import urlsplit

from envoy.config.core.v3 import config_source_pb2
from google.protobuf import any_pb2, duration_pb2, message


def any_of(msg: message.Message) -> any_pb2.Any:
    # Deterministic bytes: the same content must hash to the same version in
    # every process, or a restarted control plane would re-send (and drain) LDS.
    return any_pb2.Any(
        type_url=f"type.googleapis.com/{msg.DESCRIPTOR.full_name}",
        value=msg.SerializeToString(deterministic=True),
    )


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(value * 1e9))
    return d


def ads_source() -> config_source_pb2.ConfigSource:
    """Resources come over the one ADS stream, API v3."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def tls_host(backend_url: str) -> str:
    """The host name an https backend is reached by: its SNI and certificate name."""
    return urlsplit(backend_url).hostname or ""
