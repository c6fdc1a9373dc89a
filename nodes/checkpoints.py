"""The checkpoint folder: `models/wan22/` (plus any `wan22:` entry of extra_model_paths.yaml).

The loader's checkpoint widget lists the sub-folders that look like an official Wan2.2 download; the
value the prompt carries is one of those names, and `resolve` maps a name back to its folder only if
it is still listed. So a prompt can never make the workers open an arbitrary path.
"""
from __future__ import annotations

import os

FOLDER = "wan22"
NONE_FOUND = "(no checkpoint in models/wan22)"

LAYOUT_NOTE = """\
models/wan22/ holds one folder per checkpoint, exactly as downloaded from Hugging Face:
  Wan2.2-T2V-A14B/  (or I2V-A14B)   high_noise_model/ and low_noise_model/ (config.json + shards
                                    + index each), models_t5_umt5-xxl-enc-bf16.pth, Wan2.1_VAE.pth,
                                    google/umt5-xxl/
  Wan2.2-TI2V-5B/                   config.json + shards + index, models_t5_umt5-xxl-enc-bf16.pth,
                                    Wan2.2_VAE.pth, google/umt5-xxl/
  Wan2.2-S2V-14B/                   config.json + shards + index, models_t5_umt5-xxl-enc-bf16.pth,
                                    Wan2.1_VAE.pth, google/umt5-xxl/, wav2vec2-large-xlsr-53-english/
e.g. huggingface-cli download Wan-AI/Wan2.2-T2V-A14B --local-dir ComfyUI/models/wan22/Wan2.2-T2V-A14B"""


def register() -> None:
    """Add `models/wan22` to ComfyUI's folder registry (idempotent; runs when the pack loads)."""
    import folder_paths

    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))


def _roots() -> list[str]:
    try:
        import folder_paths

        return folder_paths.get_folder_paths(FOLDER)
    except (ImportError, KeyError):
        return []


def looks_like_checkpoint(path: str) -> bool:
    """An official layout: a DiT config.json at the top (TI2V-5B, S2V-14B) or in the experts'
    folders (A14B). Completeness is the engine's business: it names what is missing or corrupt."""
    return (os.path.isfile(os.path.join(path, "config.json"))
            or os.path.isfile(os.path.join(path, "high_noise_model", "config.json")))


def list_checkpoints() -> list[str]:
    names = set()
    for root in _roots():
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith(".") and looks_like_checkpoint(entry.path):
                names.add(entry.name)
    return sorted(names, key=str.lower)


def resolve(name: str) -> str:
    """Folder of a listed checkpoint; raises CheckpointError with the layout when it is not there."""
    from wan_core.errors import CheckpointError

    if name in list_checkpoints():
        for root in _roots():
            path = os.path.join(root, name)
            if looks_like_checkpoint(path):
                return os.path.abspath(path)
    where = ", ".join(_roots()) or "models/wan22"
    raise CheckpointError(f"checkpoint {name!r} is not a checkpoint folder in {where}.\n{LAYOUT_NOTE}")


def _model_roots() -> list[tuple[str, str]]:
    """(absolute folder, name to show) of every ComfyUI model folder, longest first:
    ('/x/ComfyUI/models/wan22', 'wan22'), ('/x/ComfyUI/models/diffusion_models', 'diffusion_models'),
    ..., ('/x/ComfyUI/models', 'models')."""
    try:
        import folder_paths
    except ImportError:
        return []
    roots = [(os.path.abspath(folder_paths.models_dir), "models")]
    for name, entry in getattr(folder_paths, "folder_names_and_paths", {}).items():
        for path in entry[0]:
            roots.append((os.path.abspath(path), name))
    return sorted(set(roots), key=lambda r: len(r[0]), reverse=True)


def shown_name(path: str) -> str:
    """What the status route shows for a model path: relative to its ComfyUI model folder
    ('wan22/Wan2.2-T2V-A14B', 'diffusion_models/wan2.2_..._fp8_scaled.safetensors'), else only the
    last component: never where the models live on this machine."""
    if not path:
        return ""
    full = os.path.abspath(path)
    for root, name in _model_roots():
        if full == root or full.startswith(root + os.sep):
            rel = os.path.relpath(full, root)
            return name if rel == "." else f"{name}/{rel}"
    return os.path.basename(full.rstrip(os.sep))


def hide_paths(obj):
    """`obj` (the status payload: dicts, lists, strings) with every absolute model-folder path
    in a string replaced by the folder's name (a failure message may quote a file)."""
    if isinstance(obj, dict):
        return {k: hide_paths(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [hide_paths(v) for v in obj]
    if isinstance(obj, str) and os.sep in obj:
        for root, name in _model_roots():
            obj = obj.replace(root + os.sep, name + "/").replace(root, name)
    return obj


# -- single model files in ComfyUI's own folders (issue 12) -------------------------------------

FROM_CHECKPOINT = "(from checkpoint)"
COMPONENTS = "(component files only)"
PART_FOLDERS = {  # widget -> ComfyUI folder name (folder_paths; legacy unet/ and clip/ included)
    "dit_high_noise": "diffusion_models", "dit_low_noise": "diffusion_models", "dit": "diffusion_models",
    "text_encoder": "text_encoders", "vae": "vae", "audio_encoder": "audio_encoders",
}
DOWNLOADS = {  # where ComfyUI's template files come from
    "diffusion_models": "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/tree/main/split_files/diffusion_models",
    "text_encoders": "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/tree/main/split_files/text_encoders",
    "vae": "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/tree/main/split_files/vae (wan2.2_vae) or "
           "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/tree/main/split_files/vae (wan_2.1_vae)",
    "audio_encoders": "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/tree/main/split_files/audio_encoders",
}


def list_part_files(part: str) -> list[str]:
    """The .safetensors files of a part's ComfyUI folder (every path folder_paths knows for it,
    extra_model_paths.yaml entries included), after the '(from checkpoint)' choice."""
    try:
        import folder_paths

        names = [n for n in folder_paths.get_filename_list(PART_FOLDERS[part]) if n.endswith(".safetensors")]
    except (ImportError, KeyError):
        names = []
    return [FROM_CHECKPOINT] + sorted(names, key=str.lower)


def resolve_part(part: str, name: str):
    """Absolute path of a listed file, None for '(from checkpoint)'; CheckpointError naming the
    file, the folder it was looked for in and where to download it when it is not there."""
    from wan_core.errors import CheckpointError

    if not name or name == FROM_CHECKPOINT:
        return None
    folder = PART_FOLDERS[part]
    try:
        import folder_paths

        path = folder_paths.get_full_path(folder, name) if name in folder_paths.get_filename_list(folder) else None
        where = ", ".join(folder_paths.get_folder_paths(folder))
    except (ImportError, KeyError):
        path, where = None, f"models/{folder}"
    if path is None or not os.path.isfile(path):
        raise CheckpointError(f"{part} file {name!r} was not found in ComfyUI's {folder} folder ({where}); "
                              f"download it from {DOWNLOADS[folder]} into that folder")
    return os.path.abspath(path)
