"""CLI: `python -m whisper_backend.hf_export MODEL [--output DIR]` prints the HF folder."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..models import ModelError
from .convert import ConversionError
from .ct2 import CT2FormatError
from .export import export_model


def main(argv: Sequence[str] | None = None) -> int:
    """Convert (or reuse the cached conversion of) one model; the path goes to stdout."""
    p = argparse.ArgumentParser(
        prog="python -m whisper_backend.hf_export",
        description="Convert a CTranslate2 Whisper model to Hugging Face format (for vLLM).",
    )
    p.add_argument("model", help="openai/whisper-tiny.en, openai/whisper-base or a CT2 folder")
    p.add_argument("--output", type=Path, help="folder to write (default: the model cache)")
    args = p.parse_args(argv)
    try:
        out = export_model(args.model, args.output)
    except (ModelError, ConversionError, CT2FormatError, OSError) as e:
        print(f"hf_export: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
