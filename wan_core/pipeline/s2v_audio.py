"""S2V audio features: wav2vec2 hidden states -> per-video-frame buckets -> per-clip windows.

The official `AudioEncoder` (wan/modules/s2v/audio_encoder.py):
1. `extract_audio_feat`: all wav2vec2 hidden states [S=25, T50, C] (50 frames/s), linearly
   interpolated (`align_corners=True`) to int(T50 / 50 * 30) frames -> [S, T30, C] (30 frames/s).
2. `get_audio_embed_bucket_fps(fps=16, batch_frames=infer_frames, m=0)`: one 30-fps feature frame
   per 16-fps video frame, `min_batch_num = int(T30 / (infer_frames * 30/16)) + 1` clips (the
   clip count the audio allows), frames past the audio are zeros -> [clips * infer_frames, S, C].
3. The pipeline permutes it to [1, S, C, frames]; clip r uses frames [r*infer_frames, (r+1)*infer_frames).
The layer averaging (SiLU weights) happens inside the S2V DiT.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

FEATURE_FPS = 50      # wav2vec2 frames per second at 16 kHz (320 samples per frame)
VIDEO_RATE = 30       # the official AudioEncoder.video_rate


def linear_interpolation(features: torch.Tensor, input_fps: float = FEATURE_FPS,
                         output_fps: float = VIDEO_RATE) -> torch.Tensor:
    """[S, T, C] at input_fps -> [S, int(T / input_fps * output_fps), C] (official, align_corners)."""
    out_len = int(features.shape[1] / float(input_fps) * output_fps)
    y = F.interpolate(features.transpose(1, 2), size=out_len, align_corners=True, mode="linear")
    return y.transpose(1, 2)


def sample_indices(original_fps: float, total_frames: int, target_fps: float, num_sample: int,
                   fixed_start: int = 0) -> np.ndarray:
    """Official `get_sample_indices` with a fixed start: the source frame of each target frame."""
    required = num_sample / target_fps
    if required > total_frames / original_fps:
        raise ValueError("required_duration must be less than video length")
    start_time = fixed_start / original_fps
    points = np.linspace(start_time, start_time + required, num_sample, endpoint=False)
    idx = np.round(np.array(points) * original_fps).astype(int)
    return np.clip(idx, 0, total_frames - 1)


def num_clips_for(feature_frames: int, infer_frames: int, fps: int = 16) -> int:
    """Clips the audio allows (official `min_batch_num`): int(T30 / (infer_frames * 30 / fps)) + 1."""
    return int(feature_frames / (infer_frames * (VIDEO_RATE / fps))) + 1


def audio_embed_bucket_fps(audio_embed: torch.Tensor, fps: int = 16, batch_frames: int = 80,
                           m: int = 0) -> tuple[torch.Tensor, int]:
    """Official `get_audio_embed_bucket_fps` for all-layer features [S, T30, C].

    Returns ([clips * batch_frames, S, C * (2m+1)], clips).
    """
    num_layers, n, dim = audio_embed.shape
    clips = num_clips_for(n, batch_frames, fps)
    bucket_num = clips * batch_frames
    pad = math.ceil(clips * batch_frames / fps * VIDEO_RATE) - n
    idx = sample_indices(VIDEO_RATE, n + pad, fps, bucket_num, fixed_start=0)
    stride = int(VIDEO_RATE / fps)
    out = audio_embed.new_zeros(bucket_num, num_layers, dim * (2 * m + 1))
    for i, bi in enumerate(idx.tolist()):
        if bi < n:
            chosen = [min(max(c, 0), n - 1) for c in range(bi - m * stride, bi + (m + 1) * stride, stride)]
            out[i] = audio_embed[:, chosen].flatten(-2)
    return out, clips


@dataclass
class AudioFeatures:
    """Bucketed features of one audio: `embed` [1, S, C, clips * infer_frames] (the DiT's layout)."""

    embed: torch.Tensor
    clips: int                 # clips the audio allows
    infer_frames: int
    feature_frames: int        # T30
    duration_s: float

    def window(self, clip: int) -> torch.Tensor:
        """[1, S, C, infer_frames] for clip `clip` (official `audio_emb[..., r*F:(r+1)*F]`)."""
        a = clip * self.infer_frames
        return self.embed[..., a:a + self.infer_frames]


def extract_features(encoder, samples16k: np.ndarray) -> torch.Tensor:
    """16 kHz mono samples -> all-layer features [S, T30, C] float32 on CPU (official
    `extract_audio_feat(return_all_layers=True)`)."""
    states = encoder(samples16k)                     # [S, T50, C]
    return linear_interpolation(states.float().cpu())


def bucket_features(feat: torch.Tensor, infer_frames: int, fps: int = 16,
                    duration_s: float = float("nan")) -> AudioFeatures:
    """[S, T30, C] -> AudioFeatures with `embed` [1, S, C, clips * infer_frames]."""
    bucket, clips = audio_embed_bucket_fps(feat, fps=fps, batch_frames=infer_frames, m=0)
    embed = bucket[None].permute(0, 2, 3, 1).contiguous()
    return AudioFeatures(embed, clips, infer_frames, int(feat.shape[1]), duration_s)


__all__ = ["linear_interpolation", "sample_indices", "num_clips_for", "audio_embed_bucket_fps",
           "AudioFeatures", "extract_features", "bucket_features", "FEATURE_FPS", "VIDEO_RATE"]
