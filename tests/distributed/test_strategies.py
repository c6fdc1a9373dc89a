"""The parallel strategies on spawned gloo ranks (CPU, float32) against one process.

Each case runs the same function on every rank of a pool of processes that stays up for the whole
module (one pool per world size: starting ranks costs seconds, a case costs less). Reference
outputs are computed in the same rank process with the plain model first, so thread settings and
kernels are identical and the only differences left are the ones the strategy introduces.

Tolerances (rel_err = max|a-e| / max|e|, tests/conftest.py):
- Ulysses and token sharding move fp32 values without arithmetic (all_to_all, all_gather are exact
  copies); attention on N/P heads computes each head as on one device. Only the summation order of
  the SDPA and linear kernels may change with tensor shapes (L/P rows instead of L): 1e-5
  (observed 0.0 on 2 and 4 ranks; a missing key mask or a wrong head order gives 7e-3 to 0.16).
- FSDP2 all-gathers exact fp32 shards, but the gathered parameters are views into a flat buffer,
  whose alignment can change the CPU kernels' blocking and so the summation order: 1e-5
  (observed 3.3e-7).
- CFG-parallel: the all-gather is exact and every rank evaluates the same expression on the same
  tensors, so ranks agree bit for bit; against one process the Ulysses bound applies.
- Offload on CPU moves nothing: bit-identical.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import tempfile
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from wan_core.config import GuideScale, ParallelConfig  # noqa: E402

pytestmark = pytest.mark.timeout(300)

CASE_TIMEOUT_S = 180


# ---------------------------------------------------------------------------------------------
# Rank pool


def _rank_main(rank: int, world: int, init_file: str, conn, backend: str) -> None:
    import torch.distributed as tdist

    kwargs = {}
    if backend == "nccl":             # one GPU per rank (test_strategy_gpu.py)
        torch.cuda.set_device(rank)
        kwargs["device_id"] = torch.device("cuda", rank)
    else:
        torch.set_num_threads(1)      # several ranks share few cores
    tdist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world,
                             timeout=timedelta(seconds=CASE_TIMEOUT_S), **kwargs)
    while True:
        msg = conn.recv()
        if msg is None:
            break
        fn, args = msg
        try:
            conn.send((True, fn(*args)))
        except BaseException:  # report everything (the parent raises it with the rank)
            conn.send((False, traceback.format_exc()))
    conn.close()
    os._exit(0)     # no process-group teardown handshake: the parent is closing every rank anyway


class RankPool:
    def __init__(self, world: int, backend: str = "gloo") -> None:
        # forkserver: one server imports torch and the engine once, every rank is a cheap fork of
        # it (spawn would import torch again per rank; fork from pytest is not thread-safe).
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "torch._dynamo", "torch.distributed", "wan_core.models.dit",
                                    "wan_core.loading.checkpoint", "wan_core.pipeline.parallelize"])
        self.world = world
        self.tmp = tempfile.mkdtemp(prefix=f"wan_pool{world}_")
        init_file = os.path.join(self.tmp, "init")
        self.conns, self.procs = [], []
        for r in range(world):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_rank_main, args=(r, world, init_file, child, backend), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)
        self.broken = False

    def run(self, fn, *args):
        """fn(*args) on every rank -> list of results by rank; raises with the failing ranks."""
        for c in self.conns:
            c.send((fn, args))
        results, errors = [], []
        for r, c in enumerate(self.conns):
            if not c.poll(CASE_TIMEOUT_S + 30):
                self.broken = True
                raise TimeoutError(f"rank {r} did not answer within {CASE_TIMEOUT_S + 30} s")
            ok, value = c.recv()
            results.append(value)
            if not ok:
                errors.append(f"--- rank {r} ---\n{value}")
        if errors:
            self.broken = True      # the others may be stuck in a collective: start afresh
            raise AssertionError("case failed on a rank:\n" + "\n".join(errors))
        return results

    def close(self) -> None:
        for c, p in zip(self.conns, self.procs):
            try:
                if not self.broken:
                    c.send(None)
            except OSError:
                pass
        for p in self.procs:
            p.join(timeout=5 if not self.broken else 0.1)
            if p.is_alive():
                p.kill()
                p.join()


@pytest.fixture(scope="module")
def pools():
    live: dict[int, RankPool] = {}

    def get(world: int) -> RankPool:
        pool = live.get(world)
        if pool is None or pool.broken:
            if pool is not None:
                pool.close()
            pool = live[world] = RankPool(world)
        return pool

    yield get
    for pool in live.values():
        pool.close()


# ---------------------------------------------------------------------------------------------
# Helpers used inside the ranks (module-level so they pickle by name)


def rank_device() -> torch.device:
    """cuda:<rank> on NCCL pools, cpu on gloo pools (and in one process)."""
    import torch.distributed as tdist

    if tdist.is_initialized() and tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def write_synthetic_checkpoint(folder, heads: int = 4, layers: int = 2, seed: int = 0) -> str:
    """A random DiT in the official single-file layout (config.json + safetensors), fp32."""
    import json

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model({"synthetic": heads, "seed": seed, "layers": layers})
    cfg = model.cfg
    (folder / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "dim": cfg.dim, "eps": cfg.eps, "ffn_dim": cfg.ffn_dim,
        "freq_dim": cfg.freq_dim, "in_dim": cfg.in_dim, "model_type": cfg.model_type,
        "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "out_dim": cfg.out_dim,
        "text_len": cfg.text_len}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    return str(folder)


def rel_err(actual, expected) -> float:
    a, e = actual.double(), expected.double()
    return float((a - e).abs().max() / e.abs().max().clamp_min(1e-30))


def synthetic_cfg(heads: int = 4, layers: int = 2, model_type: str = "t2v"):
    """A small random DiT with `heads` heads (the tiny checkpoints have 2): head dim 64, so dim
    64 * heads (256 for 4 heads)."""
    from wan_core.models.dit import DiTConfig

    dim = 64 * heads
    return DiTConfig(model_type=model_type, in_dim=16, out_dim=16, dim=dim, ffn_dim=2 * dim, freq_dim=256,
                     num_heads=heads, num_layers=layers, text_len=32)


def build_model(spec: dict):
    """{'folder': path} -> tiny checkpoint (fp32); {'synthetic': heads, 'seed': s} -> random model."""
    from wan_core.loading.checkpoint import load_dit
    from wan_core.models.dit import WanModel

    if "folder" in spec:
        return load_dit(spec["folder"], dtype=torch.float32, device="cpu")
    torch.manual_seed(spec.get("seed", 0))
    model = WanModel(synthetic_cfg(spec["synthetic"], spec.get("layers", 2)))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def make_inputs(cfg, frames: int, h: int, w: int, seed: int = 1, batch: int = 1):
    """Latent [B, in_dim, F, H, W], one context per sample, t [B]; token count f*h*w/4."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_dim, frames, h, w, generator=g)
    ctx = [torch.randn(5 + 2 * i, cfg.text_dim, generator=g) for i in range(batch)]
    t = torch.tensor([937] * batch)
    n_tok = frames * (h // 2) * (w // 2)
    return x, ctx, t, n_tok


def dist_ctx(**parallel):
    from wan_core.distributed.context import DistContext

    par = ParallelConfig(**parallel)
    return DistContext.from_initialized(par, rank_device()), par


def build_meta(folder: str):
    from wan_core.loading.detect import read_config
    from wan_core.models.dit import DiTConfig, WanModel

    with torch.device("meta"):
        return WanModel(DiTConfig.from_dict(read_config(folder)))


def counting_source(folder: str):
    from wan_core.distributed.fsdp import ReadCounter
    from wan_core.loading.checkpoint import TensorSource

    return ReadCounter(TensorSource.from_folder(folder))


def shard_report(model, world: int) -> dict:
    """Every parameter is a DTensor whose local rows are this rank's torch.chunk share.

    The root unit keeps its gathered parameters after a forward (reshard_after_forward=False),
    so it is resharded first."""
    from torch.distributed.tensor import DTensor

    from wan_core.distributed.fsdp import release

    release(model)

    bad, local_numel, total_numel, nonempty = [], 0, 0, 0
    for name, p in model.named_parameters():
        if not isinstance(p, DTensor):
            bad.append(name)
            continue
        n0 = p.shape[0]
        c = -(-n0 // world)
        rank = p.device_mesh.get_local_rank()
        want = max(0, min(c, n0 - rank * c))
        if p.to_local().shape[0] != want:
            bad.append(f"{name}: {p.to_local().shape[0]} rows, expected {want}")
        nonempty += p.to_local().numel() > 0
        local_numel += p.to_local().numel()
        total_numel += p.numel()
    return dict(bad=bad, fraction=local_numel / total_numel, nonempty=nonempty)


def local_ptrs(model) -> list[int]:
    from wan_core.distributed.fsdp import release

    release(model)
    return [p.to_local().data_ptr() for p in model.parameters()]


# ---------------------------------------------------------------------------------------------
# Cases


def case_context(cfg_parallel: bool, ulysses: int):
    import torch.distributed as tdist

    dist, _ = dist_ctx(num_gpus=tdist.get_world_size(), cfg_parallel=cfg_parallel, ulysses_size=ulysses)
    # Stop flag: only rank 0's flag counts, every rank gets it.
    votes = [dist.agree_stop(dist.rank == 1), dist.agree_stop(dist.rank == 0)]
    obj = dist.broadcast_object({"seed": 1234} if dist.rank == 0 else "ignored")
    dist.barrier()
    # The groups really are the layout: gather the global ranks of each group.
    uly = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.ulysses_size)]
    tdist.all_gather(uly, torch.tensor([dist.rank]), group=dist.ulysses_group)
    cfgr = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.cfg_size)]
    tdist.all_gather(cfgr, torch.tensor([dist.rank]), group=dist.cfg_group)
    return dict(rank=dist.rank, votes=votes, obj=obj, cfg=(dist.cfg_rank, dist.cfg_size),
                uly=(dist.ulysses_rank, dist.ulysses_size),
                uly_members=[int(t) for t in uly], cfg_members=[int(t) for t in cfgr])


def case_ulysses(spec: dict, grid: tuple[int, int, int], batch: int = 1):
    """Ulysses over the whole world vs the same model unsharded, at a token count the degree
    does not divide (padding path)."""
    import torch.distributed as tdist

    from wan_core.config import padded_seq_len
    from wan_core.pipeline.parallelize import parallelize_dit

    world = tdist.get_world_size()
    dist, par = dist_ctx(num_gpus=world, ulysses_size=world)
    model = build_model(spec)
    x, ctx, t, n_tok = make_inputs(model.cfg, *grid, batch=batch)
    seq_len = padded_seq_len(n_tok, world)
    with torch.no_grad():
        ref = model(x, t, ctx, n_tok)
        ref_padded = model(x, t, ctx, seq_len)
        parallelize_dit(model, dist, par)
        out = model(x, t, ctx, seq_len)
    return dict(n_tok=n_tok, seq_len=seq_len, err=rel_err(out, ref), err_pad=rel_err(ref_padded, ref),
                out=out if dist.rank == 0 else None, wrapped=type(model.blocks[0].self_attn.attn).__name__)


def case_fsdp(folder: str, grid: tuple[int, int, int]):
    """FSDP2 alone over the world (rank-local loading) vs the plain model."""
    import torch.distributed as tdist

    from wan_core.distributed.fsdp import shard_and_load
    from wan_core.distributed.mesh import fsdp_mesh
    from wan_core.loading.checkpoint import load_dit

    world = tdist.get_world_size()
    plain = load_dit(folder, dtype=torch.float32, device="cpu")
    x, ctx, t, n_tok = make_inputs(plain.cfg, *grid)
    model = build_meta(folder)
    src = counting_source(folder)
    stats = shard_and_load(model, fsdp_mesh(tdist.group.WORLD, "cpu"), src, "cpu")
    total_bytes = sum(p.numel() * 4 for p in plain.parameters())
    with torch.no_grad():
        ref = plain(x, t, ctx, n_tok)
        out = model(x, t, ctx, n_tok)
        out2 = model(x, t, ctx, n_tok)       # second forward: blocks were resharded and re-gathered
    rep = shard_report(model, world)
    return dict(err=rel_err(out, ref), same_twice=bool(torch.equal(out, out2)), bad=rep["bad"],
                fraction=rep["fraction"], read_fraction=src.bytes / total_bytes,
                stats_bytes=stats.bytes, reads=src.reads, nonempty=rep["nonempty"])


def case_parallelize(folder: str, grid: tuple[int, int, int], cfg_parallel: bool, ulysses: int,
                     fsdp: bool, dtype: str = "float32"):
    """parallelize_dit (Ulysses -> FSDP) on one forward vs the plain model."""
    import torch.distributed as tdist

    from wan_core.config import padded_seq_len
    from wan_core.loading.checkpoint import load_dit
    from wan_core.pipeline.parallelize import parallelize_dit

    dist, par = dist_ctx(num_gpus=tdist.get_world_size(), cfg_parallel=cfg_parallel,
                         ulysses_size=ulysses, dit_fsdp=fsdp)
    dt, dev = getattr(torch, dtype), dist.device
    plain = load_dit(folder, dtype=dt, device=dev)
    x, ctx, t, n_tok = make_inputs(plain.cfg, *grid)
    model = build_meta(folder) if fsdp else load_dit(folder, dtype=dt, device=dev)
    parallelize_dit(model, dist, par, source=counting_source(folder) if fsdp else None, dtype=dt)
    with torch.no_grad():
        ref = plain(x, t, ctx, n_tok)
        out = model(x, t, ctx, padded_seq_len(n_tok, ulysses))
    rep = shard_report(model, dist.world_size) if fsdp else {"bad": [], "fraction": 1.0}
    return dict(err=rel_err(out, ref), bad=rep["bad"], fraction=rep["fraction"],
                wrapped=type(model.blocks[0].self_attn.attn).__name__)


def _denoise_inputs(cfg, grid, seq_len, guide, boundary, device):
    from wan_core.pipeline.denoise import DenoiseInputs, scalar_timestep
    from wan_core.pipeline.experts import ExpertSchedule

    x, ctx, _, _ = make_inputs(cfg, *grid, batch=2)
    return DenoiseInputs(latent=x[0].to(device), context=ctx[0].to(device),
                         context_null=ctx[1].to(device), seq_len=seq_len,
                         schedule=ExpertSchedule(GuideScale.parse(guide), boundary),
                         timestep_input=scalar_timestep(device))


def case_denoise(folders: dict, grid, parallel: dict, steps: int = 4, shift: float = 5.0,
                 boundary: float = 0.9, guide=(3.0, 4.0), dtype: str = "float32"):
    """The pipeline's denoise loop (MoE switch at step 2 of 4, CFG) on the parallel layout vs one
    process with plain models. Under FSDP, counts checkpoint reads and checks shard storage across
    the switch."""
    import torch.distributed as tdist

    from wan_core.distributed.context import DistContext
    from wan_core.config import padded_seq_len
    from wan_core.loading.checkpoint import load_dit
    from wan_core.pipeline.denoise import denoise
    from wan_core.pipeline.experts import Expert
    from wan_core.pipeline.parallelize import ResidentModels, expert_provider, parallelize_dit
    from wan_core.pipeline.progress import RunHooks
    from wan_core.pipeline.schedulers import make_scheduler

    dist, par = dist_ctx(num_gpus=tdist.get_world_size(), **parallel)
    dt, dev = getattr(torch, dtype), dist.device
    plain = {Expert(k): load_dit(f, dtype=dt, device=dev) for k, f in folders.items()}
    cfg = next(iter(plain.values())).cfg
    n_tok = grid[0] * (grid[1] // 2) * (grid[2] // 2)
    sources, models = {}, {}
    for k, f in folders.items():
        if par.dit_fsdp:
            sources[k] = counting_source(f)
            models[Expert(k)] = parallelize_dit(build_meta(f), dist, par, source=sources[k], dtype=dt)
        else:
            models[Expert(k)] = parallelize_dit(load_dit(f, dtype=dt, device=dev), dist, par)
    reads_after_load = {k: s.reads for k, s in sources.items()}
    ptrs = {k: local_ptrs(m) for k, m in models.items()} if par.dit_fsdp else {}

    ref = denoise(ResidentModels(plain), make_scheduler("unipc", steps, shift),
                  _denoise_inputs(cfg, grid, n_tok, guide, boundary, dev), DistContext.single(dev),
                  RunHooks())
    out = denoise(expert_provider(models, dist, par), make_scheduler("unipc", steps, shift),
                  _denoise_inputs(cfg, grid, padded_seq_len(n_tok, par.ulysses_size), guide, boundary,
                                  dev),
                  dist, RunHooks())
    return dict(err=rel_err(out, ref), out=out.cpu(),
                reads_after_load=reads_after_load,
                reads_after_run={k: s.reads for k, s in sources.items()},
                same_storage={str(k): local_ptrs(m) == ptrs[k] for k, m in models.items()} if ptrs else {},
                shards={str(k): shard_report(m, dist.world_size) for k, m in models.items()}
                if par.dit_fsdp else {})


def case_t5_fsdp(path: str):
    """parallelize_t5 (t5_fsdp, rank-local from the .pth) vs the plain encoder, fp32."""
    import torch.distributed as tdist

    from wan_core.loading.checkpoint import TensorSource, load_pth
    from wan_core.models.t5 import T5Config, T5Encoder
    from wan_core.pipeline.parallelize import parallelize_t5
    from wan_core.loading.t5 import load_t5_encoder

    world = tdist.get_world_size()
    dist, par = dist_ctx(num_gpus=world, ulysses_size=world, t5_fsdp=True)
    plain = load_t5_encoder(path, dtype=torch.float32, device="cpu")
    sd = load_pth(path)
    with torch.device("meta"):
        t5 = T5Encoder(T5Config.from_state_dict(sd))
    parallelize_t5(t5, dist, par, source=TensorSource.from_state_dict(sd), dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 376, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.int64)
    mask[1, 7:] = 0
    with torch.no_grad():
        ref = plain(ids, mask)
        out = t5(ids, mask)
    rep = shard_report(t5, world)
    return dict(err=rel_err(out, ref), bad=rep["bad"], fraction=rep["fraction"])


# ---------------------------------------------------------------------------------------------
# Tests


def tiny_t2v(tiny_dir) -> dict:
    return {"folder": str(tiny_dir / "ckpt" / "t2v-A14B" / "high_noise_model")}


@pytest.mark.parametrize("cfg_parallel,ulysses,world", [(False, 2, 2), (True, 1, 2), (True, 2, 4)])
def test_context_groups_and_stop(pools, cfg_parallel, ulysses, world):
    res = pools(world).run(case_context, cfg_parallel, ulysses)
    for r, d in enumerate(res):
        assert d["rank"] == r
        assert d["votes"] == [False, True], "every rank must see rank 0's flag, and only it"
        assert d["obj"] == {"seed": 1234}
        cfg_rank, uly_rank = divmod(r, ulysses)
        assert d["cfg"] == (cfg_rank, 2 if cfg_parallel else 1)
        assert d["uly"] == (uly_rank, ulysses)
        assert d["uly_members"] == [cfg_rank * ulysses + i for i in range(ulysses)]
        assert d["cfg_members"] == [c * ulysses + uly_rank for c in range(2 if cfg_parallel else 1)]


def test_ulysses_2_tiny_checkpoint_padding(pools, tiny_dir):
    # 3 x 6 x 10 latent -> 3 * 3 * 5 = 45 tokens: odd, so seq_len is padded to 46.
    res = pools(2).run(case_ulysses, tiny_t2v(tiny_dir), (3, 6, 10))
    for d in res:
        assert d["wrapped"] == "UlyssesAttention"
        assert (d["n_tok"], d["seq_len"]) == (45, 46)
        assert d["err_pad"] < 1e-5, d    # masked padded keys: padding changes nothing on one device
        assert d["err"] < 1e-5, d


def test_ulysses_4_synthetic_4_heads_padding(pools):
    # 2 x 6 x 6 latent -> 18 tokens, padded to 20 for degree 4; batch 2 (batched CFG shape).
    res = pools(4).run(case_ulysses, {"synthetic": 4}, (2, 6, 6), 2)
    for d in res:
        assert (d["n_tok"], d["seq_len"]) == (18, 20)
        assert d["err"] < 1e-5, d


def test_ulysses_5_synthetic_5_heads_padding(pools):
    # Issue 6 asks for Ulysses 5 (A14B's 40 heads allow 1, 2, 4, 5, 8): 5 gloo ranks, a 5-head
    # model; 2 x 6 x 8 latent -> 24 tokens, padded to 25.
    res = pools(5).run(case_ulysses, {"synthetic": 5}, (2, 6, 8))
    for d in res:
        assert d["wrapped"] == "UlyssesAttention"
        assert (d["n_tok"], d["seq_len"]) == (24, 25)
        assert d["err"] < 1e-5, d

@pytest.mark.parametrize("world", [2, 4])
def test_fsdp_rank_local_load_equals_single(pools, tiny_dir, world):
    res = pools(world).run(case_fsdp, tiny_t2v(tiny_dir)["folder"], (2, 4, 6))
    for d in res:
        assert d["bad"] == [], d["bad"]
        assert d["err"] < 1e-5, d
        assert d["same_twice"]
        # One read per tensor this rank holds rows of (never a whole-model pass; a rank with no
        # rows of a [1, 6, dim] modulation reads nothing for it).
        assert d["reads"] == d["nonempty"], d
        # Each rank read (and holds) about 1/world of the bytes: the [1, 6, dim] modulations
        # have one row, held whole by rank 0, hence the slack.
        assert abs(d["fraction"] - 1 / world) < 0.05, d
        assert d["read_fraction"] < 1 / world + 0.05, d
    assert sum(d["fraction"] for d in res) == pytest.approx(1.0)


@pytest.mark.parametrize("world,cfg_parallel,ulysses,fsdp", [
    (2, False, 2, True),    # Ulysses 2 + FSDP 2
    (4, True, 2, True),     # CFG 2 x Ulysses 2 layout, FSDP over all 4 (one forward, same input)
])
def test_parallelize_ulysses_fsdp(pools, tiny_dir, world, cfg_parallel, ulysses, fsdp):
    res = pools(world).run(case_parallelize, tiny_t2v(tiny_dir)["folder"], (3, 6, 10), cfg_parallel,
                           ulysses, fsdp)
    for d in res:
        assert d["wrapped"] == "UlyssesAttention"
        assert d["bad"] == []
        assert d["err"] < 1e-5, d


def t2v_experts(tiny_dir) -> dict:
    base = tiny_dir / "ckpt" / "t2v-A14B"
    return {"high_noise_model": str(base / "high_noise_model"), "low_noise_model": str(base / "low_noise_model")}


def test_cfg_ulysses_fsdp_denoise_moe_switch_reloads_nothing(pools, tiny_dir):
    """4 ranks = CFG 2 x Ulysses 2, both experts FSDP-sharded over all 4; 4 UniPC steps, the MoE
    switch after step 2 (t 999, 937 high; 833, 624 low at shift 5, boundary 0.9)."""
    res = pools(4).run(case_denoise, t2v_experts(tiny_dir), (3, 6, 10),
                       dict(cfg_parallel=True, ulysses_size=2, dit_fsdp=True))
    for d in res:
        assert d["err"] < 1e-5, d["err"]
        assert d["reads_after_run"] == d["reads_after_load"], "the MoE switch read the checkpoint again"
        assert all(d["same_storage"].values()), d["same_storage"]
        for rep in d["shards"].values():
            assert rep["bad"] == [] and rep["fraction"] < 0.5   # both experts stay sharded (about 1/4 each)
    for d in res[1:]:
        assert torch.equal(d["out"], res[0]["out"]), "ranks must hold the same latent bit for bit"


def test_cfg_parallel_only_denoise(pools, tiny_dir):
    res = pools(2).run(case_denoise, t2v_experts(tiny_dir), (3, 6, 10), dict(cfg_parallel=True))
    for d in res:
        assert d["err"] < 1e-5, d["err"]
    assert torch.equal(res[0]["out"], res[1]["out"])


def test_cfg_combine_is_the_official_mix():
    from wan_core.distributed.cfg_parallel import combine
    from wan_core.distributed.context import DistContext
    from wan_core.distributed import cfg_parallel

    cond, uncond = torch.randn(4, 5), torch.randn(4, 5)
    assert torch.equal(combine(cond, uncond, 3.5), uncond + 3.5 * (cond - uncond))
    got = cfg_parallel.guided(DistContext.single("cpu"), lambda: cond, lambda: uncond, 3.5)
    assert torch.equal(got, uncond + 3.5 * (cond - uncond))


def test_t5_fsdp_equals_single(pools, tiny_dir):
    res = pools(2).run(case_t5_fsdp, str(tiny_dir / "ckpt" / "shared" / "models_t5_umt5-xxl-enc-bf16.pth"))
    for d in res:
        assert d["bad"] == []
        assert d["err"] < 1e-5, d
        assert abs(d["fraction"] - 0.5) < 0.05
