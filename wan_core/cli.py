"""`python -m wan_core generate|demo|doctor|download|verify|status`: the official `generate.py` flags, plus the multi-GPU ones.

`generate` validates everything (flags, sizes, frame count, sampling values, the image, the
checkpoint folder's files) before loading a single weight. Every user error (`WanEngineError`) is
printed as one line `error: ...` and the exit code is 2; no traceback. With `--num_gpus` > 1 the
run goes to a worker group (`wan_core.client.EngineClient`); under `torchrun` every process runs
the engine on its rank, as the official script does.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Optional, Sequence

from .config import (TASKS, AttentionBackend, EngineSpec, GenerateRequest, GuideScale, ModelFiles, OffloadMode,
                     ParallelConfig, ParamDtype, Solver, Task, WeightsMode, parse_size, validate_request)
from .demo import demo_job
from .errors import Cancelled, ConfigError, WanEngineError, WorkerFailure

log = logging.getLogger("wan_core.cli")

# The official example prompts (generate.py, EXAMPLE_PROMPT), used when --prompt is not given.
EXAMPLE_PROMPT = {
    Task.T2V_A14B: "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage.",
    Task.TI2V_5B: "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage.",
    Task.I2V_A14B: (
        "Summer beach vacation style, a white cat wearing sunglasses sits on a surfboard. The fluffy-furred "
        "feline gazes directly at the camera with a relaxed expression. Blurred beach scenery forms the "
        "background featuring crystal-clear waters, distant green hills, and a blue sky dotted with white "
        "clouds. The cat assumes a naturally relaxed posture, as if savoring the sea breeze and warm "
        "sunlight. A close-up shot highlights the feline's intricate details and the refreshing atmosphere "
        "of the seaside."),
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one `error: ...` line with exit code 2."""

    def error(self, message: str):  # noqa: D401 (argparse API)
        # self.prog is the command as typed: `python -m wan_core generate`, `wan22 generate`
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")

    def exit(self, status: int = 0, message: Optional[str] = None):
        if message and status:   # under torchrun every rank parses the same argv: say it once
            _report_error(message.rstrip("\n"))
            message = None
        super().exit(status, message)


def program_name(argv0: Optional[str] = None) -> str:
    """How the user started us, for usage and error lines: the console command `wan22` (pip
    install), else `python -m wan_core`."""
    name = os.path.basename(argv0 if argv0 is not None else (sys.argv[0] if sys.argv else ""))
    return "wan22" if name in ("wan22", "wan22.exe") else "python -m wan_core"


def _str2bool(v: str) -> bool:
    """The official str2bool."""
    if isinstance(v, bool):
        return v
    s = v.lower()
    if s in ("yes", "true", "t", "y", "1"):
        return True
    if s in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected (True/False), got {v!r}")


def _gpus(v: str) -> tuple[int, Optional[tuple[int, ...]]]:
    """'4' -> (4, None); '0,2,3' -> (3, (0, 2, 3))."""
    s = v.replace(" ", "")
    try:
        if "," in s:
            ids = tuple(int(x) for x in s.split(",") if x)
            return len(ids), ids
        return int(s), None
    except ValueError:
        raise argparse.ArgumentTypeError(f"--num_gpus {v!r}: give a count (4) or a list of GPU ids (0,2,3)") from None


def _add_file_flags(parser) -> None:
    """--dit ... --audio_encoder and --weights (generate and doctor)."""
    f = parser.add_argument_group("single model files (ComfyUI's; each replaces that part of --ckpt_dir)")
    f.add_argument("--dit", default=None, metavar="FILE", help="ti2v-5B / s2v-14B diffusion model file")
    f.add_argument("--dit_high_noise", default=None, metavar="FILE", help="A14B high-noise expert file")
    f.add_argument("--dit_low_noise", default=None, metavar="FILE", help="A14B low-noise expert file")
    f.add_argument("--text_encoder", default=None, metavar="FILE", help="umT5 file (umt5_xxl_*.safetensors)")
    f.add_argument("--vae", default=None, metavar="FILE", help="VAE file (wan_2.1_vae / wan2.2_vae .safetensors)")
    f.add_argument("--audio_encoder", default=None, metavar="FILE",
                   help="s2v-14B: wav2vec2 file (wav2vec2_large_english_fp16.safetensors)")
    f.add_argument("--weights", default=WeightsMode.AUTO.value, choices=[w.value for w in WeightsMode],
                   help="auto: keep what the files hold (fp8 stays fp8); bf16/fp16/fp32: cast at load; fp8: "
                        "big linears in fp8 with per-tensor scales; fp8_fast: also fp8 matmuls on compute "
                        "capability 8.9+ (default auto)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=program_name(), description="Wan2.2 video generation on one or many GPUs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="generate a video (official generate.py flags)",
                       description="Generate a video with Wan2.2 (flags of the official generate.py).")
    g.add_argument("--task", default=Task.T2V_A14B.value, choices=[t.value for t in Task],
                   help="the task to run (default t2v-A14B)")
    g.add_argument("--size", default=None,
                   help="WIDTH*HEIGHT of the video; for i2v/ti2v with an image only the area counts "
                        "(default: the task's official default, 1280*720 or 1280*704 for ti2v-5B)")
    g.add_argument("--frame_num", type=int, default=None, help="frames, 4n+1 (default 81; ti2v-5B 121)")
    g.add_argument("--ckpt_dir", default=None,
                   help="the official checkpoint folder of the task (not needed when a file is given for every part)")
    _add_file_flags(g)
    g.add_argument("--offload_model", type=_str2bool, default=None,
                   help="keep only the running model on the GPU (default: True on one GPU, like the "
                        "official script; implies --offload experts for the A14B tasks)")
    g.add_argument("--ulysses_size", type=int, default=None,
                   help="sequence-parallel degree (default: num_gpus, or num_gpus/2 with --cfg_parallel)")
    g.add_argument("--t5_fsdp", action="store_true", help="shard T5 across the GPUs (FSDP2)")
    g.add_argument("--t5_cpu", action="store_true", help="run the T5 text encoder on the CPU")
    g.add_argument("--dit_fsdp", action="store_true", help="shard the DiT(s) across the GPUs (FSDP2)")
    g.add_argument("--save_file", default=None, help="output .mp4 (default: the official file name pattern)")
    g.add_argument("--prompt", default=None, help="the text prompt (default: the official example prompt)")
    g.add_argument("--neg_prompt", default=None, help="negative prompt (default: the official one)")
    g.add_argument("--base_seed", type=int, default=-1, help="seed; -1 picks a random one (default)")
    g.add_argument("--image", default=None, help="input image (i2v-A14B: required; ti2v-5B: optional)")
    g.add_argument("--sample_solver", default=Solver.UNIPC.value, choices=[s.value for s in Solver],
                   help="unipc (official default), dpm++, or ComfyUI's samplers on its 'simple' "
                        "schedule: euler (the 4-step LoRA templates: 4 steps, shift 5, guidance 1), "
                        "uni_pc / uni_pc_bh2 (the TI2V-5B template: 20 steps, shift 8, guidance 5); "
                        "docs/samplers.md")
    g.add_argument("--sample_steps", type=int, default=None, help="denoising steps (default 40; ti2v-5B 50)")
    g.add_argument("--sample_shift", type=float, default=None, help="noise schedule shift (task default)")
    g.add_argument("--sample_guide_scale", default=None,
                   help="classifier-free guidance: one value, or LOW,HIGH for the two MoE experts")
    g.add_argument("--boundary", type=float, default=None,
                   help="MoE expert switch as a fraction of 1000 timesteps (default 0.875 t2v, 0.900 i2v)")
    g.add_argument("--switch_step", type=int, default=0,
                   help="MoE expert switch by step index instead: steps before N run the high-noise "
                        "expert (ComfyUI templates: 2 of 4); 0 = use --boundary (default)")
    g.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="LoRA .safetensors on every expert (repeatable; strength default 1.0)")
    g.add_argument("--lora_high_noise", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="LoRA on the high-noise expert only (repeatable)")
    g.add_argument("--lora_low_noise", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="LoRA on the low-noise expert only (repeatable)")
    g.add_argument("--convert_model_dtype", action="store_true",
                   help="DiT weights in bf16 (our default on CUDA; kept for the official flag)")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--dtype", default=None, choices=[d.value for d in ParamDtype],
                   help="DiT/T5 weight dtype (default: bf16 on CUDA, fp32 on CPU)")
    g.add_argument("--attention", default=AttentionBackend.AUTO.value, choices=[a.value for a in AttentionBackend])
    g.add_argument("--save_latent", default=None, metavar="FILE",
                   help="also save the final latent as safetensors (key 'latent'; s2v-14B: the last "
                        "clip's, and every clip's as 'clip0', 'clip1', ...)")
    g.add_argument("--num_gpus", type=_gpus, default=(1, None), metavar="N|IDS",
                   help="GPUs (worker processes): a count, or a list of ids such as 0,2,3")
    g.add_argument("--cfg_parallel", action="store_true", help="cond and uncond on different GPUs")
    g.add_argument("--offload", default=None, choices=[o.value for o in OffloadMode],
                   help="CPU offload: none, experts (inactive MoE expert on CPU) or blocks (stream blocks)")
    s = g.add_argument_group("s2v-14B (speech to video)")
    s.add_argument("--audio", default=None,
                   help="s2v-14B: the speech/song that drives the video (wav, mp3, flac, m4a, ogg); "
                        "it is muxed into the mp4")
    s.add_argument("--infer_frames", type=int, default=80,
                   help="s2v-14B: frames per clip, a multiple of 4 (default 80)")
    s.add_argument("--num_clip", type=int, default=None,
                   help="s2v-14B: clips to make (default: as many as the audio needs)")
    s.add_argument("--pose_video", default=None, help="s2v-14B: pose (DW-pose) video that drives the body")
    s.add_argument("--start_from_ref", action="store_true",
                   help="s2v-14B: the reference image becomes the first frames")
    g.add_argument("-v", "--verbose", action="store_true", help="log loading and timing details")

    d = sub.add_parser("demo", help="run T2V end to end on a tiny random-weight checkpoint",
                       description="Write a tiny random-weight T2V checkpoint in the official layout "
                                   "and generate a short mp4 from it (seconds on a CPU).")
    d.add_argument("--out", default="wan_demo.mp4", help="output mp4 (default wan_demo.mp4)")
    d.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    d.add_argument("--ckpt_dir", default=None,
                   help="where to write the tiny checkpoint (default: a cache folder)")
    d.add_argument("-v", "--verbose", action="store_true")

    dl = sub.add_parser("download", help="fetch a task's model files from Hugging Face (checked, resumable)",
                        description="Download the files TASK needs through huggingface_hub (HF_ENDPOINT, "
                                    "HF_TOKEN and HF_HUB_OFFLINE as that library documents), resumable, "
                                    "checked against the hub's sizes and hashes, recorded in a manifest.")
    dl.add_argument("task", choices=[t.value for t in Task], metavar="TASK",
                    help=f"one of {', '.join(t.value for t in Task)}")
    dl.add_argument("--set", dest="file_set", default="official", choices=["official", "comfy"],
                    help="official: the Wan-AI repositories in the official layout (default); comfy: the "
                         "files of ComfyUI's own Wan2.2 templates (fp8_scaled experts, umT5, VAE, LoRAs)")
    dl.add_argument("--dir", default=None,
                    help="official: the checkpoint folder to fill; comfy: the ComfyUI models folder "
                         "(default inside a ComfyUI tree: models/wan22/Wan2.2-TASK, or models/)")
    vf = sub.add_parser("verify", help="check downloaded files: present, sizes and hashes, layout, runnable tasks",
                        description="Check checkpoint folders, ComfyUI models folders or single files; "
                                    "exit 0 only when all is well.")
    vf.add_argument("paths", nargs="+", metavar="PATH")
    st = sub.add_parser("status", help="verify every place the loader looks (or --dir)",
                        description="Verify models/wan22/* and ComfyUI's model folders of this ComfyUI tree "
                                    "(or --dir MODELS_DIR) and list the runnable tasks; exit 0 only when all "
                                    "is well and something is runnable.")
    st.add_argument("--dir", default=None, help="a models folder (default: this ComfyUI tree's models/)")

    dr = sub.add_parser("doctor", help="report what this machine offers, and the memory plan of a request",
                        description="Print Python/torch versions, CUDA and the GPUs, the attention backends "
                                    "that import and the one 'auto' picks, NCCL, PyAV, /dev/shm, the links "
                                    "between the GPUs, a timed NCCL all-reduce/all-to-all self-test, host "
                                    "RAM, and the memory plan (estimated peak per GPU) of the request the "
                                    "flags describe, with the settings to use instead when it does not fit. "
                                    "No network; exit code 0 (see --strict).")
    dr.add_argument("--task", default=Task.T2V_A14B.value, choices=[t.value for t in Task])
    dr.add_argument("--size", default=None, help="WIDTH*HEIGHT (default: the task's official default)")
    dr.add_argument("--frame_num", type=int, default=None, help="frames (s2v-14B: frames per clip)")
    dr.add_argument("--gpus", "--num_gpus", dest="gpus", type=_gpus, default=None, metavar="N|IDS",
                    help="GPUs to plan for: a count or ids (default: every visible GPU)")
    dr.add_argument("--ulysses_size", type=int, default=None)
    dr.add_argument("--cfg_parallel", action="store_true")
    dr.add_argument("--dit_fsdp", action="store_true")
    dr.add_argument("--t5_fsdp", action="store_true")
    dr.add_argument("--t5_cpu", action="store_true")
    dr.add_argument("--offload", default=None, choices=[o.value for o in OffloadMode],
                    help="default: experts on one GPU for the A14B tasks (as generate), else none")
    dr.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32", "fp8"],
                    help="weight dtype (fp8: ComfyUI's fp8_scaled files)")
    dr.add_argument("--sample_guide_scale", default=None, help="1 = no CFG (one forward per step)")
    dr.add_argument("--ckpt_dir", default=None, help="read the model's sizes from this checkpoint")
    _add_file_flags(dr)
    dr.add_argument("--json", action="store_true", help="print one JSON object (plan, links, self-test)")
    dr.add_argument("--no_selftest", action="store_true", help="skip the NCCL self-test")
    dr.add_argument("--selftest_timeout", type=float, default=60.0, metavar="S",
                    help="seconds before the NCCL self-test counts as hung (default 60)")
    dr.add_argument("--strict", action="store_true",
                    help="exit 1 when the plan does not fit or the self-test fails")
    from .bench import build_parser as _bench_parser   # `bench`: whole-video timing (wan_core/bench.py)

    _bench_parser(sub)
    return parser


def _doctor(args) -> int:
    from .doctor import PlanOptions, run_doctor

    n, ids = args.gpus if args.gpus else (None, None)
    opts = PlanOptions(task=args.task, size=args.size, frame_num=args.frame_num, gpus=n, gpu_ids=ids,
                       ulysses_size=args.ulysses_size, cfg_parallel=args.cfg_parallel, dit_fsdp=args.dit_fsdp,
                       t5_fsdp=args.t5_fsdp, t5_cpu=args.t5_cpu, offload=args.offload, dtype=args.dtype,
                       ckpt_dir=args.ckpt_dir, files=_files(args), weights=args.weights,
                       sample_guide_scale=args.sample_guide_scale,
                       selftest=not args.no_selftest, selftest_timeout_s=args.selftest_timeout)
    return run_doctor(plan=opts, as_json=args.json, strict=args.strict)


# -- generate -------------------------------------------------------------------------------------


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _rank() -> int:
    return int(os.environ.get("RANK", "0")) if _under_torchrun() else 0


# Under torchrun every rank runs this CLI with the same argv and files, so a mistake found before
# the group is joined (flags, sizes, checkpoint layout, input files) is found by every rank at once:
# rank 0 reports it and all ranks exit 2. Once the ranks run (`_run_torchrun`) errors may belong to
# one rank (its GPU, its shard), so each rank reports its own, naming itself.
_PER_RANK_STAGE = False


def _reports_errors() -> bool:
    return _PER_RANK_STAGE or _rank() == 0


def _report_error(text: str) -> None:
    """Print `error: ...` once (see above) and, under torchrun, leave it in the error file torchrun
    gave this rank, so torchrun's own failure summary shows the message instead of a link."""
    if _under_torchrun():
        if _PER_RANK_STAGE:
            text = text.replace("error: ", f"error: rank {_rank()}: ", 1)
        _write_torchelastic_error(text)
    if _reports_errors():
        print(text, file=sys.stderr)
    else:
        _leave_it_to_rank0(text)


def _leave_it_to_rank0(text: str, wait_s: float = 30.0) -> None:
    """A rank other than 0 with the same pre-join error does not exit first: torchrun would stop
    rank 0 (SIGTERM) before it printed the line. It waits for torchrun to stop it once rank 0 has
    exited; if that does not come (rank 0 did not fail, e.g. another node), it says it itself."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
    print(text.replace("error: ", f"error: rank {_rank()}: ", 1), file=sys.stderr)


def _write_torchelastic_error(text: str) -> None:
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    import json
    import time

    try:
        with open(path, "w") as f:
            json.dump({"message": {"message": text, "extraInfo": {
                "py_callstack": text, "timestamp": str(int(time.time()))}}}, f)
    except OSError:
        pass


def build_parallel(args, task: Task) -> ParallelConfig:
    num_gpus, gpu_ids = args.num_gpus
    if _under_torchrun():
        num_gpus, gpu_ids = int(os.environ["WORLD_SIZE"]), None
    cfg_degree = 2 if args.cfg_parallel else 1
    ulysses = args.ulysses_size
    if ulysses is None:
        ulysses = max(1, num_gpus // cfg_degree)
    spec = TASKS[task]
    if args.offload is not None:
        offload = OffloadMode(args.offload)
    else:
        offload_model = args.offload_model if args.offload_model is not None else num_gpus == 1
        offload = (OffloadMode.EXPERTS if (offload_model and spec.moe and not args.dit_fsdp)
                   else OffloadMode.NONE)
    return ParallelConfig(num_gpus=num_gpus, gpu_ids=gpu_ids, ulysses_size=ulysses,
                          cfg_parallel=args.cfg_parallel, dit_fsdp=args.dit_fsdp, t5_fsdp=args.t5_fsdp,
                          t5_cpu=args.t5_cpu, offload=offload)


def _files(args) -> ModelFiles:
    return ModelFiles(dit=args.dit, dit_high_noise=args.dit_high_noise, dit_low_noise=args.dit_low_noise,
                      text_encoder=args.text_encoder, vae=args.vae, audio_encoder=args.audio_encoder)


def build_spec(args, task: Task) -> EngineSpec:
    device = args.device or _default_device()
    if device not in ("cuda", "cpu") and not device.startswith("cuda:"):
        raise ConfigError(f"--device {device!r}: use cuda or cpu")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available here (no GPU, or a CPU build of "
                              "torch); use --device cpu")
        num_gpus, gpu_ids = args.num_gpus
        if _under_torchrun():
            device = "cuda"                   # each launched process uses GPU LOCAL_RANK
        elif num_gpus == 1 and gpu_ids:
            device = f"cuda:{gpu_ids[0]}"     # --num_gpus 3 style list of one id: run there in-process
    if args.dtype is not None:
        dtype = ParamDtype(args.dtype)
    elif args.convert_model_dtype or device.startswith("cuda"):
        dtype = ParamDtype.BF16
    else:
        dtype = ParamDtype.FP32
    files = _files(args)
    if args.ckpt_dir is None and not files.any():
        raise ConfigError("--ckpt_dir is required (or a file for every part: --dit or --dit_high_noise/"
                          "--dit_low_noise, --text_encoder, --vae, and --audio_encoder for s2v-14B)")
    return EngineSpec(task=task, ckpt_dir=str(args.ckpt_dir or ""), device=device, param_dtype=dtype,
                      parallel=build_parallel(args, task), attention=AttentionBackend(args.attention),
                      files=files, weights=WeightsMode.parse(args.weights))


def build_request(args, task: Task) -> GenerateRequest:
    from .io.images import load_image_tensor

    spec = TASKS[task]
    image = None
    if args.image is not None:
        if not spec.accepts_image:
            raise ConfigError(f"--image is not used by {task.value}; use i2v-A14B or ti2v-5B for image-to-video")
        image = load_image_tensor(args.image)
    elif spec.needs_image:
        raise ConfigError(f"{task.value} needs an input image: pass --image FILE")
    prompt = args.prompt if args.prompt is not None else EXAMPLE_PROMPT.get(task, "")
    s2v_flags = any(v is not None for v in (args.audio, args.num_clip, args.pose_video)) or \
        args.start_from_ref or args.infer_frames != 80
    if task == Task.S2V_14B:
        from .pipeline.s2v import AudioInput, S2VOptions

        if args.audio is None:
            raise ConfigError("s2v-14B needs the driving audio: pass --audio FILE (wav, mp3, flac, m4a, ogg)")
        if args.frame_num is not None:
            raise ConfigError("--frame_num is not used by s2v-14B; set the frames per clip with "
                              "--infer_frames (a multiple of 4) and the clip count with --num_clip")
        return GenerateRequest(
            prompt=prompt, neg_prompt=args.neg_prompt, size=parse_size(args.size) if args.size else None,
            steps=args.sample_steps, shift=args.sample_shift,
            guide_scale=GuideScale.parse(args.sample_guide_scale) if args.sample_guide_scale is not None else None,
            boundary=args.boundary, solver=Solver.parse(args.sample_solver), seed=args.base_seed, image=image,
            loras=lora_specs(args), audio=AudioInput(path=args.audio),
            s2v=S2VOptions(infer_frames=args.infer_frames, num_clip=args.num_clip, pose_video=args.pose_video,
                           start_from_ref=args.start_from_ref))
    if s2v_flags:
        raise ConfigError("--audio, --infer_frames, --num_clip, --pose_video and --start_from_ref are "
                          "s2v-14B flags; pass --task s2v-14B")
    return GenerateRequest(
        prompt=prompt, neg_prompt=args.neg_prompt,
        size=parse_size(args.size) if args.size else None,
        frame_num=args.frame_num, steps=args.sample_steps, shift=args.sample_shift,
        guide_scale=GuideScale.parse(args.sample_guide_scale) if args.sample_guide_scale is not None else None,
        boundary=args.boundary, solver=Solver.parse(args.sample_solver), seed=args.base_seed, image=image,
        switch_step=args.switch_step, loras=lora_specs(args))


def lora_specs(args) -> tuple:
    """--lora / --lora_high_noise / --lora_low_noise -> LoraSpec entries (files checked to exist here,
    so a typo fails before any model loads)."""
    from .config import LoraSpec, LoraTarget

    specs = [LoraSpec.parse(text, target)
             for flag, target in (("lora", LoraTarget.BOTH), ("lora_high_noise", LoraTarget.HIGH_NOISE),
                                  ("lora_low_noise", LoraTarget.LOW_NOISE))
             for text in getattr(args, flag, None) or []]
    for spec in specs:
        if not os.path.isfile(spec.path):
            raise ConfigError(f"LoRA file {spec.path!r} does not exist (--lora FILE[:STRENGTH])")
    return tuple(specs)


def default_save_file(args, task: Task, ulysses_size: int, prompt: str) -> str:
    """The official name: {task}_{size}_{ulysses}_{prompt[:50]}_{YYYYmmdd_HHMMSS}.mp4."""
    size = args.size or TASKS[task].default_size
    if sys.platform == "win32":
        size = size.replace("*", "x")
    formatted_prompt = prompt.replace(" ", "_").replace("/", "_")[:50]
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    return f"{task.value}_{size}_{ulysses_size}_{formatted_prompt}_{stamp}.mp4"


class ProgressBars:
    """One tqdm bar per phase on stderr, fed by `Progress` reports."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.phase = None
        self.bar = None

    def __call__(self, p) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        total = p.total or None
        if p.phase != self.phase or self.bar is None or self.bar.total != total:
            self.close()
            self.phase = p.phase
            self.bar = tqdm(total=total, desc=f"{p.phase:>7}", file=sys.stderr, leave=True,
                            dynamic_ncols=True)
        self.bar.n = p.step or 0
        if p.message:
            self.bar.set_postfix_str(p.message, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def precheck(spec: EngineSpec, request: GenerateRequest):
    """Everything that can be checked without loading weights; returns the RunPlan."""
    from .loading.check import check_checkpoint
    from .loading.facts import validate_spec
    from .memory_plan import check_fits
    from .pipeline.families import pipeline_for

    task = spec.task
    validate_spec(spec)               # the same checks as WanEngine and EngineClient
    validate_request(spec, request)   # cfg_parallel needs a guidance other than 1
    check_checkpoint(spec.ckpt_dir, task, spec.files)
    task_spec = TASKS[task]
    if task == Task.S2V_14B:
        check_fits(spec, request)   # the memory guard, before the audio is decoded (slow)
    # The family's plan (S2V decodes and checks the audio: a bad file fails before any weight loads).
    plan = pipeline_for(task_spec)(task_spec).plan(request, ulysses_size=spec.parallel.ulysses_size)
    if task != Task.S2V_14B:
        check_fits(spec, request)   # the memory guard: after the size and frames were validated
    return plan


def _save_outputs(result, save_file: str, save_latent: Optional[str]) -> None:
    from .io.video import write_mp4

    if result.video is not None and result.audio is not None:   # s2v-14B: h264 + the input audio (aac)
        from .io.audio import write_mp4_with_audio

        write_mp4_with_audio(save_file, result.video, result.fps, result.audio)
    elif result.video is not None:
        write_mp4(result.video, save_file, fps=result.fps)
    if result.video is not None:
        print(f"saved {save_file} ({result.video.shape[0]} frames, {result.video.shape[2]}x"
              f"{result.video.shape[1]}, {result.fps} fps, seed {result.seed})", file=sys.stderr)
    if save_latent:
        from safetensors.torch import save_file

        Path(save_latent).parent.mkdir(parents=True, exist_ok=True)
        tensors = {"latent": result.latent.contiguous()}
        # clone: the last clip's latent is also `latent`, and safetensors refuses shared storage
        tensors.update({k: v.detach().clone().contiguous() for k, v in (result.extra_latents or {}).items()})
        save_file(tensors, save_latent,
                  metadata={"seed": str(result.seed), "fps": str(result.fps)})
        print(f"saved latent {save_latent} {tuple(result.latent.shape)}", file=sys.stderr)


def _run_in_process(spec: EngineSpec, request: GenerateRequest, bars: ProgressBars):
    from .pipeline.engine import WanEngine
    from .pipeline.progress import RunHooks

    engine = WanEngine(spec, on_progress=bars)
    try:
        return engine.generate(request, RunHooks(on_progress=bars))
    finally:
        bars.close()


def _run_torchrun(spec: EngineSpec, request: GenerateRequest, bars: ProgressBars):
    from .runtime.dist_init import run_under_torchrun

    global _PER_RANK_STAGE
    _PER_RANK_STAGE = True
    try:
        return run_under_torchrun(spec, request, on_progress=bars)   # bars fed on rank 0 only
    finally:
        bars.close()


def _run_group(spec: EngineSpec, request: GenerateRequest, bars: ProgressBars):
    from .client import EngineClient

    client = EngineClient(spec)
    try:
        return client.generate(request, on_progress=bars, should_cancel=lambda: False)
    finally:
        bars.close()
        client.close()


def cmd_generate(args) -> int:
    task = Task.parse(args.task)
    spec = build_spec(args, task)
    request = build_request(args, task)
    plan = precheck(spec, request)
    for text in plan.warnings:   # before any progress bar (the engine's repeat is dropped: _CliLogHandler)
        log.warning(text)
    if request.seed < 0 and not _under_torchrun():
        # One random seed for every worker, picked before they start (under torchrun the engine
        # broadcasts rank 0's pick, as the official script does).
        from dataclasses import replace
        request = replace(request, seed=plan.seed)
    save_file = args.save_file or default_save_file(args, task, spec.parallel.ulysses_size, request.prompt)
    bars = ProgressBars(enabled=True)
    if _under_torchrun():
        result = _run_torchrun(spec, request, bars)
    elif spec.parallel.num_gpus > 1:
        result = _run_group(spec, request, bars)
    else:
        result = _run_in_process(spec, request, bars)
    if result is not None:
        for text in result.warnings:    # e.g. LoRA keys that matched nothing (printed once)
            log.warning(text)
        _save_outputs(result, save_file, args.save_latent)
    return 0


# -- entry ----------------------------------------------------------------------------------------


def cmd_demo(out: str = "wan_demo.mp4", device: Optional[str] = None, ckpt_dir: Optional[str] = None) -> int:
    """`demo`: the tiny random-weight T2V-A14B job of `demo.py`, run like `generate`."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    world = int(os.environ.get("WORLD_SIZE", "1")) if _under_torchrun() else 1
    folder, spec, request = demo_job(device, ckpt_dir, world)
    say = _rank() == 0       # under torchrun: one demo over all ranks, reported by rank 0
    if say:
        print(f"tiny T2V-A14B checkpoint (random weights, so the video is coloured noise): {folder}",
              file=sys.stderr)
    plan = precheck(spec, request)
    for text in plan.warnings:   # before the progress bars (the tiny size is not an official one)
        log.warning(text)
    bars = ProgressBars(enabled=say)
    result = _run_torchrun(spec, request, bars) if world > 1 else _run_in_process(spec, request, bars)
    if result is None:           # ranks other than 0
        return 0
    _save_outputs(result, out, None)
    print(f"demo finished in {time.perf_counter() - start:.1f} s on {device}"
          f"{f' ({world} ranks)' if world > 1 else ''}: {out}", file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:   # reported by the subcommand, so the hint names its --help
        sub = next((a.choices[args.command] for a in parser._actions
                    if isinstance(a, argparse._SubParsersAction)), parser)
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    _setup_logging(verbose=getattr(args, "verbose", False))
    try:
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "doctor":
            return _doctor(args)
        if args.command == "download":
            from .manage.download import download
            download(args.task, args.file_set, args.dir)
            return 0
        if args.command == "verify":
            from .manage.verify import verify
            return verify(args.paths)
        if args.command == "status":
            from .manage.verify import status
            return status(args.dir)
        if args.command == "demo":
            return cmd_demo(out=args.out, device=args.device, ckpt_dir=args.ckpt_dir)
        if args.command == "bench":
            from .bench import main as bench_main
            return bench_main(args)
        parser.error(f"unknown command {args.command!r}")
    except Cancelled as exc:
        _report_error(f"error: {exc}")
        return 130
    except WorkerFailure as exc:
        if exc.user_error:
            _report_error(f"error: {exc.message}")
            return 2
        _report_error(f"error: worker rank {exc.rank} failed: {exc.exc_type}: {exc.message}")
        if exc.traceback:
            print(exc.traceback, file=sys.stderr)
        return 1
    except WanEngineError as exc:
        _report_error(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _report_error("error: interrupted")
        return 130
    return 0


class _CliLogHandler(logging.StreamHandler):
    """stderr for the CLI: a log line printed while a progress bar is open goes above the bar
    (tqdm.write), and each distinct warning is printed once (the CLI reports a request's warnings
    before the bars start; the engine logs the same plan again when it runs)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self._warned: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno == logging.WARNING:
                if text in self._warned:
                    return
                self._warned.add(text)
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)
        except Exception:   # logging must never raise into the run
            self.handleError(record)


def _setup_logging(verbose: bool) -> None:
    """Like logging.basicConfig (nothing when the host configured logging already). Under torchrun
    ranks other than 0 log errors only, as the official generate.py does: the same warnings from
    every rank would only repeat rank 0's."""
    root = logging.getLogger()
    level = logging.INFO if verbose else logging.WARNING
    if _rank() != 0:
        level = logging.ERROR
    if not root.handlers:
        handler = _CliLogHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


if __name__ == "__main__":   # pragma: no cover
    sys.exit(main())
