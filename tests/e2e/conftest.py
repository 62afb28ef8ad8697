"""The real-vLLM stack, shared by the modules that need it (one vLLM per session)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.vllm import VllmStack, vllm_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmStack]:
    with vllm_stack(tmp_path_factory.mktemp("vllm-stack")) as s:
        yield s
