"""Correctness checks on the GPU machine (run by hand with the device tool; CI has no GPU).

Writes a tiny random-weight T2V-A14B checkpoint with our own writer (nothing to carry), then:
  1. CPU fp32 in-process: the reference latent.
  2. 1 GPU, bf16 weights, in-process: against (1); which attention backend ran.
  3. 1 GPU, fp32 weights: against (1) (same math, TF32 off).
  4. N GPUs through the worker group (NCCL): Ulysses N + dit_fsdp + t5_fsdp, and CFG-parallel x
     Ulysses, each against (2) (bf16 vs bf16) and (1).
Prints and writes JSON (--out). Usage: python bench/gpu_checks.py --gpus 2 --out $OUT/gpu_checks.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wan_core.config import EngineSpec, GenerateRequest, ParallelConfig, ParamDtype, Task  # noqa: E402
from wan_core.tinyckpt import TinySizes, write_tiny_t2v  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    p.add_argument("--out", default=None)
    args = p.parse_args()
    from wan_core.client import EngineClient
    from wan_core.pipeline.engine import WanEngine

    ckpt = Path(tempfile.mkdtemp()) / "tiny-t2v"
    # 8 heads so that Ulysses 2, 4 and 8 all divide the head count.
    write_tiny_t2v(ckpt, TinySizes(dit_dim=512, dit_heads=8, dit_ffn=1024))
    # 4 latent frames x 12 x 16 latent grid -> 192 tokens: big enough for Ulysses 2/4/8 padding tests.
    request = GenerateRequest(prompt="two cats fight on a stage", size=(256, 192), frame_num=13,
                              steps=6, seed=42, decode=False)
    results: dict = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
                     "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}

    def run_local(device: str, dtype: ParamDtype) -> tuple[torch.Tensor, str]:
        engine = WanEngine(EngineSpec(task=Task.T2V_A14B, ckpt_dir=str(ckpt), device=device, param_dtype=dtype))
        out = engine.generate(request)
        name = engine.attention
        engine.close()
        return out.latent, name

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref, _ = run_local("cpu", ParamDtype.FP32)
    gpu32, attn32 = run_local("cuda", ParamDtype.FP32)
    gpu16, attn16 = run_local("cuda", ParamDtype.BF16)
    results["attention_backend"] = attn16
    results["cuda_fp32_vs_cpu_fp32"] = rel(gpu32, ref)
    results["cuda_bf16_vs_cpu_fp32"] = rel(gpu16, ref)

    layouts = []
    if args.gpus >= 2:
        layouts += [("ulysses2_fsdp_t5fsdp", ParallelConfig(num_gpus=2, ulysses_size=2, dit_fsdp=True, t5_fsdp=True)),
                    ("cfg2", ParallelConfig(num_gpus=2, cfg_parallel=True, ulysses_size=1)),
                    ("ulysses2", ParallelConfig(num_gpus=2, ulysses_size=2))]
    if args.gpus >= 4:
        layouts += [("ulysses4_fsdp", ParallelConfig(num_gpus=4, ulysses_size=4, dit_fsdp=True)),
                    ("cfg2_x_ulysses2", ParallelConfig(num_gpus=4, cfg_parallel=True, ulysses_size=2, dit_fsdp=True))]
    if args.gpus >= 8:
        layouts += [("ulysses8_fsdp", ParallelConfig(num_gpus=8, ulysses_size=8, dit_fsdp=True)),
                    ("cfg2_x_ulysses4", ParallelConfig(num_gpus=8, cfg_parallel=True, ulysses_size=4, dit_fsdp=True))]
    for name, par in layouts:
        spec = EngineSpec(task=Task.T2V_A14B, ckpt_dir=str(ckpt), device="cuda", param_dtype=ParamDtype.BF16,
                          parallel=par)
        t0 = time.perf_counter()
        try:
            with EngineClient(spec) as client:
                out = client.generate(request)
                again = client.generate(request)   # warm group, second request: same seed, same latent
            results[name] = {"vs_1gpu_bf16": rel(out.latent, gpu16), "vs_cpu_fp32": rel(out.latent, ref),
                             "repeat_identical": bool(torch.equal(out.latent, again.latent)),
                             "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as exc:  # report and go on with the next layout
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        print(name, results[name], flush=True)
    print(json.dumps(results, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
