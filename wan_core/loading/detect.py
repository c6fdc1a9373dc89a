"""Which model a checkpoint folder holds, from `config.json` (`_class_name`, `model_type`) and the
state-dict key names. Never from channel counts: an i2v and a t2v expert differ only in `in_dim`,
which the config states, and guessing from shapes would silently mis-load a fine-tune.

Official layouts (Hugging Face repos Wan-AI/Wan2.2-*):
  Wan2.2-T2V-A14B/, Wan2.2-I2V-A14B/   high_noise_model/ and low_noise_model/, each a DiT folder
  Wan2.2-TI2V-5B/, Wan2.2-S2V-14B/     the DiT folder is the checkpoint folder itself
A DiT folder holds config.json + diffusion_pytorch_model.safetensors.index.json + the shards it names
(or one diffusion_pytorch_model.safetensors).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

from ..config import Task
from ..errors import CheckpointError
from .paths import broken_link, describe_missing

CONFIG_NAME = "config.json"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
SINGLE_NAME = "diffusion_pytorch_model.safetensors"
EXPERTS = ("high_noise_model", "low_noise_model")

DIT_LAYOUT = (
    "expected layout of a DiT folder (official Wan2.2 download):\n"
    "  <dit folder>/config.json\n"
    "  <dit folder>/diffusion_pytorch_model.safetensors.index.json\n"
    "  <dit folder>/diffusion_pytorch_model-0000i-of-0000N.safetensors   (every shard the index names)\n"
    "  (or a single <dit folder>/diffusion_pytorch_model.safetensors next to config.json)\n"
    "where <dit folder> is <ckpt_dir>/high_noise_model and <ckpt_dir>/low_noise_model for T2V-A14B "
    "and I2V-A14B, and <ckpt_dir> itself for TI2V-5B and S2V-14B")

# Key prefixes that identify a class whatever the config says.
_S2V_MARKERS = ("casual_audio_encoder.", "audio_injector.", "frame_packer.", "cond_encoder.",
                "trainable_cond_mask.")
_ANIMATE_MARKERS = ("pose_patch_embedding.", "face_encoder.", "face_adapter.", "motion_encoder.")
_DIFFUSERS_MARKERS = ("condition_embedder.", "scale_shift_table", "proj_out.")
_WAN21_CLIP_MARKERS = ("img_emb.",)
_DIT_REQUIRED = ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
                 "time_projection.1.weight", "head.head.weight", "blocks.0.self_attn.q.weight")

_CLASS_TYPES = {"WanModel": ("t2v", "i2v", "ti2v"), "WanModel_S2V": ("s2v",)}


@dataclass(frozen=True)
class DiTVariant:
    """What a DiT folder holds."""

    class_name: str     # "WanModel" or "WanModel_S2V"
    model_type: str     # "t2v", "i2v", "ti2v" or "s2v"
    folder: Path

    @property
    def is_s2v(self) -> bool:
        return self.class_name == "WanModel_S2V"


def read_config(folder: Union[str, Path]) -> dict:
    """config.json of a DiT folder as a dict; CheckpointError naming the file when absent or bad."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{broken_link(folder) or f'checkpoint folder {folder} does not exist (or is not a folder)'}; "
                              f"{DIT_LAYOUT}")
    return read_json(folder / CONFIG_NAME, DIT_LAYOUT)


def read_json(path: Union[str, Path], layout: str) -> dict:
    """A JSON object file of a checkpoint (config.json, preprocessor_config.json) as a dict;
    CheckpointError naming the file when it is absent (with `layout`, the expected layout), not
    JSON or not an object."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{describe_missing(path)}; {layout}")
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); download it again") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(obj).__name__}")
    return obj


def _has_prefix(keys: Iterable[str], prefixes: tuple[str, ...]) -> bool:
    return any(k.startswith(p) for k in keys for p in prefixes)


def detect_variant(folder: Union[str, Path], keys: Optional[Iterable[str]] = None,
                   config: Optional[dict] = None) -> DiTVariant:
    """Variant of the DiT in `folder` from config.json and (when given) the checkpoint's key names.

    Raises CheckpointError for classes this engine does not run (Animate, diffusers-format
    `WanTransformer3DModel`, Wan2.1 CLIP i2v) and when config.json and the keys disagree.
    """
    folder = Path(folder)
    cfg = config if config is not None else read_config(folder)
    where = folder / CONFIG_NAME
    cls = cfg.get("_class_name")
    keys = list(keys) if keys is not None else None

    if keys is not None:
        if _has_prefix(keys, _DIFFUSERS_MARKERS) and not _has_prefix(keys, ("patch_embedding.",)):
            raise CheckpointError(
                f"{folder} holds a diffusers-format transformer (keys like 'condition_embedder.*', "
                f"'proj_out.*'); this engine reads the official Wan2.2 layout (Wan-AI/Wan2.2-*, not "
                f"the '-Diffusers' repos); {DIT_LAYOUT}")
        if _has_prefix(keys, _ANIMATE_MARKERS):
            raise CheckpointError(f"{folder} holds a Wan2.2 Animate model, which this engine does not "
                                  "run (supported: T2V-A14B, I2V-A14B, TI2V-5B, S2V-14B)")
        if _has_prefix(keys, _WAN21_CLIP_MARKERS):
            raise CheckpointError(f"{folder} holds a Wan2.1 image-to-video model (CLIP 'img_emb.*' "
                                  "keys); Wan2.2 models have no CLIP branch. Use a Wan2.2 checkpoint")
        missing = [k for k in _DIT_REQUIRED if k not in set(keys)]
        if missing:
            raise CheckpointError(f"{folder} is not a Wan DiT checkpoint: tensors {missing} are missing; "
                                  f"{DIT_LAYOUT}")

    if cls is None:
        if keys is None:
            raise CheckpointError(f"{where} has no '_class_name'; expected \"WanModel\" or \"WanModel_S2V\"")
        cls = "WanModel_S2V" if _has_prefix(keys, _S2V_MARKERS) else "WanModel"
    if cls not in _CLASS_TYPES:
        hint = (" (a diffusers-format config; use the official layout)"
                if cls == "WanTransformer3DModel" else "")
        raise CheckpointError(f"{where}: _class_name {cls!r} is not supported{hint}; expected "
                              f"\"WanModel\" (T2V/I2V-A14B experts, TI2V-5B) or \"WanModel_S2V\" (S2V-14B)")
    model_type = cfg.get("model_type", "s2v" if cls == "WanModel_S2V" else None)
    if model_type is None:
        raise CheckpointError(f"{where} has no 'model_type'; expected one of "
                              f"{', '.join(_CLASS_TYPES[cls])} (the official config.json always has it)")
    if model_type not in _CLASS_TYPES[cls]:
        raise CheckpointError(f"{where}: model_type {model_type!r} does not go with _class_name "
                              f"{cls!r} (expected one of {', '.join(_CLASS_TYPES[cls])})")
    if keys is not None:
        s2v_keys = _has_prefix(keys, _S2V_MARKERS)
        if s2v_keys != (cls == "WanModel_S2V"):
            what = "S2V tensors (casual_audio_encoder.*, audio_injector.*, ...)"
            raise CheckpointError(
                f"{where} says {cls!r} but the weights {'have' if s2v_keys else 'lack'} {what}; "
                "config.json and the shards come from different models")
    return DiTVariant(cls, model_type, folder)


_TASK_OF = {("WanModel", "t2v"): Task.T2V_A14B, ("WanModel", "i2v"): Task.I2V_A14B,
            ("WanModel", "ti2v"): Task.TI2V_5B, ("WanModel_S2V", "s2v"): Task.S2V_14B}


def dit_folders(ckpt_dir: Union[str, Path], task: Task) -> dict[str, Path]:
    """{'high_noise_model': path, 'low_noise_model': path} for MoE tasks, {'model': ckpt_dir} else."""
    ckpt_dir = Path(ckpt_dir)
    from ..config import TASKS

    if TASKS[Task.parse(task)].moe:
        return {name: ckpt_dir / name for name in EXPERTS}
    return {"model": ckpt_dir}


def detect_task(ckpt_dir: Union[str, Path]) -> Task:
    """The task of an official checkpoint folder (T2V/I2V-A14B by their expert sub-folders)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"{broken_link(ckpt_dir) or f'checkpoint folder {ckpt_dir} does not exist'}; {DIT_LAYOUT}")
    expert_dirs = [ckpt_dir / e for e in EXPERTS]
    if any(d.is_dir() for d in expert_dirs):
        variants = [detect_variant(d) for d in expert_dirs]   # raises naming a missing expert
        types = {v.model_type for v in variants}
        if len(types) != 1:
            raise CheckpointError(f"{ckpt_dir}: the experts disagree on model_type "
                                  f"({', '.join(f'{v.folder.name}: {v.model_type}' for v in variants)})")
        v = variants[0]
        task = _TASK_OF.get((v.class_name, v.model_type))
        if task not in (Task.T2V_A14B, Task.I2V_A14B):
            raise CheckpointError(f"{ckpt_dir}: expert folders hold model_type {v.model_type!r}; only "
                                  "T2V-A14B and I2V-A14B have high/low-noise experts")
        return task
    if not (ckpt_dir / CONFIG_NAME).is_file():
        raise CheckpointError(f"{ckpt_dir} has neither config.json nor high_noise_model/ and "
                              f"low_noise_model/; {DIT_LAYOUT}")
    v = detect_variant(ckpt_dir)
    task = _TASK_OF[(v.class_name, v.model_type)]
    if task in (Task.T2V_A14B, Task.I2V_A14B):
        raise CheckpointError(f"{ckpt_dir}/config.json is a single {v.model_type} expert; the A14B "
                              "checkpoint folder is its parent, with high_noise_model/ and low_noise_model/")
    return task


__all__ = ["CONFIG_NAME", "INDEX_NAME", "SINGLE_NAME", "EXPERTS", "DIT_LAYOUT", "DiTVariant",
           "read_config", "detect_variant", "detect_task", "dit_folders"]
