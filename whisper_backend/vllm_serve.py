"""`python -m whisper_backend.vllm_serve --model M --port P`: real vLLM for one model.

What `launch: vllm` runs. It builds the vLLM venv on first use (vllm_env), converts
the packaged weights to Hugging Face format (hf_export), then replaces itself with
vLLM's API server, so the supervisor's child *is* the API server and leads the
process group that vLLM's engine core and worker join (the group is what gets reaped).
Extra arguments after `--` go to vLLM unchanged.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import vllm_env
from .hf_export import ConversionError, CT2FormatError, export_model
from .models import ModelError


def main(argv: Sequence[str] | None = None) -> int:
    """Prepare, then exec vLLM; returns only on a failure to prepare."""
    p = argparse.ArgumentParser(
        prog="python -m whisper_backend.vllm_serve",
        description="Serve one packaged Whisper model with real vLLM (CPU or GPU build).",
    )
    p.add_argument("--model", required=True, help="e.g. openai/whisper-base")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("vllm_args", nargs="*", help="after --: passed to vLLM")
    args = p.parse_args(argv)
    if args.model.endswith(".en"):
        print(
            f"vllm_serve: warning: {args.model} is English-only; stock vLLM 0.32 answers it "
            "with empty text (docs/vllm.md)",
            file=sys.stderr,
        )
    try:
        print("vllm_serve: preparing the vLLM venv (a first use installs it)", flush=True)
        env = vllm_env.ensure()
        model_dir = export_model(args.model)
    except (vllm_env.VllmEnvError, ModelError, ConversionError, CT2FormatError, OSError) as e:
        print(f"vllm_serve: {e}", file=sys.stderr)
        return 1
    cmd = vllm_env.serve_command(
        env, model_dir, args.model, args.port, args.host, tuple(args.vllm_args)
    )
    print(f"vllm_serve: exec {' '.join(cmd)}", flush=True)
    os.execve(cmd[0], cmd, vllm_env.serve_env())
    return 1  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
