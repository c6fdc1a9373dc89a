"""`WanEngine`: the models of one task loaded once, and `generate()` for one video at a time.

It runs in one process (the CLI's single-GPU path, the tests) or on every rank of a worker group
(`runtime.worker` builds it with that rank's `DistContext`). On a group every rank calls
`generate` with the same request; rank 0 returns the `GenerateResult`, the others None.

Loading (docs/wan22_reference.md §1.4, §5.4): T5 (on the CPU with `t5_cpu`), the task's VAE in
float32, and the DiT(s) in `param_dtype`, straight to their device. With `offload='experts'` the
MoE expert that is not running waits on the CPU; parallel strategies are applied once, here, by
`pipeline.parallelize` when the group has more than one rank.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import (EngineSpec, GenerateRequest, GenerateResult, OffloadMode, ParamDtype, Task,
                      TASKS)
from ..errors import CheckpointError, ConfigError
from .experts import Expert
from .progress import Phase, Progress, RunHooks
from .video_tasks import VIDEO_TASKS, Components, RunPlan, resolve_request, run_video_task

log = logging.getLogger("wan_core.engine")

__all__ = ["WanEngine", "RunHooks", "Progress", "Phase"]


def _dist_single(device):
    from ..distributed.context import DistContext

    return DistContext.single(device)


def check_checkpoint(ckpt_dir, task: Task, files=None) -> None:
    """Check that `ckpt_dir` holds every file the task loads, without reading any weight.

    Opens each DiT shard's safetensors header (a truncated shard fails here, by name) and checks the
    T5 checkpoint, the tokenizer and the VAE file exist. With `files` (a `ModelFiles` naming
    ComfyUI single files) the parts they give are checked against the task instead
    (`loading.parts.check_parts`). Raises CheckpointError (for the official folder with the
    `python -m wan_core download` command that fetches what is missing) / ConfigError."""
    from ..loading.paths import broken_link

    task = Task.parse(task)
    if files is not None and files.any():
        try:
            _check_parts(ckpt_dir, task, files)
        except CheckpointError as exc:   # a missing template file: the command that fetches it
            from ..manage.sets import comfy_download_hint

            hint = comfy_download_hint(task, files)
            raise CheckpointError(f"{exc}; {hint}" if hint else str(exc)) from None
        return
    ckpt = Path(ckpt_dir)
    fetch = f"python -m wan_core download {task.value} --dir {ckpt.absolute()}"
    if not ckpt.is_dir():
        if broken_link(ckpt):
            raise CheckpointError(f"checkpoint folder {broken_link(ckpt)} (--ckpt_dir)")
        raise CheckpointError(f"checkpoint folder {str(ckpt)!r} does not exist (--ckpt_dir); download "
                              f"the official Wan2.2 {task.value} checkpoint there: {fetch}")
    try:
        _check_files(ckpt, task)
    except CheckpointError as exc:   # a missing or truncated file: the command that fetches it
        raise CheckpointError(f"{exc}; to fetch what is missing: {fetch}") from None


def _check_files(ckpt: Path, task: Task) -> None:
    from ..loading.checkpoint import TensorSource
    from ..loading.detect import detect_task, dit_folders, read_config
    from ..loading.paths import describe_missing
    from .text import T5_CHECKPOINT, TOKENIZER_SUBDIR

    found = detect_task(ckpt)
    if found != task:
        raise ConfigError(f"{ckpt} holds a {found.value} checkpoint, not {task.value}; pass "
                          f"--task {found.value} or the {task.value} folder")
    for folder in dit_folders(ckpt, task).values():
        read_config(folder)
        TensorSource.from_folder(folder).close()
    spec = TASKS[task]
    for rel in (T5_CHECKPOINT, str(TOKENIZER_SUBDIR / "tokenizer.json"), spec.vae_file):
        if not (ckpt / rel).is_file():
            raise CheckpointError(f"{describe_missing(ckpt / rel)}; the {task.value} checkpoint folder needs "
                                  f"{rel} (from the official Wan2.2 download)")
    if task == Task.S2V_14B:
        from .s2v import check_s2v_checkpoint

        check_s2v_checkpoint(ckpt)


def _check_parts(ckpt_dir, task: Task, files) -> None:
    """check_checkpoint when single files replace some parts of the official folder."""
    from ..loading.checkpoint import TensorSource
    from ..loading.detect import read_config
    from ..loading.parts import check_parts, resolve_parts

    parts = resolve_parts(task, ckpt_dir or None, files)
    check_parts(parts)
    for path in parts.dits.values():
        if not path.is_file():
            read_config(path)
            TensorSource.from_folder(path).close()
    for what, path in (("text encoder", parts.text_encoder), ("VAE", parts.vae)):
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (the {what} of {task.value})")
    if parts.text_encoder.suffix != ".safetensors" and not (parts.tokenizer_dir / "tokenizer.json").is_file():
        raise CheckpointError(f"{parts.tokenizer_dir / 'tokenizer.json'} is missing (the umT5 tokenizer)")
    if parts.audio_encoder is not None and not parts.audio_encoder.is_file():
        from .s2v import check_s2v_checkpoint

        check_s2v_checkpoint(parts.audio_encoder.parent)


def _weights_dtype(spec: EngineSpec) -> torch.dtype:
    """The high-precision dtype of the DiT(s) and T5: `weights` bf16/fp16/fp32 casts at load;
    auto, fp8 and fp8_fast keep `param_dtype` (the CLI's --dtype) for the layers not held in fp8
    (and as the compute dtype of the fp8 ones)."""
    from ..config import WeightsMode

    weights = WeightsMode.parse(spec.weights)
    if weights in (WeightsMode.BF16, WeightsMode.FP16, WeightsMode.FP32):
        return ParamDtype(weights.value).torch_dtype
    return ParamDtype(spec.param_dtype).torch_dtype


class WanEngine:
    """Loads the models of `spec.task` once; `generate(request, hooks)` makes one video."""

    def __init__(self, spec: EngineSpec, dist=None, on_progress: Optional[Callable[[Progress], None]] = None,
                 *, text_len: Optional[int] = None) -> None:
        self.spec = spec
        self.task = Task.parse(spec.task)
        self.is_s2v = self.task == Task.S2V_14B    # S2V: pipeline/s2v.py (plan, run, wav2vec2)
        if self.task not in VIDEO_TASKS and not self.is_s2v:
            raise ConfigError(f"WanEngine does not run {self.task.value}")
        self.task_spec = TASKS[self.task]
        from .parallelize import validate_spec

        validate_spec(spec)   # the parallel layout against this model, before anything heavy
        self.device = torch.device(dist.device if dist is not None else spec.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but CUDA is not available "
                              "(use --device cpu, or install a CUDA build of torch)")
        self.dist = dist if dist is not None else _dist_single(self.device)
        self.batch_cfg = True
        """Run the conditional and unconditional branches as one batch of 2 (off: two calls)."""
        hooks = RunHooks(on_progress=on_progress)
        start = time.perf_counter()
        self.load_timings: dict[str, float] = {}

        ckpt = Path(spec.ckpt_dir) if spec.ckpt_dir else None
        check_checkpoint(ckpt, self.task, spec.files)
        from ..loading.parts import dit_config, resolve_parts

        from ..loading.parts import check_parts

        self.parts = resolve_parts(self.task, ckpt, spec.files)
        self.parts_info = check_parts(self.parts)   # FileInfo of each single file (format, dtype)
        folders = self.parts.dits
        dit_cfg = dit_config(next(iter(folders.values())))
        par = spec.parallel
        if self.dist.world_size != par.num_gpus:
            raise ConfigError(f"the engine was given {self.dist.world_size} rank(s) but num_gpus="
                              f"{par.num_gpus}; start one process per GPU")
        self.text_len = int(text_len or dit_cfg.get("text_len", 512))
        dtype = _weights_dtype(spec)
        offload = OffloadMode(par.offload)

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
        from ..models.attention import resolve_backend
        from .parallelize import expert_provider

        kernel = resolve_backend(getattr(spec.attention, "value", spec.attention), self.device)
        self.attention = kernel.name
        dits = {Expert(name): self._load_dit(folder, dtype, offload, kernel)
                for name, folder in folders.items()}
        from ..models.fused import pick_block_ops

        # bf16/fp16 weights on CUDA: fused norm/RoPE/modulation kernels (models/fused.py); fp32
        # weights keep the reference op order (exact against the goldens).
        block_ops = pick_block_ops(dtype, self.device)
        for dit in dits.values():
            dit.set_block_ops(block_ops)
        self.block_ops = block_ops.name
        self.models = expert_provider(dits, self.dist, par)
        self.loras = self._lora_manager(dits)
        self.load_timings["dit"] = time.perf_counter() - t0
        if self.is_s2v:   # wav2vec2 in float32 (official precision) on the engine's device
            t0 = time.perf_counter()
            self.audio_encoder = self._load_audio_encoder()
            self.load_timings["audio_encoder"] = time.perf_counter() - t0
        self.load_timings["total"] = time.perf_counter() - start
        self.weights_summary = self._describe_weights(dits)
        if self.dist.rank == 0:
            log.info("%s", self.weights_summary)
        hooks.report(Phase.LOAD, 3, 3, start, "models loaded")

    # -- loading helpers ----------------------------------------------------------------------

    def _load_text_encoder(self, dtype: torch.dtype, offload: OffloadMode) -> None:
        """T5 on the CPU (t5_cpu), sharded (t5_fsdp), waiting on the CPU between runs (offload), or
        resident on the device."""
        from .parallelize import parallelize_t5
        from .text import TextEncoder

        par = self.spec.parallel
        on_cpu = par.t5_cpu or par.t5_fsdp or (offload != OffloadMode.NONE)
        where = "cpu" if on_cpu else self.device
        path = self.parts.text_encoder
        if path.suffix == ".safetensors":   # a ComfyUI single file (loading/components.py)
            from ..loading.components import file_tokenizer, load_t5_file

            self.text_encoder = TextEncoder.__new__(TextEncoder)
            self.text_encoder.text_len = self.text_len
            self.text_encoder.tokenizer, self.tokenizer_source = file_tokenizer(
                path, self.text_len, self.parts.tokenizer_dir)
            self.text_encoder.model = load_t5_file(path, dtype=dtype, device=where)
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
        from ..loading.components import load_vae_file
        from ..loading.vae import load_vae

        path = self.parts.vae
        load = load_vae_file if path.suffix == ".safetensors" else load_vae
        return load(path, self.task_spec.vae, device=self.device, dtype=torch.float32)

    def _load_audio_encoder(self):
        """wav2vec2 in float32 (official precision) on the engine's device."""
        path = self.parts.audio_encoder
        if path.is_file():
            from ..loading.components import load_wav2vec2_file

            return load_wav2vec2_file(path, device=self.device)
        from ..models.wav2vec2 import load_wav2vec2

        return load_wav2vec2(path, device=self.device)

    def _load_dit(self, folder: Path, dtype: torch.dtype, offload: OffloadMode, kernel):
        """One DiT, loaded and parallelised the way `spec.parallel` asks (pipeline/parallelize.py)."""
        from ..loading.components import load_dit_any, open_dit
        from .parallelize import parallelize_dit

        par = self.spec.parallel
        weights, fast = self._fp8_mode()
        if par.dit_fsdp:   # rank-local: each rank reads only its rows of each tensor (fp8 stays fp8)
            with open_dit(folder, s2v=self.is_s2v, kernel=kernel, dtype=dtype, weights=weights,
                          fast=fast) as (model, source, _):
                parallelize_dit(model, self.dist, par, source=source, dtype=None)
            return model.eval()
        where = torch.device("cpu") if offload != OffloadMode.NONE else self.device
        model = load_dit_any(folder, dtype, where, kernel, s2v=self.is_s2v, weights=weights, fast=fast)
        return parallelize_dit(model, self.dist, par)

    def _lora_manager(self, dits):
        """LoRAs of every expert (loading/lora.py): run-time deltas on Linear layers, in-place
        deltas with exact backups elsewhere, on this rank's FSDP rows and offload masters."""
        from ..distributed import fsdp as fsdp_
        from ..loading.lora import LoraManager

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
        from ..loading.fp8 import FP8

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
        modules = list(dits.values()) + [m for m in (t5, self.vae, getattr(self, "audio_encoder", None)) if m is not None]
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
        from ..config import WeightsMode
        from ..loading.fp8 import fast_supported

        weights = WeightsMode.parse(self.spec.weights)
        fast = False
        if weights == WeightsMode.FP8_FAST:
            fast, why = fast_supported(self.device)
            if self.dist.rank == 0:
                (log.info if fast else log.warning)("weights=fp8_fast: %s", why)
        return weights.value, fast

    def _t5_to_fp8(self, model, path: Path) -> None:
        """T5 in fp8 too: for weights fp8/fp8_fast, and for auto when the file holds fp8."""
        from ..loading.fp8 import T5_FP8_LAYERS, apply_fp8

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
        from .schedulers import make_scheduler

        split = self.dist.world_size > 1 and not self.is_s2v
        if split:   # every rank decodes a band of rows (exact; distributed/vae_split.py)
            from ..distributed.vae_split import decode_rows_ctx

            vae, dist = self.vae, self.dist

            def vae_decode(latent):
                return decode_rows_ctx(vae, latent, dist)
        else:
            vae_decode = self.vae.decode
        return Components(encode_text=self._encode_text, vae_encode=self.vae.encode,
                          vae_decode=vae_decode, models=self.models, device=self.device,
                          make_scheduler=make_scheduler, decode_all_ranks=split)

    def plan(self, request: GenerateRequest) -> RunPlan:
        """Validate and resolve `request` (no model work); agreed across ranks for random seeds."""
        if self.is_s2v:
            from .s2v import plan_for_engine

            return plan_for_engine(self, request)
        plan = resolve_request(self.task_spec, request, sp_size=self.dist.ulysses_size)
        if self.spec.parallel.cfg_parallel:
            from ..distributed.cfg_parallel import validate_guidance

            validate_guidance(True, plan.schedule.guide)
        if request.seed is not None and request.seed < 0 and self.dist.world_size > 1:
            from dataclasses import replace

            plan = replace(plan, seed=self.dist.broadcast_object(plan.seed))
        return plan

    def generate(self, request: GenerateRequest, hooks: Optional[RunHooks] = None, *,
                 trace: Optional[Callable[[str, torch.Tensor], None]] = None) -> Optional[GenerateResult]:
        """Make one video. Rank 0 returns the result (latent fp32 CPU, video uint8 [F,H,W,3] CPU);
        other ranks return None. Raises `Cancelled(step)` when `hooks.should_stop()` turned true.

        `trace(name, tensor)`, when given, receives the intermediate tensors under the names of the
        parity goldens (`context`, `call00_x_in`, `callNN_<expert>_out`, `vae_decode_in`, `video`)."""
        from ..io.video import video_to_uint8

        hooks = hooks or RunHooks()
        # Before any collective: a bad LoRA fails every rank alike and the group stays up.
        notes = tuple(self.loras.update(tuple(request.loras or ())))
        if self.is_s2v:   # clip by clip; extra_latents = every clip, audio = the track to mux
            from .s2v import generate_for_engine

            result = generate_for_engine(self, request, hooks, trace)
            if result is not None and notes:
                from dataclasses import replace

                result = replace(result, warnings=tuple(result.warnings) + notes)
            return result
        plan = self.plan(request)
        for text in plan.warnings:
            log.warning(text)
        out = run_video_task(plan, self.components(), self.dist, hooks, batch_cfg=self.batch_cfg,
                             trace=trace)
        if self.dist.rank != 0:
            return None
        video = video_to_uint8(out.video) if out.video is not None else None
        return GenerateResult(latent=out.latent.detach().float().cpu(), video=video,
                              fps=self.task_spec.fps, seed=plan.seed, timings=dict(out.timings),
                              warnings=tuple(plan.warnings) + notes)

    def close(self) -> None:
        """Drop the models (frees device memory once nothing else references them)."""
        self.models = None
        self.text_encoder = None
        self.vae = None
        self.audio_encoder = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
