"""Helpers shared by the CUDA tests (tests/gpu).

fp32 parity on CUDA needs TF32 off for both matmuls and cuDNN convolutions (the VAE's): PyTorch's
default `cudnn.allow_tf32 = True` rounds convolution inputs to 10 mantissa bits (~1e-3 relative),
far above the fp32 tolerances these tests state.
"""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch


@contextmanager
def tf32_off():
    """TF32 off for matmuls and cuDNN inside the block; the previous flags are restored after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(scope="module", autouse=True)
def cuda_fp32_exact():
    """Module-wide: skip without CUDA, TF32 off for the module's tests (import it into the module)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    with tf32_off():
        yield
