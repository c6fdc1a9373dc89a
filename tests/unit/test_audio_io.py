"""Audio decoding/resampling (PyAV) and the mp4 writer with AAC audio (wan_core/io/audio.py).

Every test file is made by PyAV itself in tmp_path. Tolerances: lossless formats (wav, flac) must
decode to the written samples within one 16-bit step (3.1e-5); lossy ones (mp3, aac, vorbis, opus)
are checked by duration (within 60 ms: encoder priming/padding frames), level (RMS within 10 %)
and pitch (the spectral peak within 2 Hz), which any decoding mistake (wrong channel layout,
sample format, rate) breaks by far more.
"""
from __future__ import annotations

import wave

import numpy as np
import pytest

av = pytest.importorskip("av")

from wan_core.errors import InputError  # noqa: E402
from wan_core.io.audio import (SILENCE_DBFS, AudioInput, AudioTrack, check_speech,  # noqa: E402
                               decode_audio, mux_lengths, probe_media, resample, speech_samples,
                               write_mp4_with_audio)


def _tone(rate: int, secs: float, channels: int = 2, freq=(440.0, 440.0), amp=(0.5, 0.3)) -> np.ndarray:
    t = np.arange(int(rate * secs)) / rate
    return np.stack([amp[c] * np.sin(2 * np.pi * freq[c] * t) for c in range(channels)]).astype(np.float32)


def write_audio(path, container_fmt: str, codec: str, x: np.ndarray, rate: int, options=None):
    """Encode float [C, n] with PyAV (resampled to the encoder's sample format and frame size)."""
    layout = "mono" if x.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", format=container_fmt) as c:
        s = c.add_stream(codec, rate=rate)
        s.layout = layout
        if options:
            s.options = options
        rs = av.AudioResampler(format=s.codec_context.format.name, layout=layout, rate=rate,
                               frame_size=s.codec_context.frame_size or None)
        for i in range(0, x.shape[1], 1024):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, i:i + 1024]), format="fltp", layout=layout)
            f.sample_rate = rate
            for g in rs.resample(f):
                for p in s.encode(g):
                    c.mux(p)
        for g in rs.resample(None):
            for p in s.encode(g):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def _peak_hz(x: np.ndarray, rate: int) -> float:
    n = min(len(x), 1 << 15)
    spec = np.abs(np.fft.rfft(x[:n] * np.hanning(n)))
    return float(np.fft.rfftfreq(n, 1 / rate)[int(np.argmax(spec))])


FORMATS = [  # name, container, codec, rate, lossless, encoder options
    ("wav", "wav", "pcm_s16le", 44100, True, None),
    ("flac", "flac", "flac", 44100, True, None),
    ("mp3", "mp3", "libmp3lame", 44100, False, None),
    ("m4a", "mp4", "aac", 44100, False, None),
    ("ogg", "ogg", "vorbis", 44100, False, {"strict": "experimental"}),
    ("opus.ogg", "ogg", "libopus", 48000, False, None),
]


@pytest.mark.parametrize("name,fmt,codec,rate,lossless,opts", FORMATS, ids=[f[0] for f in FORMATS])
def test_decode_formats(tmp_path, name, fmt, codec, rate, lossless, opts):
    if codec not in av.codecs_available:
        pytest.skip(f"PyAV's FFmpeg has no {codec} encoder")
    x = _tone(rate, 1.5)
    path = write_audio(tmp_path / f"a.{name}", fmt, codec, x, rate, opts)
    track = decode_audio(path)
    assert track.sample_rate == rate and track.channels == 2
    assert abs(track.duration_s - 1.5) < 0.06
    if lossless:
        assert np.abs(track.samples[:, : x.shape[1]] - x).max() < 1.0 / 32768 + 1e-7
    else:
        rms, want = np.sqrt((track.samples ** 2).mean(1)), np.sqrt((x ** 2).mean(1))
        assert np.all(np.abs(rms / want - 1) < 0.1), (rms, want)
    s16 = speech_samples(track)
    assert s16.dtype == np.float32 and s16.ndim == 1
    assert abs(len(s16) - track.duration_s * 16000) <= 2
    assert abs(_peak_hz(s16, 16000) - 440.0) < 2.0
    # mono = mean of the channels: 0.5 and 0.3 amplitude in phase -> 0.4
    assert abs(np.abs(s16[2000:-2000]).max() - 0.4) < (0.005 if lossless else 0.08)


def test_wav_16k_mono_is_pcm_over_32768(tiny_dir):
    """The golden input passes through unchanged: the official code saw PCM / 32768."""
    path = tiny_dir / "inputs" / "test.wav"
    with wave.open(str(path)) as w:
        raw = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    got = speech_samples(decode_audio(path))
    assert got.dtype == np.float32 and np.array_equal(got, raw)


def test_resample_keeps_pitch_and_length():
    x = _tone(44100, 2.0, channels=1, freq=(1000.0,), amp=(0.5,))
    y = resample(x, 44100, 16000)
    assert y.shape == (1, 32000)
    assert abs(_peak_hz(y[0], 16000) - 1000.0) < 1.0
    assert abs(np.sqrt((y[0, 1000:-1000] ** 2).mean()) - 0.5 / np.sqrt(2)) < 0.01
    z = resample(_tone(22050, 1.0, channels=2), 22050, 16000)
    assert z.shape == (2, 16000)


def test_waveform_input_and_stereo_average():
    x = _tone(16000, 1.0, channels=2, freq=(300.0, 300.0), amp=(0.6, 0.2))
    track = AudioInput(waveform=x, sample_rate=16000).load()
    np.testing.assert_allclose(speech_samples(track), x.mean(0), atol=1e-7)
    with pytest.raises(InputError, match="sample_rate"):
        AudioInput(waveform=x)
    with pytest.raises(InputError, match="either"):
        AudioInput()
    with pytest.raises(InputError, match="empty"):
        AudioInput(waveform=np.zeros((1, 0), np.float32), sample_rate=16000).load()


# ---------------------------------------------------------------------------------------------
# Bad input: a clear message naming the file


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist") as e:
        decode_audio(tmp_path / "nope.wav")
    assert "nope.wav" in str(e.value)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.mp3"
    p.write_bytes(b"")
    with pytest.raises(InputError, match="empty") as e:
        decode_audio(p)
    assert "empty.mp3" in str(e.value)


def test_corrupt_file(tmp_path):
    p = tmp_path / "corrupt.wav"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="corrupt.wav"):
        decode_audio(p)


def test_truncated_wav_header_only(tmp_path):
    p = tmp_path / "header.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"")
    with pytest.raises(InputError, match="no audio samples|cannot decode"):
        decode_audio(p)


def test_video_without_audio_stream(tmp_path):
    from wan_core.io.audio import write_mp4_with_audio

    p = write_mp4_with_audio(tmp_path / "v.mp4", np.zeros((4, 16, 16, 3), np.uint8), 16, None)
    with pytest.raises(InputError, match="no audio stream"):
        decode_audio(p)


def test_silence_is_refused_quiet_speech_is_not(tmp_path):
    silent = AudioTrack(np.zeros((1, 32000), np.float32), 16000, "s.wav")
    with pytest.raises(InputError, match="silent"):
        check_speech(silent)
    hiss = AudioTrack(np.full((1, 32000), 10 ** ((SILENCE_DBFS - 6) / 20), np.float32), 16000, "h.wav")
    with pytest.raises(InputError, match="silent"):
        check_speech(hiss)
    quiet = AudioTrack(_tone(16000, 2.0, 1, (200.0,), (0.01,)), 16000, "q.wav")   # -40 dBFS
    check_speech(quiet)


def test_too_short_for_a_clip():
    track = AudioTrack(_tone(16000, 0.5, 1, (200.0,), (0.5,)), 16000, "short.wav")
    with pytest.raises(InputError, match="shorter than one clip"):
        check_speech(track, min_duration_s=1.0)
    check_speech(track, min_duration_s=0.5)


# ---------------------------------------------------------------------------------------------
# Output: h264 + aac, durations within one frame


def _frames(n: int, h: int = 64, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(n)
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("audio_s,rate,channels", [(3.0, 44100, 2), (1.2, 16000, 1), (2.0, 37000, 2)],
                         ids=["audio-longer", "audio-shorter", "odd-rate"])
def test_mp4_with_audio(tmp_path, audio_s, rate, channels):
    fps, n = 16, 32                                  # a 2.0 s video
    track = AudioTrack(_tone(rate, audio_s, channels), rate, "t")
    out = write_mp4_with_audio(tmp_path / "o.mp4", _frames(n), fps, track)
    info = probe_media(out)
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert info.audio_channels == channels
    want_frames = min(n, int(np.ceil(audio_s * fps - 1e-6)))
    assert info.video_frames == want_frames
    assert abs(info.video_duration_s - info.audio_duration_s) <= 1.0 / fps, info
    assert abs(info.video_duration_s - want_frames / fps) < 1e-3
    assert list(tmp_path.iterdir()) == [out]          # no temporary file left


def test_mux_lengths():
    t = AudioTrack(np.zeros((1, 16000 * 3)), 16000)
    assert mux_lengths(32, 16, t) == (32, 32000)       # audio cut to the video
    t = AudioTrack(np.zeros((1, 16000 + 100)), 16000)
    assert mux_lengths(32, 16, t) == (17, 16100)       # video cut to the audio, rounded up to a frame
    assert mux_lengths(32, 16, None) == (32, 0)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"old")
    with pytest.raises(ValueError):
        write_mp4_with_audio(out, np.zeros((4, 16, 16), np.uint8), 16, None)   # not [F, H, W, 3]

    class Boom:   # the audio stage fails after the video was written (e.g. the disk fills up)
        @staticmethod
        def from_ndarray(*a, **k):
            raise OSError("No space left on device")

    monkeypatch.setattr(av, "AudioFrame", Boom)
    track = AudioTrack(_tone(16000, 1.0, 1, (200.0,), (0.5,)), 16000)
    with pytest.raises(OSError, match="No space"):
        write_mp4_with_audio(out, _frames(8), 16, track)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]
