"""Seconds per denoising step of a full-size Wan2.2 A14B expert (random bf16 weights) on the GPUs.

One step = the conditional and the unconditional forward (CFG on), batch 1 each, 512 text tokens,
as in ../shared/gpu/README.md, so the figures compare with the official code's table there.
Speed does not depend on weight values, so random weights stand in for the real checkpoint.

Run (one process per GPU, under torchrun or alone for 1 GPU):
    python bench/bench_dit.py --res 720p --modes single,single-seq
    torchrun --nproc_per_node 2 bench/bench_dit.py --res 720p --modes fsdp_ulysses,ulysses,cfg
Modes:
    single-seq    1 GPU, cond then uncond as two batch-1 forwards (what the official code does)
    single        1 GPU, cond and uncond batched into one batch-2 forward (our default)
    ulysses       N GPUs, Ulysses degree N, full weights on every GPU, batched CFG
    fsdp_ulysses  N GPUs, FSDP2 + Ulysses N, batched CFG
    cfg           2 GPUs, cond on one and uncond on the other (CFG-parallel), full weights
    cfg_fsdp      2 GPUs, CFG-parallel + FSDP2
Prints one JSON line per mode (rank 0) and appends it to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wan_core.config import OffloadMode, ParallelConfig  # noqa: E402
from wan_core.models.attention import resolve_backend  # noqa: E402
from wan_core.models.dit import DiTConfig, WanModel  # noqa: E402

A14B = dict(model_type="t2v", in_dim=16, out_dim=16, dim=5120, ffn_dim=13824, freq_dim=256,
            num_heads=40, num_layers=40, text_len=512, eps=1e-6)
# latent (frames, height, width) for 81 frames: 720P 1280x720 -> 21x90x160, 480P 832x480 -> 21x60x104
LATENT = {"720p": (21, 90, 160), "480p": (21, 60, 104)}
# FLOPs of one step (cond + uncond) from ../shared/gpu/README.md
STEP_FLOP = {"720p": 1.305e16, "480p": 3.357e15}


class UtilSampler:
    """Samples GPU utilisation (NVML) of this rank's GPU while the timed steps run."""

    def __init__(self, index: int) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._h = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except Exception:
            self._nvml = None

    def __enter__(self):
        if self._nvml:
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.1):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._h).gpu)

    def __exit__(self, *exc):
        self._stop.set()

    @property
    def mean(self):
        return round(statistics.mean(self.samples), 1) if self.samples else None


def build_model(mode: str, dist_ctx, device: torch.device, backend) -> WanModel:
    from wan_core.distributed.fsdp import apply_fsdp
    from wan_core.distributed.mesh import fsdp_mesh
    from wan_core.distributed.ulysses import apply_ulysses

    with torch.device("meta"):
        # bf16 from the start, as the engine loads (no fp32 copy on the GPU, ever).
        model = WanModel(DiTConfig(**A14B)).to(torch.bfloat16)
    model.set_attention_kernel(backend)
    if dist_ctx.ulysses_size > 1:
        apply_ulysses(model, dist_ctx.ulysses_group, dist_ctx.ulysses_size, dist_ctx.ulysses_rank)
    fsdp = mode in ("fsdp_ulysses", "cfg_fsdp")
    if fsdp:
        apply_fsdp(model, fsdp_mesh(dist_ctx.world_group, device.type), param_dtype=torch.bfloat16)
    model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(1234 + dist_ctx.rank)
    with torch.no_grad():
        for p in model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            local.normal_(0.0, 0.02, generator=g)
    return model.eval()


def run_mode(mode: str, args, dist_ctx, device: torch.device) -> dict:
    from wan_core.distributed import cfg_parallel

    backend = resolve_backend(args.attn, device)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(mode, dist_ctx, device, backend)
    weights_gb = torch.cuda.memory_allocated(device) / 2**30 if cuda else 0.0
    if cuda:   # the peak below is weights + what a step needs, not the random initialisation
        torch.cuda.reset_peak_memory_stats(device)
    f, h, w = LATENT[args.res]
    gen = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(1, 16, f, h, w, generator=gen).to(device)
    ctx = [0.5 * torch.randn(1, A14B["text_len"], 4096, generator=gen).to(device) for _ in range(2)]
    seq_len = f * (h // 2) * (w // 2)
    seq_len = -(-seq_len // dist_ctx.ulysses_size) * dist_ctx.ulysses_size
    t = torch.tensor([999], device=device)

    def step():
        with torch.no_grad():
            if mode == "single-seq":
                cond = model(x, t, ctx[0], seq_len)
                uncond = model(x, t, ctx[1], seq_len)
                return cfg_parallel.combine(cond, uncond, 4.0)
            if mode in ("cfg", "cfg_fsdp"):
                mine = model(x, t, ctx[dist_ctx.cfg_rank], seq_len)
                cond, uncond = cfg_parallel.exchange(dist_ctx, mine)
                return cfg_parallel.combine(cond, uncond, 4.0)
            out = model(torch.cat([x, x]), t.expand(2), torch.cat(ctx), seq_len)
            return cfg_parallel.combine(out[:1], out[1:], 4.0)

    for _ in range(args.warmup):
        step()
    sync()
    times = []
    with UtilSampler(device.index or 0 if cuda else -1) as util:
        for _ in range(args.steps):
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
    s_step = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0
    peaks = [torch.zeros(1, device=device) + peak]
    if dist_ctx.world_size > 1:
        import torch.distributed as dist

        allp = [torch.zeros(1, device=device) for _ in range(dist_ctx.world_size)]
        dist.all_gather(allp, peaks[0])
        peaks = allp
    model = None   # free the weights before the next mode builds its own
    if cuda:
        torch.cuda.empty_cache()
    tflops = STEP_FLOP[args.res] / s_step / 1e12 / dist_ctx.world_size
    return dict(mode=mode, res=args.res, gpus=dist_ctx.world_size, attention=backend.name,
                s_per_step=round(s_step, 3), steps=[round(v, 3) for v in times],
                peak_gb_per_rank=[round(float(p), 1) for p in peaks], weights_gb_rank0=round(weights_gb, 1),
                gpu_util_pct=util.mean, tflops_per_gpu=round(tflops, 1),
                gpu=torch.cuda.get_device_name(device) if cuda else "cpu (smoke)", torch=torch.__version__,
                date=time.strftime("%Y-%m-%d"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--res", choices=sorted(LATENT), default="720p")
    p.add_argument("--modes", default="single")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--attn", default="auto")
    p.add_argument("--out", default=None, help="append JSON lines here (rank 0)")
    p.add_argument("--smoke", action="store_true",
                   help="a tiny model on the CPU with gloo: checks the script itself, times nothing real")
    args = p.parse_args()

    from wan_core.distributed.context import DistContext

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if args.smoke:
        A14B.update(dim=256, ffn_dim=512, num_heads=4, num_layers=2, text_len=32)
        LATENT[args.res] = (2, 8, 12)
        device = torch.device("cpu")
    else:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if world > 1:
        import torch.distributed as dist

        if args.smoke:
            dist.init_process_group("gloo")
        else:
            dist.init_process_group("nccl", device_id=device)
    for mode in args.modes.split(","):
        cfg = mode in ("cfg", "cfg_fsdp")
        if world == 1 and mode not in ("single", "single-seq"):
            continue
        if world > 1 and mode in ("single", "single-seq"):
            continue
        parallel = ParallelConfig(num_gpus=world, cfg_parallel=cfg,
                                  ulysses_size=world // (2 if cfg else 1),
                                  dit_fsdp=mode in ("fsdp_ulysses", "cfg_fsdp"), offload=OffloadMode.NONE)
        ctx = DistContext.from_initialized(parallel, device) if world > 1 else DistContext.single(device)
        result = run_mode(mode, args, ctx, device)
        if ctx.rank == 0:
            line = json.dumps(result)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(line + "\n")
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


if __name__ == "__main__":
    main()
