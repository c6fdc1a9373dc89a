"""S2V request resolution (no model): official size rule and image preprocessing, defaults, clip
count from the audio, and every bad input of issue 7 with a message that names it."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from wan_core.config import GenerateRequest  # noqa: E402
from wan_core.errors import ConfigError, InputError  # noqa: E402
from wan_core.io.audio import AudioInput  # noqa: E402
from wan_core.pipeline.s2v import (S2VOptions, get_size_less_than_area, prepare_ref_image,  # noqa: E402
                                   resolve_s2v_request)


def _wav(path, seconds: float, rate: int = 16000, amp: float = 0.3):
    import wave

    t = np.arange(int(seconds * rate)) / rate
    x = (amp * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.tobytes())
    return path


def _image(h=128, w=128):
    """An image on the uint8 grid (k / 255), as every image file gives."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, h, w), generator=g).float() / 255


def _req(audio, image=None, **opts):
    return GenerateRequest(prompt="a person is singing", size=(128, 128), image=_image() if image is None else image,
                           audio=audio, s2v=S2VOptions(**{"infer_frames": 16, **opts}))


# -- size rule and preprocessing ----------------------------------------------------------------


@pytest.mark.parametrize("hw,area,want", [
    ((128, 128), 128 * 128, (128, 128)),          # the golden run: unchanged
    ((720, 1280), 1024 * 704, (640, 1088)),       # scale 0.85: 612x1088 padded to 640x1088
    ((1280, 720), 1024 * 704, (1088, 640)),
    ((1000, 1000), 1024 * 704, (832, 832)),
    ((100, 150), 1024 * 704, (128, 192)),         # smaller than the area: padded up to multiples of 64
])
def test_get_size_less_than_area(hw, area, want):
    h, w = get_size_less_than_area(*hw, target_area=area)
    assert (h, w) == want
    assert h % 64 == 0 and w % 64 == 0 and h * w <= area


def test_ref_image_identity_and_crop():
    img = _image(128, 128)
    out = prepare_ref_image(img, 128, 128)
    assert torch.allclose(out, img * 2 - 1, atol=1e-6)     # Resize(128)/CenterCrop(128) keep it
    wide = _image(100, 200)
    out = prepare_ref_image(wide, 64, 64)                  # short side 100 -> 64, then centre 64x64
    assert out.shape == (3, 64, 64) and out.min() >= -1 and out.max() <= 1


def test_defaults(tmp_path):
    req = GenerateRequest(prompt="p", image=_image(720, 1280), audio=AudioInput(path=str(_wav(tmp_path / "a.wav", 6.0))))
    plan = resolve_s2v_request(req)
    assert (plan.steps, plan.shift, plan.guide, plan.infer_frames) == (40, 3.0, 4.5, 80)
    assert (plan.width, plan.height) == (1088, 640)           # default size 1024*704 is the area
    assert plan.neg_prompt.startswith("画面模糊") and plan.drop_first_motion
    assert plan.clips == 2                                   # int(T30 / 150) + 1 for 6 s


def test_clip_count_from_audio_and_num_clip(tmp_path):
    wav = AudioInput(path=str(_wav(tmp_path / "a.wav", 2.0)))
    assert resolve_s2v_request(_req(wav)).clips == 2         # the golden's audio_num_repeat
    assert resolve_s2v_request(_req(wav, num_clip=1)).clips == 1
    plan = resolve_s2v_request(_req(wav, num_clip=5))
    assert plan.clips == 2 and any("num_clip=5 lowered to 2" in w for w in plan.warnings)


def test_waveform_object_like_the_nodes_audio(tmp_path):
    class Clip:   # nodes.types.AudioClip: mono waveform tensor + sample_rate
        waveform = torch.sin(torch.arange(44100 * 2) / 44100 * 2 * math.pi * 200) * 0.3
        sample_rate = 44100

    plan = resolve_s2v_request(_req(Clip()))
    assert plan.audio.sample_rate == 44100 and abs(plan.audio.duration_s - 2.0) < 1e-6


# -- bad input ----------------------------------------------------------------------------------


def test_missing_audio_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        resolve_s2v_request(_req(AudioInput(path=str(tmp_path / "missing.wav"))))


def test_corrupt_and_empty_audio(tmp_path):
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"ID3" + bytes(range(256)) * 20)
    with pytest.raises(InputError, match="bad.mp3"):
        resolve_s2v_request(_req(AudioInput(path=str(bad))))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        resolve_s2v_request(_req(AudioInput(path=str(empty))))


def test_silent_audio(tmp_path):
    with pytest.raises(InputError, match="silent"):
        resolve_s2v_request(_req(AudioInput(path=str(_wav(tmp_path / "s.wav", 2.0, amp=0.0)))))


def test_audio_shorter_than_one_clip(tmp_path):
    wav = AudioInput(path=str(_wav(tmp_path / "short.wav", 0.5)))
    with pytest.raises(InputError, match="shorter than one clip.*at most 8"):
        resolve_s2v_request(_req(wav))                        # 16 frames = 1.0 s
    assert resolve_s2v_request(_req(wav, infer_frames=8)).clips >= 1


@pytest.mark.parametrize("frames", [18, 0, -4, 2])
def test_infer_frames_not_multiple_of_4(tmp_path, frames):
    with pytest.raises(ConfigError, match="multiple of 4"):
        resolve_s2v_request(_req(AudioInput(path=str(_wav(tmp_path / "a.wav", 2.0))), infer_frames=frames))


def test_missing_or_unreadable_image(tmp_path):
    from wan_core.io.images import load_image

    wav = AudioInput(path=str(_wav(tmp_path / "a.wav", 2.0)))
    req = GenerateRequest(prompt="p", audio=wav, s2v=S2VOptions(infer_frames=16))
    with pytest.raises(InputError, match="reference image"):
        resolve_s2v_request(req)
    junk = tmp_path / "face.png"
    junk.write_bytes(b"not a png")
    with pytest.raises(InputError, match="face.png"):
        load_image(junk)


def _pose_video(path, frames: int, fps: int = 16, size: int = 64):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.full((size, size, 3), (i * 7) % 255, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_pose_video_too_short(tmp_path):
    wav = AudioInput(path=str(_wav(tmp_path / "a.wav", 2.0)))
    short = _pose_video(tmp_path / "pose.mp4", 20)                  # 2 clips x 16 frames need 32
    with pytest.raises(InputError, match="pose video.*20 frames.*need 32.*--num_clip 1"):
        resolve_s2v_request(_req(wav, pose_video=str(short)))
    plan = resolve_s2v_request(_req(wav, pose_video=str(short), num_clip=1))
    assert plan.pose.usable_frames == 20
    at32 = _pose_video(tmp_path / "pose32.mp4", 64, fps=32)          # every 2nd frame at 32 fps
    assert resolve_s2v_request(_req(wav, pose_video=str(at32))).pose.usable_frames == 32
    with pytest.raises(InputError, match="does not exist"):
        resolve_s2v_request(_req(wav, pose_video=str(tmp_path / "nope.mp4")))


def test_pose_frames_sampling(tmp_path):
    from wan_core.pipeline.s2v_media import prepare_pose, read_pose_frames

    path = _pose_video(tmp_path / "p.mp4", 64, fps=32)
    frames = read_pose_frames(str(path), 10, 16)
    assert frames.shape == (10, 64, 64, 3)
    # frames 0, 2, 4, ...: the grey level steps by 14 (7 per source frame), up to H.264 error
    assert abs(int(frames[1].mean()) - int(frames[0].mean()) - 14) <= 3
    pose = prepare_pose(frames, 128, 128)
    assert pose.shape == (1, 3, 10, 128, 128) and pose.min() >= -1 and pose.max() <= 1


def test_clip_model_gives_the_negative_prompt_zero_audio():
    """uncond = negative prompt + audio * 0, in a batch of 2 and with one context per rank (CFG
    parallelism: the rank holding the negative prompt's context gets the zero audio)."""
    from wan_core.pipeline.s2v import _ClipModel

    seen = []

    def fake_model(x, t, contexts, ref, motion, cond, audio, motion_frames, drop_motion_frames):
        seen.append((len(contexts), audio.clone(), motion_frames, drop_motion_frames))
        return x

    ctx, ctx_null = torch.randn(3, 8), torch.randn(4, 8)
    audio = torch.randn(1, 25, 8, 16)
    m = _ClipModel(fake_model, ctx_null, None, None, None, audio, True)
    x = torch.zeros(2, 16, 4, 8, 8)
    m(x, torch.tensor([[999]]).expand(2, 1), [ctx, ctx_null])
    m(x[:1], torch.tensor([999]), [ctx_null])
    m(x[:1], torch.tensor([999]), [ctx])
    (n0, a0, mf, drop), (n1, a1, _, _), (n2, a2, _, _) = seen
    assert n0 == 2 and torch.equal(a0[0], audio[0]) and not a0[1].any()
    assert n1 == 1 and not a1.any()
    assert n2 == 1 and torch.equal(a2, audio)
    assert tuple(mf) == (73, 19) and drop is True
