"""`ModelFacts` of a checkpoint: what the configuration rules need to know about the model.

Read from the DiT's config.json when there is one (a fine-tune or a tiny test model may differ from
the official figures), else the official figures of the task: a missing checkpoint is reported
later, by file, by `loading.check.check_checkpoint`. Cheap (one small JSON file), so every entry
point can check a layout before anything heavy happens.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional, Union

from ..config import EngineSpec, ModelFacts, ModelFiles, Task
from ..errors import CheckpointError, ConfigError
from .parts import dit_config, resolve_parts


def _positive_int(cfg: dict, key: str, default, where: Path):
    value = cfg.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{where}: {key}={value!r} is not a positive integer; re-download the file")
    return value


def read_model_facts(task: "Task | str", ckpt_dir: Union[str, Path, None],
                     files: Optional[ModelFiles] = None) -> ModelFacts:
    """The facts of `task`'s DiT: the first expert's config.json for MoE tasks, or what a single
    file's header implies when `files` gives the DiT (`loading.parts`)."""
    task = Task.parse(task)
    official = ModelFacts.official(task)
    try:
        path = next(iter(resolve_parts(task, ckpt_dir or None, files).dits.values()))
        cfg = dit_config(path)
    except (CheckpointError, ConfigError):
        return official
    where = path if path.is_file() else path / "config.json"
    return replace(official, num_heads=_positive_int(cfg, "num_heads", official.num_heads, where),
                   in_dim=_positive_int(cfg, "in_dim", official.in_dim, where),
                   latent_channels=_positive_int(cfg, "out_dim", official.latent_channels, where),
                   text_len=_positive_int(cfg, "text_len", official.text_len, where),
                   source=str(where))


def validate_spec(spec: EngineSpec) -> ModelFacts:
    """THE check of an EngineSpec against its checkpoint's model, before any heavy work (the rules
    that need no model facts already held when the spec was built). Every entry point calls it:
    WanEngine, EngineClient before it starts a process, the CLI's precheck, the loader node,
    torchrun ranks before they join. Returns the facts it checked against."""
    facts = read_model_facts(spec.task, spec.ckpt_dir, spec.files)
    spec.validate(facts)
    return facts


__all__ = ["read_model_facts", "validate_spec"]
