"""S2V inputs as pixels: the reference image and the pose video, preprocessed like the official
`WanS2V` (`get_size_less_than_area`, torchvision Resize/CenterCrop/ToTensor, `load_pose_cond`),
with PyAV in place of decord. No model work; `s2v_plan.py` checks the inputs with these and
`s2v.py` encodes the pose clips.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

Tensor = torch.Tensor

SIZE_DIVISOR = 64           # output height and width are multiples of this (official)


# ---------------------------------------------------------------------------------------------
# Image preprocessing (official get_size_less_than_area + torchvision Resize/CenterCrop/ToTensor)


def get_size_less_than_area(height: int, width: int, target_area: int = 1024 * 704,
                            divisor: int = SIZE_DIVISOR) -> tuple[int, int]:
    """Official `WanS2V.get_size_less_than_area`: the largest (H, W), multiples of 64, with
    H*W <= target_area and the image's aspect ratio (as far as the rounding allows)."""
    if height * width <= target_area:
        max_upper_area = target_area
        min_scale, max_scale = 0.1, 1.0
    else:
        max_upper_area = target_area
        d = divisor - 1
        b = d * (height + width)
        a = height * width
        c = d ** 2 - max_upper_area
        min_scale = (-b + math.sqrt(b ** 2 - 2 * a * c)) / (2 * a)
        max_scale = math.sqrt(max_upper_area / (height * width))
    for i in range(100):
        scale = max_scale - (max_scale - min_scale) * i / 100
        new_h, new_w = int(height * scale), int(width * scale)
        pad_h = (64 - new_h % 64) % 64
        pad_w = (64 - new_w % 64) % 64
        ph, pw = new_h + pad_h, new_w + pad_w
        if ph * pw <= max_upper_area:
            return ph, pw
    ar = width / height
    tw = int((target_area * ar) ** 0.5 // divisor * divisor)
    th = int((target_area / ar) ** 0.5 // divisor * divisor)
    if tw >= width or th >= height:
        tw = int(width // divisor * divisor)
        th = int(height // divisor * divisor)
    return th, tw


def _resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision `Resize(int)`: the shorter side becomes `size`, the other int(size * long / short)."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def center_crop(x: Tensor, out_h: int, out_w: int, fill: float = 0.0) -> Tensor:
    """torchvision `CenterCrop((h, w))` on [..., H, W] (padded with `fill` when the crop is larger)."""
    h, w = x.shape[-2:]
    if out_h > h or out_w > w:
        pl, pt = (out_w - w) // 2 if out_w > w else 0, (out_h - h) // 2 if out_h > h else 0
        pr, pb = (out_w - w + 1) // 2 if out_w > w else 0, (out_h - h + 1) // 2 if out_h > h else 0
        x = F.pad(x, (pl, pr, pt, pb), value=fill)
        h, w = x.shape[-2:]
        if out_h == h and out_w == w:
            return x
    top = int(round((h - out_h) / 2.0))
    left = int(round((w - out_w) / 2.0))
    return x[..., top:top + out_h, left:left + out_w]


def prepare_ref_image(image: Tensor, height: int, width: int) -> Tensor:
    """[3, H0, W0] in [0, 1] -> [3, height, width] in [-1, 1]: PIL bilinear Resize(min(h, w)),
    CenterCrop, ToTensor * 2 - 1 (the official order)."""
    from PIL import Image

    from ..io.images import pil_to_tensor, tensor_to_pil

    pil = tensor_to_pil(image)
    w0, h0 = pil.size
    nh, nw = _resized_size(h0, w0, min(height, width))
    if (nh, nw) != (h0, w0):
        pil = pil.resize((nw, nh), Image.BILINEAR)
    t = center_crop(pil_to_tensor(pil), height, width, fill=0.0)
    return t * 2 - 1.0


# ---------------------------------------------------------------------------------------------
# Pose video (PyAV instead of decord)


@dataclass
class PoseInfo:
    fps: float
    total_frames: int
    interval: int

    @property
    def usable_frames(self) -> int:
        """Frames the official sampling (every `interval`-th from the start) yields."""
        return (self.total_frames - 1) // self.interval + 1 if self.total_frames else 0


def _open_video(path: str):
    import av

    p = Path(path)
    if not p.is_file():
        raise InputError(f"pose video {path!r} does not exist")
    try:
        container = av.open(str(p))
    except (av.error.FFmpegError, ValueError) as exc:
        raise InputError(f"cannot read pose video {path!r} ({exc}); give an mp4/webm/mov video") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"pose video {path!r} has no video stream")
    return container


def probe_pose_video(path: str, target_fps: int = 16) -> PoseInfo:
    """Frame count and rate of a pose video, and the official sampling interval round(fps / 16)."""
    import av

    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else float(target_fps)
        try:
            total = sum(1 for _ in container.decode(stream))
        except av.error.FFmpegError as exc:
            raise InputError(f"pose video {path!r} is corrupt ({exc})") from None
    finally:
        container.close()
    return PoseInfo(fps=fps, total_frames=total, interval=max(1, round(fps / target_fps)))


def iter_pose_frames(path: str, n_frames: int, target_fps: int = 16):
    """Official `read_last_n_frames(..., reverse=True)` as a stream: frames 0, k, 2k, ...
    (k = round(fps / 16)), at most n_frames, each uint8 [H, W, 3] (decord -> PyAV)."""
    import av

    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else float(target_fps)
        interval = max(1, round(fps / target_fps))
        taken = 0
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i % interval == 0:
                    yield frame.to_ndarray(format="rgb24")
                    taken += 1
                    if taken >= n_frames:
                        break
        except av.error.FFmpegError as exc:
            raise InputError(f"pose video {path!r} is corrupt ({exc})") from None
    finally:
        container.close()


def read_pose_frames(path: str, n_frames: int, target_fps: int = 16) -> np.ndarray:
    """`iter_pose_frames` collected: uint8 [N, H, W, 3]."""
    out = list(iter_pose_frames(path, n_frames, target_fps))
    if not out:
        raise InputError(f"pose video {path!r} has no frames")
    return np.stack(out)


def pose_clips(path: str, clips: int, infer_frames: int, height: int, width: int, target_fps: int = 16):
    """Yield each clip's pose frames [1, 3, infer_frames, H, W] in [-1, 1], decoding the video as it
    goes (at most one clip of frames in memory)."""
    frames = iter_pose_frames(path, clips * infer_frames, target_fps)
    for r in range(clips):
        chunk = [f for _, f in zip(range(infer_frames), frames)]
        if len(chunk) < infer_frames:   # the plan counted enough frames; a damaged file decodes fewer
            raise InputError(f"pose video {path!r} decoded to {r * infer_frames + len(chunk)} frames at "
                             f"{target_fps} fps; {clips * infer_frames} are needed")
        yield prepare_pose(np.stack(chunk), height, width)


def prepare_pose(frames: np.ndarray, height: int, width: int) -> Tensor:
    """uint8 [N, H0, W0, 3] -> [1, 3, N, height, width] in [-1, 1] (torchvision tensor Resize with
    antialias, CenterCrop), as the official `load_pose_cond`."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0 * 2 - 1.0
    h0, w0 = x.shape[-2:]
    nh, nw = _resized_size(h0, w0, min(height, width))
    if (nh, nw) != (h0, w0):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    x = center_crop(x, height, width, fill=0.0)
    return x.permute(1, 0, 2, 3)[None]
