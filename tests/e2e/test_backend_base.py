"""whisper_backend on the real multilingual whisper-base: translation, language detection."""

from __future__ import annotations

import json

import aiohttp
import openai

from testkit.procs import FIXTURES

pytest_plugins = ["backend_fixtures"]

FRENCH = FIXTURES / "cafe_fr.wav"  # "Je voudrais un café et un croissant ... Merci beaucoup"


def form(**fields: str) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for k, v in fields.items():
        data.add_field(k, v)
    data.add_field("file", FRENCH.read_bytes(), filename=FRENCH.name)
    return data


async def test_translation_french_to_english(base_url: str) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(base_url + "/v1/audio/translations", data=form(model="openai/whisper-base")) as r,
    ):
        assert r.status == 200, await r.text()
        body = await r.json()
    text = body["text"].lower()
    assert "coffee" in text and "thank you" in text
    assert "café" not in text and "merci" not in text
    assert body["usage"]["seconds"] == 7  # 6.05 s, rounded up


async def test_transcription_detects_french(base_url: str) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            base_url + "/v1/audio/transcriptions", data=form(response_format="verbose_json")
        ) as r,
    ):
        body = await r.json()
    assert body["language"] == "fr"
    assert "merci" in body["text"].lower() and "café" in body["text"].lower()


async def test_translation_stream_chunks(base_url: str) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(base_url + "/v1/audio/translations", data=form(stream="true")) as r,
    ):
        body = await r.text()
    events = [e[len("data: ") :] for e in body.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "translation.chunk" for c in chunks)
    assert all(c["id"].startswith("translate-") for c in chunks)
    assert all(c["model"] == "openai/whisper-base" for c in chunks)
    deltas = [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"]]
    assert "coffee" in "".join(deltas).lower()


def test_sdk_translation_and_models(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="none")
    assert [m.id for m in client.models.list()] == ["openai/whisper-base"]
    with FRENCH.open("rb") as f:
        out = client.audio.translations.create(model="openai/whisper-base", file=f)
    assert "coffee" in out.text.lower()


async def test_tiny_name_is_404_on_base(base_url: str) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            base_url + "/v1/audio/transcriptions", data=form(model="openai/whisper-tiny.en")
        ) as r,
    ):
        body = await r.json()
    assert r.status == 404 and body["error"]["param"] == "model"
