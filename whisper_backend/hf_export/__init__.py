"""Export the packaged CTranslate2 Whisper models to Hugging Face format, for real vLLM.

`python -m whisper_backend.hf_export openai/whisper-base` prints the folder to pass to
`vllm ... --model`. See docs/vllm.md.
"""

from __future__ import annotations

from .convert import CONVERTER_VERSION, ConversionError
from .ct2 import CT2FormatError
from .export import STAMP_NAME, default_output, export, export_model, is_valid

__all__ = [
    "CONVERTER_VERSION",
    "STAMP_NAME",
    "CT2FormatError",
    "ConversionError",
    "default_output",
    "export",
    "export_model",
    "is_valid",
]
