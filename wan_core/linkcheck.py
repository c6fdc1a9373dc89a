"""GPU links and a timed collective self-test, for `doctor`.

- `gpu_links()`: how each pair of GPUs is connected (`nvidia-smi topo -m`: NV# = NVLink, PIX/PXB =
  PCIe switch, PHB/NODE/SYS = through the CPU) and whether CUDA peer access (P2P) is on.
- `selftest(n, backend, timeout_s)`: n processes (`python -m wan_core.linkcheck --rank r ...`), joined
  by a FileStore in a private 0700 folder (no TCP listener), time an all-reduce and an all-to-all;
  NCCL on GPUs, gloo on CPU. A rank that does not finish within the timeout ends the test with a
  message that names it and the usual remedies (a hang is the commonest multi-GPU failure on
  consumer cards: no P2P, IOMMU/ACS, a wrong NCCL transport).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

HANG_REMEDIES = (
    "try NCCL_P2P_DISABLE=1 (GeForce/consumer cards have no GPU peer-to-peer; also when the IOMMU "
    "or PCIe ACS is on), then NCCL_SHM_DISABLE=1; NCCL_DEBUG=INFO shows the transport NCCL picked; "
    "check `nvidia-smi topo -m`; in Docker pass --shm-size=8g and --ipc=host")


@dataclass
class LinkReport:
    matrix: Optional[str] = None                       # nvidia-smi topo -m, as printed
    pairs: dict[str, str] = field(default_factory=dict)   # "0-1" -> "NV18" / "PIX" / "SYS"...
    p2p: dict[str, bool] = field(default_factory=dict)    # "0-1" -> peer access
    error: Optional[str] = None

    @property
    def kind(self) -> str:
        """'nvlink' when every pair has NVLink, 'pcie' when any has none, else 'unknown'."""
        if not self.pairs:
            return "unknown"
        return "nvlink" if all(v.startswith("NV") for v in self.pairs.values()) else "pcie"


LINK_WORDS = {"X": "self", "SYS": "PCIe across CPU sockets (slowest)", "NODE": "PCIe through the CPU "
              "(same NUMA node)", "PHB": "PCIe host bridge", "PXB": "PCIe, several switches",
              "PIX": "PCIe, one switch"}


def parse_topo(text: str) -> dict[str, str]:
    """Pairs from `nvidia-smi topo -m`: the header row names GPU0..GPUn-1, each GPUi row gives the
    link to every other GPU (NV#, PIX, PXB, PHB, NODE, SYS)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", text)       # nvidia-smi underlines the header on a tty
    header: Optional[list[str]] = None
    pairs: dict[str, str] = {}
    for ln in text.splitlines():
        cells = ln.split()
        if header is None and len(cells) > 1 and cells[0] == "GPU0" and cells[1].startswith("GPU"):
            header = [c for c in cells if re.fullmatch(r"GPU\d+", c)]
            continue
        if header and cells and cells[0].startswith("GPU") and cells[0][3:].isdigit():
            i = int(cells[0][3:])
            for j, cell in enumerate(cells[1:1 + len(header)]):
                if j > i:
                    pairs[f"{i}-{j}"] = cell
    return pairs


def gpu_links() -> LinkReport:
    report = LinkReport()
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            proc = subprocess.run([exe, "topo", "-m"], capture_output=True, text=True, timeout=20)
            if proc.returncode == 0:
                report.matrix = proc.stdout
                report.pairs = parse_topo(proc.stdout)
            else:
                report.error = (proc.stderr or proc.stdout).strip()[:200]
        except (OSError, subprocess.TimeoutExpired) as exc:
            report.error = f"nvidia-smi topo -m: {exc}"
    try:
        import torch

        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            for i in range(n):
                for j in range(i + 1, n):
                    report.p2p[f"{i}-{j}"] = bool(torch.cuda.can_device_access_peer(i, j))
    except Exception as exc:  # noqa: BLE001 - a report
        report.error = report.error or f"P2P query failed: {exc}"
    return report


# -- the self-test --------------------------------------------------------------------------------


@dataclass
class SelfTest:
    ok: bool
    backend: str
    world: int
    message: str
    timings: dict[str, float] = field(default_factory=dict)   # op -> seconds (rank 0)
    bandwidth_gbps: dict[str, float] = field(default_factory=dict)


def selftest(world: int, backend: str = "nccl", timeout_s: float = 60.0, mbytes: int = 64,
             gpu_ids: Optional[list[int]] = None, _stall_rank: Optional[int] = None) -> SelfTest:
    """Run the collectives on `world` fresh processes; never raises for a failure, reports it."""
    if world < 2:
        return SelfTest(True, backend, world, "skipped: one rank has nobody to talk to")
    # Here, not at the top: the rank processes run this module and must not import torch before
    # they write their first phase (runtime.processes pulls it in through the transport).
    from .runtime.processes import LOOPBACK_ENV

    folder = Path(tempfile.mkdtemp(prefix="wan_core-linkcheck-"))
    os.chmod(folder, 0o700)
    procs = []
    try:
        for rank in range(world):
            env = dict(os.environ)
            env.update(LOOPBACK_ENV)     # the transports the worker group uses (no socket beyond loopback)
            pack = str(Path(__file__).resolve().parents[1])
            env["PYTHONPATH"] = pack + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            if backend == "nccl":
                ids = gpu_ids or list(range(world))
                visible = env.get("CUDA_VISIBLE_DEVICES")
                phys = [v for v in visible.split(",") if v.strip()] if visible else None
                env["CUDA_VISIBLE_DEVICES"] = str(phys[ids[rank]] if phys else ids[rank])
            cmd = [sys.executable, "-m", "wan_core.linkcheck", "--rank", str(rank), "--world", str(world),
                   "--backend", backend, "--folder", str(folder), "--mbytes", str(mbytes)]
            if _stall_rank == rank:
                cmd.append("--stall")
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True, start_new_session=True))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        stuck = [r for r, p in enumerate(procs) if p.poll() is None]
        if stuck:
            where = "; ".join(f"rank {r} {_phase(folder, r)}" for r in stuck)
            return SelfTest(False, backend, world,
                            f"{backend} self-test hung: no result within {timeout_s:.0f} s ({where}); "
                            f"{HANG_REMEDIES}")
        failed = [(r, p) for r, p in enumerate(procs) if p.returncode != 0]
        if failed:
            r, p = failed[0]
            tail = (p.stdout.read() if p.stdout else "").strip().splitlines()[-3:]
            return SelfTest(False, backend, world, f"{backend} self-test failed on rank {r} (exit "
                            f"{p.returncode}): {' | '.join(tail)}; {HANG_REMEDIES}")
        result = json.loads((folder / "rank0.json").read_text())
        bw = {op: round(result["bytes"] / t / 1e9, 2) for op, t in result["timings"].items() if t > 0}
        text = ", ".join(f"{op} {t * 1e3:.1f} ms ({bw.get(op, 0):.1f} GB/s)" for op, t in result["timings"].items())
        return SelfTest(True, backend, world, f"{backend} on {world} ranks: {text} for {mbytes} MB",
                        timings=result["timings"], bandwidth_gbps=bw)
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, 9)
                except ProcessLookupError:
                    pass
            p.wait()
            if p.stdout:
                p.stdout.close()
        shutil.rmtree(folder, ignore_errors=True)


PHASE_WORDS = {"": "never reached the group join (stalled, or still starting)", "start": "stuck joining the group (init_process_group)",
               "joined": "joined, stuck before the first collective", "all_reduce": "stuck in all_reduce",
               "all_to_all": "stuck in all_to_all", "done": "finished"}


def _phase(folder: Path, rank: int) -> str:
    try:
        phase = (folder / f"rank{rank}.phase").read_text().strip()
    except OSError:
        phase = ""
    return PHASE_WORDS.get(phase, phase)


def _rank_main(argv=None) -> int:
    import argparse
    from datetime import timedelta

    ap = argparse.ArgumentParser(prog="python -m wan_core.linkcheck")
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--backend", default="nccl")
    ap.add_argument("--folder", required=True)
    ap.add_argument("--mbytes", type=int, default=64)
    ap.add_argument("--stall", action="store_true", help="(tests) never join: the others must time out")
    a = ap.parse_args(argv)

    def phase(name: str) -> None:
        (Path(a.folder) / f"rank{a.rank}.phase").write_text(name)

    if a.stall:
        time.sleep(3600)
    phase("start")
    import torch
    import torch.distributed as dist

    store = dist.FileStore(str(Path(a.folder) / "store"), a.world)
    kwargs = dict(backend=a.backend, store=store, rank=a.rank, world_size=a.world,
                  timeout=timedelta(seconds=600))
    if a.backend == "nccl":
        torch.cuda.set_device(0)
        device = torch.device("cuda", 0)
        kwargs["device_id"] = device
    else:
        device = torch.device("cpu")
    dist.init_process_group(**kwargs)
    phase("joined")
    numel = a.mbytes * 1024 * 1024 // 2
    numel -= numel % a.world
    x = torch.ones(numel, dtype=torch.bfloat16 if a.backend == "nccl" else torch.float32, device=device)
    timings = {}
    for name, op in (("all_reduce", lambda: dist.all_reduce(x)),
                     ("all_to_all", lambda: dist.all_to_all_single(torch.empty_like(x), x))):
        phase(name)
        op()                                   # warm-up (NCCL sets up its channels here)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(3):
            op()
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings[name] = (time.perf_counter() - t0) / 3
    if a.rank == 0:
        (Path(a.folder) / "rank0.json").write_text(json.dumps({"timings": timings,
                                                               "bytes": x.numel() * x.element_size()}))
    phase("done")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(_rank_main())
