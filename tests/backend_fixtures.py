"""Shared fixtures for tests/test_backend_*.py: real whisper_backend processes.

Loaded with `pytest_plugins = ["backend_fixtures"]` so one tiny.en and one base
process serve the whole session (conftest.py belongs to the lead).
PYTEST_DONT_REWRITE: it holds no asserts, and is imported by several test modules.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.procs import start_backend

_ENV = {"HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="session")
def backend_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backend-logs")


@pytest.fixture(scope="session")
def tiny_url(backend_logs: Path) -> Iterator[str]:
    proc, port = start_backend(backend_logs, env=_ENV)
    yield f"http://127.0.0.1:{port}"
    proc.stop()


@pytest.fixture(scope="session")
def base_url(backend_logs: Path) -> Iterator[str]:
    env = dict(_ENV)
    if "WHISPER_GATEWAY_CACHE" in os.environ:
        env["WHISPER_GATEWAY_CACHE"] = os.environ["WHISPER_GATEWAY_CACHE"]
    proc, port = start_backend(backend_logs, model="openai/whisper-base", env=env)
    yield f"http://127.0.0.1:{port}"
    proc.stop()
