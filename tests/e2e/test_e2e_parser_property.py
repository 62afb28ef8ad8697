"""The parser property through the real Envoy: generated multipart bodies (the
strategy of tests/unit/test_lua_multipart.py) go through the gateway to a fake backend
that parses them with whisper_backend's own form reader (aiohttp) and echoes the
`model` it read. Two models, m/a and m/b, are served by that one fake.

Every body is either refused by the gateway with a 4xx in the OpenAI error shape,
or routed, and then the model the backend read is the model the gateway routed
by (the response's x-gateway-model): never admitted as one model, served as another.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, event, given, settings

from testkit.gateway import Gateway, gateway_config, start_gateway
from testkit.multipart_forms import bodies
from testkit.procs import Proc, start_fake

MODELS = ("m/a", "m/b")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    logs = tmp_path_factory.mktemp("parser-property")
    fake: Proc
    fake, port = start_fake(logs, "echo_form")
    cfg = gateway_config(
        [{"url": f"http://127.0.0.1:{port}", "models": list(MODELS), "health": {"enabled": False}}]
    )
    g = start_gateway(logs, cfg)
    g.wait_synced()
    yield g
    g.stop()
    fake.stop()


async def post(gw: Gateway, ctype: str, body: bytes) -> tuple[int, str | None, Any]:
    """Status, the model the gateway routed by, and the JSON answer."""
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{gw.url}/v1/audio/transcriptions", data=body, headers={"Content-Type": ctype}
        ) as r,
    ):
        return r.status, r.headers.get("x-gateway-model"), await r.json(content_type=None)


def assert_openai_error(status: int, answer: Any) -> None:
    assert 400 <= status < 500, (status, answer)
    err = answer["error"]
    assert set(err) == {"message", "type", "param", "code"}, answer
    assert isinstance(err["message"], str) and err["message"]
    assert err["code"] == status


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(generated=bodies())
async def test_routed_model_is_the_served_model(gw: Gateway, generated: tuple[str, bytes]) -> None:
    ctype, body = generated
    status, routed, answer = await post(gw, ctype, body)
    if status == 200:
        event("routed")
        assert routed in MODELS
        assert answer["model"] == routed, (routed, answer)
    else:
        event(f"refused {status}")
        assert_openai_error(status, answer)
