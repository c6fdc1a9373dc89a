"""S2V-14B on CUDA (marked gpu; run on the device machine: `pytest -m gpu tests/gpu/test_s2v_gpu.py -s`).

What the CPU parity tests cannot show: the S2V DiT, wav2vec2 and the two-clip pipeline on CUDA
kernels (cuDNN convolutions, SDPA/flash attention with the S2V shapes: per-frame audio
cross-attention with 5 keys), bf16 weights (the official S2V param dtype), and the cost of one block
at the real width and token count.

Tolerances (rel_err = max|ours - golden| / max|golden|):
- fp32, TF32 off: DiT 1e-4, wav2vec2 features 1e-4, pipeline video 1e-3 (only CUDA summation order
  differs; measured on CPU: 0 to 6e-6).
- bf16 weights: DiT 5e-2, pipeline latent 1e-1 (bf16 rounding, 2^-9 per operation, through two
  layers, two clips and the VAE re-encode of the motion frames; a wrong segment or position is
  far above).
The audio goes in as a waveform (PyAV is not needed on the device machine).

On the device tool the whole wan22_tiny (117 MB) does not fit the 64 MiB transfer; carry the S2V
part only (48 MB, real files instead of the symbolic links) plus the ftfy wheels in `.whl/`:
    T=.s2vgpu/wan22_tiny; S=../shared/wan22_tiny; mkdir -p $T/ckpt/s2v-14B $T/golden $T/inputs
    cp $S/ckpt/s2v-14B/{config.json,diffusion_pytorch_model*} $T/ckpt/s2v-14B/
    cp -r $S/ckpt/s2v-14B/wav2vec2-large-xlsr-53-english $T/ckpt/s2v-14B/
    cp -rL $S/ckpt/shared/google $T/ckpt/s2v-14B/; cp $S/ckpt/shared/{models_t5_umt5-xxl-enc-bf16.pth,Wan2.1_VAE.pth} $T/ckpt/s2v-14B/
    cp $S/golden/{s2v,pipe_s2v}.safetensors $T/golden/; cp $S/inputs/{s2v_ref.png,test.wav} $T/inputs/
and run (carry [".s2vgpu", ".whl"]):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    WAN22_TINY=$PWD/.s2vgpu/wan22_tiny python3 -m pytest -m gpu tests/gpu/test_s2v_gpu.py -s
"""
from __future__ import annotations

import time
import wave

import numpy as np
import pytest
import torch

from conftest import rel_err
from tests.gpu._cuda import cuda_fp32_exact  # noqa: F401  (autouse: skip without CUDA, TF32 off)

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(900)]


def _call(model, g, t, drop):
    dev = model.patch_embedding.weight.device
    with torch.no_grad():
        return model(g["in_x"][None].to(dev), torch.tensor([t], device=dev), [g["in_ctx"].to(dev)],
                     g["in_ref"][None].to(dev), g["in_motion"][None].to(dev), g["in_cond"][None].to(dev),
                     g["in_audio"].to(dev), motion_frames=[73, 19], drop_motion_frames=bool(drop)).cpu()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)], ids=["fp32", "bf16"])
def test_dit_forward_cuda(tiny_dir, golden, dtype, tol):
    from wan_core.loading.s2v import load_s2v_dit
    from wan_core.models.attention import resolve_backend

    kernel = resolve_backend("auto" if dtype == torch.bfloat16 else "sdpa", "cuda")
    model = load_s2v_dit(tiny_dir / "ckpt" / "s2v-14B", dtype=dtype, device="cuda", kernel=kernel)
    g = golden("s2v")
    for t in (999, 300):
        for d in (0, 1):
            err = rel_err(_call(model, g, t, d)[0], g[f"out_t{t}_drop{d}"])
            print(f"s2v dit {dtype} ({kernel.name}) t{t} drop{d}: rel_err {err:.2e}")
            assert err < tol


def _wav_samples(path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768


def test_wav2vec2_cuda(tiny_dir, golden):
    from wan_core.loading.wav2vec2 import load_wav2vec2
    from wan_core.pipeline.s2v_audio import extract_features

    enc = load_wav2vec2(tiny_dir / "ckpt" / "s2v-14B" / "wav2vec2-large-xlsr-53-english", device="cuda")
    feat = extract_features(enc, _wav_samples(tiny_dir / "inputs" / "test.wav"))
    err = rel_err(feat, golden("s2v")["audio_feat_all_layers"])
    print(f"wav2vec2 cuda: rel_err {err:.2e}")
    assert err < 1e-4


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_pipeline_cuda(tiny_dir, golden, dtype):
    from wan_core.config import EngineSpec, GenerateRequest, ParamDtype, Task
    from wan_core.io.audio import AudioInput
    from wan_core.io.images import load_image_tensor
    from wan_core.pipeline.engine import WanEngine
    from wan_core.pipeline.s2v import S2VOptions

    engine = WanEngine(EngineSpec(task=Task.S2V_14B, ckpt_dir=str(tiny_dir / "ckpt" / "s2v-14B"), device="cuda",
                                  param_dtype=ParamDtype(dtype), attention="sdpa" if dtype == "fp32" else "auto"))
    req = GenerateRequest(prompt="a person is singing", size=(128, 128), steps=2, shift=3.0, guide_scale=4.5,
                          seed=42, image=load_image_tensor(tiny_dir / "inputs" / "s2v_ref.png"),
                          audio=AudioInput(waveform=_wav_samples(tiny_dir / "inputs" / "test.wav"), sample_rate=16000),
                          s2v=S2VOptions(infer_frames=16))
    trace = {}
    t0 = time.perf_counter()
    result = engine.generate(req, trace=lambda k, v: trace.__setitem__(k, v))
    print(f"s2v pipeline {dtype} on cuda: {time.perf_counter() - t0:.1f} s, timings {result.timings}")
    g = golden("pipe_s2v")
    assert torch.equal(trace["call00_x_in"], g["call00_x_in"])      # CPU generator -> same noise on GPU
    if dtype == "fp32":
        for k in [k for k in g if k.startswith("call") and k.endswith("_out")] + ["vae_decode_in0", "vae_decode_in1"]:
            assert rel_err(trace[k], g[k]) < 1e-3, k
        err = rel_err(trace["video"], g["video"])
        print(f"video rel_err {err:.2e}")
        assert err < 1e-3
    else:
        err = rel_err(trace["vae_decode_in1"], g["vae_decode_in1"])
        verr = rel_err(trace["video"], g["video"])
        print(f"bf16: final latents rel_err {err:.2e}, video {verr:.2e}")
        assert err < 1e-1
    assert result.video.shape == (29, 128, 128, 3) and sorted(result.extra_latents) == ["clip0", "clip1"]


def test_real_width_block_timing():
    """Two S2V blocks at the real width (dim 5120, 40 heads, ffn 13824) in bf16 on the token count of
    a 1024*704 reference at 80 frames per clip (59,840 video + 2,816 reference + 4,224 motion tokens):
    prints the time per block and the peak memory (the 40-block model is ~40x the block time)."""
    from wan_core.models.attention import resolve_backend
    from wan_core.models.dit import DiTConfig
    from wan_core.models.s2v import S2VConfig, WanModelS2V

    base = DiTConfig(model_type="s2v", in_dim=16, out_dim=16, dim=5120, ffn_dim=13824, freq_dim=256,
                     num_heads=40, num_layers=2, text_len=512)
    cfg = S2VConfig(base=base, audio_inject_layers=(0, 1))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = WanModelS2V(cfg, kernel=resolve_backend("auto", "cuda")).to(torch.bfloat16).eval()
    for p in model.parameters():
        p.data.mul_(0.02)
    h, w, f = 704 // 8, 1024 // 8, 20
    dev = "cuda"
    x = torch.randn(2, 16, f, h, w, device=dev)
    ref = torch.randn(1, 16, 1, h, w, device=dev)
    mot = torch.randn(1, 16, 19, h, w, device=dev)
    audio = torch.randn(2, 25, 1024, 4 * f, device=dev)
    ctx = [torch.randn(20, 4096, device=dev), torch.randn(30, 4096, device=dev)]
    torch.cuda.reset_peak_memory_stats()

    def run():
        with torch.no_grad():
            return model(x, torch.tensor([999, 999], device=dev), ctx, ref, mot, None, audio)

    out = run()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(3):
        out = run()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / 3
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    tokens = f * (h // 2) * (w // 2) + (h // 2) * (w // 2) + (h // 2) * (w // 2) + (h // 4) * (w // 4) + 4 * (h // 8) * (w // 8)
    print(f"real-width S2V, batch 2 (cond+uncond), {tokens} tokens, kernel "
          f"{model.blocks[0].self_attn.attn.kernel.name}: {dt:.2f} s per forward of 2 blocks "
          f"(~{dt / 2 * 40:.0f} s per 40-block step), peak {peak:.1f} GiB")
    assert torch.isfinite(out).all() and out.shape == (2, 16, f, h, w)
