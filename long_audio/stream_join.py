"""The pieces' event streams as one stream (pure): each piece's closing events held
back, one at the very end, and a space where two pieces' texts meet."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StreamJoin:
    """The pieces' streams as one: each piece's final events dropped, one at the end."""

    fmt: str  # the stream format: openai, text or backend
    texts: list[str] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)
    delta_seen: bool = False

    def event(self, raw: bytes, first_of_piece: bool) -> tuple[bytes | None, bool]:
        """(what to send, whether the stream failed)."""
        payload = raw.decode(errors="replace")
        if not payload.startswith("data:"):
            return None, False
        data = payload[5:].strip()
        if data == "[DONE]":
            return None, False
        try:
            obj = json.loads(data)
        except ValueError:
            return raw + b"\n\n", False
        if isinstance(obj, dict) and (obj.get("type") == "error" or "error" in obj):
            return raw + b"\n\n", True
        if self.fmt == "openai" and isinstance(obj, dict):
            if obj.get("type") == "transcript.text.done":
                self.texts.append(str(obj.get("text", "")))
                usage = obj.get("usage") or {}
                for k in ("input_tokens", "output_tokens", "total_tokens"):
                    if isinstance(usage.get(k), int):
                        self.tokens[k] = self.tokens.get(k, 0) + usage[k]
                return None, False
            if obj.get("type") == "transcript.text.delta" and first_of_piece and self.delta_seen:
                delta = str(obj.get("delta", ""))
                if delta and not delta[0].isspace():  # the pieces' texts join with a space
                    obj["delta"] = " " + delta
                    raw = b"data: " + json.dumps(obj).encode()
        elif self.fmt == "text" and isinstance(obj, dict) and first_of_piece and self.delta_seen:
            text = str(obj.get("text", ""))
            if text and not text[0].isspace():
                raw = b"data: " + json.dumps({**obj, "text": " " + text}).encode()
        self.delta_seen = True
        return raw + b"\n\n", False

    def end(self) -> bytes:
        if self.fmt != "openai":
            return b"data: [DONE]\n\n"
        done: dict[str, Any] = {
            "type": "transcript.text.done",
            "text": " ".join(t.strip() for t in self.texts if t.strip()),
        }
        if self.tokens:
            done["usage"] = {"type": "tokens", **self.tokens}
        return b"data: " + json.dumps(done).encode() + b"\n\ndata: [DONE]\n\n"
