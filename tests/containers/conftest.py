"""The container tier: real images, the compose stack and the pods, through the Docker API.

One engine and one `make images` per run (testkit.containers); the images are cached by
the engine between runs, so only a first run on a machine builds them in full.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.containers import Engine, Images, make_images, open_engine


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with open_engine(tmp_path_factory.mktemp("engine")) as found:
        yield found


@pytest.fixture(scope="session")
def images(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Images:
    log = tmp_path_factory.mktemp("images") / "make-images.log"
    built = make_images(engine, log)
    print(f"\nmake images: {built.seconds:.0f} s ({built.python}, {built.envoy})")
    return built
