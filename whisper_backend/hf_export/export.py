"""Cached, atomic export: convert once per source model, never hand out a half-written folder.

The folder is built in a temp dir beside its destination and renamed into place under a
file lock. A stamp (`.hf-export.json`) records the digests of the source files, the
converter version and the size and sha256 of every output file; a folder whose stamp is
missing or does not match is rebuilt, so a crash, a truncated file or a newer source never
gets reused. Re-checking costs hashing ~150 MB, well under a second.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from ..models import KNOWN_MODELS, cache_root, file_digest, file_lock, locate
from .convert import CONVERTER_VERSION, SIDE_FILES, VOCABULARY_FILES, write_folder

STAMP_NAME = ".hf-export.json"


def default_output(model_name: str) -> Path:
    """`<cache root>/hf/<name with / as __>`: beside the CTranslate2 model cache."""
    return cache_root() / "hf" / model_name.replace("/", "__")


def source_digests(src: Path) -> dict[str, str]:
    """sha256 of every input file the conversion reads."""
    names = ["model.bin", *SIDE_FILES, *(v for v in VOCABULARY_FILES if (src / v).is_file())]
    out: dict[str, str] = {}
    for name in names:
        path = src / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: not a CTranslate2 Whisper folder")
        out[name] = file_digest(path)[1]
    return out


def _stamp(source: dict[str, str], dest: Path) -> dict[str, Any]:
    """The stamp's content: no time, no host, no writer, so re-exports are byte-identical."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(dest.iterdir()):
        if path.name != STAMP_NAME:
            size, sha = file_digest(path)
            files[path.name] = {"sha256": sha, "size": size}
    return {
        "converter_version": CONVERTER_VERSION,
        "files": files,
        "source": source,
    }


def is_valid(dest: Path, source: dict[str, str]) -> bool:
    """True only for a finished export of exactly this source, every file intact."""
    try:
        stamp = json.loads((dest / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(stamp, dict):
        return False
    if stamp.get("converter_version") != CONVERTER_VERSION or stamp.get("source") != source:
        return False
    files = stamp.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files:
        return False
    try:
        for name, info in files.items():  # sizes first: cheap, catches truncation
            if (dest / name).stat().st_size != info["size"]:
                return False
        return all(file_digest(dest / n)[1] == info["sha256"] for n, info in files.items())
    except (OSError, KeyError, TypeError):
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export(src: Path, dest: Path) -> Path:
    """Convert the CTranslate2 folder src into dest, unless dest already holds that export."""
    src, dest = src.resolve(), dest.absolute()
    source = source_digests(src)
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    with file_lock(parent / f".{dest.name}.lock"):
        if is_valid(dest, source):
            return dest
        # Under the lock nobody else writes: leftovers of crashed runs can go.
        for stale in parent.glob(f".{dest.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            write_folder(src, tmp)
            stamp = json.dumps(_stamp(source, tmp), indent=2, sort_keys=True)
            (tmp / STAMP_NAME).write_text(stamp + "\n")
            _fsync_dir(tmp)
            if dest.exists() or dest.is_symlink():
                old = parent / f".{dest.name}.tmp-old-{uuid.uuid4().hex[:8]}"
                os.replace(dest, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, dest)
            _fsync_dir(parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def export_model(model: str, output: Path | None = None) -> Path:
    """Export a known model name (openai/whisper-base) or a CTranslate2 folder path."""
    if model not in KNOWN_MODELS and Path(model).is_dir():
        loc = locate(Path(model).resolve().name, model_path=model)
    else:
        loc = locate(model)
    return export(loc.path, output or default_output(loc.name))
