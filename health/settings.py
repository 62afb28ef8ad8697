"""Probe targets and their settings: plain frozen values, so a config reload can compare them."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

#: Name of the clip shipped inside the package (a copy of tests/fixtures/hello.wav):
#: "Hello world. The quick brown fox jumps over the lazy dog.", 16 kHz mono.
DEFAULT_CLIP_NAME = "clips/hello.wav"


def default_clip_path() -> Path:
    """The packaged clip, independent of the working directory and of tests/ being present.

    Looks next to this file first (source checkout, editable or regular install), then
    asks importlib.resources (which can fail on namespace-style editable installs, hence
    second). A missing file surfaces when the monitor reads the clip, naming the path.
    """
    here = Path(__file__).resolve().parent / DEFAULT_CLIP_NAME
    if here.is_file():
        return here
    try:
        found = resources.files(__package__ or "health").joinpath(DEFAULT_CLIP_NAME)
        if isinstance(found, Path) and found.is_file():
            return found
    except Exception:  # odd loaders: fall through to the plain path
        pass
    return here


@dataclass(frozen=True)
class HealthSettings:
    """How one target is probed.

    timeout_s must sit above a busy backend's normal latency: a slow backend is
    still a working one, and a dead one is caught by hard failures (refused/reset).
    """

    interval_s: float = 5.0
    timeout_s: float = 10.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    jitter: float = 0.1
    expected_word: str | None = None
    clip_path: Path = field(default_factory=default_clip_path)
    language: str | None = None
    #: After a failure while HEALTHY, the next probe comes after min(interval_s, this),
    #: so a dead backend's ejection is confirmed fast.
    fail_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if self.healthy_threshold < 1 or self.unhealthy_threshold < 1:
            raise ValueError("thresholds must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.fail_interval_s <= 0:
            raise ValueError("fail_interval_s must be > 0")

    @property
    def recheck_s(self) -> float:
        """Delay before the next probe after a failure while still HEALTHY."""
        return min(self.interval_s, self.fail_interval_s)


@dataclass(frozen=True)
class ProbeTarget:
    """One backend to probe: `key` names it in events (e.g. "127.0.0.1:8002")."""

    key: str
    base_url: str
    models: tuple[str, ...]
    api_key: str | None = field(default=None, repr=False)  # never in logs
    settings: HealthSettings = field(default_factory=HealthSettings)
    # https backends: the CA (and client certificate) Envoy uses, and the host name
    # the certificate must carry (the target is dialled by address).
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    server_hostname: str | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError(f"target {self.key}: no models to probe")
