"""mp4 (H.264) writing and reading through PyAV.

The pixel conversion is the official one (`wan/utils/utils.py::save_video`): clamp to [-1, 1],
`(x + 1) / 2`, then `(x * 255).to(uint8)`, which truncates rather than rounds. The encoder settings
follow what the official `imageio.get_writer(codec='libx264', quality=8)` passes to ffmpeg:
libx264, yuv420p, crf = int((1 - 8/10) * 51) = 10.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch

from ..errors import InputError

_CRF = 10   # imageio-ffmpeg's mapping of quality=8 for libx264


def video_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """[3, F, H, W] float in [-1, 1] -> [F, H, W, 3] uint8 (CPU), truncating like the official code."""
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a video [3, F, H, W], got {tuple(video.shape)}")
    x = video.detach().float().clamp(-1.0, 1.0)
    x = (x + 1.0) / 2.0
    return (x * 255.0).to(torch.uint8).permute(1, 2, 3, 0).contiguous().cpu()


def write_mp4(frames: Union[torch.Tensor, np.ndarray], path: Union[str, os.PathLike], fps: int,
              crf: int = _CRF) -> Path:
    """Write uint8 frames [F, H, W, 3] (RGB) to an H.264 mp4 at `path`; returns the path.

    Odd frame sizes cannot use 4:2:0 chroma; they are written as yuv444p instead.
    A file that fails half way is removed, so a file on disk is always a complete video.
    """
    import av

    arr = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [F, H, W, 3], got {arr.dtype} {arr.shape}")
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    _, height, width, _ = arr.shape
    pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    try:
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("libx264", rate=int(fps))
            stream.width = width
            stream.height = height
            stream.pix_fmt = pix_fmt
            stream.options = {"crf": str(crf)}
            for img in arr:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    except BaseException:
        if path.exists():
            path.unlink()
        raise
    return path


@dataclass
class VideoFile:
    frames: np.ndarray      # uint8 [F, H, W, 3] RGB
    fps: float
    codec: str              # e.g. "h264"
    width: int
    height: int


def read_video(path: Union[str, os.PathLike]) -> VideoFile:
    """Decode every frame of a video file (for tests and for inspecting outputs)."""
    import av

    p = Path(path)
    if not p.is_file():
        raise InputError(f"video file {str(p)!r} does not exist")
    try:
        with av.open(str(p)) as container:
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            fps = float(stream.average_rate) if stream.average_rate else float("nan")
            codec = stream.codec_context.name
            width, height = stream.codec_context.width, stream.codec_context.height
    except av.error.FFmpegError as exc:
        raise InputError(f"cannot read video file {str(p)!r}: {exc}") from None
    data = np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8)
    return VideoFile(frames=data, fps=fps, codec=codec, width=width, height=height)
