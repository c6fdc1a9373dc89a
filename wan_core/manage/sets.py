"""Which files a task needs, per file set, and where they go.

`official`: the Hugging Face repositories `Wan-AI/Wan2.2-<TASK>` in the official layout, one folder
per task (the folder to pass as `--ckpt_dir`, or to pick in the loader's `checkpoint` list). Only
the files the engine reads are fetched (the DiT folders, the T5 .pth, the tokenizer, the VAE, S2V's
wav2vec2 folder); READMEs, example assets and other weight formats are skipped.

`comfy`: the files of ComfyUI's own Wan2.2 templates (docs/comfy_templates.md), from
`Comfy-Org/Wan_2.2_ComfyUI_Repackaged` (the umT5 file from the 2.1 repository), into ComfyUI's model
folders (`diffusion_models`, `text_encoders`, `vae`, `audio_encoders`, `loras`) under their own
names, where ComfyUI's loaders and ours look.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import TASKS, Task
from ..errors import ConfigError

SETS = ("official", "comfy")

OFFICIAL_REPOS = {
    Task.T2V_A14B: "Wan-AI/Wan2.2-T2V-A14B",
    Task.I2V_A14B: "Wan-AI/Wan2.2-I2V-A14B",
    Task.TI2V_5B: "Wan-AI/Wan2.2-TI2V-5B",
    Task.S2V_14B: "Wan-AI/Wan2.2-S2V-14B",
}
COMFY_REPO = "Comfy-Org/Wan_2.2_ComfyUI_Repackaged"
COMFY_REPO_21 = "Comfy-Org/Wan_2.1_ComfyUI_repackaged"     # the umT5 file of every Wan2.2 template

T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_DIR = "google/umt5-xxl"
WAV2VEC2_DIR = "wav2vec2-large-xlsr-53-english"
_DIT_FILES = ("config.json", "diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model.safetensors.index.json")
# Other encodings of the same weights that a repository may carry next to the safetensors.
_OTHER_FORMATS = ("*.bin", "*.h5", "*.msgpack", "*.ot", "*.onnx", "*.ckpt")


def parse_set(value: str) -> str:
    if value not in SETS:
        raise ConfigError(f"unknown file set {value!r}; choose 'official' (the Wan-AI repositories) or "
                          "'comfy' (ComfyUI's template files)")
    return value


def official_patterns(task: Task) -> tuple[str, ...]:
    spec = TASKS[task]
    dit = tuple(f"{d}/{p}" for d in ("high_noise_model", "low_noise_model") for p in _DIT_FILES) \
        if spec.moe else _DIT_FILES
    extra = (f"{WAV2VEC2_DIR}/*",) if task == Task.S2V_14B else ()
    return dit + (T5_FILE, f"{TOKENIZER_DIR}/*", spec.vae_file) + extra


def official_needed(task: Task, repo_files: list[str]) -> list[str]:
    """The repository files the engine reads for `task` (sorted)."""
    pats = official_patterns(task)
    names = set(repo_files)
    out = []
    for f in repo_files:
        if not any(fnmatch.fnmatchcase(f, p) for p in pats):
            continue
        folder = f.rsplit("/", 1)[0] if "/" in f else ""
        if any(fnmatch.fnmatchcase(f, p) for p in _OTHER_FORMATS) and \
                f"{folder}/model.safetensors".lstrip("/") in names:
            continue
        out.append(f)
    return sorted(out)


@dataclass(frozen=True)
class ComfyFile:
    part: str        # dit_high_noise, dit_low_noise, dit, text_encoder, vae, audio_encoder, lora_high_noise...
    folder: str      # ComfyUI model folder
    name: str        # file name there (= ComfyUI's template name)
    repo: str = COMFY_REPO

    @property
    def repo_path(self) -> str:
        return f"split_files/{self.folder}/{self.name}"

    @property
    def rel(self) -> str:
        return f"{self.folder}/{self.name}"


_UMT5 = ComfyFile("text_encoder", "text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors", COMFY_REPO_21)
_VAE21 = ComfyFile("vae", "vae", "wan_2.1_vae.safetensors")
COMFY_FILES: dict[Task, tuple[ComfyFile, ...]] = {
    Task.T2V_A14B: (
        ComfyFile("dit_high_noise", "diffusion_models", "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"),
        ComfyFile("dit_low_noise", "diffusion_models", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"),
        _UMT5, _VAE21,
        ComfyFile("lora_high_noise", "loras", "wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors"),
        ComfyFile("lora_low_noise", "loras", "wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors")),
    Task.I2V_A14B: (
        ComfyFile("dit_high_noise", "diffusion_models", "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"),
        ComfyFile("dit_low_noise", "diffusion_models", "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"),
        _UMT5, _VAE21,
        ComfyFile("lora_high_noise", "loras", "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors"),
        ComfyFile("lora_low_noise", "loras", "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors")),
    Task.TI2V_5B: (
        ComfyFile("dit", "diffusion_models", "wan2.2_ti2v_5B_fp16.safetensors"),
        _UMT5, ComfyFile("vae", "vae", "wan2.2_vae.safetensors")),
    Task.S2V_14B: (
        ComfyFile("dit", "diffusion_models", "wan2.2_s2v_14B_fp8_scaled.safetensors"),
        _UMT5, _VAE21,
        ComfyFile("audio_encoder", "audio_encoders", "wav2vec2_large_english_fp16.safetensors")),
}


def official_folder_name(task: Task) -> str:
    return OFFICIAL_REPOS[task].split("/", 1)[1]


def find_comfy_models_dir(start: Optional[Path] = None) -> Optional[Path]:
    """The `models` folder of the ComfyUI tree we are in: from the current directory upwards, then
    from this pack's folder upwards (`ComfyUI/custom_nodes/<pack>`); a ComfyUI root has
    `folder_paths.py` and `comfy/`. None outside a ComfyUI tree."""
    starts = [Path(start or os.getcwd()).resolve(), Path(__file__).resolve().parents[2]]
    for s in starts:
        for d in (s, *s.parents):
            if (d / "folder_paths.py").is_file() and (d / "comfy").is_dir():
                return d / "models"
    return None


def destination(task: Task, file_set: str, dir_: Optional[str]) -> Path:
    """Where the set goes. `official`: DIR is the checkpoint folder itself (as huggingface-cli's
    --local-dir; inside ComfyUI by default models/wan22/Wan2.2-<TASK>). `comfy`: DIR plays ComfyUI's
    models folder (diffusion_models/, text_encoders/... below it; inside ComfyUI: its models/)."""
    if dir_ is not None:
        return Path(dir_).expanduser().absolute()
    models = find_comfy_models_dir()
    if models is None:
        raise ConfigError("not inside a ComfyUI tree (no folder_paths.py found above the current "
                          "folder or this pack): pass --dir DIR")
    return models / "wan22" / official_folder_name(task) if file_set == "official" else models


def download_command(task: "Task | str", file_set: str, dir_: Optional[Path] = None) -> str:
    """The exact command that fetches (or repairs) a task's files."""
    task = Task.parse(task)
    cmd = f"python -m wan_core download {task.value} --set {file_set}"
    if dir_ is not None:
        cmd += f" --dir {dir_}"
    return cmd


def comfy_download_hint(task: "Task | str", files) -> Optional[str]:
    """For ComfyUI single files (`config.ModelFiles`) of which one named like a template file is
    missing: the command that fetches the task's template files into that models folder."""
    task = Task.parse(task)
    names = {f.name: f for f in COMFY_FILES[task]}
    for value in vars(files).values():
        if not value:
            continue
        path = Path(value).expanduser()
        if not path.is_file() and path.name in names and path.parent.name == names[path.name].folder:
            models = path.parent.parent.absolute()
            return f"to fetch ComfyUI's {task.value} files: {download_command(task, 'comfy', models)}"
    return None
