"""Runtime building blocks without starting workers: shared-memory transport, GPU mapping."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from multiprocessing import Pipe
from typing import Optional

import pytest
import torch

from wan_core.config import GenerateResult, ParallelConfig
from wan_core.errors import ConfigError
from wan_core.runtime.processes import physical_gpu_ids
from wan_core.runtime.transport import SHM_DIR, Channel, ShmTensor, sweep

pytestmark = pytest.mark.timeout(60)


def _segments(prefix: str) -> list[str]:
    return [n for n in os.listdir(SHM_DIR) if n.startswith(prefix)]


@pytest.fixture
def prefix():
    p = f"wantest{secrets.token_hex(4)}_"
    yield p
    sweep(p)


@dataclass(frozen=True)
class _Frozen:
    big: torch.Tensor
    small: torch.Tensor
    nested: Optional[dict] = None


def test_channel_round_trip_moves_big_tensors_through_shm(prefix):
    a, b = Pipe()
    tx, rx = Channel(a, prefix, min_shm_bytes=4096), Channel(b, "unused")
    video = torch.randint(0, 255, (5, 48, 64, 3), dtype=torch.uint8)
    latent = torch.randn(16, 2, 6, 8)
    msg = GenerateResult(latent=latent, video=video, fps=16, seed=3,
                         extra_latents={"clip0": torch.randn(4, 4, 4, 4, dtype=torch.bfloat16)},
                         timings={"denoise": 1.5})
    packed, created = tx.pack(msg)
    # 30720-byte video and 6144-byte latent go to shm, the 512-byte bf16 tensor stays inline.
    assert isinstance(packed.video, ShmTensor) and isinstance(packed.latent, ShmTensor)
    assert isinstance(packed.extra_latents["clip0"], torch.Tensor)
    assert sorted(_segments(prefix)) == sorted(created) and len(created) == 2
    for name in created:
        os.unlink(os.path.join(SHM_DIR, name))

    tx.send(msg)
    assert len(_segments(prefix)) == 2          # parked until the receiver takes them
    got = rx.recv()
    assert _segments(prefix) == []             # the receiver copied and unlinked them
    assert torch.equal(got.video, video) and got.video.dtype == torch.uint8
    assert torch.equal(got.latent, latent)
    assert torch.equal(got.extra_latents["clip0"], msg.extra_latents["clip0"])
    assert got.timings == {"denoise": 1.5} and got.seed == 3


def test_frozen_dataclass_and_containers(prefix):
    a, b = Pipe()
    tx, rx = Channel(a, prefix, min_shm_bytes=1), Channel(b, "unused")
    big = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)[:, 1:]   # non-contiguous
    msg = _Frozen(big=big, small=torch.tensor([1, 2]), nested={"l": [torch.ones(3)], "t": (torch.zeros(2), 5)})
    tx.send(msg)
    got = rx.recv()
    assert isinstance(got, _Frozen)
    assert torch.equal(got.big, big) and got.big.is_contiguous()
    assert torch.equal(got.nested["l"][0], torch.ones(3)) and got.nested["t"][1] == 5
    assert _segments(prefix) == []


def test_sweep_removes_leftovers(prefix):
    a, _ = Pipe()
    Channel(a, prefix, min_shm_bytes=1).send(torch.ones(1000))   # never received
    assert len(_segments(prefix)) == 1
    assert sweep(prefix) == 1 and _segments(prefix) == []


def test_physical_gpu_ids_map_through_parent_list():
    two = ParallelConfig(num_gpus=2, ulysses_size=2)
    assert physical_gpu_ids(two, None, lambda: 4) == ["0", "1"]
    # ComfyUI --cuda-device 3,5: logical 0,1 are physical 3,5.
    assert physical_gpu_ids(two, "3,5", lambda: 0) == ["3", "5"]
    picked = ParallelConfig(num_gpus=2, ulysses_size=2, gpu_ids=(1, 2))
    assert physical_gpu_ids(picked, "GPU-a,GPU-b,GPU-c", lambda: 0) == ["GPU-b", "GPU-c"]
    with pytest.raises(ConfigError, match="shows 2 GPU"):
        physical_gpu_ids(picked, "3,5", lambda: 0)
    with pytest.raises(ConfigError, match="GPU index 1"):
        physical_gpu_ids(two, None, lambda: 1)
