"""`WanEngine`: the models of one task loaded once, and `generate()` for one video at a time.

It runs in one process (the CLI's single-GPU path, the tests) or on every rank of a worker group
(`runtime.worker` builds it with that rank's `DistContext`). On a group every rank calls
`generate` with the same request; rank 0 returns the `GenerateResult`, the others None.

The engine loads, agrees on the seed and dispatches; what a task does lives in its pipeline
family (`pipeline.families`: `VideoPipeline` for T2V/I2V/TI2V, `S2VPipeline` for S2V), each with
`plan(request)` (resolve and validate, no model work) and `run(plan, ...)`.

Loading (official `WanT2V.__init__` and friends): T5 (on the CPU with `t5_cpu`), the task's VAE in
float32, and the DiT(s) in `param_dtype`, straight to their device; then whatever the family
needs besides (S2V: wav2vec2). With `offload='experts'` the MoE expert that is not running waits on
the CPU; parallel strategies are applied once, here, by `pipeline.parallelize`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import (TASKS, EngineSpec, GenerateRequest, GenerateResult, OffloadMode, ParamDtype, WeightsMode,
                      check_cfg_guidance, check_world_size)
from ..distributed import fsdp as fsdp_
from ..distributed.context import DistContext
from ..distributed.vae_split import decode_rows_ctx
from ..errors import ConfigError
from ..loading.check import check_checkpoint
from ..loading.components import file_tokenizer, load_dit_any, load_t5_file, load_vae_file, open_dit
from ..loading.facts import validate_spec
from ..loading.fp8 import T5_FP8_LAYERS, apply_fp8, fast_supported
from ..loading.lora import LoraManager
from ..loading.parts import check_parts, resolve_parts
from ..loading.vae import load_vae
from ..models.attention import resolve_backend
from ..models.fused import pick_block_ops
from .experts import Expert
from .families import pipeline_for
from .parallelize import expert_provider, parallelize_dit, parallelize_t5
from .progress import Phase, Progress, RunHooks
from .schedulers import make_scheduler
from .text import TextEncoder
from .video_tasks import Components

log = logging.getLogger("wan_core.engine")

__all__ = ["WanEngine", "RunHooks", "Progress", "Phase"]


def _weights_dtype(spec: EngineSpec) -> torch.dtype:
    """The high-precision dtype of the DiT(s) and T5: `weights` bf16/fp16/fp32 casts at load;
    auto, fp8 and fp8_fast keep `param_dtype` (the CLI's --dtype) for the layers not held in fp8
    (and as the compute dtype of the fp8 ones)."""
    weights = spec.weights
    if weights in (WeightsMode.BF16, WeightsMode.FP16, WeightsMode.FP32):
        return ParamDtype(weights.value).torch_dtype
    return spec.param_dtype.torch_dtype


class WanEngine:
    """Loads the models of `spec.task` once; `generate(request, hooks)` makes one video."""

    def __init__(self, spec: EngineSpec, dist: Optional[DistContext] = None,
                 on_progress: Optional[Callable[[Progress], None]] = None,
                 *, text_len: Optional[int] = None) -> None:
        self.spec = spec
        self.task = spec.task
        self.task_spec = TASKS[self.task]
        family = pipeline_for(self.task_spec)
        facts = validate_spec(spec)   # the parallel layout against this model, before anything heavy
        self.device = torch.device(dist.device if dist is not None else spec.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but CUDA is not available "
                              "(use --device cpu, or install a CUDA build of torch)")
        self.dist = dist if dist is not None else DistContext.single(self.device)
        self.batch_cfg = True
        """Run the conditional and unconditional branches as one batch of 2 (off: two calls)."""
        hooks = RunHooks(on_progress=on_progress)
        start = time.perf_counter()
        self.load_timings: dict[str, float] = {}

        ckpt = Path(spec.ckpt_dir) if spec.ckpt_dir else None
        check_checkpoint(ckpt, self.task, spec.files)
        self.parts = resolve_parts(self.task, ckpt, spec.files)   # a folder or a single file each
        self.parts_info = check_parts(self.parts)   # FileInfo of each single file (format, dtype)
        folders = self.parts.dits
        par = spec.parallel
        check_world_size(par, self.dist.world_size)
        self.text_len = int(text_len or facts.text_len)
        dtype = _weights_dtype(spec)
        offload = par.offload

        hooks.report(Phase.LOAD, 0, 3, start, "loading the text encoder")
        t0 = time.perf_counter()
        self._load_text_encoder(dtype, offload)
        self.load_timings["t5"] = time.perf_counter() - t0

        hooks.report(Phase.LOAD, 1, 3, start, "loading the VAE")
        t0 = time.perf_counter()
        self.vae = self._load_vae()
        self.load_timings["vae"] = time.perf_counter() - t0

        hooks.report(Phase.LOAD, 2, 3, start, "loading the diffusion model")
        t0 = time.perf_counter()
        kernel = resolve_backend(spec.attention.value, self.device)
        self.attention = kernel.name
        dits = {Expert(name): self._load_dit(folder, dtype, offload, kernel, s2v=family.s2v_dit)
                for name, folder in folders.items()}
        self.text_dim = next(iter(dits.values())).cfg.text_dim   # channels of a context it takes
        # bf16/fp16 weights on CUDA: fused norm/RoPE/modulation kernels (models/fused.py); fp32
        # weights keep the reference op order (exact against the goldens).
        block_ops = pick_block_ops(dtype, self.device)
        for dit in dits.values():
            dit.set_block_ops(block_ops)
        self.block_ops = block_ops.name
        self.models = expert_provider(dits, self.dist, par)
        self.loras = self._lora_manager(dits)
        self.load_timings["dit"] = time.perf_counter() - t0
        self.pipeline = family.load(self.task_spec, self.parts, self.device)   # S2V: + wav2vec2
        self.load_timings.update(self.pipeline.load_timings)
        self.load_timings["total"] = time.perf_counter() - start
        self.weights_summary = self._describe_weights(dits)
        if self.dist.rank == 0:
            log.info("%s", self.weights_summary)
        hooks.report(Phase.LOAD, 3, 3, start, "models loaded")

    # -- loading helpers ----------------------------------------------------------------------

    def _load_text_encoder(self, dtype: torch.dtype, offload: OffloadMode) -> None:
        """T5 on the CPU (t5_cpu), sharded (t5_fsdp), waiting on the CPU between runs (offload), or
        resident on the device."""
        par = self.spec.parallel
        on_cpu = par.t5_cpu or par.t5_fsdp or (offload != OffloadMode.NONE)
        where = "cpu" if on_cpu else self.device
        path = self.parts.text_encoder
        if path.suffix == ".safetensors":   # a ComfyUI single file (loading/components.py)
            tokenizer, self.tokenizer_source = file_tokenizer(path, self.text_len, self.parts.tokenizer_dir)
            self.text_encoder = TextEncoder.from_parts(tokenizer, load_t5_file(path, dtype=dtype, device=where),
                                                       self.text_len)
        else:
            self.text_encoder = TextEncoder(checkpoint_path=path, tokenizer_dir=self.parts.tokenizer_dir,
                                            text_len=self.text_len, device=where, dtype=dtype)
        self.text_encoder_dtype = dtype
        self._t5_to_fp8(self.text_encoder.model, path)
        if par.t5_fsdp:
            parallelize_t5(self.text_encoder.model, self.dist, par)
        # Moved to the device for each encode and back afterwards (official offload_model).
        self.t5_offload = (offload != OffloadMode.NONE and not par.t5_cpu and not par.t5_fsdp
                           and self.device.type != "cpu")

    def _load_vae(self):
        path = self.parts.vae
        load = load_vae_file if path.suffix == ".safetensors" else load_vae
        return load(path, self.task_spec.vae, device=self.device, dtype=torch.float32)

    def _load_dit(self, folder: Path, dtype: torch.dtype, offload: OffloadMode, kernel, *, s2v: bool):
        """One DiT (folder or single file), loaded and parallelised the way `spec.parallel` asks."""
        par = self.spec.parallel
        weights, fast = self._fp8_mode()
        if par.dit_fsdp:   # rank-local: each rank reads only its rows of each tensor (fp8 stays fp8)
            with open_dit(folder, s2v=s2v, kernel=kernel, dtype=dtype, weights=weights,
                          fast=fast) as (model, source, _):
                parallelize_dit(model, self.dist, par, source=source, dtype=None)
            return model.eval()
        where = torch.device("cpu") if offload != OffloadMode.NONE else self.device
        model = load_dit_any(folder, dtype, where, kernel, s2v=s2v, weights=weights, fast=fast)
        return parallelize_dit(model, self.dist, par)

    def _lora_manager(self, dits):
        """LoRAs of every expert (loading/lora.py): run-time deltas on Linear layers, in-place
        deltas with exact backups elsewhere, on this rank's FSDP rows and offload masters."""
        slots = list(getattr(self.models, "slots", {}).values())
        for model in dits.values():
            offloader = getattr(model, "block_offloader", None)
            if offloader is not None:
                slots.extend(offloader.slots)
        masters = {(id(owner), name): master for slot in slots
                   for owner, name, is_param, master in slot.entries if is_param}
        quiet = self.dist.rank != 0       # every rank checks the files; rank 0 reports
        return LoraManager(dits, self.device,
                           masters=(lambda owner, leaf: [m] if (m := masters.get((id(owner), leaf))) is not None
                                    else []) if masters else None,
                           before_change=fsdp_.release,
                           on_warning=(lambda text: None) if quiet else log.warning)

    def _describe_weights(self, dits) -> str:
        """One line: how each part was read (file format) and is held (dtype), and the bytes of
        weights on this rank's device (FSDP: this rank's shards)."""
        def held(module) -> str:
            dtypes = {(t.to_local() if hasattr(t, "to_local") else t).dtype
                      for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point()}
            names = sorted({str(d).replace("torch.", "").replace("float8_e4m3fn", "fp8")
                            .replace("bfloat16", "bf16").replace("float16", "fp16").replace("float32", "fp32")
                            for d in dtypes}, key=lambda n: n != "fp8")
            return "+".join(names)

        def read_as(part: str) -> str:
            info = self.parts_info.get(part)
            return f"{info.encoding} file" if info is not None else "official"

        items = [f"{str(getattr(name, 'value', name))} {read_as(str(getattr(name, 'value', name)))} -> {held(m)}"
                 for name, m in dits.items()]
        t5 = getattr(self.text_encoder, "model", None)
        if t5 is not None:
            items.append(f"text_encoder {read_as('text_encoder')} -> {held(t5)}")
        items.append(f"vae {read_as('vae')} -> {held(self.vae)}")
        modules = list(dits.values()) + [m for m in (t5, self.vae, getattr(self.pipeline, "audio_encoder", None)) if m is not None]
        on_device = 0
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                local = t.to_local() if hasattr(t, "to_local") else t
                if local.device == self.device or (local.device.type == self.device.type == "cuda"):
                    on_device += local.numel() * local.element_size()
        return f"weights: {', '.join(items)}; {on_device / 2**30:.2f} GiB on {self.device} (rank {self.dist.rank})"

    def _fp8_mode(self) -> tuple[str, bool]:
        """(weights mode, fp8_fast usable here); fp8_fast on a GPU without fp8 matmuls says so and
        runs as fp8 (dequantizing in each linear)."""
        weights = self.spec.weights
        fast = False
        if weights == WeightsMode.FP8_FAST:
            fast, why = fast_supported(self.device)
            if self.dist.rank == 0:
                (log.info if fast else log.warning)("weights=fp8_fast: %s", why)
        return weights.value, fast

    def _t5_to_fp8(self, model, path: Path) -> None:
        """T5 in fp8 too: for weights fp8/fp8_fast, and for auto when the file holds fp8."""
        weights, _ = self._fp8_mode()
        from_fp8_file = weights == "auto" and path.suffix == ".safetensors" and \
            self.parts_info.get("text_encoder") is not None and \
            self.parts_info["text_encoder"].encoding.startswith("fp8")
        if weights in ("fp8", "fp8_fast") or from_fp8_file:
            names = [n for n, m in model.named_modules() if T5_FP8_LAYERS.match(n)]
            apply_fp8(model, names, self.text_encoder_dtype)

    # -- running ------------------------------------------------------------------------------

    def _encode_text(self, prompts: list[str]) -> list[torch.Tensor]:
        if self.t5_offload:
            self.text_encoder.to(self.device)
            try:
                return self.text_encoder.encode(prompts)
            finally:
                self.text_encoder.to("cpu")
                torch.cuda.empty_cache()
        return self.text_encoder.encode(prompts)

    def components(self) -> Components:
        # Every rank decodes a band of rows (exact; distributed/vae_split.py) where the family's
        # decode can be split (S2V decodes each clip on every rank already: the next clip needs it).
        split = self.dist.world_size > 1 and self.pipeline.split_decode
        if split:
            vae, dist = self.vae, self.dist

            def vae_decode(latent):
                return decode_rows_ctx(vae, latent, dist)
        else:
            vae_decode = self.vae.decode
        return Components(encode_text=self._encode_text, vae_encode=self.vae.encode,
                          vae_decode=vae_decode, models=self.models, device=self.device,
                          make_scheduler=make_scheduler, decode_all_ranks=split)

    def plan(self, request: GenerateRequest):
        """Validate and resolve `request` (no model work): the family's plan, the per-request
        parallel rule, and, for a random seed (< 0), rank 0's draw on every rank (the one place
        the seed is agreed)."""
        plan = self.pipeline.plan(request, ulysses_size=self.dist.ulysses_size)
        self.check_contexts(request)
        check_cfg_guidance(self.spec.parallel.cfg_parallel, plan.guide_scale)
        if request.seed is not None and request.seed < 0 and self.dist.world_size > 1:
            plan = replace(plan, seed=self.dist.broadcast_object(plan.seed))
        return plan

    def check_contexts(self, request: GenerateRequest) -> None:
        """Precomputed text embeddings (ComfyUI's CONDITIONING) must fit this DiT."""
        from .text import check_context

        check_context(request.context, self.text_len, self.text_dim, "the prompt's conditioning")
        check_context(request.neg_context, self.text_len, self.text_dim, "the negative conditioning")

    def generate(self, request: GenerateRequest, hooks: Optional[RunHooks] = None, *,
                 trace: Optional[Callable[[str, torch.Tensor], None]] = None) -> Optional[GenerateResult]:
        """Make one video. Rank 0 returns the result (latent fp32 CPU, video uint8 [F,H,W,3] CPU;
        S2V: extra_latents = every clip, audio = the track to mux); other ranks return None.
        Raises `Cancelled(step)` when `hooks.should_stop()` turned true.

        `trace(name, tensor)`, when given, receives the intermediate tensors under the names of the
        parity goldens (`context`, `call00_x_in`, `callNN_<expert>_out`, `vae_decode_in`, `video`)."""
        # Before any collective: a bad LoRA fails every rank alike and the group stays up.
        notes = tuple(self.loras.update(request.loras))
        plan = self.plan(request)
        for text in plan.warnings:
            log.warning(text)
        result = self.pipeline.run(plan, self.components(), self.dist, hooks or RunHooks(),
                                   batch_cfg=self.batch_cfg, trace=trace)
        if result is not None and notes:
            result = replace(result, warnings=tuple(result.warnings) + notes)
        return result

    def close(self) -> None:
        """Drop the models (frees device memory once nothing else references them)."""
        self.models = None
        self.text_encoder = None
        self.vae = None
        self.pipeline = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
