"""Checkpoint files -> parameters, without ever holding a full fp32 state dict in RAM.

- `TensorSource`: key -> tensor (or a slice of it) over the shards of a safetensors checkpoint (read
  through `safe_open`, i.e. mmap, one tensor at a time) or over an in-memory state dict (`.pth`).
  FSDP rank-local loading reads only its rows with `get_slice`.
- `materialize(module, source, dtype, device)`: fills a module built on the meta device, tensor by
  tensor, in the target dtype on the target device; checks names and shapes first.
- `dit_on_meta(folder, s2v=...)`: config.json -> variant -> the DiT built on meta + its open
  `TensorSource`, the start of every DiT load (here, `loading/s2v.py`, FSDP rank-local loading).
- `load_dit(folder, dtype, device)`: `WanModel` from an official DiT folder.
- `load_pth(path)`: `torch.load(weights_only=True)` with errors that name the file.

Every user-caused failure is a `CheckpointError` naming the file (and the key) and, for layout
problems, the expected layout.
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..errors import CheckpointError
from ..models.dit import DiTConfig, WanModel
from ..models.s2v import S2VConfig, WanModelS2V
from .transforms import cast_tensor
from .detect import DIT_LAYOUT, INDEX_NAME, SINGLE_NAME, DiTVariant, detect_variant, read_config
from .paths import broken_link, describe_missing

log = logging.getLogger("wan_core.loading")

PathLike = Union[str, Path]

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        _ST_DTYPES[_name] = getattr(torch, _attr)


def _open_safetensors(path: Path):
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(describe_missing(path))
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:  # SafetensorError: truncated header/body, not a safetensors file
        size = path.stat().st_size
        raise CheckpointError(
            f"{path} is corrupt or truncated ({size:,} bytes; safetensors says: {exc}); "
            "delete it and download it again") from None


def check_shard_name(name: object, index: Path) -> None:
    """The rule for the shard names of a safetensors index: each is a plain file name in the index's
    own folder (no folder part, no '..', not absolute), decided on the name alone. The shard file,
    or the whole checkpoint folder, may be a symbolic link to elsewhere (a Hugging Face cache, a
    models folder on another disk): only what the index says is confined, not where links lead.
    So a damaged or hostile index cannot make the engine open (or report the size of) any other
    file on the machine."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name or Path(name).is_absolute()):
        raise CheckpointError(
            f"{index} names the shard {name!r}, which is not a file name inside {index.parent}: an "
            "index may only name files in its own folder (the index is damaged or not from the "
            "official download; download it again)")


class TensorSource:
    """Lazy key -> tensor access over safetensors shards, or over a dict of tensors.

    `get(key, dtype, device)` reads one tensor; `get_slice(key, dim, start, stop)` reads only the
    given range of one dimension (mmap, so other rows are never touched). Use as a context manager
    or call `close()` to release the file handles.
    """

    def __init__(self, files: Mapping[str, Path] | None = None,
                 tensors: Mapping[str, torch.Tensor] | None = None, name: str = "") -> None:
        self._files: dict[str, Path] = dict(files or {})
        self._tensors: dict[str, torch.Tensor] = dict(tensors or {})
        self._handles: dict[Path, object] = {}
        self.name = name
        # Open every shard now: a truncated file fails here with its name, before any work.
        for path in sorted(set(self._files.values())):
            self._handles[path] = _open_safetensors(path)
        self._keys = list(self._files) + [k for k in self._tensors if k not in self._files]
        for path, h in self._handles.items():
            present = set(h.keys())
            missing = [k for k, p in self._files.items() if p == path and k not in present]
            if missing:
                raise CheckpointError(
                    f"{path} does not contain {len(missing)} tensor(s) that the index assigns to it "
                    f"(e.g. {missing[:3]}); the index and the shards come from different downloads")

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, folder: PathLike, index_name: str = INDEX_NAME,
                    single_name: str = SINGLE_NAME) -> "TensorSource":
        """Sharded (index.json + shards) or single-file safetensors checkpoint in `folder`."""
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"{broken_link(folder) or f'checkpoint folder {folder} does not exist'}; {DIT_LAYOUT}")
        index = folder / index_name
        single = folder / single_name
        if index.is_file():
            try:
                with open(index, encoding="utf-8") as fh:
                    data = json.load(fh)
                weight_map = data["weight_map"]
                if not isinstance(weight_map, dict) or not weight_map:
                    raise ValueError("'weight_map' is empty or not an object")
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index} is not a valid safetensors index ({exc!r}); it must be "
                                      '{"metadata": {...}, "weight_map": {key: shard file}}') from None
            for shard in weight_map.values():
                check_shard_name(shard, index)
            shards = sorted(set(weight_map.values()))
            absent = [s for s in shards if not (folder / s).is_file()]
            if absent:
                raise CheckpointError(
                    f"{describe_missing(folder / absent[0])}: {index.name} names {len(shards)} shard(s) "
                    f"({', '.join(shards)}) and {len(absent)} of them are absent "
                    f"({', '.join(absent)}); the download is incomplete")
            return cls({k: folder / v for k, v in weight_map.items()}, name=str(folder))
        if single.is_file():
            return cls.from_file(single)
        shards = sorted(p.name for p in folder.glob("*.safetensors"))
        found = f" (found {', '.join(shards)} but no index)" if shards else ""
        raise CheckpointError(f"{describe_missing(folder / index_name)}{found}; {DIT_LAYOUT}")

    @classmethod
    def from_file(cls, path: PathLike) -> "TensorSource":
        path = Path(path)
        handle = _open_safetensors(path)
        src = cls.__new__(cls)
        src._files = {k: path for k in handle.keys()}
        src._tensors = {}
        src._handles = {path: handle}
        src._keys = list(src._files)
        src.name = str(path)
        return src

    @classmethod
    def from_state_dict(cls, tensors: Mapping[str, torch.Tensor], name: str = "") -> "TensorSource":
        return cls(tensors=tensors, name=name)

    # -- access -------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        return list(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._files or key in self._tensors

    def __len__(self) -> int:
        return len(self._keys)

    def file_of(self, key: str) -> str:
        return str(self._files[key]) if key in self._files else self.name

    def _slice(self, key: str):
        if key not in self:
            raise CheckpointError(f"{self.name}: tensor {key!r} is not in the checkpoint")
        return self._handles[self._files[key]].get_slice(key)

    def shape(self, key: str) -> tuple[int, ...]:
        if key in self._files:
            return tuple(self._slice(key).get_shape())
        return tuple(self._tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        if key in self._files:
            name = self._slice(key).get_dtype()
            if name not in _ST_DTYPES:
                raise CheckpointError(f"{self.file_of(key)}: tensor {key!r} has unsupported dtype {name}")
            return _ST_DTYPES[name]
        return self._tensors[key].dtype

    def get(self, key: str, dtype: Optional[torch.dtype] = None,
            device: Union[str, torch.device, None] = None) -> torch.Tensor:
        """One tensor, converted to `dtype` on `device` (floating tensors only change dtype)."""
        if key in self._files:
            try:
                t = self._handles[self._files[key]].get_tensor(key)
            except Exception as exc:
                raise CheckpointError(f"{self._files[key]}: reading tensor {key!r} failed ({exc}); "
                                      "the file is corrupt, download it again") from None
        elif key in self._tensors:
            t = self._tensors[key]
        else:
            raise CheckpointError(f"{self.name}: tensor {key!r} is not in the checkpoint")
        return cast_tensor(t, dtype, device)

    def get_slice(self, key: str, dim: int, start: int, stop: int,
                  dtype: Optional[torch.dtype] = None,
                  device: Union[str, torch.device, None] = None) -> torch.Tensor:
        """Rows [start, stop) of dimension `dim` only (what one FSDP rank holds)."""
        if key in self._files:
            sl = self._slice(key)
            ndim = len(sl.get_shape())
            dim = dim % ndim
            index = tuple([slice(None)] * dim + [slice(start, stop)])
            t = sl[index]
        else:
            t = self._tensors[key].narrow(dim, start, max(0, min(stop, self._tensors[key].shape[dim]) - start))
        return cast_tensor(t, dtype, device)

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> "TensorSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TensorSource({self.name!r}, {len(self)} tensors)"


# ---------------------------------------------------------------------------------------------


def check_keys(expected: Iterable[str], source: TensorSource, what: str = "model") -> None:
    """CheckpointError listing missing and unexpected tensor names (with the files they are in)."""
    expected = list(expected)
    exp_set = set(expected)
    have = set(source.keys())
    missing = [k for k in expected if k not in have]
    unexpected = [k for k in source.keys() if k not in exp_set]
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) the {what} needs are missing: {missing[:8]}"
                     + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        files = sorted({Path(source.file_of(k)).name for k in unexpected})
        parts.append(f"{len(unexpected)} tensor(s) are not part of the {what}: {unexpected[:8]}"
                     + (" ..." if len(unexpected) > 8 else "") + f" (in {', '.join(files)})")
    raise CheckpointError(f"{source.name}: " + "; ".join(parts)
                          + "; the checkpoint does not match its config.json (wrong or partial download?)")


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor, is_param: bool) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if is_param:
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[leaf] = value


@torch.no_grad()
def materialize(module: nn.Module, source: TensorSource, dtype: Optional[torch.dtype] = None,
                device: Union[str, torch.device] = "cpu", what: str = "model",
                strict: bool = True) -> nn.Module:
    """Fill `module` (built on the meta device) from `source`, one tensor at a time.

    Floating tensors become `dtype` (None: keep the stored dtype); everything lands on `device`.
    Names and shapes are checked before any data is read. Parameters get requires_grad=False.
    """
    params = dict(module.named_parameters())
    buffers = {n: b for n, b in module.named_buffers() if n in module.state_dict(keep_vars=True)}
    expected = list(params) + list(buffers)
    if strict:
        check_keys(expected, source, what)
    for name in expected:
        if name not in source:
            continue
        want = tuple((params.get(name) if name in params else buffers[name]).shape)
        got = source.shape(name)
        if got != want:
            raise CheckpointError(
                f"{source.file_of(name)}: tensor {name!r} has shape {list(got)} but the {what} built "
                f"from config.json expects {list(want)}; config.json and the weights disagree")
    for name in expected:
        if name not in source:
            continue
        _set_tensor(module, name, source.get(name, dtype, device), name in params)
    left = [n for n, p in list(module.named_parameters()) + list(module.named_buffers()) if p.is_meta]
    if left:
        raise CheckpointError(f"{source.name}: {len(left)} tensor(s) were not loaded: {left[:8]}")
    return module


@contextmanager
def dit_on_meta(folder: PathLike, *, s2v: bool = False,
                kernel=None) -> Iterator[tuple[nn.Module, TensorSource, DiTVariant]]:
    """Yield (model on the meta device, open `TensorSource`, variant) for the DiT in `folder`.

    The one way every DiT loader starts: config.json -> variant (refusing the wrong class: S2V for
    `s2v=False`, WanModel for `s2v=True`) -> `DiTConfig`/`S2VConfig` -> the model built on meta.
    The caller fills it (`materialize`, or FSDP rank-local loading) inside the `with`; the source
    is closed when the block ends.
    """
    folder = Path(folder)
    cfg_dict = read_config(folder)
    with TensorSource.from_folder(folder) as source:
        variant = detect_variant(folder, source.keys(), cfg_dict)
        if variant.is_s2v and not s2v:
            raise CheckpointError(f"{folder} holds an S2V model (WanModel_S2V); load it with the S2V "
                                  "loader (task s2v-14B), not load_dit")
        if s2v and not variant.is_s2v:
            raise CheckpointError(f"{folder} holds a {variant.model_type} WanModel, not an S2V model "
                                  "(WanModel_S2V); use it with its own task")
        yield dit_from_config(cfg_dict, s2v=s2v, kernel=kernel, where=folder / "config.json"), source, variant


def dit_from_config(cfg_dict: dict, *, s2v: bool, kernel=None, where: PathLike = "config.json") -> nn.Module:
    """`WanModel` (or `WanModelS2V`) built on the meta device from a config.json-style dict
    (an official folder's file, or what a single file's shapes imply)."""
    config_cls, model_cls = (S2VConfig, WanModelS2V) if s2v else (DiTConfig, WanModel)
    try:
        cfg = config_cls.from_dict(cfg_dict)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    with torch.device("meta"):
        return model_cls(cfg, kernel=kernel)


def load_dit(folder: PathLike, dtype: torch.dtype = torch.bfloat16,
             device: Union[str, torch.device] = "cpu", kernel=None, *, s2v: bool = False):
    """`WanModel` (t2v/i2v/ti2v; `WanModelS2V` with `s2v=True`, see `loading.s2v.load_s2v_dit`)
    from an official DiT folder, parameters in `dtype` on `device`."""
    t0 = time.perf_counter()
    with dit_on_meta(folder, s2v=s2v, kernel=kernel) as (model, source, variant):
        materialize(model, source, dtype, device, what=f"{variant.model_type} {variant.class_name}")
    model.eval()
    log.info("loaded %s DiT from %s in %.1f s (%s, %s)", variant.model_type, folder,
             time.perf_counter() - t0, dtype, device)
    return model


def load_pth(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> dict:
    """A `.pth` state dict through `torch.load(weights_only=True)` (never free unpickling).

    Memory-mapped when the file is in the zip format, so tensors are paged in on use.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(describe_missing(path))
    try:
        try:
            obj = torch.load(str(path), map_location=map_location, weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc).lower() and "zip" not in str(exc).lower():
                raise
            obj = torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError (not weights-only), truncated zip, not a torch file
        raise CheckpointError(f"{path} could not be loaded as a weights-only state dict "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                              "it is corrupt/truncated or not a plain tensor dict: download it again") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a dict of tensors (found {type(obj).__name__})")
    return obj


__all__ = ["TensorSource", "materialize", "check_keys", "dit_on_meta", "dit_from_config", "load_dit",
           "load_pth"]
