"""CPU offload of DiT weights, for GPUs too small to hold the model(s).

Weights are immutable during inference, so a module's weights live once in (pinned) CPU memory, the
"master", and being resident on the GPU means holding a device copy; making it non-resident just
drops the copy (no device-to-host traffic). Copies are issued on a side CUDA stream so they overlap
compute; the compute stream waits on an event before using them, and `record_stream` keeps the
allocator from reusing a copy's memory while queued kernels still read it.

- `ExpertOffloader` (offload="experts"): MoE experts; the active one is resident, the other waits in
  pinned memory. It is the denoise loop's `ModelProvider`: `get(expert)` makes it resident (releasing
  the previous one first, so one expert at a time); `prefetch(expert)` starts the copy early on the
  side stream when free GPU memory can hold both (the pipeline calls it one step before the switch).
- `BlockOffloader` (offload="blocks"): forward pre-hooks make block i resident and start the copy of
  block i+1; forward hooks drop block i afterwards. Embeddings and head stay resident. Named,
  removable hooks (`remove()`), no monkeypatching.

On a CPU device every move is a no-op (master == resident copy) but the same bookkeeping runs, so
the schedule is testable without a GPU.
"""
from __future__ import annotations

import logging
from typing import Hashable, Iterable, Mapping, Optional

import torch
import torch.nn as nn


log = logging.getLogger("wan_core.offload")


class WeightSlot:
    """The parameters and buffers of one module, with a CPU master each and an optional device copy."""

    def __init__(self, module: nn.Module, device: torch.device, pin: bool) -> None:
        self.module = module
        self.device = torch.device(device)
        self.on_cpu = self.device.type == "cpu"
        self.entries: list[tuple[nn.Module, str, bool, torch.Tensor]] = []   # owner, name, is_param, master
        for owner in module.modules():
            for name, p in owner._parameters.items():
                if p is not None:
                    self.entries.append((owner, name, True, self._master(p.data, pin)))
            for name, b in owner._buffers.items():
                if b is not None:
                    self.entries.append((owner, name, False, self._master(b, pin)))
        self._set([m for *_, m in self.entries])
        # Logical residency, tracked on CPU devices too (where the moves themselves are no-ops).
        self.resident = False
        self.event: Optional[torch.cuda.Event] = None
        self.nbytes = sum(m.numel() * m.element_size() for *_, m in self.entries)

    def _master(self, t: torch.Tensor, pin: bool) -> torch.Tensor:
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if pin and not self.on_cpu and torch.cuda.is_available() and not t.is_pinned():
            t = t.pin_memory()
        return t

    def _set(self, tensors: list[torch.Tensor]) -> None:
        for (owner, name, is_param, _), t in zip(self.entries, tensors):
            if is_param:
                owner._parameters[name].data = t
            else:
                owner._buffers[name] = t

    def load(self, stream: Optional["torch.cuda.Stream"]) -> None:
        """Issue the host-to-device copies (on `stream` when given); returns at once."""
        if self.resident:
            return
        self.resident = True
        if self.on_cpu:
            return
        if stream is None:
            self._set([m.to(self.device) for *_, m in self.entries])
        else:
            with torch.cuda.stream(stream):
                self._set([m.to(self.device, non_blocking=True) for *_, m in self.entries])
                self.event = torch.cuda.Event()
                self.event.record(stream)

    def ready(self) -> None:
        """Make the current stream wait for the copies before it uses the weights."""
        if self.event is None:
            return
        cur = torch.cuda.current_stream(self.device)
        cur.wait_event(self.event)
        for owner, name, is_param, _ in self.entries:
            t = owner._parameters[name].data if is_param else owner._buffers[name]
            t.record_stream(cur)
        self.event = None

    def unload(self) -> None:
        """Drop the device copies (the masters are unchanged: nothing is copied back)."""
        if not self.resident:
            return
        self.resident = False
        self.event = None
        if not self.on_cpu:
            self._set([m for *_, m in self.entries])


def _side_stream(device: torch.device) -> Optional["torch.cuda.Stream"]:
    return torch.cuda.Stream(device) if device.type == "cuda" else None


class ExpertOffloader:
    """Keeps one of several models resident; `get(key)` is the denoise loop's ModelProvider."""

    def __init__(self, experts: Mapping[Hashable, nn.Module], device: "str | torch.device",
                 pin: bool = True, allow_prefetch: bool = True) -> None:
        self.device = torch.device(device)
        self.allow_prefetch = allow_prefetch
        self.slots = {k: WeightSlot(m, self.device, pin) for k, m in experts.items()}
        self.stream = _side_stream(self.device)
        self.active: Optional[Hashable] = None
        self.trace: list[tuple[str, Hashable]] = []     # ("load"|"unload", key) in order

    def resident(self) -> list[Hashable]:
        return [k for k, s in self.slots.items() if s.resident]

    def _fits(self, key: Hashable) -> bool:
        if self.device.type != "cuda":
            return True
        free, _ = torch.cuda.mem_get_info(self.device)
        return free > self.slots[key].nbytes * 1.1 + (1 << 30)

    def _load(self, key: Hashable) -> None:
        if not self.slots[key].resident:
            self.trace.append(("load", key))
            self.slots[key].load(self.stream)

    def _unload(self, key: Hashable) -> None:
        if self.slots[key].resident:
            self.trace.append(("unload", key))
            self.slots[key].unload()

    def prefetch(self, key: Hashable) -> bool:
        """Start copying `key` while the active expert keeps computing; needs room for both.

        Returns False (and does nothing) when free GPU memory cannot hold both experts: `get` then
        loads it at the switch, after releasing the active one.
        """
        if self.slots[key].resident:
            return True
        if not self.allow_prefetch:
            return False
        if not self._fits(key):
            log.info("not prefetching %s: %.1f GB does not fit beside the active expert", key,
                     self.slots[key].nbytes / 1e9)
            return False
        self._load(key)
        return True

    def get(self, key: Hashable) -> nn.Module:
        """`key`'s model, resident; the previous one is released first unless `key` was prefetched."""
        if key != self.active:
            if self.active is not None:
                self._unload(self.active)      # before the copy: one expert on the GPU at a time
            self._load(key)
            self.active = key
        slot = self.slots[key]
        slot.ready()
        return slot.module

    def release(self) -> None:
        for k in self.slots:
            self._unload(k)
        self.active = None


class BlockOffloader:
    """Streams `blocks` through the device with forward hooks; `remove()` undoes it."""

    def __init__(self, blocks: Iterable[nn.Module], device: "str | torch.device", *,
                 prefetch: int = 1, pin: bool = True) -> None:
        self.device = torch.device(device)
        self.blocks = list(blocks)
        self.slots = [WeightSlot(b, self.device, pin) for b in self.blocks]
        self.stream = _side_stream(self.device)
        self.prefetch = max(0, int(prefetch))
        self.trace: list[tuple[str, int]] = []      # ("load"|"unload", i) in order; tests read it
        self.handles = []
        for i, block in enumerate(self.blocks):
            self.handles.append(block.register_forward_pre_hook(self._make_pre(i)))
            self.handles.append(block.register_forward_hook(self._make_post(i)))

    def _load(self, i: int) -> None:
        slot = self.slots[i]
        if not slot.resident:
            self.trace.append(("load", i))
            slot.load(self.stream)

    def _make_pre(self, i: int):
        def offload_pre_hook(module, args):
            self._load(i)
            self.slots[i].ready()
            n = len(self.slots)
            for j in range(1, self.prefetch + 1):
                self._load((i + j) % n)       # wraps to block 0 for the next forward
            return None
        return offload_pre_hook

    def _make_post(self, i: int):
        def offload_post_hook(module, args, output):
            if len(self.slots) > self.prefetch + 1:   # else every block fits in the window: keep them
                self.trace.append(("unload", i))
                self.slots[i].unload()
            return None
        return offload_post_hook

    def resident(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s.resident]

    def remove(self) -> None:
        """Remove the hooks and drop every device copy (weights stay in the CPU masters)."""
        for h in self.handles:
            h.remove()
        self.handles.clear()
        for s in self.slots:
            s.unload()


def apply_block_offload(model: nn.Module, device: "str | torch.device", *, prefetch: int = 1,
                        pin: bool = True) -> BlockOffloader:
    """Everything but `model.blocks` moves to `device`; the blocks stream from CPU."""
    device = torch.device(device)
    for name, child in model.named_children():
        if child is not model.blocks:
            child.to(device)
    for name, p in model._parameters.items():
        if p is not None:
            p.data = p.data.to(device)
    for name, b in model._buffers.items():
        if b is not None:
            model._buffers[name] = b.to(device)
    offloader = BlockOffloader(model.blocks, device, prefetch=prefetch, pin=pin)
    model.block_offloader = offloader    # reachable for remove(); the model never reads it
    return offloader


__all__ = ["WeightSlot", "ExpertOffloader", "BlockOffloader", "apply_block_offload"]
