"""CPU Whisper backend speaking vLLM's transcription API (faster-whisper, int8)."""

__version__ = "0.1.0"
