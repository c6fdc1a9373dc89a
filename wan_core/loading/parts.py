"""Where each part of a task's model comes from: the official folder, or ComfyUI single files that
replace parts of it (`ModelFiles`: --dit / --dit_high_noise / --dit_low_noise / --text_encoder /
--vae / --audio_encoder), and the check of those files against the task before any worker starts.

`resolve_parts(task, ckpt_dir, files)` -> `Parts`: one path per part (a folder or a file); the
official folder is needed only for the parts no file replaces. `check_parts(task, parts)` reads
only file headers and says in one line per problem which file is wrong and what was expected:
a T2V expert given for I2V (in_dim 16 vs 36), experts that differ, the 2.1 VAE for TI2V-5B, a
non-S2V model for S2V, a text encoder that is not umT5 or not 4096 wide...
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from ..config import TASKS, ModelFiles, Task
from ..errors import CheckpointError, ConfigError
from .single_file import FileInfo, inspect_file
from .t5 import T5_CHECKPOINT, TOKENIZER_SUBDIR

PathLike = Union[str, Path]


_EXPECTED_TYPE = {Task.T2V_A14B: ("t2v", 16), Task.I2V_A14B: ("i2v", 36), Task.TI2V_5B: ("ti2v", 48),
                  Task.S2V_14B: ("s2v", 16)}
COMFY_FILE_NAMES = {  # what ComfyUI's templates call each part (for messages)
    Task.T2V_A14B: {"dit_high_noise": "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
                    "dit_low_noise": "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"},
    Task.I2V_A14B: {"dit_high_noise": "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
                    "dit_low_noise": "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"},
    Task.TI2V_5B: {"dit": "wan2.2_ti2v_5B_fp16.safetensors"},
    Task.S2V_14B: {"dit": "wan2.2_s2v_14B_fp8_scaled.safetensors"},
}


@dataclass(frozen=True)
class Parts:
    """One location per part; `files` says which parts come from single files."""

    task: Task
    dits: dict            # {"high_noise_model"|"low_noise_model"|"model": Path (folder or file)}
    text_encoder: Path    # the official .pth or a single file
    tokenizer_dir: Optional[Path]   # google/umt5-xxl of the folder, when there is one
    vae: Path
    audio_encoder: Optional[Path]   # S2V: the wav2vec2 folder or a single file
    files: dict = field(default_factory=dict)   # part -> FileInfo for single files

    def is_file(self, path: Path) -> bool:
        return Path(path).is_file()


def resolve_parts(task: "Task | str", ckpt_dir: Optional[PathLike], files: Optional[ModelFiles] = None) -> Parts:
    """The location of every part; ConfigError naming the missing flags when a part has neither a
    file nor an official folder."""
    from ..models.wav2vec2 import FOLDER_NAME as W2V
    from .detect import dit_folders

    task = Task.parse(task)
    files = files or ModelFiles()
    spec = TASKS[task]
    ckpt = Path(ckpt_dir) if ckpt_dir else None
    experts = {"high_noise_model": files.dit_high_noise, "low_noise_model": files.dit_low_noise} if spec.moe \
        else {"model": files.dit}
    given = {"text_encoder": files.text_encoder, "vae": files.vae, **{f"dit:{k}": v for k, v in experts.items()}}
    if task == Task.S2V_14B:
        given["audio_encoder"] = files.audio_encoder
    if spec.moe and files.dit:
        raise ConfigError(f"{task.value} has two experts: give --dit_high_noise and --dit_low_noise, not --dit")
    if not spec.moe and (files.dit_high_noise or files.dit_low_noise):
        raise ConfigError(f"{task.value} has one model: give --dit, not --dit_high_noise/--dit_low_noise")
    if task != Task.S2V_14B and files.audio_encoder:
        raise ConfigError(f"--audio_encoder is for s2v-14B only (task {task.value})")
    missing = [k for k, v in given.items() if not v]
    if missing and ckpt is None:
        flags = sorted({"--" + {"dit:high_noise_model": "dit_high_noise", "dit:low_noise_model": "dit_low_noise",
                                "dit:model": "dit"}.get(k, k) for k in missing})
        raise ConfigError(f"{task.value}: no --ckpt_dir and no file for {', '.join(flags)}; give the "
                          "official checkpoint folder or a file for every part")
    folders = dit_folders(ckpt, task) if ckpt is not None else {}
    dits = {name: Path(experts[name]) if experts[name] else folders[name] for name in experts}
    return Parts(
        task=task, dits=dits,
        text_encoder=Path(files.text_encoder) if files.text_encoder else ckpt / T5_CHECKPOINT,
        tokenizer_dir=(ckpt / TOKENIZER_SUBDIR) if ckpt is not None else None,
        vae=Path(files.vae) if files.vae else ckpt / spec.vae_file,
        audio_encoder=(Path(files.audio_encoder) if files.audio_encoder else ckpt / W2V)
        if task == Task.S2V_14B else None)


def check_parts(parts: Parts) -> dict[str, FileInfo]:
    """Headers of every single file checked against the task; returns {part label: FileInfo}."""
    task = parts.task
    want_type, want_in = _EXPECTED_TYPE[task]
    out: dict[str, FileInfo] = {}
    dit_cfgs = {}
    for name, path in parts.dits.items():
        if not Path(path).is_file():
            continue
        info = inspect_file(path, expect="dit")
        cfg = info.details["config"]
        if cfg["model_type"] != want_type:
            hint = {"t2v": "a T2V expert", "i2v": "an I2V expert", "ti2v": "the TI2V-5B model",
                    "s2v": "the S2V-14B model"}.get(cfg["model_type"], cfg["model_type"])
            raise CheckpointError(f"{path} is {hint} (in_dim {cfg['in_dim']}); {task.value} needs "
                                  f"{want_type} weights (in_dim {want_in}), e.g. "
                                  f"{next(iter(COMFY_FILE_NAMES[task].values()))}")
        out[name] = info
        dit_cfgs[name] = cfg
    if len(dit_cfgs) == 2:
        (a, ca), (b, cb) = dit_cfgs.items()
        dims = ("dim", "num_layers", "ffn_dim", "in_dim")
        if any(ca[k] != cb[k] for k in dims):
            raise CheckpointError(f"the experts differ: {parts.dits[a]} has "
                                  f"{ {k: ca[k] for k in dims} }, {parts.dits[b]} has { {k: cb[k] for k in dims} }")
    if parts.vae.is_file() and parts.vae.suffix == ".safetensors":
        info = inspect_file(parts.vae, expect="vae")
        version = TASKS[task].vae
        if info.details["version"] != version:
            need = "wan2.2_vae.safetensors" if version == "2.2" else "wan_2.1_vae.safetensors"
            raise CheckpointError(f"{parts.vae} is a Wan{info.details['version']} VAE (z_dim "
                                  f"{info.details['z_dim']}); {task.value} needs the Wan{version} VAE ({need})")
        out["vae"] = info
    if parts.text_encoder.suffix == ".safetensors":
        info = inspect_file(parts.text_encoder, expect="text_encoder")
        text_dim = 4096
        if info.details["dim"] != text_dim:
            raise CheckpointError(f"{parts.text_encoder} is a {info.details['dim']}-wide T5; Wan2.2 needs "
                                  f"umT5-XXL ({text_dim} wide)")
        if not info.details.get("tokenizer_in_file") and not (
                parts.tokenizer_dir and (parts.tokenizer_dir / "tokenizer.json").is_file()):
            raise CheckpointError(f"{parts.text_encoder} carries no tokenizer ('spiece_model') and no "
                                  "official folder with google/umt5-xxl/tokenizer.json was given (--ckpt_dir)")
        out["text_encoder"] = info
    if parts.audio_encoder is not None and parts.audio_encoder.is_file():
        out["audio_encoder"] = inspect_file(parts.audio_encoder, expect="audio_encoder")
    return out


def part_params(path: PathLike, bytes_per_param: int) -> Optional[int]:
    """Parameter count of a part: from a safetensors header (any dtype), else file size / bytes."""
    from .single_file import read_header

    path = Path(path)
    if not path.is_file():
        return None
    if path.suffix == ".safetensors":
        import math

        header, _ = read_header(path)
        return sum(math.prod(shape) for _, shape in header.values())
    return path.stat().st_size // bytes_per_param


def dit_config(path: PathLike) -> dict:
    """config.json of a DiT folder, or the equivalent dict of a single file."""
    from .detect import read_config

    path = Path(path)
    if path.is_file():
        return dict(inspect_file(path, expect="dit").details["config"])
    return read_config(path)


def describe_parts(parts: Parts, weights: str = "auto", dtype: str = "bf16") -> list[tuple[str, str]]:
    """(part, 'where: format -> held as') for every part of `parts`, from headers only (doctor)."""
    infos = check_parts(parts)
    keep_fp8 = weights in ("auto", "fp8", "fp8_fast")
    high = weights if weights in ("bf16", "fp16", "fp32") else dtype
    rows = []
    named = [(str(k), v) for k, v in parts.dits.items()] + [("text_encoder", parts.text_encoder), ("vae", parts.vae)]
    if parts.audio_encoder is not None:
        named.append(("audio_encoder", parts.audio_encoder))
    for part, path in named:
        info = infos.get(part)
        read = f"{info.encoding}{f' ({info.scheme})' if info.scheme else ''} single file" if info else "official layout"
        if part == "vae" or part == "audio_encoder":
            held = "fp32"
        elif weights in ("fp8", "fp8_fast") or (keep_fp8 and info is not None and info.encoding.startswith("fp8")):
            held = f"fp8 linears + {high}" + (" (fp8 matmuls on cc 8.9+)" if weights == "fp8_fast" else "")
        else:
            held = high
        rows.append((part, f"{Path(path).name}: {read} -> {held}"))
    return rows


__all__ = ["describe_parts", "Parts", "resolve_parts", "check_parts", "dit_config", "part_params", "COMFY_FILE_NAMES"]
