"""Audio input and output for S2V, through PyAV only (no librosa, no ffmpeg binary).

Input: any file FFmpeg can decode (wav, mp3, flac, m4a/aac, ogg, or the audio track of a video)
is decoded at its own rate and channel count (`decode_audio`); `speech_samples` turns it into what
wav2vec2 takes: 16 kHz mono float32. Like the official `librosa.load(path, sr=16000)`, channels
are averaged (librosa's `to_mono`) and the signal resampled; the resampler is FFmpeg's swresample
instead of soxr, which changes the samples by far less than the wav2vec2 normalisation removes.
A 16 kHz mono 16-bit wav passes through unchanged (PCM / 32768, exactly what the goldens used).

Checks (`check_speech`) raise `InputError` with the file name and the fix: missing file, a file
that is not audio or is corrupt, an audio track with no samples, digital silence (decided: an
error, see `SILENCE_DBFS`), audio shorter than one clip.

Output: `write_mp4_with_audio` writes H.264 video and AAC audio into one mp4 in a single pass
(the official code writes the video, then runs `ffmpeg -c:v copy -c:a aac -b:a 192k -shortest`).
The audio is trimmed to the video's length, and a video longer than its audio is trimmed to the
audio (the official `-shortest`), so the two durations agree within one frame. The file is written
under a temporary name and renamed at the end: a failure never leaves a half-written mp4 behind.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import InputError

SPEECH_RATE = 16000
"""wav2vec2's sampling rate (the official `librosa.load(..., sr=16000)`)."""

SILENCE_DBFS = -60.0
"""Peak level below which an audio track counts as silent.

Decision (issue 7 lists silence under bad input): silence is refused with an InputError. S2V moves
the lips from the speech in the track; wav2vec2's input normalisation (zero mean, unit variance)
would turn a near-silent track's noise floor into full-scale noise and drive random mouth motion,
and a digitally silent one gives a face that never speaks. -60 dBFS peak is inaudible; any
recording with speech in it peaks far above it however quiet it is (the normalisation makes the
level irrelevant otherwise). For a still portrait without speech, use i2v-A14B.
"""

AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
AAC_BITRATE = 192_000   # the official merge_video_audio: -b:a 192k
_CRF = 10               # the official imageio writer: libx264 quality=8 -> crf 10 (same as io/video.py)

PathLike = Union[str, os.PathLike]


@dataclass(eq=False)
class AudioTrack:
    """Decoded audio: float32 samples [channels, n] in [-1, 1] at `sample_rate`."""

    samples: np.ndarray
    sample_rate: int
    source: str = "<waveform>"      # file name (or a description) for messages

    def __post_init__(self) -> None:
        x = np.asarray(self.samples, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise InputError(f"audio {self.source}: samples must be [channels, n] or [n], "
                             f"got shape {tuple(np.shape(self.samples))}")
        self.samples = x
        self.sample_rate = int(self.sample_rate)
        if self.sample_rate <= 0:
            raise InputError(f"audio {self.source}: sample rate {self.sample_rate} is not positive")

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate

    def mono(self) -> np.ndarray:
        """[n] float32: the mean of the channels (librosa's `to_mono`)."""
        if self.channels == 1:
            return self.samples[0]
        return self.samples.mean(axis=0, dtype=np.float64).astype(np.float32)

    def peak_dbfs(self) -> float:
        peak = float(np.abs(self.samples).max()) if self.num_samples else 0.0
        return 20.0 * math.log10(peak) if peak > 0 else float("-inf")

    def slice_s(self, start_s: float = 0.0, end_s: Optional[float] = None) -> "AudioTrack":
        """The part between start_s and end_s (seconds; clipped to the track)."""
        a = min(self.num_samples, max(0, int(round(start_s * self.sample_rate))))
        b = self.num_samples if end_s is None else min(self.num_samples,
                                                       max(a, int(round(end_s * self.sample_rate))))
        return AudioTrack(self.samples[:, a:b], self.sample_rate, self.source)


@dataclass(eq=False)
class AudioInput:
    """The audio of an S2V request (`GenerateRequest.audio`): a file path, or a waveform.

    `waveform` is float [channels, n] or [n] in [-1, 1] (ComfyUI's AUDIO gives [1, channels, n]
    with its sample_rate; drop the batch dimension). Plain data, so it pickles to worker processes.
    """

    path: Optional[str] = None
    waveform: Optional[np.ndarray] = None
    sample_rate: Optional[int] = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.waveform is None):
            raise InputError("give the S2V audio either as a file path or as a waveform (not both, not neither)")
        if self.waveform is not None:
            w = self.waveform
            if hasattr(w, "detach"):            # torch tensor -> numpy (no torch import needed here)
                w = w.detach().float().cpu().numpy()
            self.waveform = np.asarray(w, dtype=np.float32)
            if self.sample_rate is None or int(self.sample_rate) <= 0:
                raise InputError(f"an audio waveform needs its sample_rate (got {self.sample_rate!r})")
        if self.path is not None:
            self.path = os.fspath(self.path)

    @property
    def name(self) -> str:
        return repr(self.path) if self.path is not None else "waveform"

    def load(self) -> AudioTrack:
        """The decoded track (native rate and channels)."""
        if self.path is not None:
            return decode_audio(self.path)
        track = AudioTrack(self.waveform, int(self.sample_rate), "waveform")
        if track.num_samples == 0:
            raise InputError("the audio waveform is empty (0 samples); give audio with speech")
        if not np.isfinite(track.samples).all():
            raise InputError("the audio waveform contains NaN or infinite samples")
        return track


# ---------------------------------------------------------------------------------------------
# Decoding and resampling


def decode_audio(path: PathLike) -> AudioTrack:
    """Decode the first audio stream of `path` at its own rate and channel count (float32)."""
    import av

    p = Path(path)
    if not p.exists():
        raise InputError(f"audio file {str(p)!r} does not exist")
    if not p.is_file():
        raise InputError(f"audio path {str(p)!r} is not a file")
    if p.stat().st_size == 0:
        raise InputError(f"audio file {str(p)!r} is empty (0 bytes)")
    chunks: list[np.ndarray] = []
    try:
        with av.open(str(p)) as container:
            if not container.streams.audio:
                kinds = ", ".join(s.type for s in container.streams) or "none"
                raise InputError(f"{str(p)!r} has no audio stream (streams: {kinds}); give an audio "
                                 "file (wav, mp3, flac, m4a, ogg)")
            stream = container.streams.audio[0]
            rate = int(stream.codec_context.sample_rate or stream.rate or 0)
            # Planar float, the stream's own layout and rate: only the sample format changes.
            resampler = av.AudioResampler(format="fltp")
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
                    rate = int(out.sample_rate)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    except InputError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"cannot decode audio file {str(p)!r} ({exc}); it is corrupt or not an audio "
                         "format FFmpeg reads (wav, mp3, flac, m4a/aac, ogg)") from None
    if not chunks or sum(c.shape[1] for c in chunks) == 0:
        raise InputError(f"audio file {str(p)!r} contains no audio samples")
    channels = {c.shape[0] for c in chunks}
    if len(channels) != 1:   # a stream that changes its layout mid-way: keep the first layout's count
        n = chunks[0].shape[0]
        chunks = [c if c.shape[0] == n else np.repeat(c.mean(0, keepdims=True), n, 0) for c in chunks]
    samples = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    if rate <= 0:
        raise InputError(f"audio file {str(p)!r} does not state its sample rate")
    if not np.isfinite(samples).all():
        raise InputError(f"audio file {str(p)!r} decodes to NaN/infinite samples; it is corrupt")
    return AudioTrack(samples, rate, str(p))


def resample(samples: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """Resample float32 [channels, n] from `rate` to `new_rate` with swresample (PyAV)."""
    import av

    x = np.ascontiguousarray(np.asarray(samples, dtype=np.float32))
    if x.ndim == 1:
        x = x[None]
    if rate == new_rate or x.shape[1] == 0:
        return x.copy()
    channels = x.shape[0]
    layout = {1: "mono", 2: "stereo"}.get(channels)
    if layout is None:   # uncommon layouts: resample each channel on its own
        return np.concatenate([resample(x[c:c + 1], rate, new_rate) for c in range(channels)], axis=0)
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=int(new_rate))
    out: list[np.ndarray] = []
    step = max(1, int(rate))   # one second per frame
    for s in range(0, x.shape[1], step):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, s:s + step]), format="fltp",
                                           layout=layout)
        frame.sample_rate = int(rate)
        for o in resampler.resample(frame):
            out.append(o.to_ndarray())
    for o in resampler.resample(None):
        out.append(o.to_ndarray())
    y = np.concatenate(out, axis=1) if out else np.zeros((channels, 0), np.float32)
    want = int(round(x.shape[1] * new_rate / rate))
    if y.shape[1] > want:
        y = y[:, :want]
    elif y.shape[1] < want:
        y = np.pad(y, ((0, 0), (0, want - y.shape[1])))
    return y.astype(np.float32, copy=False)


def speech_samples(track: AudioTrack, rate: int = SPEECH_RATE) -> np.ndarray:
    """[n] float32 mono at `rate` (16 kHz): what the wav2vec2 feature extractor takes."""
    mono = track.mono()
    if track.sample_rate == rate:
        return np.ascontiguousarray(mono)
    return resample(mono[None], track.sample_rate, rate)[0]


def check_speech(track: AudioTrack, min_duration_s: float = 0.0, what: str = "") -> None:
    """InputError for an empty or silent track, or one shorter than `min_duration_s`."""
    name = track.source if track.source.startswith("<") else repr(track.source)
    if track.num_samples == 0:
        raise InputError(f"audio {name} contains no samples; give audio with speech")
    peak = track.peak_dbfs()
    if peak < SILENCE_DBFS:
        level = "digital silence" if peak == float("-inf") else f"peak {peak:.1f} dBFS"
        raise InputError(
            f"audio {name} is silent ({level}, below {SILENCE_DBFS:.0f} dBFS): S2V animates the face "
            "from the speech in the audio, so a silent track cannot drive it. Give a recording with "
            "speech or singing (for a still portrait without speech, use i2v-A14B)")
    if min_duration_s > 0 and track.duration_s + 1e-9 < min_duration_s:
        raise InputError(
            f"audio {name} lasts {track.duration_s:.2f} s, shorter than one clip "
            f"({min_duration_s:.2f} s{what}); give a longer audio or make the clip shorter")


# ---------------------------------------------------------------------------------------------
# Output: H.264 + AAC in one mp4


def _aac_track(track: AudioTrack) -> AudioTrack:
    """The track in a form the AAC encoder takes: 1 or 2 channels, an AAC sample rate."""
    x, rate = track.samples, track.sample_rate
    if x.shape[0] > 2:   # downmix to stereo: mean of all channels into both (simple and level-safe)
        m = x.mean(axis=0, keepdims=True)
        x = np.concatenate([m, m], axis=0)
    if rate not in AAC_RATES:
        x = resample(x, rate, 48000)
        rate = 48000
    return AudioTrack(np.clip(x, -1.0, 1.0), rate, track.source)


def mux_lengths(num_frames: int, fps: float, audio: Optional[AudioTrack]) -> tuple[int, int]:
    """(video frames, audio samples) to write so both end together (within one frame).

    The audio is cut at the end of the video; a video longer than its audio is cut to the audio's
    length rounded up to a whole frame (the official `-shortest`). Without audio: (frames, 0).
    """
    if audio is None:
        return num_frames, 0
    frames = num_frames
    audio_frames = math.ceil(audio.duration_s * fps - 1e-6)
    if audio_frames < frames:
        frames = max(1, audio_frames)
    samples = min(audio.num_samples, int(round(frames / fps * audio.sample_rate)))
    return frames, samples


def write_mp4_with_audio(path: PathLike, frames, fps: int, audio: Optional[AudioTrack] = None,
                         crf: int = _CRF, audio_bitrate: int = AAC_BITRATE) -> Path:
    """Write uint8 RGB frames [F, H, W, 3] as H.264 and `audio` as AAC into the mp4 at `path`.

    See the module docstring for trimming. Written to a temporary file beside `path` and renamed
    at the end, so `path` is either the complete video or untouched.
    """
    import av

    arr = frames.numpy() if hasattr(frames, "numpy") else np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise ValueError(f"expected uint8 frames [F>0, H, W, 3], got {arr.dtype} {arr.shape}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    track = _aac_track(audio) if audio is not None else None
    n_frames, n_samples = mux_lengths(arr.shape[0], fps, track)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".part.mp4", dir=str(path.parent))
    os.close(fd)
    tmp = Path(tmp_name)
    _, height, width, _ = arr.shape
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            vs = container.add_stream("libx264", rate=int(fps))
            vs.width, vs.height = width, height
            vs.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
            vs.options = {"crf": str(crf)}
            aus = None
            if track is not None and n_samples > 0:
                layout = "mono" if track.channels == 1 else "stereo"
                aus = container.add_stream("aac", rate=track.sample_rate)
                aus.layout = layout
                aus.bit_rate = int(audio_bitrate)
            for img in arr[:n_frames]:
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                for packet in vs.encode(vf):
                    container.mux(packet)
            for packet in vs.encode():
                container.mux(packet)
            if aus is not None:
                x = track.samples[:, :n_samples]
                layout = aus.layout.name
                frame_size = aus.codec_context.frame_size or 1024
                pts = 0
                for s in range(0, n_samples, frame_size):
                    chunk = np.ascontiguousarray(x[:, s:s + frame_size])
                    af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                    af.sample_rate = track.sample_rate
                    af.pts = pts
                    pts += chunk.shape[1]
                    for packet in aus.encode(af):
                        container.mux(packet)
                for packet in aus.encode(None):
                    container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@dataclass
class MediaInfo:
    """What a written file holds (for tests and `verify`)."""

    video_codec: Optional[str] = None
    audio_codec: Optional[str] = None
    video_frames: int = 0
    fps: float = 0.0
    video_duration_s: float = 0.0
    audio_duration_s: float = 0.0
    audio_rate: int = 0
    audio_channels: int = 0
    extra: dict = field(default_factory=dict)


def probe_media(path: PathLike) -> MediaInfo:
    """Report the streams of `path`: codecs, decoded video frames, and each stream's duration as a
    player sees it (the container's stream duration, i.e. after the mp4 edit list that hides the
    AAC encoder's priming samples)."""
    import av

    info = MediaInfo()
    with av.open(str(path)) as container:
        if container.streams.video:
            vs = container.streams.video[0]
            info.video_codec = vs.codec_context.name
            info.fps = float(vs.average_rate) if vs.average_rate else 0.0
            info.video_frames = sum(1 for _ in container.decode(vs))
            if vs.duration is not None:
                info.video_duration_s = float(vs.duration * vs.time_base)
            elif info.fps:
                info.video_duration_s = info.video_frames / info.fps
    with av.open(str(path)) as container:
        if container.streams.audio:
            a = container.streams.audio[0]
            info.audio_codec = a.codec_context.name
            info.audio_rate = int(a.codec_context.sample_rate)
            info.audio_channels = int(a.codec_context.channels)
            decoded = sum(frame.samples for frame in container.decode(a))
            info.extra["audio_decoded_samples"] = decoded
            if a.duration is not None:
                info.audio_duration_s = float(a.duration * a.time_base)
            elif info.audio_rate:
                info.audio_duration_s = decoded / info.audio_rate
    return info


__all__ = ["SPEECH_RATE", "SILENCE_DBFS", "AudioTrack", "AudioInput", "decode_audio", "resample",
           "speech_samples", "check_speech", "mux_lengths", "write_mp4_with_audio", "MediaInfo",
           "probe_media"]
