"""Is a checkpoint folder complete? Checked before any weight is read (and before any worker
starts, from the loader node and the CLI), so a missing or truncated file is named at once."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from ..config import TASKS, ModelFiles, Task
from ..errors import CheckpointError, ConfigError
from .checkpoint import TensorSource
from .detect import detect_task, dit_folders, read_config
from ..manage.sets import comfy_download_hint
from .parts import check_parts, resolve_parts
from .paths import broken_link, describe_missing
from .t5 import T5_CHECKPOINT, TOKENIZER_SUBDIR
from .tokenizer import TOKENIZER_FILE
from .wav2vec2 import FOLDER_NAME as WAV2VEC2_FOLDER, LAYOUT as WAV2VEC2_LAYOUT


def check_checkpoint(ckpt_dir: Union[str, Path, None], task: "Task | str",
                     files: Optional[ModelFiles] = None) -> None:
    """Check that `ckpt_dir` holds every file the task loads, without reading any weight.

    Opens each DiT shard's safetensors header (a truncated shard fails here, by name) and checks the
    T5 checkpoint, the tokenizer and the VAE file exist (and, for S2V, the wav2vec2 folder). With
    `files` (a `ModelFiles` naming ComfyUI single files) the parts they give are checked against the
    task instead (`loading.parts.check_parts`). Raises CheckpointError (for the official folder with
    the `python -m wan_core download` command that fetches what is missing) / ConfigError."""
    task = Task.parse(task)
    if files is not None and files.any():
        try:
            _check_parts(ckpt_dir, task, files)
        except CheckpointError as exc:   # a missing template file: the command that fetches it
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
    found = detect_task(ckpt)
    if found != task:
        raise ConfigError(f"{ckpt} holds a {found.value} checkpoint, not {task.value}; pass "
                          f"--task {found.value} or the {task.value} folder")
    for folder in dit_folders(ckpt, task).values():
        read_config(folder)
        TensorSource.from_folder(folder).close()
    spec = TASKS[task]
    for rel in (T5_CHECKPOINT, str(TOKENIZER_SUBDIR / TOKENIZER_FILE), spec.vae_file):
        if not (ckpt / rel).is_file():
            raise CheckpointError(f"{describe_missing(ckpt / rel)}; the {task.value} checkpoint folder needs "
                                  f"{rel} (from the official Wan2.2 download)")
    if task == Task.S2V_14B:
        check_s2v_checkpoint(ckpt)


def _check_parts(ckpt_dir, task: Task, files: ModelFiles) -> None:
    """check_checkpoint when single files replace some parts of the official folder."""
    parts = resolve_parts(task, ckpt_dir or None, files)
    check_parts(parts)
    for path in parts.dits.values():
        if not path.is_file():
            read_config(path)
            TensorSource.from_folder(path).close()
    for what, path in (("text encoder", parts.text_encoder), ("VAE", parts.vae)):
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (the {what} of {task.value})")
    if parts.text_encoder.suffix != ".safetensors" and not (parts.tokenizer_dir / TOKENIZER_FILE).is_file():
        raise CheckpointError(f"{parts.tokenizer_dir / TOKENIZER_FILE} is missing (the umT5 tokenizer)")
    if parts.audio_encoder is not None and not parts.audio_encoder.is_file():
        check_s2v_checkpoint(parts.audio_encoder.parent)


def check_s2v_checkpoint(ckpt_dir: Union[str, Path]) -> None:
    """The S2V folder's extra part: `wav2vec2-large-xlsr-53-english/` with config.json and weights."""
    folder = Path(ckpt_dir) / WAV2VEC2_FOLDER
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{describe_missing(folder / 'config.json')}; {WAV2VEC2_LAYOUT}")
    if not any((folder / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
        raise CheckpointError(f"{folder} has neither model.safetensors nor pytorch_model.bin; {WAV2VEC2_LAYOUT}")


__all__ = ["check_checkpoint", "check_s2v_checkpoint"]
