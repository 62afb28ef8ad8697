"""Every shipped example config parses: a user's first `make up CONFIG=examples/...`
must not meet a config error."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.config.parse import load_config

#: Gateway configs; secure-keys.yaml is the API keys file secure.yaml names.
EXAMPLES = sorted(
    p
    for p in (Path(__file__).resolve().parents[2] / "examples").glob("*.yaml")
    if p.name != "secure-keys.yaml"
)


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_parses(path: Path) -> None:
    config = load_config(path)
    assert config.backends
    if path.name == "long-audio.yaml":
        assert config.long_audio is not None
        assert set(config.long_audio.models) <= set(config.models)
