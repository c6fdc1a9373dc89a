"""LoRA files -> weight deltas on a loaded DiT, applied and removed without touching base weights.

Key formats (the ones ComfyUI v0.33 accepts for Wan: `comfy/lora.py::model_lora_keys_unet`,
`load_lora`, `comfy/lora_convert.py`, `comfy/weight_adapter/lora.py`), for a model parameter
`blocks.0.self_attn.q.weight`:
- names: `diffusion_model.blocks.0.self_attn.q`, `lora_unet_blocks_0_self_attn_q`, and Wan-Fun's
  `lora_unet__blocks_0_self_attn_q` (read as `lora_unet_`); a parameter that is not a `.weight`
  (`blocks.0.modulation`) is named `diffusion_model.blocks.0.modulation`;
- low rank: `.lora_up.weight`/`.lora_down.weight` (+ `.alpha`), `.lora_B.weight`/`.lora_A.weight`,
  and the rarer `_lora.up/down.weight`, `.lora.up/down.weight`, `.lora_B`/`.lora_A`,
  `.lora_linear_layer.up/down.weight`, `.lora_B/A.default.weight`;
  delta = strength * (alpha / rank if alpha else 1) * up @ down, reshaped to the weight;
- full deltas: `.diff` (the parameter), `.diff_b` (the bias next to a `.weight`), `.w_norm`/`.b_norm`.
Keys of other kinds (DoRA `dora_scale`, LoCon `lora_mid`, `set_weight`, LoHa/LoKr...) and keys that
name no parameter are reported as unmatched; a file where nothing matches is an error.

How deltas are applied (decision, docs/lora.md): never merged into the weights of `nn.Linear`
layers. Each patched Linear gets a `lora_delta` (`LinearDelta`) that `models.layers.linear` adds at
run time: `out += (x @ down^T) @ up^T + x @ full^T + bias` with every LoRA of the layer
concatenated along the rank. Base weights are never written, so removing a LoRA is exact on any base
(bf16, fp8, FSDP shards, offloaded masters) and costs nothing. The few other parameters a LoRA can
touch (norm weights, modulation tables, the patch-embedding conv) are small: their delta is added
in place to the stored tensor (this rank's FSDP rows, or the offloader's CPU master and its resident
copy) after a backup, and the backup is copied back on removal: bit-exact restore.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError

log = logging.getLogger("wan_core.lora")

# (up suffix, down suffix), appended to the layer name; ComfyUI's LoRAAdapter.load order.
LOWRANK_SUFFIXES = (
    (".lora_up.weight", ".lora_down.weight"),
    ("_lora.up.weight", "_lora.down.weight"),
    (".lora_B.weight", ".lora_A.weight"),
    (".lora.up.weight", ".lora.down.weight"),
    (".lora_B", ".lora_A"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
    (".lora_B.default.weight", ".lora_A.default.weight"),
)
FULL_SUFFIXES = (".diff", ".w_norm")          # delta of the named parameter
BIAS_SUFFIXES = (".diff_b", ".b_norm")        # delta of the bias beside the named weight
REPORT_FIRST = 5


# ---------------------------------------------------------------------------------------------
# Key mapping


def key_map(param_names: Iterable[str]) -> dict[str, str]:
    """LoRA layer name -> model parameter name, as ComfyUI builds it for a Wan model."""
    out: dict[str, str] = {}
    for name in param_names:
        if name.endswith(".weight"):
            base = name[: -len(".weight")]
            out["lora_unet_" + base.replace(".", "_")] = name
            out["diffusion_model." + base] = name
        else:
            out["diffusion_model." + name] = name
    return out


def normalize_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan-Fun LoRAs write `lora_unet__blocks...`; ComfyUI reads them as `lora_unet_blocks...`."""
    if not any(k.startswith("lora_unet__") for k in sd):
        return dict(sd)
    return {("lora_unet_" + k[len("lora_unet__"):] if k.startswith("lora_unet__") else k): v
            for k, v in sd.items()}


@dataclass
class Delta:
    """One LoRA's change to one model parameter (before strength)."""

    target: str                          # model parameter name
    up: Optional[torch.Tensor] = None    # [out, r]   (low rank)
    down: Optional[torch.Tensor] = None  # [r, in...]
    scale: float = 1.0                   # alpha / rank (1 without alpha)
    full: Optional[torch.Tensor] = None  # the parameter's shape (full delta)

    def dense(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The delta as a float32 tensor of the parameter's shape (ComfyUI's calculate_weight)."""
        if self.full is not None:
            return self.full.float().reshape(shape)
        return (torch.mm(self.up.float().flatten(1), self.down.float().flatten(1)) * self.scale).reshape(shape)


@dataclass
class ParsedLora:
    """A LoRA file mapped onto one model: its deltas, and what matched nothing."""

    path: str
    deltas: list[Delta]
    unmatched: list[str]
    total_keys: int

    def report(self) -> Optional[str]:
        if not self.unmatched:
            return None
        first = ", ".join(self.unmatched[:REPORT_FIRST])
        more = f" (+{len(self.unmatched) - REPORT_FIRST} more)" if len(self.unmatched) > REPORT_FIRST else ""
        return (f"LoRA {os.path.basename(self.path)}: {len(self.unmatched)} of {self.total_keys} keys "
                f"match no layer of the model and were ignored: {first}{more}")


def read_lora_file(path: "str | Path") -> dict[str, torch.Tensor]:
    """The tensors of a LoRA .safetensors file (on the CPU), with errors that name the file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"LoRA file {str(path)!r} does not exist; put it in ComfyUI's models/loras "
                         "folder (or give its path to --lora)")
    if path.suffix.lower() != ".safetensors":
        raise InputError(f"LoRA file {path.name}: only .safetensors LoRAs are read (not {path.suffix!r})")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:   # SafetensorError: truncated, not a safetensors file
        raise InputError(f"LoRA file {path.name} cannot be read as safetensors ({exc}); "
                         "download it again") from None


def parse_lora(sd: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]],
               path: str = "<lora>") -> ParsedLora:
    """Map a LoRA state dict onto a model whose parameters have `shapes` (name -> global shape).

    Raises InputError when no key matches (a LoRA for another model family) or when a matched
    delta's shape does not fit its parameter (e.g. a 5B LoRA on an A14B model), naming the file."""
    sd = normalize_keys(sd)
    names = key_map(shapes)
    used: set[str] = set()
    deltas: list[Delta] = []
    name = os.path.basename(str(path))

    def shape_error(key: str, target: str, got) -> InputError:
        return InputError(f"LoRA {name}: {key} has shape {list(got)} but the model's {target} is "
                          f"{list(shapes[target])}: this LoRA was made for another model (e.g. a 5B LoRA "
                          "on an A14B model); use a LoRA for this model")

    for layer, target in names.items():
        for up_sfx, down_sfx in LOWRANK_SUFFIXES:
            up_key, down_key = layer + up_sfx, layer + down_sfx
            if up_key in sd and down_key in sd:
                up, down = sd[up_key], sd[down_key]
                want = shapes[target]
                if (up.dim() < 2 or down.dim() < 2 or up.shape[1] != down.shape[0]
                        or up.shape[0] * down[0].numel() != int(torch.tensor(want).prod())
                        or up.shape[0] != want[0]):
                    raise shape_error(up_key, target, (up.shape[0],) + tuple(down.shape[1:]))
                alpha_key = layer + ".alpha"
                scale = 1.0
                if alpha_key in sd:
                    scale = float(sd[alpha_key]) / down.shape[0]
                    used.add(alpha_key)
                deltas.append(Delta(target=target, up=up, down=down, scale=scale))
                used.update((up_key, down_key))
                break
        for sfx in FULL_SUFFIXES:
            key = layer + sfx
            if key in sd:
                if tuple(sd[key].shape) != tuple(shapes[target]):
                    raise shape_error(key, target, sd[key].shape)
                deltas.append(Delta(target=target, full=sd[key]))
                used.add(key)
        for sfx in BIAS_SUFFIXES:
            key = layer + sfx
            bias = target[: -len(".weight")] + ".bias" if target.endswith(".weight") else None
            if key in sd:
                if bias not in shapes:
                    continue          # no bias beside this weight: reported as unmatched
                if tuple(sd[key].shape) != tuple(shapes[bias]):
                    raise shape_error(key, bias, sd[key].shape)
                deltas.append(Delta(target=bias, full=sd[key]))
                used.add(key)
    unmatched = sorted(k for k in sd if k not in used)
    if not deltas:
        first = ", ".join(sorted(sd)[:REPORT_FIRST])
        raise InputError(f"LoRA {name}: none of its {len(sd)} keys matches a layer of this Wan model "
                         f"(first keys: {first}); it is not a Wan2.2 LoRA for this model")
    return ParsedLora(path=str(path), deltas=deltas, unmatched=unmatched, total_keys=len(sd))


def param_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """name -> global shape (DTensor shards report the full shape)."""
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------
# Run-time deltas of Linear layers


class LinearDelta:
    """What `models.layers.linear` adds to a patched Linear's output. Factors of every LoRA of the
    layer are concatenated along the rank (one pair of small matmuls however many LoRAs)."""

    def __init__(self, down: Optional[torch.Tensor], up: Optional[torch.Tensor],
                 full: Optional[torch.Tensor], bias: Optional[torch.Tensor]) -> None:
        self.down, self.up, self.full, self.bias = down, up, full, bias

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        ref = self.down if self.down is not None else (self.full if self.full is not None else self.bias)
        xin = x.to(ref.dtype)
        extra = None
        if self.down is not None:
            extra = F.linear(F.linear(xin, self.down), self.up)
        if self.full is not None:
            full = F.linear(xin, self.full)
            extra = full if extra is None else extra + full
        if self.bias is not None:
            extra = self.bias if extra is None else extra + self.bias
        return out + extra.to(out.dtype)


@dataclass
class _LinearParts:
    downs: list = field(default_factory=list)
    ups: list = field(default_factory=list)
    full: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None


def _factor_dtype(layer: nn.Module) -> torch.dtype:
    """Compute dtype of the deltas: the weight's when it is a 16/32-bit float, else the layer's
    compute dtype (fp8 layers of loading/fp8.py dequantize to it), else bf16."""
    dtype = layer.weight.dtype
    if dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        return dtype
    return getattr(layer, "compute_dtype", torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Applied state of one model


def _row_range(n0: int, world: int, rank: int) -> tuple[int, int]:
    """FSDP2's dim-0 chunking (same rule as distributed.fsdp._row_range)."""
    c = -(-n0 // world) if n0 else 0
    start = min(rank * c, n0)
    return start, min(start + c, n0)


class ModelLoras:
    """The LoRAs applied to one DiT. `set([(ParsedLora, strength), ...])` replaces them.

    `masters(param) -> list[Tensor]`: extra storages of a parameter that must change with it (the
    CPU master of an offloaded module); default none."""

    def __init__(self, model: nn.Module, device: "torch.device | str",
                 masters: Optional[Callable[[nn.Module, str], list[torch.Tensor]]] = None,
                 before_change: Optional[Callable[[nn.Module], None]] = None) -> None:
        self.model = model
        self.device = torch.device(device)
        self.masters = masters
        self.before_change = before_change   # e.g. FSDP: drop the root's gathered parameters
        self.patched_linears: list[nn.Module] = []
        self.backups: list[tuple[list[torch.Tensor], torch.Tensor]] = []   # (storages, original rows)
        self._modules = dict(model.named_modules())
        self._params = dict(model.named_parameters())

    @property
    def active(self) -> bool:
        return bool(self.patched_linears or self.backups)

    def clear(self) -> None:
        """Remove every delta: Linear hooks dropped, merged parameters copied back bit for bit."""
        for layer in self.patched_linears:
            layer.__dict__.pop("lora_delta", None)
        self.patched_linears = []
        with torch.no_grad():
            for storages, original in reversed(self.backups):
                for t in storages:
                    t.copy_(original.to(t.device))
        self.backups = []

    def _owner(self, target: str) -> tuple[nn.Module, str]:
        path, _, leaf = target.rpartition(".")
        return self._modules[path], leaf

    def _storages(self, owner: nn.Module, leaf: str) -> tuple[list[torch.Tensor], Optional[tuple[int, int]]]:
        """The tensors holding this rank's copy of a parameter, and its row range when sharded."""
        from torch.distributed.tensor import DTensor

        p = owner._parameters[leaf]
        rows = None
        if isinstance(p, DTensor):
            local = p.to_local()
            mesh = p.device_mesh
            rows = _row_range(p.shape[0], mesh.size(), mesh.get_local_rank())
            tensors = [local]
        else:
            tensors = [p.data]
        if self.masters is not None:     # offloaded: the CPU master too (a resident copy is p.data)
            for m in self.masters(owner, leaf):
                if all((m.device, m.data_ptr()) != (t.device, t.data_ptr()) for t in tensors):
                    tensors.append(m)
        return tensors, rows

    @torch.no_grad()
    def set(self, loras: list[tuple[ParsedLora, float]]) -> None:
        if self.before_change is not None:
            self.before_change(self.model)
        self.clear()
        linears: dict[str, _LinearParts] = {}
        merged: dict[str, torch.Tensor] = {}
        for parsed, strength in loras:
            if strength == 0:
                continue              # bit-identical to no LoRA
            for d in parsed.deltas:
                owner, leaf = self._owner(d.target)
                path = d.target.rpartition(".")[0]
                if isinstance(owner, nn.Linear) and leaf in ("weight", "bias"):
                    parts = linears.setdefault(path, _LinearParts())
                    if leaf == "bias":
                        b = d.full.float() * strength
                        parts.bias = b if parts.bias is None else parts.bias + b
                    elif d.full is not None:
                        f = d.full.float() * strength
                        parts.full = f if parts.full is None else parts.full + f
                    else:
                        parts.downs.append(d.down.float().flatten(1))
                        parts.ups.append(d.up.float().flatten(1) * (strength * d.scale))
                else:
                    shape = tuple(self._params[d.target].shape)
                    dense = d.dense(shape) * strength
                    merged[d.target] = dense if d.target not in merged else merged[d.target] + dense
        for path, parts in linears.items():
            layer = self._modules[path]
            dt = _factor_dtype(layer)
            put = lambda t: None if t is None else t.to(self.device, dt)   # noqa: E731
            down = torch.cat(parts.downs) if parts.downs else None
            up = torch.cat(parts.ups, dim=1) if parts.ups else None
            layer.__dict__["lora_delta"] = LinearDelta(put(down), put(up), put(parts.full), put(parts.bias))
            self.patched_linears.append(layer)
        for target, dense in merged.items():
            owner, leaf = self._owner(target)
            storages, rows = self._storages(owner, leaf)
            if rows is not None:
                dense = dense[rows[0]:rows[1]]
            original = storages[0].detach().to("cpu", copy=True)
            self.backups.append((storages, original))
            for t in storages:          # ComfyUI: weight += delta.to(weight.dtype)
                t += dense.to(t.device, t.dtype)


def _expert_of(target: str, expert_value: str) -> bool:
    return target == "both" or target == expert_value


class LoraManager:
    """The LoRAs of every expert of an engine. `update(specs)` applies a request's LoRA list,
    doing nothing when it is the one already applied (same files, mtimes, strengths)."""

    def __init__(self, models: Mapping[object, nn.Module], device,
                 masters: Optional[Callable[[nn.Module, str], list[torch.Tensor]]] = None,
                 before_change: Optional[Callable[[nn.Module], None]] = None,
                 on_warning: Optional[Callable[[str], None]] = None) -> None:
        self.models = dict(models)
        self.state = {k: ModelLoras(m, device, masters, before_change) for k, m in self.models.items()}
        self.current: tuple = ()
        self.on_warning = on_warning or log.warning
        self.reads = 0          # LoRA files read (tests)

    @staticmethod
    def _signature(specs) -> tuple:
        out = []
        for s in specs:
            try:
                st = os.stat(s.path)
                stamp = (st.st_mtime_ns, st.st_size)
            except OSError:
                stamp = None
            out.append((os.path.abspath(s.path), float(s.strength), str(getattr(s.expert, "value", s.expert)), stamp))
        return tuple(out)

    def plan(self, specs, notes: Optional[list] = None) -> dict[object, list[tuple[ParsedLora, float]]]:
        """Read and map every file for every expert it targets; raises before anything changes.
        Reports (unmatched keys) go to `on_warning` and are appended to `notes`."""
        from ..config import LoraTarget

        single = len(self.models) == 1
        plans: dict[object, list] = {k: [] for k in self.models}
        shapes = {k: param_shapes(m) for k, m in self.models.items()}
        for spec in specs:
            spec = spec.checked()
            target = LoraTarget(spec.expert)
            if single and target != LoraTarget.BOTH:
                raise InputError(f"LoRA {os.path.basename(spec.path)}: expert={target.value!r} but this "
                                 "model has a single expert; use expert 'both'")
            sd = read_lora_file(spec.path)
            self.reads += 1
            for key in self.models:
                kval = getattr(key, "value", str(key))
                if not (target == LoraTarget.BOTH or kval.startswith(target.value)):
                    continue
                parsed = parse_lora(sd, shapes[key], spec.path)
                note = parsed.report()
                if note:
                    self.on_warning(note)
                    if notes is not None:
                        notes.append(f"{note} ({kval})")
                plans[key].append((parsed, float(spec.strength)))
        return plans

    def update(self, specs) -> list[str]:
        """Apply `specs` (LoraSpec list) unless they are the ones applied; returns the reports of
        this change (keys that matched nothing), empty when nothing changed."""
        sig = self._signature(specs)
        if sig == self.current:
            return []
        notes: list[str] = []
        plans = self.plan(specs, notes)
        try:
            for key, state in self.state.items():
                state.set(plans[key])
        except BaseException:
            self.clear()
            raise
        self.current = sig
        return notes

    def clear(self) -> None:
        for state in self.state.values():
            state.clear()
        self.current = ()


# ---------------------------------------------------------------------------------------------
# Test and benchmark helper


def random_lora(shapes: Mapping[str, tuple[int, ...]], rank: int = 64, *, fmt: str = "diffusion_model",
                seed: int = 0, alpha: Optional[float] = None, scale: float = 0.02,
                targets: Optional[Callable[[str], bool]] = None, dtype=torch.float32,
                diff_b: bool = False) -> dict[str, torch.Tensor]:
    """A random LoRA state dict for a model with `shapes` (name -> shape), over every 2-D weight of
    the transformer blocks (the layers the lightx2v LoRAs patch), in one of the key formats:
    `diffusion_model` (lora_down/lora_up + alpha), `peft` (diffusion_model. + lora_A/lora_B),
    `lora_unet` (kohya), `wan_fun` (lora_unet__). `diff_b`: also a `.diff_b` per patched bias."""
    g = torch.Generator().manual_seed(seed)
    keep = targets or (lambda n: n.startswith("blocks.") and n.endswith(".weight"))
    out: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if len(shape) != 2 or not keep(name):
            continue
        base = name[: -len(".weight")]
        if fmt in ("diffusion_model", "peft"):
            layer = "diffusion_model." + base
        elif fmt == "lora_unet":
            layer = "lora_unet_" + base.replace(".", "_")
        elif fmt == "wan_fun":
            layer = "lora_unet__" + base.replace(".", "_")
        else:
            raise ValueError(f"unknown LoRA key format {fmt!r}")
        up = (torch.randn(shape[0], rank, generator=g) * scale).to(dtype)
        down = (torch.randn(rank, shape[1], generator=g) * scale).to(dtype)
        if fmt == "peft":
            out[layer + ".lora_B.weight"], out[layer + ".lora_A.weight"] = up, down
        else:
            out[layer + ".lora_up.weight"], out[layer + ".lora_down.weight"] = up, down
            out[layer + ".alpha"] = torch.tensor(float(alpha if alpha is not None else rank))
        bias = base + ".bias"
        if diff_b and bias in shapes:
            out[layer + ".diff_b"] = (torch.randn(shapes[bias], generator=g) * scale).to(dtype)
    return out


def write_random_lora(path: "str | Path", model_or_folder, rank: int = 64, *, fmt: str = "diffusion_model",
                      seed: int = 0, dtype=torch.bfloat16, **kwargs) -> Path:
    """Write a random rank-`rank` LoRA for a DiT: a module, a `DiTConfig`, or an official DiT folder
    (config.json read; nothing loaded: the model is built on the meta device). For benchmarks:
    `write_random_lora("r64.safetensors", dit_cfg, 64)` -> every block matrix of the model, bf16,
    `diffusion_model.` lora_down/lora_up/alpha keys (what the lightx2v files patch)."""
    from safetensors.torch import save_file

    from ..models.dit import DiTConfig

    if isinstance(model_or_folder, nn.Module):
        shapes = param_shapes(model_or_folder)
    elif isinstance(model_or_folder, DiTConfig):
        from ..models.dit import WanModel

        with torch.device("meta"):
            shapes = param_shapes(WanModel(model_or_folder))
    else:
        from .checkpoint import dit_on_meta

        with dit_on_meta(model_or_folder) as (model, _source, _variant):
            shapes = param_shapes(model)
    sd = random_lora(shapes, rank, fmt=fmt, seed=seed, dtype=dtype, **kwargs)
    path = Path(path)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


__all__ = ["key_map", "normalize_keys", "parse_lora", "read_lora_file", "ParsedLora", "Delta",
           "LinearDelta", "ModelLoras", "LoraManager", "param_shapes", "random_lora", "write_random_lora"]
