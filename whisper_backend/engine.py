"""The decode pool: runs faster-whisper in worker threads, never on the event loop.

faster-whisper's segment generator is lazy, so it is iterated inside the worker
thread and each segment is handed back to the loop through a queue: a stream gets
every segment as soon as it is decoded, and a cancel flag checked between
segments stops work for a client that went away.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ApiError, busy

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class EngineConfig:
    num_workers: int = 1
    cpu_threads: int = 0
    max_queue: int = 8
    beam_size: int = 1


@dataclass(frozen=True)
class DecodeOptions:
    task: str = "transcribe"
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    word_timestamps: bool = False


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: tuple[int, ...]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: tuple[Word, ...] | None


@dataclass(frozen=True)
class DecodeInfo:
    language: str
    duration: float


class _Cancelled(Exception):
    pass


def _segment(s: Any) -> Segment:
    words = None
    if s.words is not None:
        words = tuple(Word(w.start, w.end, w.word, w.probability) for w in s.words)
    return Segment(
        id=int(s.id),
        seek=int(s.seek),
        start=float(s.start),
        end=float(s.end),
        text=str(s.text),
        tokens=tuple(int(t) for t in s.tokens),
        temperature=float(s.temperature or 0.0),
        avg_logprob=float(s.avg_logprob),
        compression_ratio=float(s.compression_ratio),
        no_speech_prob=float(s.no_speech_prob),
        words=words,
    )


class Engine:
    """One loaded model, a thread pool of num_workers decodes and a bounded waiting queue."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model: Any = None
        self.multilingual = False
        self.timestamp_begin = 1 << 30  # first timestamp token id, known once loaded
        self.running = 0
        self.waiting = 0
        self.on_change: Callable[[], None] = lambda: None
        self.on_cancelled: Callable[[], None] = lambda: None
        self._pool = ThreadPoolExecutor(config.num_workers, thread_name_prefix="decode")
        self._slots = asyncio.Semaphore(config.num_workers)
        self._closed = False
        self._jobs: set[asyncio.Task[None]] = set()
        self._live: set[DecodeJob] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def load(self, path: Path) -> None:
        """Blocking: call from a thread. Kept out of __init__ so /health can say 503 meanwhile."""
        from faster_whisper import WhisperModel

        model = WhisperModel(
            str(path),
            device="cpu",
            compute_type="int8",
            cpu_threads=self.config.cpu_threads,
            num_workers=self.config.num_workers,
            local_files_only=True,
        )
        self.multilingual = bool(model.model.is_multilingual)
        no_ts = model.hf_tokenizer.token_to_id("<|notimestamps|>")
        if no_ts is not None:
            self.timestamp_begin = int(no_ts) + 1
        self.model = model

    def count_tokens(self, text: str) -> int:
        """Text tokens of `text` under the model's tokenizer (no special tokens)."""
        return len(self.model.hf_tokenizer.encode(text, add_special_tokens=False).ids)

    @property
    def ready(self) -> bool:
        return self.model is not None and not self._closed

    def close(self) -> None:
        """Refuse new work; in-flight decodes run on until they finish or are cancelled."""
        self._closed = True

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def admit(self) -> None:
        """Raise 503 now, before any work, when every worker and queue slot is taken."""
        if self._closed:
            raise ApiError("The server is shutting down.", 503, retry_after=1)
        if self.model is None:
            raise ApiError("The model is still loading.", 503, retry_after=5)
        if self.running + self.waiting >= self.config.num_workers + self.config.max_queue:
            raise busy()

    def submit(self, audio: np.ndarray, opts: DecodeOptions) -> DecodeJob:
        """Admit (or raise 503) and queue a decode at once, before any response is started.

        The job's events() yield DecodeInfo first, then each Segment as decoded. Closing
        events() early (client gone) sets the cancel flag; the worker slot is freed when
        the worker thread actually stops.
        """
        self.admit()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def put(kind: str, item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, item))

        def work() -> None:
            try:
                if cancel.is_set():
                    raise _Cancelled
                segments, info = self.model.transcribe(
                    audio,
                    task=opts.task,
                    language=opts.language,
                    initial_prompt=opts.prompt or None,
                    temperature=opts.temperature,
                    beam_size=self.config.beam_size,
                    word_timestamps=opts.word_timestamps,
                    condition_on_previous_text=True,
                )
                put("info", DecodeInfo(str(info.language), float(info.duration)))
                for s in segments:
                    if cancel.is_set():
                        raise _Cancelled
                    put("seg", _segment(s))
                put("end", None)
            except _Cancelled:
                loop.call_soon_threadsafe(self.on_cancelled)
                put("end", None)
            except Exception as e:
                put("err", e)

        async def job() -> None:
            try:
                await self._slots.acquire()
            finally:
                self.waiting -= 1
            self.running += 1
            self.on_change()
            try:
                await loop.run_in_executor(self._pool, work)
            finally:
                self.running -= 1
                self._slots.release()
                self.on_change()

        self.waiting += 1
        self.on_change()
        task = asyncio.create_task(job())
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        decode_job = DecodeJob(queue, cancel, self._job_done)
        self._live.add(decode_job)
        self._idle.clear()
        return decode_job

    @property
    def live(self) -> int:
        """Requests still consuming a decode (queued, running, or writing their last bytes)."""
        return len(self._live)

    def _job_done(self, decode_job: DecodeJob) -> None:
        self._live.discard(decode_job)
        if not self._live:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True once no request consumes a decode; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def abort_all(self, error: Exception) -> None:
        """End every live decode with `error` (shutdown grace expired)."""
        for decode_job in list(self._live):
            decode_job.fail(error)


class DecodeJob:
    """The loop-side end of one decode."""

    def __init__(
        self,
        queue: asyncio.Queue[tuple[str, Any]],
        cancel: threading.Event,
        done: Callable[[DecodeJob], None],
    ) -> None:
        self._queue = queue
        self._cancel = cancel
        self._done = done
        self._failure: Exception | None = None

    def cancel(self) -> None:
        self._cancel.set()

    def fail(self, error: Exception) -> None:
        """Make the consumer raise `error` now, ahead of any pending segments."""
        self._cancel.set()
        self._failure = error
        self._queue.put_nowait(("err", error))

    async def events(self) -> AsyncGenerator[DecodeInfo | Segment, None]:
        try:
            while True:
                kind, item = await self._queue.get()
                if self._failure is not None:
                    raise self._failure
                if kind == "end":
                    return
                if kind == "err":
                    raise item
                yield item
        finally:
            # A running job stops at the next segment; a queued one exits as soon as it starts.
            self._cancel.set()
            self._done(self)
