"""`python -m wan_core bench`: the time of a whole video, phase by phase (issue 17).

Writes full-size random weights in the format under test (once, into --work_dir), loads them
through the engine as a user would, makes one warm-up video and then --videos timed ones, and
reports each phase: text encoding, every denoising step, the MoE expert switch, VAE decoding and
writing the mp4, plus loading and the peak GPU memory of each rank. JSON out (--out).

Presets (the two ways people run T2V-A14B):
- `template`: ComfyUI's own Wan2.2 T2V template: 640x640, 81 frames, 4 steps, cfg 1, euler /
  simple, shift 5, high-noise expert for steps 0-2 and low-noise for 2-4, ComfyUI single files
  (fp8_scaled experts, fp8_scaled umT5, the VAE) and a rank-64 LoRA per expert (the lightx2v
  4-step LoRAs' shape).
- `official`: the official generate.py defaults: 1280x720, 81 frames, 40 steps, CFG, unipc, bf16,
  the official folder layout. `--steps 3` times 3 steps and extrapolates the 40-step video
  (`extrapolated` in the JSON says so).

Speed does not depend on weight values, so both experts share one random file (a hard link or a
folder link), and the tokenizer is a small umT5-style one (the text encoder's width, depth and the
512-token padding are real; only its vocabulary is small). `--tiny` uses tiny widths: it checks
the command on a CPU in seconds and times nothing real.

Per-step times are taken at step boundaries with the GPU synchronised there (the progress callback
synchronises), so they are device times; the sum can exceed the `denoise` phase by that sync.
Multi-GPU: run under torchrun (`torchrun --nproc_per_node N -m wan_core bench ... --num_gpus N`);
rank 0 writes the files first, every rank loads, rank 0 reports.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch

from .config import (AttentionBackend, EngineSpec, GenerateRequest, GuideScale, LoraSpec, LoraTarget,
                     ModelFiles, OffloadMode, ParallelConfig, Solver, Task, WeightsMode)

PROMPT = "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage."


@dataclass(frozen=True)
class Preset:
    name: str
    size: tuple[int, int]            # (W, H)
    frames: int
    steps: int
    guide: Optional[float]           # None: the official (3.0, 4.0)
    solver: str
    shift: Optional[float]           # None: the official 12.0
    layout: str                      # "comfy" single files or "official" folder
    weights: str                     # WeightsMode value
    lora_rank: int                   # 0: no LoRA
    switch_step: Optional[int]       # MoE switch by step index (None: boundary 0.875)


PRESETS = {
    "template": Preset("template", (640, 640), 81, 4, 1.0, "euler", 5.0, "comfy", "fp8", 64, 2),
    "official": Preset("official", (1280, 720), 81, 40, None, "unipc", None, "official", "bf16", 0, None),
}

# Real A14B expert and umT5-XXL encoder shapes; --tiny shrinks them.
A14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, text_len=512)
TINY_DIT = dict(dim=128, ffn_dim=256, num_heads=2, num_layers=2, text_len=512)
UMT5 = dict(dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24)
TINY_T5 = dict(dim=4096, dim_attn=64, dim_ffn=128, num_heads=2, num_layers=2)

_DIT_QUANT = re.compile(r"^blocks\.\d+\.(self_attn\.(q|k|v|o)|cross_attn\.(q|k|v|o)|ffn\.(0|2))\.weight$")
_T5_QUANT = re.compile(r"^blocks\.\d+\.(attn\.(q|k|v|o)|ffn\.(gate\.0|fc1|fc2))\.weight$")
FP8_MAX = 448.0
COMFY_DIT_PREFIX = "model.diffusion_model."


# ---------------------------------------------------------------------------------------------
# Random full-size files


def _value(name: str, shape, gen: torch.Generator, device) -> torch.Tensor:
    """Norms/gammas 1, vectors small, matrices N(0, 1/fan_in) (activations keep their scale)."""
    import torch

    if "norm" in name or name.endswith("gamma"):
        return torch.ones(shape, device=device)
    if len(shape) <= 1:
        return torch.randn(shape, generator=gen, device=device) * 0.02
    return torch.randn(shape, generator=gen, device=device) / math.sqrt(max(1, math.prod(shape[1:])))


def _quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor absmax fp8_e4m3fn, ComfyUI's fp8_scaled convention: w ~ q.float() * scale."""
    import torch

    scale = (w.abs().max().float() / FP8_MAX).clamp(min=1e-12).reshape(())
    return (w.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def _meta_params(module_factory) -> list[tuple[str, tuple[int, ...]]]:
    import torch

    with torch.device("meta"):
        m = module_factory()
    return [(k, tuple(v.shape)) for k, v in m.state_dict().items()]


def _dit_config(tiny: bool):
    from .models.dit import DiTConfig

    return DiTConfig(model_type="t2v", in_dim=16, out_dim=16, freq_dim=256, eps=1e-6,
                     **(TINY_DIT if tiny else A14B))


def _dit_json(cfg) -> dict:
    return {"_class_name": "WanModel", "_diffusers_version": "0.33.0", "dim": cfg.dim, "eps": cfg.eps,
            "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "in_dim": cfg.in_dim, "model_type": "t2v",
            "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "out_dim": cfg.out_dim,
            "text_len": cfg.text_len}


def write_dit(path: Path, cfg, layout: str, device, seed: int = 0) -> None:
    """One random expert: ComfyUI fp8_scaled single file (`layout='comfy'`) or an official folder
    of bf16 shards (`'official'`). Tensors are made one at a time on `device`."""
    import torch

    from safetensors.torch import save_file

    from .models.dit import WanModel

    gen = torch.Generator(device=device).manual_seed(seed)
    params = _meta_params(lambda: WanModel(cfg))
    if layout == "comfy":
        out: dict[str, torch.Tensor] = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
        for name, shape in params:
            v = _value(name, shape, gen, device)
            if _DIT_QUANT.match(name):
                q, s = _quantize(v)
                out[COMFY_DIT_PREFIX + name] = q.cpu()
                out[COMFY_DIT_PREFIX + name[: -len(".weight")] + ".scale_weight"] = s.cpu()
            else:
                out[COMFY_DIT_PREFIX + name] = v.to(torch.bfloat16).cpu()
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(out, str(path))
        return
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(_dit_json(cfg), indent=2, sort_keys=True))
    shard_bytes, shards, cur, size = 5 << 30, [], {}, 0
    for name, shape in params:
        cur[name] = _value(name, shape, gen, device).to(torch.bfloat16).cpu()
        size += cur[name].numel() * 2
        if size >= shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
    if cur:
        shards.append(cur)
    weight_map, total = {}, 0
    for i, part in enumerate(shards):
        fname = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(part, str(path / fname), metadata={"format": "pt"})
        for k, v in part.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
    (path / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def write_t5(path: Path, tokenizer_json: Path, layout: str, tiny: bool, device, seed: int = 1) -> None:
    """Random umT5 encoder: the official bf16 `.pth`, or ComfyUI's fp8_scaled single file with
    Hugging Face names and the tokenizer as `spiece_model`."""
    import torch

    from .models.t5 import T5Config, T5Encoder

    vocab = len(json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]["vocab"])
    cfg = T5Config(vocab_size=int(math.ceil(vocab / 64) * 64), **(TINY_T5 if tiny else UMT5))
    gen = torch.Generator(device=device).manual_seed(seed)
    params = _meta_params(lambda: T5Encoder(cfg))
    if layout == "official":
        sd = {n: _value(n, s, gen, device).to(torch.bfloat16).cpu() for n, s in params}
        torch.save(sd, str(path))
        return
    from safetensors.torch import save_file

    from .loading.single_file import t5_official_to_hf

    # The tokenizer as a sentencepiece model: the tests' converter (a repository checkout tool).
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests._comfy_files import spm_from_tokenizer_json

    out: dict[str, torch.Tensor] = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    for name, shape in params:
        v = _value(name, shape, gen, device)
        hf = t5_official_to_hf(name)
        if _T5_QUANT.match(name):
            q, s = _quantize(v)
            out[hf] = q.cpu()
            out[hf[: -len(".weight")] + ".scale_weight"] = s.cpu()
        else:
            out[hf] = v.to(torch.float16).cpu()
    out["spiece_model"] = torch.frombuffer(bytearray(spm_from_tokenizer_json(tokenizer_json)), dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))


def write_vae(path: Path, tiny: bool, seed: int = 2) -> None:
    """Random Wan2.1 VAE (fp32): official `.pth` or ComfyUI `.safetensors` (the same names)."""
    import torch

    from .models.vae21 import WAN21_CONFIG, WanVAE21
    from .models.vae_common import VAEConfig

    gen = torch.Generator().manual_seed(seed)
    cfg = VAEConfig(dim=4, z_dim=16, dec_dim=4) if tiny else WAN21_CONFIG
    sd = {n: _value(n, s, gen, "cpu").float().contiguous() for n, s in _meta_params(lambda: WanVAE21(cfg))}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pth":
        torch.save(sd, str(path))
    else:
        from safetensors.torch import save_file

        save_file(sd, str(path))


def _link(src: Path, dst: Path) -> None:
    """The second expert: the same random weights (a hard link, or a folder link)."""
    if dst.exists() or dst.is_symlink():
        return
    if src.is_dir():
        dst.symlink_to(src.name, target_is_directory=True)
    else:
        os.link(src, dst)


@dataclass(frozen=True)
class Files:
    """Where a preset's files are (paths below --work_dir)."""

    root: Path
    layout: str
    tiny: bool

    @property
    def folder(self) -> Path:
        return self.root / f"{self.layout}{'_tiny' if self.tiny else ''}"

    @property
    def marker(self) -> Path:
        return self.folder / ".wan_core_bench"

    def comfy(self, kind: str, name: str) -> Path:
        return self.folder / kind / name

    @property
    def loras(self) -> tuple[Path, Path]:
        return (self.folder / "loras" / "bench_r64_high_noise.safetensors",
                self.folder / "loras" / "bench_r64_low_noise.safetensors")


def write_files(files: Files, lora_rank: int, device) -> dict:
    """Write (once) the random weights of `files.layout`; returns seconds per part."""
    from .loading.lora import write_random_lora
    from .tinyckpt import write_tokenizer

    took: dict[str, float] = {}
    if files.marker.exists() and json.loads(files.marker.read_text()).get("lora_rank", 0) >= lora_rank:
        return took
    f = files.folder
    f.mkdir(parents=True, exist_ok=True)
    cfg = _dit_config(files.tiny)
    tok = f / "google" / "umt5-xxl"
    write_tokenizer(tok)
    t0 = time.perf_counter()
    if files.layout == "comfy":
        high = files.comfy("diffusion_models", "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors")
        write_dit(high, cfg, "comfy", device)
        _link(high, files.comfy("diffusion_models", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"))
        took["dit"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_t5(files.comfy("text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
                 tok / "tokenizer.json", "comfy", files.tiny, device)
        took["t5"] = time.perf_counter() - t0
        write_vae(files.comfy("vae", "wan_2.1_vae.safetensors"), files.tiny)
    else:
        write_dit(f / "high_noise_model", cfg, "official", device)
        _link(f / "high_noise_model", f / "low_noise_model")
        took["dit"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_t5(f / "models_t5_umt5-xxl-enc-bf16.pth", tok / "tokenizer.json", "official", files.tiny, device)
        took["t5"] = time.perf_counter() - t0
        write_vae(f / "Wan2.1_VAE.pth", files.tiny)
    if lora_rank:
        for i, p in enumerate(files.loras):
            p.parent.mkdir(parents=True, exist_ok=True)
            write_random_lora(p, cfg, lora_rank, seed=10 + i)
    files.marker.write_text(json.dumps({"lora_rank": lora_rank, "tiny": files.tiny}))
    return {k: round(v, 1) for k, v in took.items()}


# ---------------------------------------------------------------------------------------------
# Timing one video


class PhaseClock:
    """Progress callback: timestamps of every report, taken after a device sync (rank 0)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.events: list[tuple[str, int, float]] = []

    def __call__(self, p) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.events.append((p.phase, p.step, time.perf_counter()))

    def step_times(self) -> list[float]:
        """Seconds of each denoising step, from consecutive 'denoise' reports."""
        marks = [t for phase, _step, t in self.events if phase == "denoise"]
        return [b - a for a, b in zip(marks, marks[1:])]


def _peak_gb(device: torch.device) -> Optional[float]:
    import torch

    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def _gather_peaks(engine, device) -> list:
    import torch

    peak = _peak_gb(device)
    dist_ctx = engine.dist
    if dist_ctx.world_size == 1 or peak is None:
        return [peak]
    import torch.distributed as tdist

    t = torch.tensor([peak], device=device)
    out = [torch.zeros(1, device=device) for _ in range(dist_ctx.world_size)]
    tdist.all_gather(out, t, group=dist_ctx.world_group)
    return [round(float(x), 2) for x in out]


def time_video(engine, request: GenerateRequest, mp4: Path, device: torch.device) -> dict:
    import torch

    from .io.video import write_mp4
    from .pipeline.progress import RunHooks

    clock = PhaseClock(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    result = engine.generate(request, RunHooks(on_progress=clock))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t_gen = time.perf_counter() - t0
    peaks = _gather_peaks(engine, device)
    if result is None:     # ranks other than 0
        return {}
    t1 = time.perf_counter()
    try:
        write_mp4(result.video, mp4, fps=result.fps)
        t_mp4, mp4_note = time.perf_counter() - t1, None
    except ImportError as exc:   # no PyAV on this machine: every other phase still counts
        t_mp4, mp4_note = 0.0, f"not measured: {exc}"
    steps = clock.step_times()
    tim = result.timings
    out = dict(total_s=round(t_gen + t_mp4, 3), text_encode_s=round(tim.get("encode", 0.0), 3),
               denoise_s=round(tim.get("denoise", 0.0), 3), steps_s=[round(s, 3) for s in steps],
               vae_decode_s=round(tim.get("decode", 0.0), 3), mp4_write_s=round(t_mp4, 3) if not mp4_note else None,
               peak_gb_per_rank=peaks)
    if mp4_note:
        out["mp4_write_note"] = mp4_note
    switch = request.switch_step
    if switch and 0 < switch < len(steps):
        same = [s for i, s in enumerate(steps) if i != switch]
        # The step that first runs the low-noise expert, minus a typical step: the switch's cost
        # (zero when both experts are resident; a weight move with offload).
        out["expert_switch_s"] = round(steps[switch] - statistics.median(same), 3) if same else None
    return out


def extrapolate(video: dict, steps: int) -> dict:
    """A video of `steps` steps from a shorter run: every non-step phase as measured, each step at
    the median measured step time."""
    med = statistics.median(video["steps_s"])
    steps_total = med * steps + max(0.0, video.get("expert_switch_s") or 0.0)
    other = video["text_encode_s"] + video["vae_decode_s"] + (video["mp4_write_s"] or 0.0)
    return dict(steps=steps, median_step_s=round(med, 3), total_s=round(other + steps_total, 2),
                denoise_s=round(steps_total, 2))


# ---------------------------------------------------------------------------------------------
# Command


def build_parser(sub=None) -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")[0]
    p = sub.add_parser("bench", help=doc, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter) if sub else \
        argparse.ArgumentParser(prog="python -m wan_core bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="template")
    p.add_argument("--work_dir", default="bench_files", help="where the random weights are written (once)")
    p.add_argument("--videos", type=int, default=1, help="timed videos after the warm-up video")
    p.add_argument("--steps", type=int, default=None,
                   help="run this many steps and extrapolate to the preset's step count")
    p.add_argument("--weights", default=None, help="auto|bf16|fp8|fp8_fast (default: the preset's)")
    p.add_argument("--lora_rank", type=int, default=None, help="0: no LoRA (default: the preset's)")
    p.add_argument("--size", default=None, help="WxH (default: the preset's)")
    p.add_argument("--frame_num", type=int, default=None)
    p.add_argument("--num_gpus", type=int, default=1)
    p.add_argument("--ulysses_size", type=int, default=None)
    p.add_argument("--offload", default="none", choices=[m.value for m in OffloadMode])
    p.add_argument("--attention", default="auto", choices=[a.value for a in AttentionBackend])
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the DiT blocks' elementwise ops (sets WAN22_COMPILE=1, models/fused.py)")
    p.add_argument("--tiny", action="store_true", help="tiny widths: checks the command, times nothing real")
    p.add_argument("--out", default=None, help="write the JSON here (rank 0)")
    return p


def _weights_mode(value: str) -> WeightsMode:
    mode = WeightsMode.parse(value)
    return mode


def run_bench(args) -> dict:
    import torch

    preset = PRESETS[args.preset]
    if getattr(args, "compile", False):
        os.environ["WAN22_COMPILE"] = "1"
    under_torchrun = "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rank = int(os.environ.get("RANK", "0")) if under_torchrun else 0
    lora_rank = preset.lora_rank if args.lora_rank is None else args.lora_rank
    files = Files(Path(args.work_dir).resolve(), preset.layout, args.tiny)
    write_dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if device.type == "cuda" else device
    written = write_files(files, lora_rank, write_dev) if rank == 0 else {}
    if under_torchrun:   # the other ranks wait for rank 0's files
        while not files.marker.exists():
            time.sleep(1.0)

    par = ParallelConfig(num_gpus=args.num_gpus, ulysses_size=args.ulysses_size or args.num_gpus,
                         offload=OffloadMode(args.offload))
    weights = _weights_mode(args.weights or preset.weights)
    if preset.layout == "comfy":
        mf = ModelFiles(dit_high_noise=str(files.comfy("diffusion_models", "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors")),
                        dit_low_noise=str(files.comfy("diffusion_models", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors")),
                        text_encoder=str(files.comfy("text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors")),
                        vae=str(files.comfy("vae", "wan_2.1_vae.safetensors")))
        spec = EngineSpec(task=Task.T2V_A14B, ckpt_dir="", device=device.type, parallel=par,
                          attention=AttentionBackend(args.attention), files=mf, weights=weights)
    else:
        spec = EngineSpec(task=Task.T2V_A14B, ckpt_dir=str(files.folder), device=device.type, parallel=par,
                          attention=AttentionBackend(args.attention), weights=weights)
    size = preset.size
    if args.size:
        w, h = args.size.lower().split("x")
        size = (int(w), int(h))
    elif args.tiny:
        size = (64, 64)
    frames = args.frame_num or (9 if args.tiny else preset.frames)
    steps = args.steps or preset.steps
    loras = tuple(LoraSpec(str(p), 1.0, t) for p, t in zip(files.loras, (LoraTarget.HIGH_NOISE, LoraTarget.LOW_NOISE))
                  ) if lora_rank else ()
    request = GenerateRequest(prompt=PROMPT, size=size, frame_num=frames, steps=steps, shift=preset.shift,
                              guide_scale=GuideScale.parse(preset.guide) if preset.guide is not None else None,
                              solver=Solver.parse(preset.solver), seed=42, loras=loras,
                              switch_step=preset.switch_step if steps == preset.steps else
                              (max(1, steps // 2) if preset.switch_step else None))

    from .pipeline.engine import WanEngine

    dist_ctx = None
    if under_torchrun:
        from .runtime.dist_init import init_distributed

        dist_ctx = init_distributed(spec, rank, int(os.environ["WORLD_SIZE"]),
                                    local_device=int(os.environ["LOCAL_RANK"]))
    t0 = time.perf_counter()
    engine = WanEngine(spec, dist=dist_ctx)
    load_s = time.perf_counter() - t0
    dev = engine.device
    out_dir = files.root / "videos"
    videos = []
    for i in range(1 + args.videos):
        v = time_video(engine, request, out_dir / f"{args.preset}_{i}.mp4", dev)
        videos.append(v)
    if rank != 0:
        return {}
    timed = videos[1:]
    report = dict(
        preset=args.preset, settings=dict(asdict(preset), size=list(size), frames=frames, steps_run=steps,
                                          weights=weights.value, lora_rank=lora_rank, tiny=args.tiny,
                                          num_gpus=args.num_gpus, offload=args.offload),
        device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", torch=torch.__version__,
        attention=getattr(engine, "attention", None), block_ops=getattr(engine, "block_ops", None),
        date=time.strftime("%Y-%m-%d %H:%M"), files_written_s=written,
        load_s=round(load_s, 2), load_timings={k: round(v, 2) for k, v in getattr(engine, "load_timings", {}).items()},
        warmup=videos[0], videos=timed,
        median_total_s=round(statistics.median(v["total_s"] for v in timed), 3) if timed else None)
    if steps != preset.steps and timed:
        report["extrapolated"] = extrapolate(timed[-1], preset.steps)
    engine.close()
    return report


def main(args) -> int:
    report = run_bench(args)
    if report:
        text = json.dumps(report, indent=1)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text)
        print(text)
    return 0


if __name__ == "__main__":   # pragma: no cover
    sys.exit(main(build_parser().parse_args()))


__all__ = ["PRESETS", "Preset", "write_files", "time_video", "extrapolate", "run_bench", "build_parser", "main"]
