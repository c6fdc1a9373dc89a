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


# ComfyUI: LATENT        {"samples": float [B, C, f, h, w]} in the VAE's own space (its Wan latent
#                        formats' process_out(x) = x * std + mean of the normalised latent)
#          CONDITIONING  [[float [B, L, D], {extras}], ...]; umT5 rows past the prompt are zeros
# engine:  latent        float32 [C, f, h, w], normalised ((z - mean) / std, official)
#          context       float32 [L, D], the prompt's real tokens only
def _latent_stats(vae: str, like):
    """(mean, 1/std) [1, C, 1, 1, 1] of the task's VAE: the engine's own constants and formula
    (models.vae_common.latent_stats), so a native LATENT decodes to the engine's frames."""
    from wan_core.models.vae_common import latent_stats

    if vae == "2.2":
        from wan_core.models.vae22 import WAN22_LATENT_MEAN as mean, WAN22_LATENT_STD as std
    else:
        from wan_core.models.vae21 import WAN21_LATENT_MEAN as mean, WAN21_LATENT_STD as std
    return latent_stats(mean, std, like)


def latent_to_comfy(latents, vae: str) -> dict:
    """Engine latents [C, f, h, w] (several: S2V clips, joined along the frames) -> a native LATENT."""
    import torch

    z = torch.cat([lat.float().cpu() for lat in latents], dim=1)[None]
    mean, inv_std = _latent_stats(vae, z)
    return {"samples": (z / inv_std + mean).contiguous()}


def latent_from_comfy(value, vae: str):
    """A native LATENT (one video) -> the engine's normalised latent [C, f, h, w] float32."""
    import torch
    from wan_core.pipeline.video_tasks import Z_DIM

    channels = Z_DIM[vae]

    samples = value.get("samples") if isinstance(value, dict) else None
    if not isinstance(samples, torch.Tensor):
        raise InputError("the latent input must be a ComfyUI LATENT (a dict with 'samples')")
    if samples.dim() != 5 or samples.shape[0] != 1 or samples.shape[1] != channels:
        raise InputError(f"the latent input has shape {tuple(samples.shape)}; this model takes one video "
                         f"latent [1, {channels}, frames, height, width] of the Wan {vae} VAE "
                         f"({'TI2V-5B' if channels == 48 else 'A14B / S2V'})")
    if value.get("noise_mask") is not None:
        raise InputError("the latent input carries a noise mask (inpainting), which this sampler does "
                         "not use; remove the Set Latent Noise Mask node")
    z = samples.float().cpu()
    mean, inv_std = _latent_stats(vae, z)
    return ((z - mean) * inv_std)[0].contiguous()


def context_from_conditioning(value, what: str):
    """A native CONDITIONING from CLIPTextEncode (Wan umT5) -> embeddings [L, D] float32 of the
    prompt's tokens: ComfyUI pads to 512 tokens and zeroes the padded rows, the engine (as the
    official pipeline) passes only the real ones and the DiT pads them back with zeros."""
    import torch

    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], (list, tuple)) \
            or not isinstance(value[0][0], torch.Tensor):
        count = len(value) if isinstance(value, list) else type(value).__name__
        raise InputError(f"{what} must be one CONDITIONING from CLIPTextEncode (got {count} entries; "
                         "combined or concatenated conditionings are not supported)")
    cond = value[0][0]
    if cond.dim() != 3 or cond.shape[0] != 1:
        raise InputError(f"{what} has shape {tuple(cond.shape)}; expected one prompt [1, tokens, channels]")
    rows = cond[0].float().cpu()
    nonzero = rows.abs().amax(dim=1) > 0
    if not bool(nonzero.any()):
        raise InputError(f"{what} is all zeros (an empty or zeroed-out conditioning)")
    last = int(nonzero.nonzero().max()) + 1
    return rows[:last].contiguous()
