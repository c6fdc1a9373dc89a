"""Conversions between ComfyUI's values and the engine's (pure torch, no ComfyUI import).

ComfyUI:  IMAGE  float32 [B, H, W, C] in [0, 1] (C = 3, or 4 with alpha)
          AUDIO  {"waveform": float [B, C, T], "sample_rate": int}
engine:   image  float32 [3, H, W] in [0, 1]  (GenerateRequest.image)
          audio  wan_core.io.audio.AudioInput (GenerateRequest.audio)
          video  uint8 [F, H, W, 3]           (GenerateResult.video)
"""
from __future__ import annotations

from wan_core.errors import InputError


def image_to_engine(image):
    """First picture of a ComfyUI IMAGE batch -> [3, H, W] float32 in [0, 1] (alpha dropped)."""
    import torch

    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[-1] not in (1, 3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"the image input must be a ComfyUI IMAGE [B, H, W, C], got {shape}")
    picture = image[0, :, :, :3].float()
    if picture.shape[-1] == 1:
        picture = picture.expand(-1, -1, 3)
    return picture.permute(2, 0, 1).clamp(0.0, 1.0).contiguous().cpu()


def video_to_frames(video):
    """Engine frames uint8 [F, H, W, 3] -> IMAGE [F, H, W, 3] float32 in [0, 1]."""
    import torch

    if not isinstance(video, torch.Tensor) or video.dim() != 4 or video.shape[-1] != 3 \
            or video.dtype != torch.uint8:
        raise InputError(f"expected decoded uint8 frames [F, H, W, 3], got "
                         f"{(tuple(video.shape), video.dtype) if isinstance(video, torch.Tensor) else type(video).__name__}")
    return video.float().div_(255.0)


def audio_from_comfy(audio):
    """ComfyUI AUDIO -> the engine's AudioInput (first batch item, channels kept: the engine mixes
    to mono and resamples to 16 kHz exactly as the official pipeline does)."""
    import torch
    from wan_core.io.audio import AudioInput

    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise InputError("the audio input must be a ComfyUI AUDIO (from LoadAudio): a dict with "
                         "'waveform' [B, C, T] and 'sample_rate'")
    wave = audio["waveform"]
    if not isinstance(wave, torch.Tensor) or wave.dim() != 3 or wave.shape[-1] == 0:
        raise InputError(f"AUDIO waveform must be a non-empty tensor [B, C, T], got "
                         f"{tuple(wave.shape) if isinstance(wave, torch.Tensor) else type(wave).__name__}")
    return AudioInput(waveform=wave[0].detach().float().cpu().numpy(), sample_rate=int(audio["sample_rate"]))


def audio_to_comfy(samples, sample_rate: int) -> dict:
    """float samples [C, T] or [T] -> ComfyUI AUDIO [1, C, T]."""
    import torch

    wave = torch.as_tensor(samples, dtype=torch.float32)
    if wave.dim() == 1:
        wave = wave[None]
    return {"waveform": wave[None].contiguous(), "sample_rate": int(sample_rate)}
