"""One GPU call's worth of step-time work (issue 17, item 4): a full-size A14B expert at 720P with CFG
(cond + uncond batched), random bf16 weights, on one GPU.

1. the machine's ceilings (8192^3 bf16 matmul);
2. seconds per step for each set of block ops (models/fused.py): `reference` (the official op
   order, float64 RoPE: our baseline as on main), `fast` (float32 RoPE, fewer passes, eager) and
   `compile` (the fast ops each compiled into one kernel), the same weights and inputs;
3. how far each set's prediction is from `reference` (bf16 noise expected: ~1e-2 relative);
4. a torch.profiler breakdown of one step by kernel category for `reference` and the fastest set;
5. VAE decode of 81 frames at 1280x720 (Wan2.1 VAE, random weights) in bf16, seconds and peak.

Writes one JSON object to --out and prints a short table last.
    python bench/step_profile.py --res 720p --ops reference,fast,compile --profile --vae --out r.json
    python bench/step_profile.py --smoke    # tiny model on the CPU: checks the script only
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wan_core.models import fused  # noqa: E402
from wan_core.models.attention import resolve_backend  # noqa: E402
from wan_core.models.dit import DiTConfig, WanModel  # noqa: E402

A14B = dict(model_type="t2v", in_dim=16, out_dim=16, dim=5120, ffn_dim=13824, freq_dim=256,
            num_heads=40, num_layers=40, text_len=512, eps=1e-6)
LATENT = {"720p": (21, 90, 160), "480p": (21, 60, 104), "640": (21, 80, 80)}
STEP_FLOP = {"720p": 1.305e16, "480p": 3.357e15}


def categorize(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("flash", "fmha", "attention", "cudnn_generated", "sdpa", "flash_fwd")):
        return "attention"
    if any(k in n for k in ("gemm", "nvjet", "xmma", "cutlass", "matmul", "sm90_")):
        return "matmul"
    if n.startswith("triton"):
        return "triton (fused)"
    if "layer_norm" in n or "rms" in n or "norm" in n:
        return "norms"
    if any(k in n for k in ("copy", "cat", "memcpy", "memset", "fill")):
        return "copies/casts/cat"
    if "reduce" in n:
        return "reductions"
    return "other elementwise"


def profile_step(step, label: str) -> dict:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        step()
        torch.cuda.synchronize()
    cats: dict[str, float] = {}
    top = []
    for e in prof.key_averages():
        if e.device_type != DeviceType.CUDA:
            continue
        t = e.self_device_time_total / 1e6
        cats[categorize(e.key)] = cats.get(categorize(e.key), 0.0) + t
        top.append((t, e.count, e.key[:120]))
    top.sort(reverse=True)
    return dict(label=label, seconds_by_category={k: round(v, 3) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
                total_kernel_s=round(sum(cats.values()), 3),
                top_kernels=[dict(s=round(t, 3), n=c, name=k) for t, c, k in top[:30]])


def matmul_tflops(device) -> float:
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192 ** 3 * 10 / (time.perf_counter() - t0) / 1e12


def vae_decode(device, res: str, smoke: bool) -> dict:
    """Decode time of 81 frames at `res` and at 640x640 (the template's size)."""
    return {r: _vae_decode(device, r, smoke) for r in dict.fromkeys([res, "640"])}


def _vae_decode(device, res: str, smoke: bool) -> dict:
    from wan_core.models.vae21 import WAN21_CONFIG, WanVAE21
    from wan_core.models.vae_common import VAEConfig

    cfg = VAEConfig(dim=8, z_dim=16, dec_dim=8) if smoke else WAN21_CONFIG
    torch.manual_seed(0)
    vae = WanVAE21(cfg).to(device=device, dtype=torch.bfloat16).eval()
    f, h, w = LATENT[res] if not smoke else (3, 4, 6)
    z = torch.randn(1, 16, f, h, w, device=device)
    out = {}
    for i in range(2):   # first: warm-up (cuDNN picks algorithms), second: timed
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
        t0 = time.perf_counter()
        video = vae.decode(z)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out = dict(seconds=round(time.perf_counter() - t0, 3), frames=int(video.shape[2]),
                   size=f"{video.shape[4]}x{video.shape[3]}", dtype="bf16",
                   peak_above_weights_gb=round((torch.cuda.max_memory_allocated() - base) / 2**30, 2)
                   if device.type == "cuda" else None)
        del video
    return out


def save(result: dict, out) -> None:
    """Write what is measured so far (a call cut short still returns it)."""
    if out:
        Path(out).write_text(json.dumps(result, indent=1))


def formats(model, args, gen, ctx, t, device, sync) -> list:
    """Seconds per forward and peak memory of one model held as bf16, bf16 + LoRA (rank 64),
    fp8 (dequantized per linear) and fp8_fast (torch._scaled_mm), at `args.formats` (res:batch)."""
    from wan_core.loading.fp8 import DIT_FP8_LAYERS, Fp8FastLinear, Fp8Linear, apply_fp8
    from wan_core.loading.lora import ModelLoras, param_shapes, parse_lora, random_lora

    res, batch = args.formats.split(":")
    f, h, w = LATENT[res]
    b = int(batch)
    xe = torch.randn(b, 16, f, h, w, generator=gen).to(device)
    sl = f * (h // 2) * (w // 2)
    cuda = device.type == "cuda"
    out = []

    def timed(label):
        times = []
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(1 + args.steps):
            t0 = time.perf_counter()
            with torch.no_grad():
                y = model(xe, t[:b], ctx[:b], sl)
            sync()
            times.append(time.perf_counter() - t0)
        e = dict(format=label, res=res, batch=b, s_per_forward=round(statistics.median(times[1:]), 3),
                 first_s=round(times[0], 2), finite=bool(torch.isfinite(y).all()),
                 weights_gb=round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30, 2),
                 peak_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None)
        out.append(e)
        print(json.dumps(e), flush=True)
        return y

    ref = timed("bf16").float()
    loras = ModelLoras(model, device)
    shapes = param_shapes(model)
    loras.set([(parse_lora(random_lora(shapes, 64, dtype=torch.bfloat16), shapes), 1.0)])
    timed("bf16+lora64")
    loras.clear()
    names = [n for n, m in model.named_modules() if DIT_FP8_LAYERS.match(n)]
    apply_fp8(model, names, torch.bfloat16, fast=False)
    y = timed("fp8").float()
    out[-1]["rel_err_vs_bf16"] = float((y - ref).norm() / ref.norm())
    for m in model.modules():
        if type(m) is Fp8Linear:
            m.__class__ = Fp8FastLinear
    y = timed("fp8_fast").float()
    out[-1]["rel_err_vs_bf16"] = float((y - ref).norm() / ref.norm())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--res", choices=sorted(LATENT), default="720p")
    p.add_argument("--ops", default="reference,fast,compile")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--attn", default="auto")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--profile-best-only", action="store_true", help="profile only the fastest ops set")
    p.add_argument("--vae", action="store_true")
    p.add_argument("--extra", default="",
                   help="more sizes for the last ops set only, e.g. '640:1,480p:2' (res:batch; batch 1 = cfg 1)")
    p.add_argument("--formats", default="",
                   help="weight formats at a res:batch (e.g. '640:1'): bf16, bf16 + rank-64 LoRA on every block "
                        "matrix, fp8, fp8_fast; one forward each, last ops set")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()

    cfg = dict(A14B)
    if args.smoke:
        cfg.update(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_len=32)
        LATENT.update({k: (2, 8, 12) for k in LATENT})
        device = torch.device("cpu")
    else:
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    result: dict = dict(res=args.res, gpu=torch.cuda.get_device_name(0) if cuda else "cpu (smoke)",
                        torch=torch.__version__, date=time.strftime("%Y-%m-%d %H:%M"), variants=[])
    if cuda:
        result["matmul_tflops_8192"] = round(matmul_tflops(device), 1)
    backend = resolve_backend(args.attn, device)
    result["attention"] = backend.name

    with torch.device("meta"):
        model = WanModel(DiTConfig(**cfg)).to(torch.bfloat16)
    model.set_attention_kernel(backend)
    model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(1234)
    with torch.no_grad():
        for prm in model.parameters():
            prm.normal_(0.0, 0.02, generator=g)
    model.eval()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    f, h, w = LATENT[args.res]
    gen = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(1, 16, f, h, w, generator=gen).to(device)
    ctx = torch.cat([0.5 * torch.randn(1, cfg["text_len"], 4096, generator=gen) for _ in range(2)]).to(device)
    seq_len = f * (h // 2) * (w // 2)
    t = torch.tensor([999.0, 999.0], device=device)

    def step():
        with torch.no_grad():
            out = model(torch.cat([x, x]), t, ctx, seq_len)
            return out[1:] + 4.0 * (out[:1] - out[1:])

    ref_out = None
    timings = {}
    ops_sets: dict = {}
    for name in args.ops.split(","):
        ops = {"reference": fused.REFERENCE, "fast": fused.FAST,
               "compile": fused.compiled_ops(fused.FAST)}[name]
        ops_sets[name] = ops
        model.set_block_ops(ops)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            out = step()
        sync()
        warm_s = time.perf_counter() - t0
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            out = step()
            sync()
            times.append(time.perf_counter() - t0)
        s = statistics.median(times)
        timings[name] = s
        v = dict(ops=name, s_per_step=round(s, 3), steps=[round(v, 3) for v in times], warmup_s=round(warm_s, 1),
                 peak_gb=round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None)
        if args.res in STEP_FLOP and cuda:
            v["tflops"] = round(STEP_FLOP[args.res] / s / 1e12, 1)
        if name == "compile":
            v["compile_fell_back"] = [k for k in ("modulate", "gated_residual", "norm_affine", "rms_norm",
                                                  "qk_norm_rope") if getattr(ops, k).failed]
        o = out.float()
        if ref_out is None:
            ref_out = o
        else:
            v["rel_err_vs_first"] = float((o - ref_out).norm() / ref_out.norm())
        v["finite"] = bool(torch.isfinite(o).all())
        result["variants"].append(v)
        print(json.dumps(v), flush=True)
        save(result, args.out)
    del ref_out, out, o

    if args.profile and cuda:
        names = args.ops.split(",")
        best = min(timings, key=timings.get)
        result["profiles"] = []
        for name in ([best] if args.profile_best_only else
                     dict.fromkeys(["reference" if "reference" in names else names[0], best])):
            model.set_block_ops(ops_sets[name])   # the same (already compiled) set as timed
            result["profiles"].append(profile_step(step, name))
            print(json.dumps(result["profiles"][-1]["seconds_by_category"]), flush=True)
            save(result, args.out)
    last = args.ops.split(",")[-1]
    result["extra"] = []
    for item in filter(None, args.extra.split(",")):
        res, batch = item.split(":")
        f, h, w = LATENT[res]
        xe = torch.randn(int(batch), 16, f, h, w, generator=gen).to(device)
        ce = ctx[: int(batch)]
        te = t[: int(batch)]
        sl = f * (h // 2) * (w // 2)
        times = []
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for i in range(1 + args.steps):
            t0 = time.perf_counter()
            with torch.no_grad():
                model(xe, te, ce, sl)
            sync()
            times.append(time.perf_counter() - t0)
        e = dict(ops=last, res=res, batch=int(batch), tokens=sl, s_per_forward=round(statistics.median(times[1:]), 3),
                 first_s=round(times[0], 1), peak_gb=round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None)
        result["extra"].append(e)
        print(json.dumps(e), flush=True)
    if args.formats:
        result["formats"] = formats(model, args, gen, ctx, t, device, sync)
        save(result, args.out)
    model = None
    if cuda:
        torch.cuda.empty_cache()
    if args.vae:
        result["vae_decode"] = vae_decode(device, args.res, args.smoke)
        print(json.dumps(result["vae_decode"]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print("\n| ops | s/step | peak GB | rel err vs first |")
    for v in result["variants"]:
        print(f"| {v['ops']} | {v['s_per_step']} | {v['peak_gb']} | {v.get('rel_err_vs_first', '-')} |")


if __name__ == "__main__":
    main()
