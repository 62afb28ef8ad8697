"""SDS: the listener's certificate, pushed by the control plane so a rotated file
reaches Envoy without a restart (the control plane watches the files)."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from control_plane.ir.model import GatewayModel
from control_plane.names import LISTENER_SECRET


def build_secrets(model: GatewayModel) -> list[secret_pb2.Secret]:
    tls = model.security.listener_tls
    if tls is None:
        return []
    return [
        secret_pb2.Secret(
            name=LISTENER_SECRET,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=tls.cert_pem),
                private_key=base_pb2.DataSource(inline_bytes=tls.key_pem),
            ),
        )
    ]
