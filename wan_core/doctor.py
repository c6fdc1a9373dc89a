"""`python -m wan_core doctor`: what this machine offers the engine, for bug reports and setup.

Prints Python/torch versions, CUDA and the GPUs (name, compute capability, memory), which attention
backends import and which one `auto` picks, torch.distributed backends (NCCL, gloo), PyAV and its
H.264/AAC encoders, the free space of /dev/shm (the worker group returns videos through shared
memory; NCCL uses it between GPUs of one host), the links between the GPUs (NVLink/PCIe, P2P), a
timed NCCL all-reduce + all-to-all over the chosen GPUs with a timeout (`linkcheck.py`), host RAM,
and the memory plan of a request (`memory_plan.py`) with the settings to use instead when it does
not fit. No network; GPU memory is read through NVML when `pynvml` is importable (no CUDA
context), else only the total is shown. Exits 0 (a missing piece is reported, not raised), except
`--strict`: 1 when the plan does not fit or the self-test fails. `--json` prints one JSON object
(the plan, links, self-test) for scripts, e.g. the GPU benchmark's plan-vs-measured check.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, TextIO

_GB = 1024 ** 3
# The modules models/attention.py imports for each flash backend (its `_load_flash`).
_FLASH_MODULES = {"flash3": "flash_attn_interface", "flash4": "flash_attn.cute", "flash2": "flash_attn"}
# One 81-frame 1280x720 RGB uint8 video: the largest tensor a worker hands back at official sizes.
_VIDEO_BYTES = 81 * 720 * 1280 * 3


@dataclass(frozen=True)
class Line:
    """One fact: `label: value`, and a `warning` (what to do) when it may hurt a run."""

    label: str
    value: str
    warning: Optional[str] = None


def _python() -> list[Line]:
    return [Line("python", f"{platform.python_version()} ({sys.executable})"),
            Line("platform", platform.platform())]


def _torch() -> list[Line]:
    import torch

    lines = [Line("torch", torch.__version__),
             Line("torch CUDA build", torch.version.cuda or "none (CPU-only build)")]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        lines.append(Line("CUDA_VISIBLE_DEVICES", repr(visible)))
    if not torch.cuda.is_available():
        return lines + [Line("CUDA available", "no", "device 'cuda' cannot run here; use device 'cpu'")]
    count = torch.cuda.device_count()
    lines.append(Line("CUDA available", f"yes, {count} GPU(s)"))
    free = _nvml_free_bytes()
    for i in range(count):
        p = torch.cuda.get_device_properties(i)
        mem = f"{p.total_memory / _GB:.1f} GiB"
        if free is not None and i < len(free):
            mem += f", {free[i] / _GB:.1f} GiB free"
        lines.append(Line(f"  GPU {i}", f"{p.name}, sm_{p.major}{p.minor}, {mem}"))
    return lines


def _nvml_free_bytes() -> Optional[list[int]]:
    """Free memory per visible GPU through NVML (no CUDA context), or None without pynvml.

    NVML numbers GPUs physically; CUDA_VISIBLE_DEVICES given as indices is mapped, any other form
    (UUIDs) is not, and then only totals are shown."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if visible is None:
                ids = list(range(pynvml.nvmlDeviceGetCount()))
            else:
                ids = [int(v) for v in visible.split(",") if v.strip()]
            return [pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).free
                    for i in ids]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML missing or a UUID list: the totals still print
        return None


def _attention() -> list[Line]:
    import torch

    from .models.attention import _load_flash, resolve_backend

    lines = []
    for name, module in _FLASH_MODULES.items():
        if _load_flash(name) is not None:
            lines.append(Line(f"attention {name}", f"imports ({module}{_version_of(name)})"))
        elif importlib.util.find_spec(module.split(".")[0]) is None:
            lines.append(Line(f"attention {name}", f"not installed ({module})"))
        else:
            lines.append(Line(f"attention {name}", f"installed but {module} fails to import",
                              f"run `{sys.executable} -c 'import {module}'` to see why "
                              "(often a wheel built for another torch or CUDA)"))
    lines.append(Line("attention sdpa", "available (PyTorch)"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    picked = resolve_backend("auto", device).name
    lines.append(Line("attention auto", f"picks {picked} on {device}"))
    return lines


def _version_of(backend: str) -> str:
    """Installed version of the backend's wheel (names as on PyPI; metadata normalises - and _)."""
    from importlib import metadata

    dist = {"flash3": "flash-attn-3", "flash4": "flash-attn-4", "flash2": "flash-attn"}[backend]
    try:
        return f", {dist} {metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        return ""


def _distributed() -> list[Line]:
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        return [Line("torch.distributed", "not available",
                     "this torch build has no torch.distributed: only num_gpus=1 can run")]
    lines = [Line("gloo (CPU ranks)", "yes" if dist.is_gloo_available() else "no")]
    if dist.is_nccl_available():
        version = ".".join(map(str, torch.cuda.nccl.version())) if torch.version.cuda else "?"
        lines.append(Line("NCCL (GPU ranks)", f"yes, {version}"))
    else:
        lines.append(Line("NCCL (GPU ranks)", "no",
                          "multi-GPU groups need NCCL (a CUDA build of torch on Linux)"
                          if torch.cuda.is_available() else None))
    return lines


def _video() -> list[Line]:
    try:
        import av
        import av.codec
    except ImportError as exc:
        return [Line("PyAV", "not importable", f"pip install av (mp4 output needs it): {exc}")]
    lines = [Line("PyAV", av.__version__)]
    for codec, what in (("libx264", "H.264 encoder (mp4 video)"), ("aac", "AAC encoder (s2v-14B audio)")):
        try:
            av.codec.Codec(codec, "w")
            lines.append(Line(f"  {what}", "yes"))
        except Exception:  # noqa: BLE001 - av raises UnknownCodecError (version dependent)
            lines.append(Line(f"  {what}", "no", f"this PyAV/FFmpeg build has no {codec} encoder"))
    return lines


def _shm() -> list[Line]:
    from .runtime.transport import SHM_DIR, shm_has_room

    try:
        usage = shutil.disk_usage(SHM_DIR)
    except OSError as exc:
        return [Line(SHM_DIR, f"unreadable ({exc})",
                     "worker results then travel through the pipe (slower); NCCL may fail")]
    value = f"{usage.free / _GB:.2f} GiB free of {usage.total / _GB:.2f} GiB"
    warning = None
    if not shm_has_room(_VIDEO_BYTES):
        warning = ("too small for an 81-frame 1280x720 video: results travel through the pipe "
                   "instead (slower) and NCCL may fail; in Docker pass --shm-size=8g")
    return [Line(SHM_DIR, value, warning)]


SECTIONS: list[tuple[str, Callable[[], list[Line]]]] = [
    ("Python", _python), ("PyTorch and GPUs", _torch), ("Attention", _attention),
    ("Distributed", _distributed), ("Video", _video), ("Shared memory", _shm),
]


@dataclass
class PlanOptions:
    """What `doctor --task ...` plans for (the generate flags of the same names)."""

    task: str = "t2v-A14B"
    size: Optional[str] = None
    frame_num: Optional[int] = None
    gpus: Optional[int] = None          # None: every visible GPU (1 without CUDA)
    gpu_ids: Optional[tuple[int, ...]] = None
    ulysses_size: Optional[int] = None
    cfg_parallel: bool = False
    dit_fsdp: bool = False
    t5_fsdp: bool = False
    t5_cpu: bool = False
    offload: Optional[str] = None       # None: the generate default (experts on one GPU for A14B)
    dtype: str = "bf16"                 # bf16 / fp16 / fp32 / fp8
    ckpt_dir: Optional[str] = None
    files: Optional[object] = None      # config.ModelFiles: ComfyUI single files replacing parts
    weights: str = "auto"               # config.WeightsMode value
    sample_guide_scale: Optional[str] = None
    selftest: bool = True
    selftest_timeout_s: float = 60.0
    extra: dict = field(default_factory=dict)


def _spec_and_request(opts: PlanOptions, cuda: bool, visible: int):
    from .config import (TASKS, EngineSpec, GenerateRequest, GuideScale, ModelFacts, OffloadMode,
                         ParallelConfig, ParamDtype, Task, check_parallel, parse_size)

    task = Task.parse(opts.task)
    n = opts.gpus or (len(opts.gpu_ids) if opts.gpu_ids else (max(1, visible) if cuda else 1))
    deg = 2 if opts.cfg_parallel else 1
    ulysses = opts.ulysses_size or max(1, n // deg)
    if opts.offload is not None:
        offload = OffloadMode(opts.offload)
    else:   # generate's default: --offload_model True on one GPU -> experts for the A14B tasks
        offload = OffloadMode.EXPERTS if (n == 1 and TASKS[task].moe and not opts.dit_fsdp) else OffloadMode.NONE
    par = ParallelConfig(num_gpus=n, gpu_ids=opts.gpu_ids, ulysses_size=ulysses, cfg_parallel=opts.cfg_parallel,
                         dit_fsdp=opts.dit_fsdp, t5_fsdp=opts.t5_fsdp, t5_cpu=opts.t5_cpu, offload=offload)
    check_parallel(par, ModelFacts.official(task))
    dtype = ParamDtype.BF16 if opts.dtype == "fp8" else ParamDtype(opts.dtype)
    # Planned for CUDA GPUs even where there is none (a user sizing a machine): only the check
    # against real GPU memory needs one.
    from .config import ModelFiles

    spec = EngineSpec(task=task, ckpt_dir=opts.ckpt_dir or "", device="cuda", param_dtype=dtype, parallel=par,
                      files=opts.files or ModelFiles(), weights=opts.weights)
    req = GenerateRequest(prompt="", size=parse_size(opts.size) if opts.size else None,
                          frame_num=opts.frame_num,
                          guide_scale=GuideScale.parse(opts.sample_guide_scale) if opts.sample_guide_scale else None)
    return spec, req


def collect_plan(opts: PlanOptions) -> dict:
    """Links, self-test, host memory and the memory plan as one JSON-able dict."""
    from . import memory_plan as mp
    from .linkcheck import gpu_links, selftest

    out: dict = {}
    gpus = mp.gpu_memory()
    cuda = bool(gpus)
    out["gpus"] = [{"name": g[0], "total_gib": round(g[1] / mp.GiB, 2),
                    "free_gib": None if g[2] is None else round(g[2] / mp.GiB, 2)} for g in gpus or []]
    out["cuda"] = cuda
    spec, req = _spec_and_request(opts, cuda, len(gpus or []))
    n = spec.parallel.num_gpus
    links = gpu_links() if cuda else None
    out["links"] = asdict(links) | {"kind": links.kind} if links else None
    if cuda and n > 1 and opts.selftest:
        test = selftest(n, "nccl", timeout_s=opts.selftest_timeout_s, gpu_ids=list(spec.parallel.gpu_ids or range(n)))
        out["selftest"] = asdict(test)
    else:
        out["selftest"] = None
    total, avail = mp.host_ram()
    out["host_ram_gib"] = {"total": total and round(total / mp.GiB, 2), "available": avail and round(avail / mp.GiB, 2)}
    try:
        shm = shutil.disk_usage("/dev/shm")
        out["shm_free_gib"] = round(shm.free / mp.GiB, 2)
    except OSError:
        out["shm_free_gib"] = None
    sizes = mp.facts_for(spec.task, opts.ckpt_dir, spec.files)
    if opts.ckpt_dir or spec.files.any():   # how each part would be read and held (headers only)
        from .loading.parts import describe_parts, resolve_parts

        try:
            out["model_files"] = dict(describe_parts(resolve_parts(spec.task, opts.ckpt_dir or None, spec.files),
                                                     opts.weights, spec.param_dtype.value))
        except Exception as exc:  # noqa: BLE001 - a report: the bad file is the finding
            out["model_files"] = {"error": f"{type(exc).__name__}: {exc}"}
    if cuda:
        cap = mp.capacity_for("cuda", n, spec.parallel.gpu_ids)
        if cap is not None and links is not None:
            from dataclasses import replace

            cap = replace(cap, link=links.kind)
    else:
        cap = None
    plan, tips = mp.plan_for(spec, req, sizes=sizes, cap=cap, weight_dtype=opts.dtype)
    out["plan"] = plan.to_json()
    out["instead"] = [t.to_json() for t in tips]
    out["plan_text"] = mp.describe(plan, tips)
    out["plan_device"] = "cuda" if cuda else "cuda (no GPU here: planned for CUDA GPUs, not checked against any)"
    return out


def _plan_lines(info: dict) -> list[tuple[str, list[Line]]]:
    from . import memory_plan as mp

    sections = []
    if info.get("model_files"):
        sections.append(("Model files", [Line(k, v, "fix this file before running" if k == "error" else None)
                                         for k, v in info["model_files"].items()]))
    links = info.get("links")
    if not info["cuda"]:
        sections.append(("GPU links", [Line("GPUs", "none visible: no GPU links, no NCCL self-test")]))
    else:
        lines = []
        for pair, kind in (links or {}).get("pairs", {}).items():
            p2p = links["p2p"].get(pair)
            words = "NVLink" if kind.startswith("NV") else LINK_WORDS_SHORT.get(kind, kind)
            lines.append(Line(f"GPU {pair.replace('-', ' <-> ')}", f"{kind} ({words}), P2P "
                              f"{'on' if p2p else 'off' if p2p is not None else 'unknown'}",
                              None if p2p or p2p is None else "no peer-to-peer: NCCL goes through host "
                              "memory (slower); if multi-GPU runs hang, set NCCL_P2P_DISABLE=1"))
        if not lines:
            lines.append(Line("links", "one GPU" if len(info["gpus"]) < 2 else
                              (links or {}).get("error") or "nvidia-smi topo -m unavailable"))
        sections.append(("GPU links", lines))
        test = info.get("selftest")
        if test is None:
            sections.append(("NCCL self-test", [Line("skipped", "one GPU in the plan (or --no_selftest)")]))
        else:
            sections.append(("NCCL self-test", [Line("result" if test["ok"] else "FAILED", test["message"],
                                                     None if test["ok"] else "multi-GPU runs will hang or fail "
                                                     "the same way until this passes")]))
    plan = info["plan"]
    host = info["host_ram_gib"]
    need_host = plan["host_ram"] / mp.GiB
    lines = [Line("host RAM", f"{host['total']} GiB total, {host['available']} GiB available; the plan "
                  f"needs about {need_host:.1f} GiB",
                  "not enough host RAM for this layout (offloaded weights are pinned in RAM): use fewer "
                  "GPUs with offload, or dit_fsdp" if host["total"] and need_host > host["total"] else None)]
    need_shm = plan["shm"] / mp.GiB
    if info.get("shm_free_gib") is not None:
        lines.append(Line("/dev/shm for the plan", f"{info['shm_free_gib']} GiB free, about {need_shm:.1f} GiB used",
                          "too small: results fall back to the pipe and NCCL may fail; in Docker pass "
                          "--shm-size=8g" if need_shm > info["shm_free_gib"] else None))
    sections.append(("Host memory", lines))
    text = info["plan_text"]
    plan_lines = [Line("plan", text[0])] + [Line("", t.strip()) for t in text[1:]]
    if not info["cuda"]:
        plan_lines.insert(0, Line("GPU", "no CUDA GPU here: the plan is for CUDA GPUs of any size "
                                  "(add --gpus N to plan for N)"))
    if plan.get("fits") is False:
        plan_lines.append(Line("verdict", "this request does not fit",
                               "use one of the settings after `instead`"))
    sections.append(("Memory plan", plan_lines))
    return sections


LINK_WORDS_SHORT = {"SYS": "PCIe across CPU sockets", "NODE": "PCIe through the CPU", "PHB": "PCIe host bridge",
                    "PXB": "PCIe switches", "PIX": "PCIe switch"}


def run_doctor(out: TextIO = sys.stdout, plan: Optional[PlanOptions] = None, *, as_json: bool = False,
               strict: bool = False) -> int:
    """Print every section (or one JSON object with `as_json`); a section that raises is reported
    as such. Returns 0, or with `strict` 1 when the plan does not fit or the self-test failed."""
    plan = plan or PlanOptions()
    info = None
    try:
        info = collect_plan(plan)
        plan_sections = _plan_lines(info)
    except Exception as exc:  # noqa: BLE001 - a report, not a run
        from .errors import WanEngineError

        hint = "check the flags" if isinstance(exc, WanEngineError) else "please include this in a bug report"
        plan_sections = [("Memory plan", [Line("error", f"{type(exc).__name__}: {exc}", hint)])]
        if as_json:
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), file=out)
            return 2 if isinstance(exc, WanEngineError) else 1
    bad = info is not None and (info["plan"].get("fits") is False
                                or (info.get("selftest") and not info["selftest"]["ok"]))
    if as_json:
        print(json.dumps(info, indent=1, default=str), file=out)
        return 1 if (strict and bad) else 0
    warnings = 0
    for title, collect in SECTIONS + [(t, (lambda lines=lines: lines)) for t, lines in plan_sections]:
        print(f"{title}:", file=out)
        try:
            lines = collect()
        except Exception as exc:  # noqa: BLE001 - a report, not a run: show it and go on
            lines = [Line("error", f"{type(exc).__name__}: {exc}", "please include this in a bug report")]
        for line in lines:
            print(f"  {line.label}: {line.value}" if line.label else f"    {line.value}", file=out)
            if line.warning:
                warnings += 1
                print(f"    warning: {line.warning}", file=out)
    print(f"{warnings} warning(s)", file=out)
    return 1 if (strict and bad) else 0
